//! The migration handle: the global phase and per-key phase overrides.
//!
//! Reading the phase is on every call's path, so it is lock-free: the global
//! phase is an `AtomicU8`, and the override map (an [`ArcSwap`]) is consulted
//! only while an "any overrides?" flag is set. Changing phases is rare and
//! takes a mutex so that read-modify-write of the map is serialised.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;

use crate::key::{RoutingKey, hash_text};
use crate::phase::{Phase, ReadRoute, RouteOptions, WriteRoute};

/// A shared handle on the phase of one migration, globally and per key
/// (tenant or entity), as the spec's "feature flags" component.
///
/// Cloning is cheap and every clone controls the same migration, so an admin
/// endpoint can move phases while adapters route calls.
///
/// ```
/// use dualwrite_runtime::{Migration, Phase, Store};
///
/// let migration = Migration::new(Phase::DualWrite);
/// migration.set_phase_for("tenant-42", Phase::Cutover)?;
/// assert_eq!(migration.phase_for(Some(&"tenant-42")), Phase::Cutover);
/// assert_eq!(migration.write_route(Some(&"tenant-7")).primary, Store::Old);
/// # Ok::<(), dualwrite_runtime::PhaseError>(())
/// ```
#[derive(Clone)]
pub struct Migration {
    inner: Arc<Inner>,
}

struct Inner {
    options: RouteOptions,
    global: AtomicU8,
    /// True while `overrides` may be non-empty; lets `phase_for` skip
    /// rendering the key when no override exists.
    has_overrides: AtomicBool,
    overrides: ArcSwap<OverrideMap>,
    /// Serialises writers of `overrides` (and of `global`, so a key's
    /// effective phase is checked against a global phase that cannot move
    /// under the check).
    writer: Mutex<()>,
}

impl Migration {
    /// A migration in `phase` with the default [`RouteOptions`].
    pub fn new(phase: Phase) -> Self {
        Self::with_options(phase, RouteOptions::default())
    }

    /// A migration in `phase` with the given cutover options.
    pub fn with_options(phase: Phase, options: RouteOptions) -> Self {
        Migration {
            inner: Arc::new(Inner {
                options,
                global: AtomicU8::new(phase as u8),
                has_overrides: AtomicBool::new(false),
                overrides: ArcSwap::from_pointee(OverrideMap::default()),
                writer: Mutex::new(()),
            }),
        }
    }

    /// The cutover options every route is computed with.
    pub fn options(&self) -> RouteOptions {
        self.inner.options
    }

    /// The global phase: the phase of every key without an override.
    pub fn phase(&self) -> Phase {
        // Only `Phase as u8` values are ever stored.
        Phase::from_u8(self.inner.global.load(Ordering::Acquire)).unwrap_or(Phase::Prepare)
    }

    /// Moves the global phase; returns the previous one. Any move is allowed except leaving
    /// Cleanup (spec: "Cleanup: cannot roll back").
    pub fn set_phase(&self, phase: Phase) -> Result<Phase, PhaseError> {
        let _writer = self.lock_writer();
        let previous = self.phase();
        if previous == Phase::Cleanup && phase != Phase::Cleanup {
            return Err(PhaseError::LeavingCleanup {
                key: None,
                to: phase,
            });
        }
        self.inner.global.store(phase as u8, Ordering::Release);
        tracing::info!(phase = %phase, previous = %previous, key = "*", "migration phase changed");
        Ok(previous)
    }

    /// Per-tenant / per-entity override; returns the previous override. Leaving Cleanup is refused
    /// per key too (the key's effective phase is Cleanup -> error).
    pub fn set_phase_for<K: RoutingKey + ?Sized>(
        &self,
        key: &K,
        phase: Phase,
    ) -> Result<Option<Phase>, PhaseError> {
        let key = key.render();
        let _writer = self.lock_writer();
        let current = self.inner.overrides.load();
        let previous = current.by_key.get(&key).copied();
        let effective = previous.unwrap_or_else(|| self.phase());
        if effective == Phase::Cleanup && phase != Phase::Cleanup {
            return Err(PhaseError::LeavingCleanup {
                key: Some(key),
                to: phase,
            });
        }
        let mut next = current.by_key.clone();
        next.insert(key.clone(), phase);
        self.publish(next);
        tracing::info!(
            phase = %phase,
            previous = %effective,
            key = %key,
            "migration phase changed"
        );
        Ok(previous)
    }

    /// Removes the key's override, so it follows the global phase again, and
    /// returns the override removed.
    ///
    /// Removing an override of `Cleanup` while the global phase is not
    /// `Cleanup` would move the key out of Cleanup, which the spec forbids: the
    /// override is then kept and `None` is returned (nothing was removed). Use
    /// [`Migration::try_clear_phase_for`] to get that refusal as an error.
    pub fn clear_phase_for<K: RoutingKey + ?Sized>(&self, key: &K) -> Option<Phase> {
        match self.try_clear_phase_for(key) {
            Ok(removed) => removed,
            Err(error) => {
                tracing::warn!(%error, "override kept");
                None
            }
        }
    }

    /// Like [`Migration::clear_phase_for`], but reports a refused removal
    /// (the key would leave Cleanup) as [`PhaseError::LeavingCleanup`].
    pub fn try_clear_phase_for<K: RoutingKey + ?Sized>(
        &self,
        key: &K,
    ) -> Result<Option<Phase>, PhaseError> {
        let key = key.render();
        let _writer = self.lock_writer();
        let current = self.inner.overrides.load();
        let Some(&previous) = current.by_key.get(&key) else {
            return Ok(None);
        };
        let global = self.phase();
        if previous == Phase::Cleanup && global != Phase::Cleanup {
            return Err(PhaseError::LeavingCleanup {
                key: Some(key),
                to: global,
            });
        }
        let mut next = current.by_key.clone();
        next.remove(&key);
        self.publish(next);
        tracing::info!(
            phase = %global,
            previous = %previous,
            key = %key,
            "migration phase changed"
        );
        Ok(Some(previous))
    }

    /// Every per-key override, sorted by key.
    pub fn overrides(&self) -> Vec<(String, Phase)> {
        let mut overrides: Vec<_> = self
            .inner
            .overrides
            .load()
            .by_key
            .iter()
            .map(|(key, phase)| (key.clone(), *phase))
            .collect();
        overrides.sort_unstable();
        overrides
    }

    /// The phase that applies to `key`: its override if it has one, else the
    /// global phase. Keyless calls always follow the global phase.
    ///
    /// Lock-free and allocation-free: while some override exists, the key's
    /// text is hashed as it is formatted and looked up by that hash.
    pub fn phase_for(&self, key: Option<&dyn RoutingKey>) -> Phase {
        if let Some(key) = key
            && self.inner.has_overrides.load(Ordering::Acquire)
            && let Some(phase) = self.inner.overrides.load().get(key)
        {
            return phase;
        }
        self.phase()
    }

    /// The write route for `key` under its effective phase.
    pub fn write_route(&self, key: Option<&dyn RoutingKey>) -> WriteRoute {
        self.phase_for(key).write_route(&self.inner.options)
    }

    /// The read route for `key` under its effective phase.
    pub fn read_route(&self, key: Option<&dyn RoutingKey>) -> ReadRoute {
        self.phase_for(key).read_route(&self.inner.options)
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic while holding it leaves nothing
        // half-updated, so poisoning is ignored.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs a new override map. Call with the writer lock held.
    fn publish(&self, next: HashMap<String, Phase>) {
        let non_empty = !next.is_empty();
        // Raise the flag after the map is visible and lower it after the map
        // is empty, so a reader that sees the flag also sees the entries.
        self.inner.overrides.store(Arc::new(OverrideMap::new(next)));
        self.inner.has_overrides.store(non_empty, Ordering::Release);
    }
}

/// The per-key overrides, indexed by the hash of the key's text so that the
/// hot path looks a key up without formatting it into a `String`.
#[derive(Default)]
struct OverrideMap {
    by_key: HashMap<String, Phase>,
    /// Text hash -> the overrides whose text has that hash (almost always one).
    by_text_hash: HashMap<u64, Vec<(String, Phase)>, BuildHasherDefault<PrehashedKey>>,
}

impl OverrideMap {
    fn new(by_key: HashMap<String, Phase>) -> Self {
        let mut by_text_hash: HashMap<u64, Vec<(String, Phase)>, _> = HashMap::default();
        for (key, phase) in &by_key {
            by_text_hash
                .entry(hash_text(key))
                .or_default()
                .push((key.clone(), *phase));
        }
        OverrideMap {
            by_key,
            by_text_hash,
        }
    }

    fn get(&self, key: &dyn RoutingKey) -> Option<Phase> {
        self.by_text_hash
            .get(&key.text_hash())?
            .iter()
            .find(|(text, _)| key.text_eq(text))
            .map(|(_, phase)| *phase)
    }
}

/// The keys of `by_text_hash` are hashes already: use them as they are.
#[derive(Default)]
struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for `u64` keys; fold anything else in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("phase", &self.phase())
            .field("options", &self.inner.options)
            .field("overrides", &self.overrides())
            .finish()
    }
}

/// A phase change the migration refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseError {
    /// The global phase, or the phase of `key`, is Cleanup: the old store is
    /// decommissioned and the spec says Cleanup cannot roll back.
    LeavingCleanup {
        /// The key whose phase was to change; `None` for the global phase.
        key: Option<String>,
        /// The phase that was requested.
        to: Phase,
    },
}

impl fmt::Display for PhaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhaseError::LeavingCleanup { key: None, to } => write!(
                f,
                "cannot move the migration from `cleanup` to `{to}`: cleanup cannot roll back"
            ),
            PhaseError::LeavingCleanup { key: Some(key), to } => write!(
                f,
                "cannot move key `{key}` from `cleanup` to `{to}`: cleanup cannot roll back"
            ),
        }
    }
}

impl std::error::Error for PhaseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_follows_the_map() {
        let migration = Migration::new(Phase::DualWrite);
        assert!(!migration.inner.has_overrides.load(Ordering::Acquire));
        migration
            .set_phase_for(&1, Phase::Cutover)
            .expect("allowed");
        assert!(migration.inner.has_overrides.load(Ordering::Acquire));
        assert_eq!(migration.clear_phase_for(&1), Some(Phase::Cutover));
        assert!(!migration.inner.has_overrides.load(Ordering::Acquire));
    }

    #[test]
    fn error_messages_are_lowercase_and_name_the_key() {
        let global = PhaseError::LeavingCleanup {
            key: None,
            to: Phase::Cutover,
        };
        assert_eq!(
            global.to_string(),
            "cannot move the migration from `cleanup` to `cutover`: cleanup cannot roll back"
        );
        let keyed = PhaseError::LeavingCleanup {
            key: Some("t1".into()),
            to: Phase::DualWrite,
        };
        assert_eq!(
            keyed.to_string(),
            "cannot move key `t1` from `cleanup` to `dual_write`: cleanup cannot roll back"
        );
    }
}

//! The migration handle: the global phase and per-key phase overrides.
//!
//! Reading the phase is on every call's path, so it is lock-free: the global
//! phase is an `AtomicU8`, and the override map (an [`ArcSwap`]) is consulted
//! only while an "any overrides?" flag is set. Changing phases is rare and
//! takes a mutex so that read-modify-write of the map is serialised.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::gate::{CutoverGate, GateInputs, GateReport};
use crate::key::{RoutingKey, hash_text};
use crate::lanes::far_future;
use crate::phase::{Phase, ReadRoute, RouteOptions, WriteRoute};
use crate::phase_source::ChangeScope;
use crate::phase_source::follow::SourceBinding;
use crate::rollout::{self, Percent, Rollout, bucket_of, phase_in_bucket};
use crate::stripes::KeyStripes;

mod rollouts;
mod source;

/// Told when the global phase changes, while the change holds the
/// migration's writer lock (and the fence, when routes move).
pub(crate) trait PhaseObserver: Send + Sync {
    fn global_changed(&self, from: Phase, to: Phase);
}

use source::AuditDraft;

/// The default longest a phase change waits for the writes routed before it.
pub const DEFAULT_FENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many transitions [`Migration::history`] keeps.
const HISTORY: usize = 1_000;

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
/// migration.set_phase(Phase::ShadowRead)?;
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
    /// The adapters routing by this migration, fenced on a route change.
    fences: Mutex<Vec<Weak<KeyStripes>>>,
    /// Told of every change of the global phase (see [`PhaseObserver`]).
    observers: Mutex<Vec<Weak<dyn PhaseObserver>>>,
    /// The default fence deadline, in nanoseconds.
    fence_timeout: AtomicU64,
    /// The latest transitions, oldest first.
    history: Mutex<VecDeque<Transition>>,
    /// The shared phase source followed, if any (see
    /// [`crate::phase_source`]). Set and read under `writer`.
    source: Mutex<Option<Arc<SourceBinding>>>,
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
                fences: Mutex::new(Vec::new()),
                observers: Mutex::new(Vec::new()),
                fence_timeout: AtomicU64::new(nanos(DEFAULT_FENCE_TIMEOUT)),
                history: Mutex::new(VecDeque::new()),
                source: Mutex::new(None),
            }),
        }
    }

    /// The cutover options every route is computed with.
    pub fn options(&self) -> RouteOptions {
        self.inner.options
    }

    /// The global phase: the phase of every key without an override.
    #[inline]
    pub fn phase(&self) -> Phase {
        // Only `Phase as u8` values are ever stored.
        Phase::from_u8(self.inner.global.load(Ordering::Acquire)).unwrap_or(Phase::Prepare)
    }

    /// Moves the global phase; returns the previous one. Checked against
    /// the spec's rules and fenced (see [`Migration::change`]).
    pub fn set_phase(&self, phase: Phase) -> Result<Phase, PhaseError> {
        self.change(PhaseChange::to(phase)).map(|t| t.from)
    }

    /// Per-tenant / per-entity override; returns the previous override.
    /// Checked against the spec's rules and fenced (see
    /// [`Migration::change`]).
    pub fn set_phase_for<K: RoutingKey + ?Sized>(
        &self,
        key: &K,
        phase: Phase,
    ) -> Result<Option<Phase>, PhaseError> {
        self.change(PhaseChange::to(phase).for_key(key))
            .map(|t| t.previous_override)
    }

    /// Makes a phase change, and records it in [`Migration::history`].
    ///
    /// Rules (the spec's phase table and rollback table):
    /// - nothing leaves Cleanup ("cannot roll back"), even forced;
    /// - Prepare and DualWrite do not move straight to Cutover or Cleanup,
    ///   and only Cutover moves to Cleanup, unless [`PhaseChange::forced`]
    ///   (the backfill and shadow validation would be skipped);
    /// - the global phase does not move to Cleanup while an override keeps a
    ///   key in an earlier phase (lift it with
    ///   [`Migration::clear_phase_for`]), unless forced;
    /// - a rollback from Cutover (the writes' order reverses) is allowed,
    ///   logged at warn level as needing reconciliation, and marked so in the
    ///   record.
    ///
    /// Fence: when the change moves a route (the primary of writes or reads,
    /// or the secondary of writes), it first holds every write of every
    /// adapter routing by this migration, waits for those in flight to hand
    /// off and for every queued secondary write to be applied or
    /// dead-lettered, and only then switches. If that does not finish within
    /// the fence deadline ([`PhaseChange::fence_timeout`], default
    /// [`Migration::fence_timeout`]) the change fails with
    /// [`PhaseError::FenceTimedOut`] and the phase stays as it was. While the
    /// fence holds, writes wait.
    ///
    /// The fence blocks its thread. Inside a multi-thread tokio runtime it
    /// lets the runtime move that worker's other tasks elsewhere; on a
    /// current-thread runtime, async writers of that thread that hold a
    /// stripe across an await cannot finish while it waits, so the change
    /// would time out: use [`Migration::change_async`] there.
    ///
    /// Rollouts ([`PhaseChange::for_percent`]): the rules apply to every
    /// group of keys the change moves (from the global phase into the
    /// rollout when it grows, back when it shrinks), and a global Cleanup
    /// waits for rollouts of earlier phases to be removed, unless forced.
    ///
    /// Following a phase source ([`crate::phase_source::PhaseSync`]), the
    /// change is stored there (compare-and-set on the state's version, with
    /// an audit record) while the fence holds, before it takes effect here;
    /// if another instance changed the shared state meanwhile it is refused
    /// with [`PhaseError::SourceChanged`] and the newer state is applied.
    pub fn change(&self, change: PhaseChange) -> Result<Transition, PhaseError> {
        let _writer = self.lock_writer();
        let result = match change.rollout {
            Some(basis_points) => self.change_rollout(change, basis_points),
            None => self.change_locked(change),
        };
        self.reload_after_conflict(&result);
        result
    }

    /// [`Migration::change`] of a global phase or a key's, with the writer
    /// lock held.
    fn change_locked(&self, change: PhaseChange) -> Result<Transition, PhaseError> {
        let global = self.phase();
        let current = self.inner.overrides.load();
        let previous_override = change
            .key
            .as_ref()
            .and_then(|key| current.by_key.get(key).copied());
        let from = previous_override.unwrap_or_else(|| match &change.key {
            Some(key) => current.rollout_phase(hash_text(key)).unwrap_or(global),
            None => global,
        });
        let to = change.phase;
        if let Some((expected, _)) = &change.gated
            && *expected != from
        {
            return Err(PhaseError::ChangedMeanwhile {
                key: change.key.clone(),
                expected: *expected,
                found: from,
            });
        }
        check_rules(from, to, change.key.as_deref(), change.forced)?;
        if change.key.is_none() && to == Phase::Cleanup {
            let behind: Vec<String> = current
                .by_key
                .iter()
                .filter(|(_, phase)| **phase < Phase::Cleanup)
                .map(|(key, _)| key.clone())
                .collect();
            if !behind.is_empty() && !change.forced {
                let mut keys = behind;
                keys.sort_unstable();
                return Err(PhaseError::OverridesBehind { keys });
            }
            let rollouts: Vec<Rollout> = current
                .rollouts
                .iter()
                .filter(|r| r.phase < Phase::Cleanup)
                .copied()
                .collect();
            if !rollouts.is_empty() && !change.forced {
                return Err(PhaseError::RolloutsBehind { rollouts });
            }
        }
        let moves_routes = routes_differ(from, to, &self.inner.options);
        let fence_started = Instant::now();
        if moves_routes {
            let timeout = change.fence_timeout.unwrap_or_else(|| self.fence_timeout());
            let fences = self.live_fences();
            let holds = fence_all(&fences, fence_started, timeout).map_err(|pending| {
                let error = PhaseError::FenceTimedOut {
                    key: change.key.clone(),
                    from,
                    to,
                    waited: timeout,
                    pending,
                };
                tracing::warn!(%error, "phase change refused");
                error
            })?;
            self.apply(&change, &current, from)?;
            drop(holds);
        } else {
            self.apply(&change, &current, from)?;
        }
        let transition = Transition {
            at: SystemTime::now(),
            key: change.key,
            from,
            to,
            previous_override,
            reason: change.reason,
            forced: change.forced,
            needs_reconciliation: from == Phase::Cutover && to < Phase::Cutover,
            fenced: moves_routes.then(|| fence_started.elapsed()),
            gate: change.gated.map(|(_, report)| report),
            rollout: None,
            actor: self.binding().map(|binding| binding.actor.clone()),
        };
        self.record(&transition);
        Ok(transition)
    }

    /// Moves the global phase one step forward if the cutover gate of that
    /// step passes (see [`crate::gate`]); otherwise returns
    /// [`AdvanceError::Refused`] with the report of each unmet criterion,
    /// and the phase stays. The report is kept in the transition's record.
    pub fn advance(
        &self,
        gate: &CutoverGate,
        inputs: &GateInputs,
    ) -> Result<Transition, AdvanceError> {
        self.advance_step(None, gate, inputs, None)
    }

    /// Like [`Migration::advance`], for one tenant or entity (its override).
    pub fn advance_for<K: RoutingKey + ?Sized>(
        &self,
        key: &K,
        gate: &CutoverGate,
        inputs: &GateInputs,
    ) -> Result<Transition, AdvanceError> {
        self.advance_step(Some(key.render()), gate, inputs, None)
    }

    /// Moves the global phase one step forward even if the gate refuses:
    /// recorded as forced, with the reason and the gate's report, and
    /// logged at warn level.
    pub fn advance_forced(
        &self,
        gate: &CutoverGate,
        inputs: &GateInputs,
        reason: impl Into<String>,
    ) -> Result<Transition, AdvanceError> {
        self.advance_step(None, gate, inputs, Some(reason.into()))
    }

    /// Like [`Migration::advance_forced`], for one tenant or entity (its
    /// override).
    pub fn advance_forced_for<K: RoutingKey + ?Sized>(
        &self,
        key: &K,
        gate: &CutoverGate,
        inputs: &GateInputs,
        reason: impl Into<String>,
    ) -> Result<Transition, AdvanceError> {
        self.advance_step(Some(key.render()), gate, inputs, Some(reason.into()))
    }

    fn advance_step(
        &self,
        key: Option<String>,
        gate: &CutoverGate,
        inputs: &GateInputs,
        forced_because: Option<String>,
    ) -> Result<Transition, AdvanceError> {
        let global = self.phase();
        let from = match &key {
            Some(key) => {
                let current = self.inner.overrides.load();
                current
                    .by_key
                    .get(key)
                    .copied()
                    .or_else(|| current.rollout_phase(hash_text(key)))
                    .unwrap_or(global)
            }
            None => global,
        };
        let to = from
            .next()
            .ok_or(AdvanceError::AtLastPhase { phase: from })?;
        let report = gate.evaluate(from, to, inputs);
        let passed = report.passed();
        let mut change = PhaseChange::to(to);
        change.key = key;
        match forced_because {
            None if !passed => {
                tracing::warn!(
                    previous = %from,
                    phase = %to,
                    key = change.key.as_deref().unwrap_or("*"),
                    unmet = %report.unmet().map(|c| c.criterion.to_string()).collect::<Vec<_>>().join(", "),
                    "phase advance refused by the cutover gate"
                );
                return Err(AdvanceError::Refused(report));
            }
            None => change.reason = Some("cutover gate passed".to_owned()),
            Some(reason) => {
                // A passing gate needs no force: record it as a plain advance.
                change.forced = !passed;
                change.reason = Some(reason);
            }
        }
        change.gated = Some((from, report));
        self.change(change).map_err(AdvanceError::Phase)
    }

    /// [`Migration::change`] from async code: the fence waits on a blocking
    /// thread of the tokio runtime (`spawn_blocking`), so the runtime's own
    /// threads, a current-thread runtime's included, keep running the async
    /// writers it waits for. Outside a runtime it is [`Migration::change`].
    pub async fn change_async(&self, change: PhaseChange) -> Result<Transition, PhaseError> {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return self.change(change);
        };
        let migration = self.clone();
        handle
            .spawn_blocking(move || migration.change(change))
            .await
            .unwrap_or_else(|error| {
                Err(PhaseError::Interrupted {
                    reason: error.to_string(),
                })
            })
    }

    /// Installs a checked change of the global phase or a key's (stored in
    /// the source first, if one is followed). Call with the writer lock held
    /// (and the fence, if routes move).
    fn apply(
        &self,
        change: &PhaseChange,
        current: &OverrideMap,
        from: Phase,
    ) -> Result<(), PhaseError> {
        let draft = AuditDraft {
            scope: match &change.key {
                None => ChangeScope::Global,
                Some(key) => ChangeScope::Key(key.clone()),
            },
            from,
            to: change.phase,
            reason: change.reason.clone(),
            forced: change.forced,
            gate: change.gated.as_ref().map(|(_, report)| report.to_string()),
        };
        match &change.key {
            None => {
                // A rollout of the new global phase routes nothing apart
                // from it any more.
                let rollouts = current
                    .rollouts
                    .iter()
                    .filter(|r| r.phase != change.phase)
                    .copied()
                    .collect();
                self.install(change.phase, current.by_key.clone(), rollouts, draft)
            }
            Some(key) => {
                let mut next = current.by_key.clone();
                next.insert(key.clone(), change.phase);
                self.install(self.phase(), next, current.rollouts.clone(), draft)
            }
        }
    }

    fn record(&self, transition: &Transition) {
        let key = transition.key.as_deref().unwrap_or("*");
        let reason = transition.reason.as_deref().unwrap_or("-");
        if transition.needs_reconciliation {
            tracing::warn!(
                previous = %transition.from,
                phase = %transition.to,
                key,
                reason,
                forced = transition.forced,
                "migration rolled back from cutover: the writes' order reversed, run reconciliation"
            );
        } else if transition.forced {
            tracing::warn!(
                previous = %transition.from,
                phase = %transition.to,
                key,
                reason,
                "migration phase changed by force"
            );
        } else {
            tracing::info!(
                previous = %transition.from,
                phase = %transition.to,
                key,
                reason,
                "migration phase changed"
            );
        }
        let mut history = self
            .inner
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if history.len() >= HISTORY {
            history.pop_front();
        }
        history.push_back(transition.clone());
    }

    /// The latest transitions (at most 1 000), oldest first.
    pub fn history(&self) -> Vec<Transition> {
        self.inner
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// The default longest a phase change waits for the writes routed
    /// before it (10 s unless set).
    pub fn fence_timeout(&self) -> Duration {
        Duration::from_nanos(self.inner.fence_timeout.load(Ordering::Relaxed))
    }

    /// Sets [`Migration::fence_timeout`].
    pub fn set_fence_timeout(&self, timeout: Duration) {
        self.inner
            .fence_timeout
            .store(nanos(timeout), Ordering::Relaxed);
    }

    /// Registers an adapter's stripes, so route changes fence its writes.
    pub(crate) fn register_fence(&self, stripes: &Arc<KeyStripes>) {
        // Under the writer lock: an adapter made while a phase change runs
        // waits for it, so it cannot route by the old phase across the
        // switch unfenced.
        let _writer = self.lock_writer();
        let mut fences = self
            .inner
            .fences
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        fences.retain(|fence| fence.strong_count() > 0);
        fences.push(Arc::downgrade(stripes));
    }

    /// Makes an observer of the global phase from the phase in force and
    /// registers it (kept while it lives), with no change in between.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn observe_with<O: PhaseObserver + 'static>(
        &self,
        make: impl FnOnce(Phase) -> Arc<O>,
    ) -> Arc<O> {
        let _writer = self.lock_writer();
        let observer = make(self.phase());
        let mut observers = self
            .inner
            .observers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        observers.retain(|o| o.strong_count() > 0);
        let weak: Weak<dyn PhaseObserver> = Arc::downgrade(&observer) as Weak<dyn PhaseObserver>;
        observers.push(weak);
        observer
    }

    /// Installs the global phase and tells the observers if it changed.
    /// Call with the writer lock held, and the fence if routes move (so
    /// the observers see no write of either phase in flight).
    fn set_global(&self, to: Phase) {
        let from = self.phase();
        self.inner.global.store(to as u8, Ordering::Release);
        if from == to {
            return;
        }
        let observers: Vec<Arc<dyn PhaseObserver>> = self
            .inner
            .observers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for observer in observers {
            observer.global_changed(from, to);
        }
    }

    fn live_fences(&self) -> Vec<Arc<KeyStripes>> {
        let mut fences = self
            .inner
            .fences
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        fences.retain(|fence| fence.strong_count() > 0);
        fences.iter().filter_map(Weak::upgrade).collect()
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
    /// (the key would leave Cleanup, or the fence timed out) as an error.
    /// Lifting an override is always allowed otherwise: the key returns to
    /// the global phase, fenced like any change that moves a route.
    pub fn try_clear_phase_for<K: RoutingKey + ?Sized>(
        &self,
        key: &K,
    ) -> Result<Option<Phase>, PhaseError> {
        let key = key.render();
        let _writer = self.lock_writer();
        let result = self.clear_locked(key);
        self.reload_after_conflict(&result);
        result
    }

    /// [`Migration::try_clear_phase_for`] with the writer lock held.
    fn clear_locked(&self, key: String) -> Result<Option<Phase>, PhaseError> {
        let current = self.inner.overrides.load();
        let Some(&previous) = current.by_key.get(&key) else {
            return Ok(None);
        };
        // The key returns to the rollout covering it, else the global phase.
        let global = current
            .rollout_phase(hash_text(&key))
            .unwrap_or_else(|| self.phase());
        if previous == Phase::Cleanup && global != Phase::Cleanup {
            return Err(PhaseError::LeavingCleanup {
                key: Some(key),
                to: global,
            });
        }
        let mut next = current.by_key.clone();
        next.remove(&key);
        let draft = AuditDraft {
            scope: ChangeScope::Key(key.clone()),
            from: previous,
            to: global,
            reason: Some("override lifted".to_owned()),
            forced: false,
            gate: None,
        };
        let moves_routes = routes_differ(previous, global, &self.inner.options);
        let started = Instant::now();
        if moves_routes {
            let timeout = self.fence_timeout();
            let fences = self.live_fences();
            let holds = fence_all(&fences, started, timeout).map_err(|pending| {
                PhaseError::FenceTimedOut {
                    key: Some(key.clone()),
                    from: previous,
                    to: global,
                    waited: timeout,
                    pending,
                }
            })?;
            self.install(self.phase(), next, current.rollouts.clone(), draft)?;
            drop(holds);
        } else {
            self.install(self.phase(), next, current.rollouts.clone(), draft)?;
        }
        self.record(&Transition {
            at: SystemTime::now(),
            key: Some(key),
            from: previous,
            to: global,
            previous_override: Some(previous),
            reason: Some("override lifted".to_owned()),
            forced: false,
            needs_reconciliation: previous == Phase::Cutover && global < Phase::Cutover,
            fenced: moves_routes.then(|| started.elapsed()),
            gate: None,
            rollout: None,
            actor: self.binding().map(|binding| binding.actor.clone()),
        });
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
    /// phase of the rollout covering it (see
    /// [`crate::phase_source::Rollout`]), else the global phase. Keyless
    /// calls always follow the global phase.
    ///
    /// Lock-free and allocation-free, and never waits on a phase source:
    /// while some override or rollout exists, the key's text is hashed as
    /// it is formatted, looked up by that hash, and its rollout bucket is
    /// that hash modulo 10 000; without any, only the global phase is read.
    #[inline]
    pub fn phase_for(&self, key: Option<&dyn RoutingKey>) -> Phase {
        if let Some(key) = key
            && self.inner.has_overrides.load(Ordering::Acquire)
        {
            return self.override_or_global(key);
        }
        self.phase()
    }

    /// The override of `key`, or the global phase: the slow path of
    /// [`Migration::phase_for`], out of line so the common case inlines.
    #[inline(never)]
    fn override_or_global(&self, key: &dyn RoutingKey) -> Phase {
        let map = self.inner.overrides.load();
        let hash = key.text_hash();
        map.get(key, hash)
            .or_else(|| map.rollout_phase(hash))
            .unwrap_or_else(|| self.phase())
    }

    /// Whether some write may have a secondary store now: an override
    /// exists, or the global phase writes both stores. One or two atomic
    /// loads; lets the primary-only path skip the latency sampling.
    #[inline]
    pub(crate) fn may_dual_write(&self) -> bool {
        self.inner.has_overrides.load(Ordering::Relaxed)
            || self
                .phase()
                .write_route(&self.inner.options)
                .secondary
                .is_some()
    }

    /// The write route for `key` under its effective phase.
    #[inline]
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

    /// Installs a new override map and rollouts. Call with the writer lock
    /// held.
    fn publish(&self, next: HashMap<String, Phase>, rollouts: Vec<Rollout>) {
        let non_empty = !next.is_empty() || !rollouts.is_empty();
        // Raise the flag after the map is visible and lower it after the map
        // is empty, so a reader that sees the flag also sees the entries.
        self.inner
            .overrides
            .store(Arc::new(OverrideMap::new(next, rollouts)));
        self.inner.has_overrides.store(non_empty, Ordering::Release);
    }
}

/// The per-key overrides, indexed by the hash of the key's text so that the
/// hot path looks a key up without formatting it into a `String`, and the
/// percentage rollouts.
#[derive(Default)]
struct OverrideMap {
    by_key: HashMap<String, Phase>,
    /// Text hash -> the overrides whose text has that hash (almost always one).
    by_text_hash: HashMap<u64, Vec<(String, Phase)>, BuildHasherDefault<PrehashedKey>>,
    /// In evaluation order (see `rollout::normalize`).
    rollouts: Vec<Rollout>,
}

impl OverrideMap {
    fn new(by_key: HashMap<String, Phase>, mut rollouts: Vec<Rollout>) -> Self {
        rollout::normalize(&mut rollouts);
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
            rollouts,
        }
    }

    /// The override of `key`, whose text hash is `text_hash`.
    fn get(&self, key: &dyn RoutingKey, text_hash: u64) -> Option<Phase> {
        self.by_text_hash
            .get(&text_hash)?
            .iter()
            .find(|(text, _)| key.text_eq(text))
            .map(|(_, phase)| *phase)
    }

    /// The phase of the rollout covering a key whose text hash is
    /// `text_hash`, if any.
    #[inline]
    fn rollout_phase(&self, text_hash: u64) -> Option<Phase> {
        if self.rollouts.is_empty() {
            return None;
        }
        phase_in_bucket(&self.rollouts, bucket_of(text_hash))
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
            .field("rollouts", &self.rollouts())
            .finish()
    }
}

/// A phase change to make with [`Migration::change`]: the global phase or
/// one key's, with the options the plain setters leave at their defaults.
#[derive(Debug, Clone)]
pub struct PhaseChange {
    phase: Phase,
    key: Option<String>,
    forced: bool,
    reason: Option<String>,
    fence_timeout: Option<Duration>,
    /// [`Migration::advance`]: the phase the gate was evaluated from (the
    /// change is refused if another moved it meanwhile), and the report.
    gated: Option<(Phase, GateReport)>,
    /// [`PhaseChange::for_percent`]: the rollout's share, in basis points.
    rollout: Option<u16>,
}

impl PhaseChange {
    /// A change of the global phase to `phase`.
    pub fn to(phase: Phase) -> Self {
        PhaseChange {
            phase,
            key: None,
            forced: false,
            reason: None,
            fence_timeout: None,
            gated: None,
            rollout: None,
        }
    }

    /// Changes the phase of one tenant or entity (an override) instead.
    #[must_use]
    pub fn for_key<K: RoutingKey + ?Sized>(mut self, key: &K) -> Self {
        self.key = Some(key.render());
        self.rollout = None;
        self
    }

    /// Sets the rollout of this phase instead: keys whose hash falls in the
    /// first `percent` % (values above 100 mean 100) use the phase, unless
    /// they have an override; 0 removes the rollout. See
    /// [`crate::phase_source::Rollout`].
    ///
    /// ```
    /// use dualwrite_runtime::{Migration, Phase, PhaseChange};
    ///
    /// let migration = Migration::new(Phase::Backfill);
    /// migration.change(PhaseChange::to(Phase::ShadowRead).for_percent(10))?;
    /// let shadowed = (0..10_000_u64)
    ///     .filter(|id| migration.phase_for(Some(id)) == Phase::ShadowRead)
    ///     .count();
    /// assert!((800..1_200).contains(&shadowed));
    /// # Ok::<(), dualwrite_runtime::PhaseError>(())
    /// ```
    #[must_use]
    pub fn for_percent(self, percent: u8) -> Self {
        self.for_basis_points(u16::from(percent.min(100)) * 100)
    }

    /// [`PhaseChange::for_percent`] in basis points (1 = 0.01 %, at most
    /// 10 000), for rollouts finer than a percent.
    #[must_use]
    pub fn for_basis_points(mut self, basis_points: u16) -> Self {
        self.rollout = Some(basis_points.min(rollout::ROLLOUT_BUCKETS));
        self.key = None;
        self
    }

    /// Allows skipping phases and a global Cleanup while overrides are
    /// behind; recorded as forced and logged at warn level. Leaving Cleanup
    /// stays refused.
    #[must_use]
    pub fn forced(mut self) -> Self {
        self.forced = true;
        self
    }

    /// Why the change is made, for the log and the history.
    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The longest to wait for the writes routed before the change.
    #[must_use]
    pub fn fence_timeout(mut self, timeout: Duration) -> Self {
        self.fence_timeout = Some(timeout);
        self
    }
}

/// One phase change, as [`Migration::history`] records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// When the change took effect.
    pub at: SystemTime,
    /// The key whose override changed; `None` for the global phase.
    pub key: Option<String>,
    /// The phase in force before (the key's effective phase for a key).
    pub from: Phase,
    /// The phase in force after.
    pub to: Phase,
    /// The key's override before the change, if it had one.
    pub previous_override: Option<Phase>,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// Whether the rules were overridden.
    pub forced: bool,
    /// A rollback from Cutover: writes reversed their order, so the stores
    /// need reconciliation (spec: "Cutover (writes): may need
    /// reconciliation").
    pub needs_reconciliation: bool,
    /// How long the fence held writes, when the change moved a route.
    pub fenced: Option<Duration>,
    /// The gate's report, for a change made by [`Migration::advance`] (a
    /// forced advance keeps the report that refused it). A change applied
    /// from a phase source has its report in the source's audit record.
    pub gate: Option<GateReport>,
    /// For a rollout change, the rollout after it (a share of 0: removed).
    pub rollout: Option<Rollout>,
    /// Who made the change, when a phase source is followed: this
    /// instance's actor name, or the remote one's for a change applied from
    /// the source.
    pub actor: Option<String>,
}

/// Why [`Migration::advance`] did not move the phase. The phase is
/// unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum AdvanceError {
    /// The step's cutover gate refused; the report gives each criterion's
    /// value and threshold.
    Refused(GateReport),
    /// The phase is the last one.
    AtLastPhase {
        /// The phase in force.
        phase: Phase,
    },
    /// The change itself was refused (a fence that timed out, a concurrent
    /// change).
    Phase(PhaseError),
}

impl fmt::Display for AdvanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdvanceError::Refused(report) => {
                let unmet: Vec<String> = report.unmet().map(|c| format!("{c:#}")).collect();
                write!(
                    f,
                    "the cutover gate refused `{}` -> `{}`: {}",
                    report.from,
                    report.to,
                    unmet.join("; ")
                )
            }
            AdvanceError::AtLastPhase { phase } => {
                write!(
                    f,
                    "`{phase}` is the last phase: there is nothing to advance to"
                )
            }
            AdvanceError::Phase(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for AdvanceError {}

/// A phase change the migration refused. The phase is unchanged.
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
    /// The change skips phases the spec requires (backfill and shadow
    /// validation before Cutover, Cutover before Cleanup). Use
    /// [`PhaseChange::forced`] to skip them anyway.
    SkipsPhases {
        /// The key whose phase was to change; `None` for the global phase.
        key: Option<String>,
        /// The phase in force.
        from: Phase,
        /// The phase requested.
        to: Phase,
    },
    /// The global phase cannot move to Cleanup while overrides keep these
    /// keys in earlier phases: those keys would still write the old store.
    /// Lift the overrides first ([`Migration::clear_phase_for`]) or force.
    OverridesBehind {
        /// The keys whose override is before Cleanup, sorted.
        keys: Vec<String>,
    },
    /// The writes routed before the change did not finish within the fence
    /// deadline, so the route was not switched.
    FenceTimedOut {
        /// The key whose phase was to change; `None` for the global phase.
        key: Option<String>,
        /// The phase in force (kept).
        from: Phase,
        /// The phase requested.
        to: Phase,
        /// How long the fence waited.
        waited: Duration,
        /// Secondary writes still pending at the deadline.
        pending: u64,
    },
    /// [`Migration::advance`]: another change moved the phase after the
    /// gate was evaluated, so its report is about another step.
    ChangedMeanwhile {
        /// The key whose phase was to change; `None` for the global phase.
        key: Option<String>,
        /// The phase the gate was evaluated from.
        expected: Phase,
        /// The phase in force now.
        found: Phase,
    },
    /// [`Migration::change_async`]: the thread making the change stopped
    /// before it finished (the runtime is shutting down, or the change
    /// panicked). Look at [`Migration::history`] for whether it was made.
    Interrupted {
        /// What stopped it.
        reason: String,
    },
    /// A rollout change would move keys against the spec's rules: out of
    /// Cleanup, or past phases (unless forced).
    RolloutRefused {
        /// The rollout requested.
        rollout: Rollout,
        /// The phase of keys it would move.
        from: Phase,
        /// The phase they would move to.
        to: Phase,
    },
    /// The global phase cannot move to Cleanup while rollouts keep a share
    /// of keys in earlier phases. Remove them first or force.
    RolloutsBehind {
        /// The rollouts of phases before Cleanup.
        rollouts: Vec<Rollout>,
    },
    /// The followed phase source was changed by another instance after
    /// this one last applied it; the change is not made, and the newer
    /// shared phases are applied. Look at them and try again.
    SourceChanged {
        /// The key whose phase was to change; `None` for the global phase
        /// or a rollout.
        key: Option<String>,
        /// The source version this instance was at.
        expected_version: u64,
        /// The version found in the source.
        found_version: u64,
    },
    /// The followed phase source could not be read or written; the change
    /// is not made.
    Source {
        /// What failed.
        reason: String,
    },
}

impl fmt::Display for PhaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = |key: &Option<String>| match key {
            None => "the migration".to_owned(),
            Some(key) => format!("key `{key}`"),
        };
        match self {
            PhaseError::LeavingCleanup { key: None, to } => write!(
                f,
                "cannot move the migration from `cleanup` to `{to}`: cleanup cannot roll back"
            ),
            PhaseError::LeavingCleanup { key: Some(key), to } => write!(
                f,
                "cannot move key `{key}` from `cleanup` to `{to}`: cleanup cannot roll back"
            ),
            PhaseError::SkipsPhases { key, from, to } => write!(
                f,
                "cannot move {} from `{from}` straight to `{to}`: {}; force the change to skip it",
                scope(key),
                if *to == Phase::Cleanup {
                    "only `cutover` moves to `cleanup`"
                } else {
                    "`backfill` and `shadow_read` come first"
                }
            ),
            PhaseError::OverridesBehind { keys } => write!(
                f,
                "cannot move the migration to `cleanup` while {} key override(s) are in earlier phases ({}): lift them with `clear_phase_for` or force the change",
                keys.len(),
                keys.iter()
                    .take(5)
                    .map(|key| format!("`{key}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            PhaseError::FenceTimedOut {
                key,
                from,
                to,
                waited,
                pending,
            } => write!(
                f,
                "cannot move {} from `{from}` to `{to}`: the writes routed before the change did not finish within {waited:?} ({pending} secondary write(s) pending); the phase stays `{from}`",
                scope(key)
            ),
            PhaseError::ChangedMeanwhile {
                key,
                expected,
                found,
            } => write!(
                f,
                "cannot advance {} from `{expected}`: another change moved it to `{found}` meanwhile; evaluate the gate again",
                scope(key)
            ),
            PhaseError::Interrupted { reason } => write!(
                f,
                "the phase change was interrupted ({reason}); see the migration's history for whether it was made"
            ),
            PhaseError::RolloutRefused { rollout, from, to } => write!(
                f,
                "cannot set the `{}` rollout to {}: keys it moves would go from `{from}` to `{to}`, {}",
                rollout.phase,
                Percent(rollout.basis_points),
                if *from == Phase::Cleanup {
                    "and cleanup cannot roll back"
                } else {
                    "skipping phases; force the change to skip them"
                }
            ),
            PhaseError::RolloutsBehind { rollouts } => write!(
                f,
                "cannot move the migration to `cleanup` while rollouts keep keys in earlier phases ({}): remove them or force the change",
                rollouts
                    .iter()
                    .map(|r| format!("{} in `{}`", Percent(r.basis_points), r.phase))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            PhaseError::SourceChanged {
                key,
                expected_version,
                found_version,
            } => write!(
                f,
                "cannot change {}: the shared phase source moved from version {expected_version} to {found_version} meanwhile; its phases are applied now, check them and try again",
                scope(key)
            ),
            PhaseError::Source { reason } => {
                write!(f, "the phase change was not made: {reason}")
            }
        }
    }
}

impl std::error::Error for PhaseError {}

/// The spec's rules for a move of one scope from `from` to `to`.
fn check_rules(from: Phase, to: Phase, key: Option<&str>, forced: bool) -> Result<(), PhaseError> {
    if from == Phase::Cleanup && to != Phase::Cleanup {
        return Err(PhaseError::LeavingCleanup {
            key: key.map(str::to_owned),
            to,
        });
    }
    let skips = match to {
        Phase::Cutover => from < Phase::Backfill,
        Phase::Cleanup => from != Phase::Cutover && from != Phase::Cleanup,
        _ => false,
    };
    if skips && !forced {
        return Err(PhaseError::SkipsPhases {
            key: key.map(str::to_owned),
            from,
            to,
        });
    }
    Ok(())
}

/// Fences every adapter in `fences` (see `KeyStripes::fence`) within
/// `timeout` of `started`; the secondary writes still pending if one cannot.
fn fence_all(
    fences: &[Arc<KeyStripes>],
    started: Instant,
    timeout: Duration,
) -> Result<Vec<crate::stripes::FenceHold<'_>>, u64> {
    let deadline = started.checked_add(timeout).unwrap_or_else(far_future);
    fences
        .iter()
        .map(|stripes| stripes.fence(deadline))
        .collect()
}

/// Whether moving from `from` to `to` changes where writes go or which store
/// answers reads: then the writes routed before must finish first.
fn routes_differ(from: Phase, to: Phase, options: &RouteOptions) -> bool {
    from.write_route(options) != to.write_route(options)
        || from.read_route(options).primary != to.read_route(options).primary
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_follows_the_map() {
        let migration = Migration::new(Phase::DualWrite);
        assert!(!migration.inner.has_overrides.load(Ordering::Acquire));
        migration
            .set_phase_for(&1, Phase::Backfill)
            .expect("allowed");
        assert!(migration.inner.has_overrides.load(Ordering::Acquire));
        assert_eq!(migration.clear_phase_for(&1), Some(Phase::Backfill));
        assert!(!migration.inner.has_overrides.load(Ordering::Acquire));
    }

    #[test]
    fn flag_follows_the_rollouts() {
        let migration = Migration::new(Phase::DualWrite);
        migration
            .change(PhaseChange::to(Phase::Backfill).for_percent(10))
            .expect("allowed");
        assert!(migration.inner.has_overrides.load(Ordering::Acquire));
        migration
            .change(PhaseChange::to(Phase::Backfill).for_percent(0))
            .expect("allowed");
        assert!(!migration.inner.has_overrides.load(Ordering::Acquire));
        // A key's effective phase under a rollout is what rules and
        // advances start from.
        migration
            .change(PhaseChange::to(Phase::Backfill).for_percent(100))
            .expect("allowed");
        assert_eq!(migration.phase_for(Some(&"t1")), Phase::Backfill);
        let t = migration
            .set_phase_for("t1", Phase::ShadowRead)
            .map(|_| migration.history().pop().expect("recorded"))
            .expect("allowed");
        assert_eq!(t.from, Phase::Backfill);
        assert_eq!(
            migration.try_clear_phase_for("t1"),
            Ok(Some(Phase::ShadowRead))
        );
        assert_eq!(
            migration.history().pop().map(|t| t.to),
            Some(Phase::Backfill)
        );
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

//! A migration following a phase source: the watcher thread, and the
//! binding through which the migration's own changes reach the source.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{PhaseSource, SourceError};
use crate::migration::{Migration, PhaseError};

/// How a [`PhaseSync`] follows its source.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    actor: String,
    wait: Duration,
    retry: Duration,
}

impl SyncOptions {
    /// The defaults: the actor is `host:pid`, one wait for a change lasts
    /// at most 500 ms, a failed step is retried after 200 ms.
    pub fn new() -> Self {
        SyncOptions {
            actor: default_actor(),
            wait: Duration::from_millis(500),
            retry: Duration::from_millis(200),
        }
    }

    /// The name recorded as the author of this instance's changes in the
    /// source's audit log (an instance or operator name).
    #[must_use]
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// The longest one wait for a change blocks. Sources that are told of
    /// changes (PostgreSQL's `NOTIFY`, the in-memory source) return as soon
    /// as one is stored; every wait also reads the stored version, so this
    /// bounds how late a change whose notice was lost is seen, and how long
    /// [`PhaseSync::stop`] takes.
    #[must_use]
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.wait = wait.max(Duration::from_millis(1));
        self
    }

    /// How long the watcher pauses after a failed step (the source
    /// unreachable, or the fence of a remote change timing out) before it
    /// tries again.
    #[must_use]
    pub fn retry_after(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// `host:pid`, from `$HOSTNAME` or `/etc/hostname`.
fn default_actor() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "instance".to_owned());
    format!("{host}:{}", std::process::id())
}

/// The link between a migration and its source: held by the migration
/// while it follows, so its own changes are stored with compare-and-set.
pub(crate) struct SourceBinding {
    pub(crate) source: Arc<dyn PhaseSource>,
    pub(crate) actor: String,
    /// The source version the migration's phases are at. Changed under
    /// the migration's writer lock.
    version: Mutex<u64>,
    applied: Condvar,
    last_error: Mutex<Option<String>>,
}

impl SourceBinding {
    fn lock_version(&self) -> MutexGuard<'_, u64> {
        self.version.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The source version the migration's phases are at.
    pub(crate) fn version(&self) -> u64 {
        *self.lock_version()
    }

    /// Records that the migration's phases are at `version` now.
    pub(crate) fn set_version(&self, version: u64) {
        *self.lock_version() = version;
        self.applied.notify_all();
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }
}

/// A [`Migration`] following a [`PhaseSource`]: made by
/// [`PhaseSync::follow`], it keeps a watcher thread that applies every
/// change stored in the source to the migration, and routes the
/// migration's own changes to the source. Dropping it (or
/// [`PhaseSync::stop`]) ends both: the migration keeps the phases it has
/// and is local again.
///
/// When it starts, an empty source (version 0) takes the migration's
/// phases; otherwise the migration takes the source's, fenced like any
/// change. A remote change is applied within about the source's notice
/// time plus the fence (the writes routed before it drain first; see
/// [`Migration::change`]); if the fence times out the watcher tries again
/// after [`SyncOptions::retry_after`], and [`PhaseSync::last_error`] says
/// why meanwhile.
pub struct PhaseSync {
    binding: Arc<SourceBinding>,
    migration: Migration,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl PhaseSync {
    /// Makes `migration` follow `source` with the default
    /// [`SyncOptions`].
    pub fn follow<S: PhaseSource>(migration: &Migration, source: S) -> Result<Self, PhaseError> {
        Self::follow_with(migration, Arc::new(source), SyncOptions::new())
    }

    /// Makes `migration` follow `source`: takes the source's phases (or
    /// stores the migration's in an empty source), then starts the watcher.
    /// Fails if the source cannot be read, the initial fence times out, or
    /// the migration already follows a source.
    pub fn follow_with(
        migration: &Migration,
        source: Arc<dyn PhaseSource>,
        options: SyncOptions,
    ) -> Result<Self, PhaseError> {
        let binding = Arc::new(SourceBinding {
            source,
            actor: options.actor.clone(),
            version: Mutex::new(0),
            applied: Condvar::new(),
            last_error: Mutex::new(None),
        });
        migration.attach_source(&binding)?;
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let binding = Arc::clone(&binding);
            let migration = migration.clone();
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("dualwrite-phase-sync".to_owned())
                .spawn(move || watch(&migration, &binding, &stop, &options))
        };
        let watcher = match watcher {
            Ok(handle) => handle,
            Err(error) => {
                migration.detach_source(&binding);
                return Err(PhaseError::Source {
                    reason: format!("cannot start the phase watcher thread: {error}"),
                });
            }
        };
        Ok(PhaseSync {
            binding,
            migration: migration.clone(),
            stop,
            watcher: Some(watcher),
        })
    }

    /// The source followed.
    pub fn source(&self) -> &Arc<dyn PhaseSource> {
        &self.binding.source
    }

    /// The name this instance's changes are recorded under.
    pub fn actor(&self) -> &str {
        &self.binding.actor
    }

    /// The source version the migration's phases are at.
    pub fn version(&self) -> u64 {
        self.binding.version()
    }

    /// Blocks until the migration's phases are at `version` or later;
    /// whether they got there within `timeout`.
    pub fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut at = self.binding.lock_version();
        while *at < version {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            at = self
                .binding
                .applied
                .wait_timeout(at, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Why the watcher's last step failed, if it did (cleared by the next
    /// step that succeeds).
    pub fn last_error(&self) -> Option<String> {
        self.binding
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops following: the watcher ends (within one
    /// [`SyncOptions::wait_timeout`]) and the migration is local again,
    /// with the phases it has.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(watcher) = self.watcher.take() {
            // A watcher that panicked has nothing left to clean up.
            let _ = watcher.join();
        }
        self.migration.detach_source(&self.binding);
    }
}

impl Drop for PhaseSync {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl std::fmt::Debug for PhaseSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseSync")
            .field("source", &self.binding.source.describe())
            .field("actor", &self.binding.actor)
            .field("version", &self.version())
            .finish()
    }
}

/// The watcher: waits for a newer version and applies it, until stopped.
fn watch(
    migration: &Migration,
    binding: &Arc<SourceBinding>,
    stop: &AtomicBool,
    options: &SyncOptions,
) {
    while !stop.load(Ordering::Acquire) {
        let known = binding.version();
        let step = match binding.source.wait_for_change(known, options.wait) {
            Ok(None) => Ok(()),
            Ok(Some(state)) => migration
                .apply_source_state(binding, state)
                .map(drop)
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match step {
            Ok(()) => binding.set_error(None),
            Err(error) => {
                tracing::warn!(
                    source = %binding.source.describe(),
                    %error,
                    "phase source: could not apply the shared phases; retrying"
                );
                binding.set_error(Some(error));
                pause(stop, options.retry);
            }
        }
    }
}

/// Sleeps for `duration` in short steps, ending early when stopped.
fn pause(stop: &AtomicBool, duration: Duration) {
    let deadline = Instant::now() + duration;
    while !stop.load(Ordering::Acquire) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// A source error as the migration reports it.
pub(crate) fn source_error(error: SourceError) -> PhaseError {
    PhaseError::Source {
        reason: error.to_string(),
    }
}

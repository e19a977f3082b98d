//! The state one generated adapter shares across calls: the migration handle,
//! the write strategy, the secondary lanes, the dead letters and the stats.
//!
//! Generated code calls the "hot path" methods of [`DualWriteCore`] on every
//! call; the rest is for the application and for tests.

use std::cell::Cell;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::command::WriteCommand;
use crate::key::RoutingKey;
use crate::lanes::{DeadLetterSink, Job, LaneConfig, LaneContext, SecondaryLanes, XorShift64};
use crate::migration::Migration;
use crate::phase::{ReadRoute, Store, WriteRoute};
use crate::stats::{Role, Stats, StatsSnapshot};

/// What a synchronous secondary write failure does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// The request fails if either store fails (spec: strong consistency).
    Strong,
    /// The failure is logged and kept as a [`DeadLetter`]; the request
    /// succeeds with the primary's result (spec: "log, continue").
    #[default]
    Tolerant,
}

/// How secondary writes are made.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteStrategy {
    /// On the caller's path, right after the primary write.
    Sync(SyncMode),
    /// Off the caller's path, by per-key ordered lanes that retry with backoff.
    AsyncSecondary(LaneConfig),
}

impl Default for WriteStrategy {
    fn default() -> Self {
        WriteStrategy::Sync(SyncMode::default())
    }
}

/// The outcome of one shadow read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// Both stores returned the same answer.
    Matched,
    /// The stores returned different answers.
    Mismatched,
    /// The shadow read itself failed, with this error.
    ShadowFailed(String),
}

/// A secondary write that was given up on, kept so reconciliation can repair
/// the drift it left.
#[derive(Debug, Clone)]
pub struct DeadLetter<C> {
    /// The repository method that made the write.
    pub method: &'static str,
    /// The rendered routing key, if the method has one.
    pub key: Option<String>,
    /// The store the write was meant for.
    pub target: Store,
    /// The write itself, ready to be applied again.
    pub command: C,
    /// The error of the last attempt.
    pub error: String,
    /// Attempts made; 0 if the write could not be handed to a lane.
    pub attempts: u32,
    /// When the write was given up on.
    pub at: SystemTime,
}

/// The shared state of one dual-write adapter over commands of type `C` (the
/// generated `<Trait>Write` enum).
///
/// `Send + Sync` when `C: Send`. Dropping the core while lanes run closes
/// their queues: they finish what is queued in the background. Call
/// [`DualWriteCore::flush`] first to wait for that (e.g. before exiting).
pub struct DualWriteCore<C> {
    migration: Migration,
    stats: Stats,
    strategy: WriteStrategy,
    lanes: Option<SecondaryLanes<C>>,
    dead_letters: DeadLetterSink<C>,
    /// The shadow sample rate, as `f64` bits.
    shadow_sample_rate: AtomicU64,
}

impl<C> DualWriteCore<C> {
    /// A core routing by `migration`, with synchronous tolerant secondary
    /// writes and every eligible read shadowed.
    pub fn new(migration: Migration) -> Self {
        DualWriteCore {
            migration,
            stats: Stats::new(),
            strategy: WriteStrategy::default(),
            lanes: None,
            dead_letters: Arc::default(),
            shadow_sample_rate: AtomicU64::new(1.0_f64.to_bits()),
        }
    }

    /// The migration handle that decides routes.
    pub fn migration(&self) -> &Migration {
        &self.migration
    }

    /// The counters of this adapter.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A snapshot of the counters, with the writes still pending in the
    /// lanes.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut snapshot = self.stats.snapshot();
        if let Some(lanes) = &self.lanes {
            snapshot.secondary_pending += lanes.pending();
        }
        snapshot
    }

    /// The current write strategy.
    pub fn strategy(&self) -> &WriteStrategy {
        &self.strategy
    }

    /// Switches to synchronous secondary writes. If lanes were running, waits
    /// until they have drained, then shuts them down.
    pub fn set_sync_mode(&mut self, mode: SyncMode) {
        self.strategy = WriteStrategy::Sync(mode);
        self.stop_lanes();
    }

    /// The synchronous mode; `None` when the strategy is AsyncSecondary.
    pub fn sync_mode(&self) -> Option<SyncMode> {
        match self.strategy {
            WriteStrategy::Sync(mode) => Some(mode),
            WriteStrategy::AsyncSecondary(_) => None,
        }
    }

    /// Whether secondary writes go through lanes.
    pub fn is_async(&self) -> bool {
        matches!(self.strategy, WriteStrategy::AsyncSecondary(_))
    }

    /// The share of eligible reads that are shadow-read, in `[0, 1]`.
    pub fn shadow_sample_rate(&self) -> f64 {
        f64::from_bits(self.shadow_sample_rate.load(Ordering::Relaxed))
    }

    /// Sets the share of eligible reads that are shadow-read. Clamped to
    /// `[0, 1]`; NaN counts as 0. Takes effect for later calls.
    pub fn set_shadow_sample_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.shadow_sample_rate
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    // ---- hot path, called by generated code ----

    /// The write route for `key`; see [`Migration::write_route`].
    pub fn write_route(&self, key: Option<&dyn RoutingKey>) -> WriteRoute {
        self.migration.write_route(key)
    }

    /// The read route for `key`; see [`Migration::read_route`].
    pub fn read_route(&self, key: Option<&dyn RoutingKey>) -> ReadRoute {
        self.migration.read_route(key)
    }

    /// Counts one write attempt; see [`Stats::record_write`].
    pub fn record_write(&self, store: Store, role: Role, ok: bool) {
        self.stats.record_write(store, role, ok);
    }

    /// A synchronous secondary write failed: logs it (method, key, target,
    /// error) and keeps the command as a [`DeadLetter`] with one attempt, so
    /// reconciliation can repair it.
    ///
    /// Counts the dead letter only; count the failed attempt itself with
    /// [`DualWriteCore::record_write`].
    pub fn secondary_failed(&self, target: Store, error: String, command: C)
    where
        C: WriteCommand,
    {
        let key = command.key().map(RoutingKey::render);
        self.dead_letter(command.method(), key, target, command, error, 1);
    }

    /// Like [`DualWriteCore::secondary_failed`], for a caller that names the
    /// method and the key itself.
    pub fn secondary_failed_keyed(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
        target: Store,
        error: String,
        command: C,
    ) {
        self.dead_letter(
            method,
            key.map(|key| key.render()),
            target,
            command,
            error,
            1,
        );
    }

    /// A synchronous secondary write of a method that the command enum cannot
    /// carry (a generic method) failed: logs it and counts a dead letter
    /// without a replayable command.
    pub fn secondary_failed_untracked(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
        target: Store,
        error: String,
    ) {
        let key = render_key(key);
        tracing::warn!(
            method,
            key = %key,
            target = %target,
            error = %error,
            "secondary write failed; a generic method has no replayable command"
        );
        self.stats.record_dead_letter();
    }

    /// Records a shadow comparison; on mismatch tracing::warn!(method, key, "shadow read mismatch"),
    /// on ShadowFailed warn with the error (counted as compared + mismatched).
    pub fn record_comparison(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
        outcome: Comparison,
    ) {
        match outcome {
            Comparison::Matched => self.stats.record_comparison(true),
            Comparison::Mismatched => {
                self.stats.record_comparison(false);
                let key = render_key(key);
                tracing::warn!(method, key = %key, "shadow read mismatch");
            }
            Comparison::ShadowFailed(error) => {
                self.stats.record_comparison(false);
                let key = render_key(key);
                tracing::warn!(method, key = %key, error = %error, "shadow read failed");
            }
        }
    }

    /// Whether this read, routed with a shadow store, should actually be
    /// shadow-read: true for a sampled share
    /// ([`DualWriteCore::set_shadow_sample_rate`], default every read).
    pub fn should_shadow(&self) -> bool {
        let rate = self.shadow_sample_rate();
        if rate >= 1.0 {
            return true;
        }
        if rate <= 0.0 {
            return false;
        }
        // 53 random bits as a uniform value in [0, 1).
        let unit = (sample_random() >> 11) as f64 / (1_u64 << 53) as f64;
        unit < rate
    }

    /// Blocks until every write handed to the lanes so far is applied or
    /// dead-lettered; writes handed over while it waits are not waited for,
    /// so it returns under a steady stream of writes too. Returns at once
    /// without lanes.
    ///
    /// Inside an async runtime prefer [`DualWriteCore::flush_async`].
    pub fn flush(&self) {
        if let Some(lanes) = &self.lanes {
            lanes.flush();
        }
    }

    /// Like [`DualWriteCore::flush`], without blocking the thread.
    pub async fn flush_async(&self) {
        if let Some(lanes) = &self.lanes {
            lanes.flush_async().await;
        }
    }

    /// A copy of the dead letters kept so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter<C>>
    where
        C: Clone,
    {
        self.lock_dead_letters().clone()
    }

    /// Removes and returns the dead letters kept so far (e.g. to reconcile them).
    pub fn take_dead_letters(&self) -> Vec<DeadLetter<C>> {
        std::mem::take(&mut *self.lock_dead_letters())
    }

    /// The number of dead letters kept.
    pub fn dead_letter_count(&self) -> usize {
        self.lock_dead_letters().len()
    }

    fn lock_dead_letters(&self) -> MutexGuard<'_, Vec<DeadLetter<C>>> {
        // A push is the only mutation made under the lock; a panic cannot
        // leave the vector half-updated.
        self.dead_letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs, counts and keeps a secondary write given up on.
    fn dead_letter(
        &self,
        method: &'static str,
        key: Option<String>,
        target: Store,
        command: C,
        error: String,
        attempts: u32,
    ) {
        tracing::warn!(
            method,
            key = key.as_deref().unwrap_or("-"),
            target = %target,
            error = %error,
            attempts,
            "secondary write failed, kept as a dead letter"
        );
        self.stats.record_dead_letter();
        self.lock_dead_letters().push(DeadLetter {
            method,
            key,
            target,
            command,
            error,
            attempts,
            at: SystemTime::now(),
        });
    }

    /// Drains and shuts down the lanes, if any run.
    fn stop_lanes(&mut self) {
        if let Some(lanes) = self.lanes.take() {
            lanes.flush();
        }
    }
}

impl<C: Send + 'static> DualWriteCore<C> {
    /// Switches to AsyncSecondary and spawns the lanes; `apply` runs on lane threads.
    ///
    /// Lanes already running are drained and shut down first, so the order of
    /// writes per key holds across the switch. Started inside a multi-thread
    /// tokio runtime, [`LaneContext::block_on`] runs on that runtime.
    pub fn start_lanes<F>(&mut self, config: LaneConfig, apply: F)
    where
        F: Fn(&LaneContext, Store, &C) -> Result<(), String> + Send + Sync + 'static,
    {
        self.stop_lanes();
        self.lanes = Some(SecondaryLanes::start(
            config.clone(),
            self.stats.clone(),
            Arc::clone(&self.dead_letters),
            apply,
        ));
        self.strategy = WriteStrategy::AsyncSecondary(config);
    }
}

impl<C> DualWriteCore<C> {
    /// Hands the command to the lane that owns its key (stats pending +1).
    /// Never blocks and does not allocate: the key is rendered only if a log
    /// or a dead letter needs it.
    ///
    /// Without running lanes (a misuse) the command is kept as a dead letter
    /// with the error "no secondary lanes are running" and 0 attempts.
    pub fn submit(&self, target: Store, command: C)
    where
        C: WriteCommand,
    {
        let key_hash = command.key().map(RoutingKey::route_hash);
        self.submit_job(Job {
            method: command.method(),
            key: None,
            render_key: Some(|command: &C| command.key().map(RoutingKey::render)),
            key_hash,
            target,
            command,
        });
    }

    /// Like [`DualWriteCore::submit`], for a caller that names the method and
    /// the key itself.
    pub fn submit_keyed(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
        target: Store,
        command: C,
    ) {
        self.submit_job(Job {
            method,
            key: key.map(|key| key.render()),
            render_key: None,
            key_hash: key.map(|key| key.route_hash()),
            target,
            command,
        });
    }

    fn submit_job(&self, job: Job<C>) {
        let Some(lanes) = &self.lanes else {
            let error = "no secondary lanes are running".to_owned();
            let key = job
                .key
                .or_else(|| job.render_key.and_then(|render| render(&job.command)));
            self.dead_letter(job.method, key, job.target, job.command, error, 0);
            return;
        };
        if let Err(job) = lanes.submit(job) {
            let error = "the secondary lane is not running".to_owned();
            let key = job
                .key
                .or_else(|| job.render_key.and_then(|render| render(&job.command)));
            self.dead_letter(job.method, key, job.target, job.command, error, 0);
        }
    }
}

impl<C> fmt::Debug for DualWriteCore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DualWriteCore")
            .field("migration", &self.migration)
            .field("strategy", &self.strategy)
            .field(
                "lanes",
                &self.lanes.as_ref().map(|lanes| lanes.config().lane_count()),
            )
            .field("shadow_sample_rate", &self.shadow_sample_rate())
            .field("dead_letters", &self.dead_letter_count())
            .field("stats", &self.stats)
            .finish()
    }
}

/// The key for a log line; `-` for keyless calls.
fn render_key(key: Option<&dyn RoutingKey>) -> String {
    key.map_or_else(|| "-".to_owned(), |key| key.render())
}

/// A pseudo-random value from a generator owned by the calling thread, so
/// sampling takes no lock and shares no cache line.
fn sample_random() -> u64 {
    thread_local! {
        static SAMPLER: Cell<Option<XorShift64>> = const { Cell::new(None) };
    }
    SAMPLER.with(|cell| {
        let mut rng = cell.take().unwrap_or_else(|| {
            let mut hasher = DefaultHasher::new();
            std::thread::current().id().hash(&mut hasher);
            XorShift64::seeded(hasher.finish())
        });
        let value = rng.next_u64();
        cell.set(Some(rng));
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::Phase;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn core_is_send_and_sync_when_the_command_is_send() {
        assert_send_sync::<DualWriteCore<String>>();
        // `Cell` is Send but not Sync: the core must not require `C: Sync`.
        assert_send_sync::<DualWriteCore<Cell<u8>>>();
    }

    #[test]
    fn sample_rate_is_clamped() {
        let core: DualWriteCore<()> = DualWriteCore::new(Migration::new(Phase::ShadowRead));
        assert!(core.should_shadow());
        core.set_shadow_sample_rate(0.0);
        assert!(!(0..1_000).any(|_| core.should_shadow()));
        core.set_shadow_sample_rate(f64::NAN);
        assert_eq!(core.shadow_sample_rate(), 0.0);
        core.set_shadow_sample_rate(7.0);
        assert_eq!(core.shadow_sample_rate(), 1.0);
        assert!((0..1_000).all(|_| core.should_shadow()));
        core.set_shadow_sample_rate(-1.0);
        assert_eq!(core.shadow_sample_rate(), 0.0);
    }

    #[test]
    fn partial_sampling_picks_some_but_not_all() {
        let core: DualWriteCore<()> = DualWriteCore::new(Migration::new(Phase::ShadowRead));
        core.set_shadow_sample_rate(0.5);
        let sampled = (0..10_000).filter(|_| core.should_shadow()).count();
        // Loose bounds: a uniform generator lands near 5 000.
        assert!((3_000..7_000).contains(&sampled), "{sampled}");
    }
}

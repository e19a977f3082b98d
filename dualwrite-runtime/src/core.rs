//! The state one generated adapter shares across calls: the migration handle,
//! the write strategy, the secondary lanes, the dead letters and the stats.
//!
//! The write algorithm is in [`crate::write`] and the read algorithm in
//! [`crate::read`]; generated code calls into them on every call. The rest is
//! for the application: strategy, flush, shutdown, dead letters, stats.

use std::cell::Cell;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::cdc::{Cdc, CdcError, CdcFollower, CdcStatus};
use crate::command::WriteCommand;
use crate::dead_letter::{DEFAULT_DEAD_LETTER_CAPACITY, DeadLetter};
use crate::helpers::Helpers;
use crate::key::RoutingKey;
use crate::lanes::{Job, LaneConfig, LaneContext, SecondaryLanes, XorShift64, far_future};
use crate::latency::LatencySnapshot;
use crate::migration::Migration;
use crate::outbox::{Journal, JournalCodec, OutboxConfig, OutboxError, OutboxRelay, OutboxRuntime};
use crate::phase::{ReadRoute, Store, WriteRoute};
use crate::shared::Shared;
use crate::stats::{Stats, StatsSnapshot};
use crate::stripes::KeyStripes;
use crate::trait_info::TraitInfo;

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
    /// Journaled durably on the caller's path (after the primary write, or
    /// in its transaction), then applied off it by the outbox's appliers;
    /// see [`crate::outbox`].
    Outbox(OutboxConfig),
    /// Change data capture: the primary only on the caller's path; a
    /// follower reads the old database's changes into the outbox journal,
    /// whose appliers apply them to the new store; see [`crate::cdc`].
    Cdc(OutboxConfig),
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
    /// The stores returned different answers, which differ at these field
    /// paths (`address.city`, `tags[2]`; found through `serde` when the
    /// answer type is `Serialize` and the runtime's `serde` feature is on).
    /// Only the paths are logged, never the values.
    MismatchedFields(Vec<String>),
    /// The shadow read itself failed, with this error.
    ShadowFailed(String),
}

/// Why a flush or a shutdown did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushError {
    /// The deadline passed with this many secondary writes still pending.
    TimedOut {
        /// Secondary writes handed to the lanes and not finished.
        pending: u64,
    },
    /// A blocking flush was called on a thread that runs a current-thread
    /// tokio runtime: the lanes may need that very thread to make progress
    /// (its timers and I/O), so waiting would deadlock. Use the async flush.
    InsideCurrentThreadRuntime,
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::TimedOut { pending } => write!(
                f,
                "the deadline passed with {pending} secondary write(s) still pending"
            ),
            FlushError::InsideCurrentThreadRuntime => f.write_str(
                "a blocking flush cannot wait on a thread that runs a current-thread tokio runtime: \
                 the lanes may need this thread to make progress; call `flush_async` instead",
            ),
        }
    }
}

impl std::error::Error for FlushError {}

/// What [`DualWriteCore::shutdown`] left.
#[derive(Debug)]
pub struct ShutdownReport<C> {
    /// Whether every secondary write was finished and the lanes exited
    /// before the deadline.
    pub complete: bool,
    /// Secondary writes still held by a lane blocked in a store call at the
    /// deadline: they become dead letters as soon as that call returns
    /// (take them with [`DualWriteCore::take_dead_letters`]).
    pub still_pending: u64,
    /// Every dead letter kept, including the writes the lanes gave up at the
    /// deadline; taken out of the adapter.
    pub dead_letters: Vec<DeadLetter<C>>,
}

/// The shared state of one dual-write adapter over commands of type `C` (the
/// generated `<Trait>Write` enum).
///
/// `Send + Sync` when `C: Send`. Dropping the core while lanes run closes
/// their queues: they finish what is queued in the background, and the drop
/// logs a warning with the count. Call [`DualWriteCore::shutdown`] first to
/// wait for that (e.g. before exiting).
pub struct DualWriteCore<C> {
    migration: Migration,
    shared: Arc<Shared<C>>,
    /// `shared.stripes`, one pointer closer to the hot path.
    stripes: Arc<KeyStripes>,
    strategy: WriteStrategy,
    lanes: Option<SecondaryLanes<C>>,
    /// The shadow sample rate, as `f64` bits.
    shadow_sample_rate: AtomicU64,
    shut_down: AtomicBool,
    secondary_timeout: Option<Duration>,
    blocking: Option<BlockingSecondary<C>>,
    outbox: Option<OutboxRuntime<C>>,
    cdc: Option<CdcFollower>,
}

/// The synchronous strategy's bound on a blocking secondary call; see
/// [`DualWriteCore::set_blocking_secondary_timeout`].
pub(crate) struct BlockingSecondary<C> {
    pub(crate) timeout: Duration,
    /// Makes the job that applies a copy of a command to a store, on a
    /// helper thread.
    pub(crate) job: JobFn<C>,
    pub(crate) helpers: Helpers,
}

/// A secondary write made on a helper thread.
pub(crate) type BlockingJob = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Makes the [`BlockingJob`] of a command for a store: the bounds the job
/// needs (`C: Clone + Send + 'static`) are checked once, where the bound is
/// set, so the write path itself needs none.
pub(crate) type JobFn<C> = Box<dyn Fn(Store, &C) -> BlockingJob + Send + Sync>;

impl<C> DualWriteCore<C> {
    /// A core routing by `migration`, with synchronous tolerant secondary
    /// writes and every eligible read shadowed; its trait is unnamed
    /// ([`TraitInfo::UNNAMED`]: metrics and spans say `-`).
    pub fn new(migration: Migration) -> Self {
        Self::for_trait(migration, TraitInfo::UNNAMED)
    }

    /// Like [`DualWriteCore::new`], for the repository trait `info` (its
    /// name labels metrics and spans). Generated adapters call this.
    pub fn for_trait(migration: Migration, info: TraitInfo) -> Self {
        let shared = Arc::new(Shared::new(DEFAULT_DEAD_LETTER_CAPACITY, info));
        migration.register_fence(&shared.stripes);
        DualWriteCore {
            migration,
            stripes: Arc::clone(&shared.stripes),
            shared,
            strategy: WriteStrategy::default(),
            lanes: None,
            shadow_sample_rate: AtomicU64::new(1.0_f64.to_bits()),
            shut_down: AtomicBool::new(false),
            secondary_timeout: Some(Duration::from_secs(30)),
            blocking: None,
            outbox: None,
            cdc: None,
        }
    }

    /// The migration handle that decides routes.
    pub fn migration(&self) -> &Migration {
        &self.migration
    }

    /// The counters of this adapter.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The repository trait this adapter serves.
    pub fn trait_info(&self) -> TraitInfo {
        self.shared.info
    }

    #[inline]
    pub(crate) fn shared(&self) -> &Shared<C> {
        &self.shared
    }

    #[inline]
    pub(crate) fn stripes(&self) -> &KeyStripes {
        &self.stripes
    }

    #[inline]
    pub(crate) fn lanes(&self) -> Option<&SecondaryLanes<C>> {
        self.lanes.as_ref()
    }

    #[inline]
    pub(crate) fn outbox(&self) -> Option<&OutboxRuntime<C>> {
        self.outbox.as_ref()
    }

    /// Whether a write's secondary copy for `target` is left to the
    /// change-data-capture follower (the CDC strategy carries the old
    /// store's changes to the new one).
    #[inline]
    pub(crate) fn left_to_follower(&self, target: Store) -> bool {
        target == Store::New && self.cdc.is_some()
    }

    /// What the change-data-capture follower has done so far, under the
    /// CDC strategy.
    pub fn cdc_status(&self) -> Option<CdcStatus> {
        self.cdc.as_ref().map(CdcFollower::status)
    }

    /// The adapter's stream in its outbox journal, under the outbox
    /// strategy.
    pub fn outbox_stream(&self) -> Option<&str> {
        self.outbox.as_ref().map(OutboxRuntime::stream)
    }

    /// A snapshot of the counters, with the writes still pending in the
    /// lanes.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut snapshot = self.shared.stats.snapshot();
        match &self.lanes {
            Some(lanes) => snapshot.secondary_pending += lanes.pending(),
            // Synchronous strategy: calls abandoned at their deadline.
            None => snapshot.secondary_pending += self.stripes.total_pending(),
        }
        snapshot
    }

    /// The latency of this adapter's dual-write calls against their primary
    /// call alone (the cutover gate's p99 impact); see [`LatencySnapshot`].
    pub fn latency(&self) -> LatencySnapshot {
        self.shared.latency.snapshot()
    }

    /// Starts the latency histograms afresh (e.g. after a warm-up, or when a
    /// phase moves).
    pub fn reset_latency(&self) {
        self.shared.latency.reset();
    }

    /// A handle that holds this adapter's writes of chosen keys while a
    /// job (a backfill, a repair) reads the primary and writes the
    /// secondary, so live writes and the job never interleave on a key; see
    /// [`KeyGuard`].
    pub fn key_guard(&self) -> KeyGuard {
        KeyGuard {
            stripes: Arc::clone(&self.stripes),
        }
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
        self.stop_outbox();
    }

    /// The synchronous mode; `None` when the strategy is AsyncSecondary,
    /// Outbox or Cdc.
    #[inline]
    pub fn sync_mode(&self) -> Option<SyncMode> {
        match self.strategy {
            WriteStrategy::Sync(mode) => Some(mode),
            WriteStrategy::AsyncSecondary(_) | WriteStrategy::Outbox(_) | WriteStrategy::Cdc(_) => {
                None
            }
        }
    }

    /// Whether secondary writes are made off the caller's path (lanes, the
    /// outbox, or change data capture): the caller hands the write over
    /// with [`WriteTicket::submit`](crate::WriteTicket::submit).
    #[inline]
    pub fn is_async(&self) -> bool {
        matches!(
            self.strategy,
            WriteStrategy::AsyncSecondary(_) | WriteStrategy::Outbox(_) | WriteStrategy::Cdc(_)
        )
    }

    /// The deadline of a secondary call made on the caller's path by an
    /// async method (synchronous strategy); default 30 s. See
    /// [`WriteTicket::run_secondary_async`](crate::WriteTicket::run_secondary_async).
    pub fn secondary_timeout(&self) -> Option<Duration> {
        self.secondary_timeout
    }

    /// Sets [`DualWriteCore::secondary_timeout`]; `None` waits for ever.
    pub fn set_secondary_timeout(&mut self, timeout: Option<Duration>) {
        self.secondary_timeout = timeout;
    }

    /// Bounds the secondary call a *blocking* method makes on the caller's
    /// path in the synchronous strategy (`None`, the default, waits for
    /// ever). With a bound, the call is made through `apply` (the write's
    /// command on the shared store) on a helper thread, and the caller stops
    /// waiting at the deadline: the write is then kept as a dead letter, in
    /// the strong mode the call fails with [`WriteRefused::SecondaryTimedOut`](crate::WriteRefused::SecondaryTimedOut),
    /// and the abandoned call counts as pending until it returns (phase
    /// changes, flushes and shadow comparisons wait for it; later writes of
    /// its key's stripe are dead-lettered, not applied, until then, so they
    /// cannot land before it). The hop to a helper thread costs a few
    /// microseconds a write; see the README.
    pub fn set_blocking_secondary_timeout(
        &mut self,
        timeout: Option<Duration>,
        apply: impl Fn(Store, C) -> Result<(), String> + Send + Sync + 'static,
    ) where
        C: Clone + Send + 'static,
    {
        let apply = Arc::new(apply);
        self.blocking = timeout.map(|timeout| BlockingSecondary {
            timeout,
            job: Box::new(move |target: Store, command: &C| -> BlockingJob {
                let apply = Arc::clone(&apply);
                let command = command.clone();
                Box::new(move || apply(target, command))
            }),
            helpers: Helpers::new("dualwrite-secondary"),
        });
    }

    /// The bound of blocking secondary calls, if set.
    pub fn blocking_secondary_timeout(&self) -> Option<Duration> {
        self.blocking.as_ref().map(|blocking| blocking.timeout)
    }

    #[inline]
    pub(crate) fn blocking(&self) -> Option<&BlockingSecondary<C>> {
        self.blocking.as_ref()
    }

    /// Sets how many dead letters are kept in memory (default 100 000); when
    /// full, the oldest is evicted, logged at error level and counted.
    /// Letters kept so far are dropped: call it when the adapter is built.
    pub fn set_dead_letter_capacity(&mut self, capacity: usize) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.dead_letters =
                crate::dead_letter::DeadLetterSink::new(capacity, shared.stats.clone());
        } else {
            tracing::warn!("the dead-letter capacity can only be set before the lanes start");
        }
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

    /// Whether [`DualWriteCore::shutdown`] has been called.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }

    // ---- hot path, called by generated code ----

    /// The write route for `key`; see [`Migration::write_route`].
    #[inline]
    pub fn write_route(&self, key: Option<&dyn RoutingKey>) -> WriteRoute {
        self.migration.write_route(key)
    }

    /// The read route for `key`; see [`Migration::read_route`].
    pub fn read_route(&self, key: Option<&dyn RoutingKey>) -> ReadRoute {
        self.migration.read_route(key)
    }

    /// Records a shadow comparison. A mismatch is logged with the method and
    /// the key, never the values (they may be personal data); a failed
    /// shadow read with its error. Both count as mismatched.
    pub fn record_comparison(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
        outcome: Comparison,
    ) {
        crate::read::record(&self.shared.stats, method, key, outcome);
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

    /// A look at the key's stripe before a shadow read; pass it to
    /// [`DualWriteCore::shadow_comparable`] after the reads.
    pub fn shadow_begin(&self, key: Option<&dyn RoutingKey>) -> ShadowWindow {
        // A keyless read may see any key: it watches every stripe.
        let stripe = match key {
            Some(key) => KeyStripes::index(Some(key.route_hash())),
            None => KeyStripes::ALL,
        };
        ShadowWindow {
            stripe,
            before: self.shared.stripes.observe_window(stripe),
        }
    }

    /// Whether the two answers of a shadow read can be compared: no write
    /// of the key was in flight or pending in the lanes before the reads,
    /// and none started while they ran. Otherwise the stores cannot agree
    /// yet: the read is counted in `reads_skipped_pending`, not compared.
    pub fn shadow_comparable(&self, window: ShadowWindow) -> bool {
        crate::read::comparable(&self.shared.stats, &self.shared.stripes, window, None)
    }

    // ---- flush, shutdown, dead letters ----

    /// Blocks until every write handed to the lanes before the call is
    /// applied or dead-lettered, or `timeout` passes. Writes handed over
    /// while it waits are not waited for, so it returns under a steady
    /// stream of writes too. Without lanes it waits only for blocking
    /// secondary calls abandoned at their deadline
    /// ([`DualWriteCore::set_blocking_secondary_timeout`]), which may still
    /// write.
    ///
    /// Inside a multi-thread tokio runtime it waits in
    /// `tokio::task::block_in_place`, so the runtime keeps running the
    /// lanes' store futures; inside a current-thread runtime it fails at once
    /// ([`FlushError::InsideCurrentThreadRuntime`]): use
    /// [`DualWriteCore::flush_async`] there.
    ///
    /// A blocking store call abandoned at its attempt timeout
    /// ([`LaneConfig::blocking_attempt_timeout`]) counts until it returns:
    /// it may still write.
    ///
    /// Under the CDC strategy it first has the follower journal every
    /// change the source holds up to now, then waits for the appliers: the
    /// new store then shows every write committed on the old one before the
    /// call. A follower that cannot catch up in time counts as one pending
    /// write.
    pub fn flush(&self, timeout: Duration) -> Result<(), FlushError> {
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(far_future);
        self.catch_up_follower(deadline)?;
        let Some(lanes) = &self.lanes else {
            return self.wait_abandoned(deadline);
        };
        let finished = match Handle::try_current().map(|handle| handle.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| lanes.flush(Some(deadline)))
            }
            Ok(_) => return Err(FlushError::InsideCurrentThreadRuntime),
            Err(_) => lanes.flush(Some(deadline)),
        };
        if finished {
            Ok(())
        } else {
            Err(FlushError::TimedOut {
                pending: lanes.pending(),
            })
        }
    }

    /// Like [`DualWriteCore::flush`], without blocking the thread. The
    /// deadline needs a tokio runtime with timers; elsewhere it waits for the
    /// writes without one.
    pub async fn flush_async(&self, timeout: Duration) -> Result<(), FlushError> {
        let Some(lanes) = &self.lanes else {
            // Abandoned blocking calls of the synchronous strategy (or the
            // outbox's records): polled without blocking the thread.
            let deadline = Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(far_future);
            self.catch_up_follower(deadline)?;
            let timers = Handle::try_current().is_ok();
            loop {
                let pending = self.stripes.total_pending();
                if pending == 0 {
                    return Ok(());
                }
                if Instant::now() >= deadline || !timers {
                    return Err(FlushError::TimedOut { pending });
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let timers = Handle::try_current().is_ok();
        if timers {
            if tokio::time::timeout(timeout, lanes.flush_async())
                .await
                .is_err()
            {
                return Err(FlushError::TimedOut {
                    pending: lanes.pending(),
                });
            }
        } else {
            lanes.flush_async().await;
        }
        Ok(())
    }

    /// Under the CDC strategy, has the follower journal what its source
    /// holds up to now; over a shared journal, waits for the records
    /// pending in it before now (see [`DualWriteCore::flush`]). What a
    /// fence runs too.
    fn catch_up_follower(&self, deadline: Instant) -> Result<(), FlushError> {
        let Some(catch_up) = self.stripes.catch_up_hook() else {
            return Ok(());
        };
        let caught_up = match Handle::try_current().map(|handle| handle.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| catch_up(deadline)),
            _ => catch_up(deadline),
        };
        if caught_up {
            Ok(())
        } else {
            Err(FlushError::TimedOut {
                pending: self.stripes.total_pending().max(1),
            })
        }
    }

    /// Drains the lanes and stops them: new writes are held while every
    /// write in flight hands off and every pending secondary write is
    /// applied or dead-lettered, then the lane threads are joined. Writes
    /// made afterwards still reach the primary, and their secondary writes
    /// become dead letters ("the adapter is shut down").
    ///
    /// At the deadline, the lanes dead-letter what they still hold instead
    /// of applying it; a lane blocked in a store call does so when the call
    /// returns ([`ShutdownReport::still_pending`]). Returns every dead letter
    /// kept, taken out of the adapter. Without lanes it waits (until the
    /// deadline) for blocking secondary calls abandoned at their deadline,
    /// then takes the dead letters.
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport<C> {
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(far_future);
        let mut complete = true;
        let mut still_pending = 0;
        if let Some(outbox) = &self.outbox {
            // Drained within the deadline if it can be; what is left stays
            // pending in the journal for the next adapter over it.
            // Under CDC the fence first has the follower catch up.
            let drained = self.shared.stripes.fence(deadline).map(drop).is_ok();
            self.shut_down.store(true, Ordering::SeqCst);
            if let Some(cdc) = &self.cdc {
                // Changes not journaled stay in the source for the next
                // follower.
                complete &= cdc.stop(deadline);
                self.stripes.set_following(false);
                self.shared.cdc.store(None);
            }
            complete = outbox.stop(deadline) && drained && complete;
            still_pending = self.stripes.total_pending();
            if still_pending > 0 {
                complete = false;
                tracing::warn!(
                    still_pending,
                    stream = outbox.stream(),
                    "shutdown deadline passed with outbox records pending: they stay in the journal and are applied by the next adapter over it"
                );
            }
        } else if let Some(lanes) = &self.lanes {
            match self.shared.stripes.fence(deadline) {
                Ok(hold) => {
                    self.shut_down.store(true, Ordering::SeqCst);
                    drop(hold);
                    complete = lanes.close_and_join(deadline);
                }
                Err(_) => {
                    self.shut_down.store(true, Ordering::SeqCst);
                    complete = false;
                    lanes.abort();
                    // Give the lanes a moment to dead-letter what they hold.
                    let grace = Instant::now() + Duration::from_millis(100);
                    lanes.flush(Some(grace));
                }
            }
            still_pending = lanes.pending();
            if still_pending > 0 {
                complete = false;
                tracing::error!(
                    still_pending,
                    "shutdown deadline passed with secondary writes held by a lane blocked in a store call; they become dead letters when it returns"
                );
            }
        } else {
            self.shut_down.store(true, Ordering::SeqCst);
            if let Err(FlushError::TimedOut { pending }) = self.wait_abandoned(deadline) {
                complete = false;
                still_pending = pending;
            }
        }
        ShutdownReport {
            complete,
            still_pending,
            dead_letters: self.take_dead_letters(),
        }
    }

    /// A copy of the dead letters kept so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter<C>>
    where
        C: Clone,
    {
        self.shared.dead_letters.snapshot()
    }

    /// Removes and returns the dead letters kept so far (e.g. to reconcile them).
    pub fn take_dead_letters(&self) -> Vec<DeadLetter<C>> {
        self.shared.dead_letters.take()
    }

    /// The number of dead letters kept.
    pub fn dead_letter_count(&self) -> usize {
        self.shared.dead_letters.len()
    }

    /// Records a secondary write that failed on the caller's path of code
    /// that makes its writes itself: logs it and keeps the command as a
    /// [`DeadLetter`] with one attempt. Generated adapters record theirs
    /// through their [`WriteTicket`](crate::WriteTicket).
    pub fn secondary_failed_keyed(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
        target: Store,
        error: String,
        command: C,
    ) {
        let key = key.map(RoutingKey::render);
        self.dead_letter_with(method, key, command, target, error, 1);
    }

    /// Keeps a write given up on.
    pub(crate) fn dead_letter_with(
        &self,
        method: &'static str,
        key: Option<String>,
        command: C,
        target: Store,
        error: String,
        attempts: u32,
    ) {
        self.shared.dead_letters.push(DeadLetter::now(
            method, key, target, command, error, attempts,
        ));
    }

    /// A write that the command enum cannot carry (a generic method) was
    /// given up on: logged and counted, with no replayable command.
    pub(crate) fn dead_letter_untracked(
        &self,
        method: &'static str,
        key: Option<String>,
        target: Store,
        error: String,
    ) {
        tracing::warn!(
            method,
            key = key.as_deref().unwrap_or("-"),
            target = %target,
            error = %error,
            "secondary write failed; a generic method has no replayable command"
        );
        self.shared.stats.record_dead_letter();
        self.shared
            .stats
            .record_method(method, crate::by_method::MethodEvent::DeadLetter(target));
    }

    /// Waits until no blocking secondary call abandoned at its deadline
    /// (synchronous strategy) is outstanding, or `deadline` passes.
    fn wait_abandoned(&self, deadline: Instant) -> Result<(), FlushError> {
        let mut nap = Duration::from_micros(50);
        loop {
            let pending = self.stripes.total_pending();
            if pending == 0 {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FlushError::TimedOut { pending });
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(5));
        }
    }

    /// Drains and shuts down the lanes, if any run.
    fn stop_lanes(&mut self) {
        if let Some(lanes) = self.lanes.take() {
            lanes.flush(None);
            self.shared.lanes.store(None);
        }
    }

    /// Waits until the outbox has applied (or dead-lettered) every pending
    /// record, then stops its threads, if it runs: a strategy switch keeps
    /// the order of writes per key.
    fn stop_outbox(&mut self) {
        self.stripes.set_catch_up(None);
        self.stripes.set_following(false);
        self.shared.cdc.store(None);
        if let Some(cdc) = self.cdc.take() {
            // What the follower has not journaled stays in the source.
            cdc.stop(far_future());
        }
        if let Some(outbox) = self.outbox.take() {
            let _ = self.wait_abandoned(far_future());
            outbox.stop(far_future());
        }
    }
}

/// Holds the writes of chosen keys of one adapter (their stripes) while a
/// job reads one store and writes the other: a live write of those keys
/// waits, so it lands either before the job's read (and the job copies its
/// value) or after the job's write (and overwrites it). `Clone + Send`, for
/// a job's own thread. Made by [`DualWriteCore::key_guard`].
#[derive(Clone)]
pub struct KeyGuard {
    stripes: Arc<KeyStripes>,
}

impl KeyGuard {
    /// Blocks until no write of these keys is in flight and holds new ones
    /// until the returned hold is dropped. Keys are taken in a fixed order,
    /// so two jobs cannot deadlock; keep the hold short (one batch).
    pub fn hold(&self, keys: &[&dyn RoutingKey]) -> KeysHold<'_> {
        KeysHold {
            _hold: self.stripes.lock_many(&Self::indices(keys)),
        }
    }

    /// Like [`KeyGuard::hold`], then waits, up to `timeout`, until no
    /// secondary write of these keys is pending either (queued in a lane,
    /// or a blocking call abandoned at its deadline): with `true`, both
    /// stores show every acknowledged write of the keys, so a comparison
    /// made under the hold sees no difference the lanes are about to close.
    /// `false`: the deadline passed with writes still pending (the
    /// secondary is behind); the keys are held all the same.
    ///
    /// The pending count is per stripe, so writes of other keys sharing a
    /// stripe are waited for too; new writes of those keys wait meanwhile.
    pub fn hold_drained(
        &self,
        keys: &[&dyn RoutingKey],
        timeout: Duration,
    ) -> (KeysHold<'_>, bool) {
        let indices = Self::indices(keys);
        let hold = KeysHold {
            _hold: self.stripes.lock_many(&indices),
        };
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(20);
        loop {
            if indices.iter().all(|&i| self.stripes.pending_of(i) == 0) {
                return (hold, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (hold, false);
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }

    fn indices(keys: &[&dyn RoutingKey]) -> Vec<usize> {
        let mut indices: Vec<usize> = keys
            .iter()
            .map(|key| KeyStripes::index(Some(key.route_hash())))
            .collect();
        indices.sort_unstable();
        indices.dedup();
        indices
    }

    /// Whether any secondary write of `key` is pending (in a lane, or a
    /// blocking call abandoned at its deadline).
    pub fn pending(&self, key: &dyn RoutingKey) -> bool {
        self.stripes
            .pending_of(KeyStripes::index(Some(key.route_hash())))
            > 0
    }
}

impl fmt::Debug for KeyGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyGuard").finish_non_exhaustive()
    }
}

/// Keys held by [`KeyGuard::hold`]; their writes resume when it is dropped.
#[must_use = "the keys are held only while this lives"]
pub struct KeysHold<'a> {
    _hold: crate::stripes::ManyHold<'a>,
}

impl fmt::Debug for KeysHold<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeysHold").finish_non_exhaustive()
    }
}

/// What a shadow read saw of its key's stripe before the reads; see
/// [`DualWriteCore::shadow_begin`].
#[derive(Debug, Clone, Copy)]
pub struct ShadowWindow {
    pub(crate) stripe: usize,
    pub(crate) before: crate::stripes::Observation,
}

impl<C: Send + 'static> DualWriteCore<C> {
    /// A publisher of this adapter's counters to the `metrics` facade
    /// (feature `metrics`): install the recorder first, then publish now and
    /// then ([`MetricsPublisher::publish`](crate::MetricsPublisher::publish))
    /// or on a thread ([`MetricsPublisher::spawn`](crate::MetricsPublisher::spawn)).
    /// It reads the counters the adapter keeps anyway, so calls pay
    /// nothing for it; the metric names are listed in [`crate::publisher`].
    #[cfg(feature = "metrics")]
    pub fn metrics_publisher(&self) -> crate::MetricsPublisher {
        let source: Arc<dyn crate::shared::Source> = self.shared.clone();
        crate::MetricsPublisher::new(source, self.migration.clone())
    }

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
        self.stop_outbox();
        self.lanes = Some(SecondaryLanes::start(
            config.clone(),
            Arc::clone(&self.shared),
            apply,
        ));
        self.strategy = WriteStrategy::AsyncSecondary(config);
    }

    /// Switches to the outbox strategy over `journal` (see
    /// [`crate::outbox`]): counts the pending records of the adapter's
    /// stream (from an earlier run) and starts the appliers, which run
    /// `apply` for each record on their threads (with the record's
    /// [`WriteContext`](crate::outbox::WriteContext) current). Lanes or an
    /// outbox already running are drained and stopped first. Fails, with
    /// the strategy unchanged, when the journal cannot be read.
    pub fn start_outbox<F>(
        &mut self,
        journal: std::sync::Arc<dyn Journal>,
        config: OutboxConfig,
        codec: JournalCodec<C>,
        apply: F,
    ) -> Result<(), OutboxError>
    where
        F: Fn(&LaneContext, Store, &C) -> Result<(), String> + Send + Sync + 'static,
    {
        self.stop_lanes();
        self.stop_outbox();
        let runtime =
            OutboxRuntime::start(journal, config, codec, Arc::clone(&self.shared), apply)?;
        self.stripes.set_catch_up(runtime.barrier_hook());
        self.strategy = WriteStrategy::Outbox(runtime.config().clone());
        self.outbox = Some(runtime);
        Ok(())
    }

    /// Switches to change data capture (see [`crate::cdc`]): starts the
    /// outbox's appliers over `journal` (as [`DualWriteCore::start_outbox`],
    /// `apply` runs each record), then the follower, which opens the
    /// source, reads its changes, maps them with the [`Cdc`]'s function
    /// and journals them. From then on a write reaches the primary only
    /// when the follower carries its copy (old store primary, new store
    /// secondary); a copy for the old store (the new store is primary) is
    /// journaled as under the outbox strategy. Phase changes and flushes
    /// have the follower catch up first. Fails, with the strategy
    /// unchanged, when the journal cannot be read or the source cannot be
    /// opened (a missing slot, `wal_level` not `logical`, another
    /// follower reading it while the journal is not shared). Over a shared
    /// journal, a source another instance's follower reads makes this
    /// adapter's follower a standby (see [`crate::cdc`]).
    pub fn start_cdc<F>(
        &mut self,
        journal: std::sync::Arc<dyn Journal>,
        config: OutboxConfig,
        codec: JournalCodec<C>,
        cdc: Cdc<C>,
        apply: F,
    ) -> Result<(), CdcError>
    where
        C: WriteCommand,
        F: Fn(&LaneContext, Store, &C) -> Result<(), String> + Send + Sync + 'static,
    {
        // The source first: a missing slot leaves the strategy as it was.
        let follower = CdcFollower::open(
            cdc,
            self.migration.clone(),
            codec.encode,
            journal.is_shared(),
        )?;
        self.stop_lanes();
        self.stop_outbox();
        let runtime =
            OutboxRuntime::start(journal, config, codec, Arc::clone(&self.shared), apply)?;
        follower.run(runtime.shared());
        // The follower journals what the source holds, then the journal
        // waits for what was pending before.
        let follower_hook = follower.catch_up_hook();
        let catch_up: crate::stripes::CatchUp = match runtime.barrier_hook() {
            Some(barrier) => Arc::new(move |deadline| follower_hook(deadline) && barrier(deadline)),
            None => follower_hook,
        };
        self.stripes.set_catch_up(Some(catch_up));
        self.stripes.set_following(true);
        self.shared.cdc.store(Some(follower.status_handle()));
        self.strategy = WriteStrategy::Cdc(runtime.config().clone());
        self.outbox = Some(runtime);
        self.cdc = Some(follower);
        Ok(())
    }

    /// Like [`DualWriteCore::start_outbox`], with the journal relayed to a
    /// message broker: `relay`'s threads publish the journal's records and
    /// consume them, running `apply` for each as the appliers would (see
    /// `outbox::nats`, feature `outbox-nats`). A flush or a phase change
    /// waits until the consumers have applied what was journaled.
    pub fn start_outbox_relay<F>(
        &mut self,
        journal: std::sync::Arc<dyn Journal>,
        config: OutboxConfig,
        codec: JournalCodec<C>,
        relay: Box<dyn OutboxRelay>,
        apply: F,
    ) -> Result<(), OutboxError>
    where
        F: Fn(&LaneContext, Store, &C) -> Result<(), String> + Send + Sync + 'static,
    {
        self.stop_lanes();
        self.stop_outbox();
        let runtime = OutboxRuntime::start_with(
            journal,
            config,
            codec,
            Arc::clone(&self.shared),
            apply,
            Some(relay),
        )?;
        self.stripes.set_catch_up(runtime.barrier_hook());
        self.strategy = WriteStrategy::Outbox(runtime.config().clone());
        self.outbox = Some(runtime);
        Ok(())
    }
}

impl<C> DualWriteCore<C> {
    /// Hands the command to the lane that owns its key (or, under the
    /// outbox strategy, journals it), holding the key's stripe for the
    /// hand-off (stats pending +1). For code that makes the
    /// primary write itself; generated adapters go through
    /// [`DualWriteCore::begin_write`], which also orders the primary write.
    ///
    /// Without running lanes (a misuse) the command is kept as a dead letter
    /// with the error "no secondary lanes are running" and 0 attempts.
    pub fn submit(&self, target: Store, command: C)
    where
        C: WriteCommand,
    {
        let key_hash = command.key_hash();
        self.submit_job(Job {
            method: command.method(),
            key: None,
            render_key: Some(|command: &C| command.key_text()),
            key_hash,
            stripe: KeyStripes::index(key_hash),
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
        let key_hash = key.map(|key| key.route_hash());
        self.submit_job(Job {
            method,
            key: key.map(|key| key.render()),
            render_key: None,
            key_hash,
            stripe: KeyStripes::index(key_hash),
            target,
            command,
        });
    }

    fn submit_job(&self, job: Job<C>) {
        let _stripe = self.shared.stripes.lock(job.stripe);
        if self.left_to_follower(job.target) {
            self.shared.stripes.left_to_follower(job.stripe);
            return;
        }
        if let Some(outbox) = &self.outbox {
            let (key, render) = (job.key, job.render_key);
            return outbox.submit(
                job.stripe,
                job.key_hash,
                job.method,
                job.target,
                job.command,
                |command| key.or_else(|| render.and_then(|render| render(command))),
            );
        }
        let lane = self.lanes.as_ref().map(|lanes| lanes.lane_of(job.key_hash));
        self.hand_off(job, lane, None);
    }

    /// Queues a secondary write on `lane`, with its key's stripe held by the
    /// caller; keeps it as a dead letter (0 attempts) instead when `refusal`
    /// says why not, the adapter is shut down, or no lane runs.
    pub(crate) fn hand_off(&self, job: Job<C>, lane: Option<usize>, refusal: Option<&'static str>) {
        let refusal = refusal.or_else(|| self.is_shut_down().then_some("the adapter is shut down"));
        let error = match (&self.lanes, lane, refusal) {
            (Some(lanes), Some(lane), None) => match lanes.submit(lane, job) {
                Ok(()) => return,
                Err(job) => return self.refuse(job, "the secondary lane is not running"),
            },
            (_, _, refusal) => refusal.unwrap_or("no secondary lanes are running"),
        };
        self.refuse(job, error);
    }

    fn refuse(&self, job: Job<C>, error: &str) {
        let key = job
            .key
            .or_else(|| job.render_key.and_then(|render| render(&job.command)));
        self.dead_letter_with(
            job.method,
            key,
            job.command,
            job.target,
            error.to_owned(),
            0,
        );
    }
}

impl<C> Drop for DualWriteCore<C> {
    fn drop(&mut self) {
        let pending = self.lanes.as_ref().map_or(0, SecondaryLanes::pending);
        if pending > 0 {
            tracing::warn!(
                pending,
                "dual-write adapter dropped with secondary writes pending and no shutdown: the lanes finish them in the background, and any left when the process exits are lost; call `shutdown(deadline)` before exiting"
            );
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
            .field("outbox", &self.outbox_stream())
            .field("cdc", &self.cdc.as_ref().map(CdcFollower::source))
            .field("shadow_sample_rate", &self.shadow_sample_rate())
            .field("dead_letters", &self.dead_letter_count())
            .field("stats", &self.shared.stats)
            .finish()
    }
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

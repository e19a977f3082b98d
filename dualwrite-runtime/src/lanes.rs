//! Secondary lanes: the async-secondary write strategy.
//!
//! The secondary write runs off the caller's path, on one of a fixed set of
//! OS threads ("lanes"). A key always maps to the same lane and each lane
//! applies its jobs strictly in FIFO order, retrying a failing job before any
//! later one, so writes to one key reach the secondary in the order the
//! primary saw them (architecture invariant 3). A job that keeps failing
//! becomes a [`DeadLetter`] and the lane moves on, so every submitted job ends
//! applied or dead-lettered (invariant 2).
//!
//! Each lane's queue is a bounded ring allocated once ([`crate::ring`]), so a
//! hand-off allocates nothing and does not wait for the lane's core; writes
//! that find the ring full wait in an overflow queue behind it, in order, so
//! the caller never blocks.

use std::cell::{Cell, OnceCell};
use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};
use tokio::sync::Notify;

use crate::core::DeadLetter;
use crate::phase::Store;
use crate::ring::{self, PopError, PushError, RingReceiver, RingSender};
use crate::stats::{Role, Stats};

/// The longest a parked lane sleeps before it looks at its queue again: the
/// most a write handed over just as the lane parks can wait (see
/// [`crate::ring`]).
const PARK_RECHECK: Duration = Duration::from_millis(100);

/// The largest ring a lane allocates (`LaneConfig::queue_capacity` is
/// clamped to it); writes beyond it wait in the overflow.
const MAX_RING: usize = 1 << 16;

/// The first sleep of an idle lane between two looks at its queue.
const IDLE_NAP_MIN: Duration = Duration::from_micros(50);

/// How the secondary lanes run and retry.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneConfig {
    /// Number of lane threads; default 4, min 1 (0 is treated as 1).
    pub lanes: usize,
    /// Attempts per write, including the first; default 5 (0 is treated as 1).
    pub max_attempts: u32,
    /// Delay before the first retry; default 10 ms. Doubles on each retry.
    pub initial_backoff: Duration,
    /// Upper bound of the retry delay; default 1 s.
    pub max_backoff: Duration,
    /// Time limit of one attempt run through [`LaneContext::block_on`];
    /// default none.
    pub attempt_timeout: Option<Duration>,
    /// How long an idle lane keeps polling its queue before it sleeps;
    /// default 200 µs. While a lane polls, handing it a write costs the
    /// caller no thread wake-up (a system call of several microseconds),
    /// which keeps the caller's tail latency flat under a steady stream of
    /// writes. Zero makes idle lanes sleep at once (least CPU).
    pub idle_poll: Duration,
    /// The longest nap of an idle lane between two looks at its queue;
    /// default 1 ms. Napping lanes are never woken by the caller (that
    /// would cost it a system call), so this bounds how long a write can
    /// wait before a napping lane picks it up.
    pub idle_sleep: Duration,
    /// How long a lane naps before it parks; default 20 ms. A parked lane
    /// looks at its queue only every 100 ms until the next write to it
    /// wakes it (the one caller that finds it parked pays that system call;
    /// a write handed over at the very moment the lane parks may wait for
    /// that next look instead). Without parking, idle lanes would wake up
    /// every `idle_sleep` for as long as the service runs. `None` never
    /// parks.
    pub idle_park: Option<Duration>,
    /// Writes each lane's queue holds in memory allocated once, at start;
    /// default 1024, rounded up to a power of two, at least 1 and at most
    /// 65 536 (larger values are treated as 65 536). Handing over a write then
    /// allocates nothing. When a lane falls this far behind, further writes
    /// wait in an overflow queue behind them, in order: the caller never
    /// blocks and no write is dropped.
    pub queue_capacity: usize,
}

impl Default for LaneConfig {
    fn default() -> Self {
        LaneConfig {
            lanes: 4,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            attempt_timeout: None,
            idle_poll: Duration::from_micros(200),
            idle_sleep: Duration::from_millis(1),
            idle_park: Some(Duration::from_millis(20)),
            queue_capacity: 1024,
        }
    }
}

impl LaneConfig {
    /// The default configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`LaneConfig::lanes`].
    #[must_use]
    pub fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes;
        self
    }

    /// Sets [`LaneConfig::max_attempts`].
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets [`LaneConfig::initial_backoff`].
    #[must_use]
    pub fn with_initial_backoff(mut self, initial_backoff: Duration) -> Self {
        self.initial_backoff = initial_backoff;
        self
    }

    /// Sets [`LaneConfig::max_backoff`].
    #[must_use]
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets [`LaneConfig::attempt_timeout`].
    #[must_use]
    pub fn with_attempt_timeout(mut self, attempt_timeout: Option<Duration>) -> Self {
        self.attempt_timeout = attempt_timeout;
        self
    }

    /// Sets [`LaneConfig::idle_poll`].
    #[must_use]
    pub fn with_idle_poll(mut self, idle_poll: Duration) -> Self {
        self.idle_poll = idle_poll;
        self
    }

    /// Sets [`LaneConfig::idle_sleep`].
    #[must_use]
    pub fn with_idle_sleep(mut self, idle_sleep: Duration) -> Self {
        self.idle_sleep = idle_sleep;
        self
    }

    /// Sets [`LaneConfig::idle_park`].
    #[must_use]
    pub fn with_idle_park(mut self, idle_park: Option<Duration>) -> Self {
        self.idle_park = idle_park;
        self
    }

    /// Sets [`LaneConfig::queue_capacity`].
    #[must_use]
    pub fn with_queue_capacity(mut self, queue_capacity: usize) -> Self {
        self.queue_capacity = queue_capacity;
        self
    }

    /// The longest nap of an idle lane (at least the first one).
    pub(crate) fn idle_nap_max(&self) -> Duration {
        self.idle_sleep.max(IDLE_NAP_MIN)
    }

    /// The number of lanes actually run.
    pub(crate) fn lane_count(&self) -> usize {
        self.lanes.max(1)
    }

    /// The number of attempts actually made per write.
    pub(crate) fn attempt_limit(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The delay after failed attempt number `attempt` (1-based), before
    /// jitter: `initial_backoff * 2^(attempt - 1)`, capped at `max_backoff`.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1_u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// "Equal jitter": a delay uniformly drawn from `[delay / 2, delay]`, so
/// retries of many lanes spread out but never retry immediately.
fn equal_jitter(delay: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    let half = nanos / 2;
    Duration::from_nanos(half + random % (nanos - half + 1))
}

/// A xorshift64 generator: enough for jitter and sampling, no dependency.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XorShift64(u64);

impl XorShift64 {
    /// A generator seeded from the clock and `salt`.
    pub(crate) fn seeded(salt: u64) -> Self {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos().into());
        // The state must never be zero.
        XorShift64((clock ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    /// The next pseudo-random value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// What an `apply` function gets besides the command: where it runs, which
/// attempt this is, and a way to run async store code.
///
/// One context lives on each lane thread and is reused for all its jobs.
pub struct LaneContext {
    lane: usize,
    attempt: Cell<u32>,
    attempt_timeout: Option<Duration>,
    /// The multi-thread runtime the lanes were started in, if any.
    handle: Option<Handle>,
    /// Otherwise a current-thread runtime of this lane, made on first use.
    local: OnceCell<Runtime>,
}

impl LaneContext {
    fn new(lane: usize, attempt_timeout: Option<Duration>, handle: Option<Handle>) -> Self {
        LaneContext {
            lane,
            attempt: Cell::new(0),
            attempt_timeout,
            handle,
            local: OnceCell::new(),
        }
    }

    /// The index of the lane running this job, `0..lanes`.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// The attempt being made at this job, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt.get()
    }

    /// Runs a future to completion on the lane thread. If the lanes were started inside a
    /// multi-thread tokio runtime, use that runtime's Handle::block_on (so the store's I/O and
    /// timers work); otherwise a current-thread runtime owned by this lane thread, created lazily
    /// with enable_time (and enable_io only if you add tokio's "net" feature; not needed).
    /// Applies `attempt_timeout` if set (Err("secondary write timed out after ..")).
    pub fn block_on<F: Future<Output = Result<(), String>>>(&self, fut: F) -> Result<(), String> {
        let timeout = self.attempt_timeout;
        let attempt = async move {
            match timeout {
                None => fut.await,
                Some(limit) => tokio::time::timeout(limit, fut)
                    .await
                    .unwrap_or_else(|_| Err(format!("secondary write timed out after {limit:?}"))),
            }
        };
        match &self.handle {
            Some(handle) => handle.block_on(attempt),
            None => self.local_runtime()?.block_on(attempt),
        }
    }

    fn local_runtime(&self) -> Result<&Runtime, String> {
        if let Some(runtime) = self.local.get() {
            return Ok(runtime);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|error| format!("cannot start a lane runtime: {error}"))?;
        Ok(self.local.get_or_init(|| runtime))
    }
}

impl fmt::Debug for LaneContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaneContext")
            .field("lane", &self.lane)
            .field("attempt", &self.attempt.get())
            .field("attempt_timeout", &self.attempt_timeout)
            .field("uses_caller_runtime", &self.handle.is_some())
            .finish()
    }
}

/// One secondary write waiting in a lane.
pub(crate) struct Job<C> {
    pub(crate) method: &'static str,
    pub(crate) key: Option<String>,
    /// Renders the key from the command, only when a log or a dead letter
    /// needs it (keeps the hand-off free of allocation).
    pub(crate) render_key: Option<fn(&C) -> Option<String>>,
    /// `None` for keyless jobs, which share lane 0.
    pub(crate) key_hash: Option<u64>,
    pub(crate) target: Store,
    pub(crate) command: C,
}

/// Where lanes put the writes they give up on.
pub(crate) type DeadLetterSink<C> = Arc<Mutex<Vec<DeadLetter<C>>>>;

/// Counts jobs submitted and finished, per lane, and wakes flushers.
///
/// Callers only touch `submitted` and lanes only touch `finished`, each on
/// its own cache line, so a hand-off does not pull a line the lane has just
/// written into the caller's core. A lane reads `waiters` (written only by
/// flushers) to learn whether anyone needs a wake-up.
///
/// Counting per lane lets a flush wait for exactly the jobs submitted before
/// it: a lane finishes its jobs in the order they were queued, so once its
/// `finished` reaches the `submitted` a flush read at its start, every job
/// queued on that lane before the flush is done, however many came after.
struct Pending {
    lanes: Box<[LaneCounts]>,
    waiters: CacheLine<AtomicU64>,
    lock: Mutex<()>,
    idle: Condvar,
    idle_async: Notify,
}

#[derive(Default)]
struct LaneCounts {
    submitted: CacheLine<AtomicU64>,
    finished: CacheLine<AtomicU64>,
}

/// A value alone on a cache line.
#[derive(Default)]
#[repr(align(128))]
struct CacheLine<T>(T);

impl Pending {
    fn new(lanes: usize) -> Self {
        Pending {
            lanes: (0..lanes).map(|_| LaneCounts::default()).collect(),
            waiters: CacheLine::default(),
            lock: Mutex::new(()),
            idle: Condvar::new(),
            idle_async: Notify::new(),
        }
    }

    fn start(&self, lane: usize) {
        self.lanes[lane].submitted.0.fetch_add(1, Ordering::SeqCst);
    }

    fn finish(&self, lane: usize) {
        self.lanes[lane].finished.0.fetch_add(1, Ordering::SeqCst);
        // Paired with the SeqCst increment of `waiters` in `wait`: either
        // this load sees the flusher, or the flusher's load of `finished`
        // sees this job.
        if self.waiters.0.load(Ordering::SeqCst) != 0 {
            // Taking the lock orders this wake-up after a flusher that saw
            // an unfinished job has started waiting, so it cannot be missed.
            drop(self.lock.lock().unwrap_or_else(PoisonError::into_inner));
            self.idle.notify_all();
            self.idle_async.notify_waiters();
        }
    }

    /// Jobs submitted and not finished. For each lane `finished` is read
    /// first: it never passes `submitted`, so no lane counts below zero.
    fn count(&self) -> u64 {
        self.lanes
            .iter()
            .map(|lane| {
                let finished = lane.finished.0.load(Ordering::SeqCst);
                lane.submitted
                    .0
                    .load(Ordering::SeqCst)
                    .saturating_sub(finished)
            })
            .sum()
    }

    /// Each lane's `submitted` now: what a flush starting now waits for.
    fn tickets(&self) -> Vec<u64> {
        self.lanes
            .iter()
            .map(|lane| lane.submitted.0.load(Ordering::SeqCst))
            .collect()
    }

    /// Whether every lane has finished the jobs of `tickets`.
    fn reached(&self, tickets: &[u64]) -> bool {
        self.lanes
            .iter()
            .zip(tickets)
            .all(|(lane, &ticket)| lane.finished.0.load(Ordering::SeqCst) >= ticket)
    }

    fn wait(&self) {
        let _waiter = Waiter::register(self);
        let tickets = self.tickets();
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !self.reached(&tickets) {
            guard = self
                .idle
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    async fn wait_async(&self) {
        // Dropped with the future too, so a cancelled flush deregisters.
        let _waiter = Waiter::register(self);
        let tickets = self.tickets();
        loop {
            // Register interest before checking, so a `notify_waiters` between
            // the check and the await still wakes this future.
            let mut notified = pin!(self.idle_async.notified());
            notified.as_mut().enable();
            if self.reached(&tickets) {
                return;
            }
            notified.await;
        }
    }
}

/// A flusher counted in `Pending::waiters` while it lives.
struct Waiter<'a>(&'a Pending);

impl<'a> Waiter<'a> {
    fn register(pending: &'a Pending) -> Self {
        pending.waiters.0.fetch_add(1, Ordering::SeqCst);
        Waiter(pending)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiters.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Calls `Pending::finish` when dropped, even if processing a job unwinds,
/// so a flush can never wait forever.
struct FinishGuard<'a> {
    pending: &'a Pending,
    lane: usize,
}

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        self.pending.finish(self.lane);
    }
}

/// Writes that did not fit in a lane's ring, in order.
struct Overflow<C> {
    /// Set while `jobs` may hold writes: senders then queue behind them.
    /// Changed only with `jobs` locked.
    active: AtomicBool,
    jobs: Mutex<VecDeque<Job<C>>>,
}

impl<C> Overflow<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job<C>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side of one lane's queue: a bounded ring allocated once,
/// then the overflow.
struct LaneSender<C> {
    ring: RingSender<Job<C>>,
    overflow: Arc<Overflow<C>>,
}

/// The lane's side of its queue.
struct LaneReceiver<C> {
    ring: RingReceiver<Job<C>>,
    overflow: Arc<Overflow<C>>,
}

/// What a look at a lane's queue found.
enum Take<C> {
    Job(Job<C>),
    Empty,
    /// Every sender is gone and nothing is left.
    Closed,
}

fn lane_queue<C>(capacity: usize) -> (LaneSender<C>, LaneReceiver<C>) {
    let (sender, receiver) = ring::ring(capacity.min(MAX_RING), PARK_RECHECK);
    let overflow = Arc::new(Overflow {
        active: AtomicBool::new(false),
        jobs: Mutex::new(VecDeque::new()),
    });
    (
        LaneSender {
            ring: sender,
            overflow: Arc::clone(&overflow),
        },
        LaneReceiver {
            ring: receiver,
            overflow,
        },
    )
}

impl<C> LaneSender<C> {
    /// Queues `job` without blocking; gives it back if the lane is gone.
    fn push(&self, mut job: Job<C>) -> Result<(), Job<C>> {
        let mut ring_full = false;
        loop {
            if !ring_full && !self.overflow.active.load(Ordering::Acquire) {
                match self.ring.try_push(job) {
                    Ok(()) => return Ok(()),
                    Err(PushError::Closed(job)) => return Err(job),
                    Err(PushError::Full(returned)) => {
                        job = returned;
                        ring_full = true;
                    }
                }
            }
            let mut jobs = self.overflow.lock();
            if self.ring.is_closed() {
                // The lane is gone: nothing would take the job from here.
                return Err(job);
            }
            if ring_full || self.overflow.active.load(Ordering::Relaxed) {
                // Behind everything the ring and the overflow hold.
                self.overflow.active.store(true, Ordering::Release);
                jobs.push_back(job);
                drop(jobs);
                self.ring.wake();
                return Ok(());
            }
            // The lane emptied the overflow meanwhile: back to the ring.
        }
    }
}

impl<C> LaneReceiver<C> {
    /// The oldest write: the ring's first, since the overflow only holds
    /// writes queued after the ring filled up.
    fn take(&self) -> Take<C> {
        match self.ring.try_pop() {
            Ok(job) => Take::Job(job),
            Err(PopError::Empty) if !self.overflow.active.load(Ordering::Acquire) => Take::Empty,
            // A write still being put into the ring goes before the overflow.
            Err(PopError::Empty) if self.ring.push_in_progress() => Take::Empty,
            Err(PopError::Empty) => self.take_overflow().map_or(Take::Empty, Take::Job),
            Err(PopError::Closed) => self.take_overflow().map_or(Take::Closed, Take::Job),
        }
    }

    fn take_overflow(&self) -> Option<Job<C>> {
        let mut jobs = self.overflow.lock();
        let job = jobs.pop_front();
        if jobs.is_empty() {
            self.overflow.active.store(false, Ordering::Release);
        }
        job
    }

    /// Blocks until a sender hands over a write; `None` once every sender
    /// is gone and the queue is drained.
    fn wait(&self) -> Option<Job<C>> {
        loop {
            match self.take() {
                Take::Job(job) => return Some(job),
                Take::Closed => return None,
                // A caller is between claiming a slot and writing it: it is
                // running, not waiting, so let it finish.
                Take::Empty if self.ring.push_in_progress() => thread::yield_now(),
                Take::Empty => self
                    .ring
                    .park(|| self.overflow.active.load(Ordering::SeqCst)),
            }
        }
    }
}

/// The running lanes of one adapter: a queue per lane thread.
///
/// Dropping it closes the queues; each lane drains what it holds and exits.
/// Call [`SecondaryLanes::flush`] first to wait for that.
pub(crate) struct SecondaryLanes<C> {
    senders: Vec<LaneSender<C>>,
    pending: Arc<Pending>,
    config: LaneConfig,
}

impl<C: Send + 'static> SecondaryLanes<C> {
    /// Spawns `config.lanes` threads named `dualwrite-lane-N` that run
    /// `apply` for each job.
    pub(crate) fn start<F>(
        config: LaneConfig,
        stats: Stats,
        dead_letters: DeadLetterSink<C>,
        apply: F,
    ) -> Self
    where
        F: Fn(&LaneContext, Store, &C) -> Result<(), String> + Send + Sync + 'static,
    {
        let apply = Arc::new(apply);
        let pending = Arc::new(Pending::new(config.lane_count()));
        let handle = Handle::try_current()
            .ok()
            .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
        let mut senders = Vec::with_capacity(config.lane_count());
        for index in 0..config.lane_count() {
            let (sender, receiver) = lane_queue(config.queue_capacity);
            let lane = Lane {
                context: LaneContext::new(index, config.attempt_timeout, handle.clone()),
                config: config.clone(),
                apply: Arc::clone(&apply),
                stats: stats.clone(),
                pending: Arc::clone(&pending),
                dead_letters: Arc::clone(&dead_letters),
                rng: XorShift64::seeded(index as u64),
            };
            let spawned = thread::Builder::new()
                .name(format!("dualwrite-lane-{index}"))
                .spawn(move || lane.run(receiver));
            // A lane that failed to start drops its receiver: submissions to
            // it fail and become dead letters, never silently lost.
            if let Err(error) = spawned {
                tracing::error!(lane = index, %error, "cannot start a secondary lane");
            }
            senders.push(sender);
        }
        SecondaryLanes {
            senders,
            pending,
            config,
        }
    }
}

impl<C> SecondaryLanes<C> {
    /// Queues `job` on the lane that owns its key. Never blocks. Gives the
    /// job back if that lane is not running.
    pub(crate) fn submit(&self, job: Job<C>) -> Result<(), Job<C>> {
        // Keyless jobs share lane 0, so they stay ordered among themselves.
        let lane = match job.key_hash {
            // The remainder is below the lane count, so it fits in usize.
            Some(hash) => (hash % self.senders.len() as u64) as usize,
            None => 0,
        };
        // The pending gauge of the stats is read from these counters (see
        // `SecondaryLanes::pending`).
        self.pending.start(lane);
        self.senders[lane]
            .push(job)
            .inspect_err(|_| self.pending.finish(lane))
    }

    /// Writes handed to the lanes and not yet applied or dead-lettered.
    pub(crate) fn pending(&self) -> u64 {
        self.pending.count()
    }

    /// Blocks until every job submitted so far is applied or dead-lettered;
    /// jobs submitted meanwhile are not waited for.
    pub(crate) fn flush(&self) {
        self.pending.wait();
    }

    /// Waits, without blocking the thread, until every job submitted so far
    /// is applied or dead-lettered.
    pub(crate) async fn flush_async(&self) {
        self.pending.wait_async().await;
    }

    /// The configuration the lanes run with.
    pub(crate) fn config(&self) -> &LaneConfig {
        &self.config
    }
}

impl<C> fmt::Debug for SecondaryLanes<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecondaryLanes")
            .field("lanes", &self.senders.len())
            .field("pending", &self.pending.count())
            .field("config", &self.config)
            .finish()
    }
}

/// The state of one lane thread.
struct Lane<C, F> {
    context: LaneContext,
    config: LaneConfig,
    apply: Arc<F>,
    stats: Stats,
    pending: Arc<Pending>,
    dead_letters: DeadLetterSink<C>,
    rng: XorShift64,
}

impl<C, F> Lane<C, F>
where
    F: Fn(&LaneContext, Store, &C) -> Result<(), String>,
{
    /// Applies jobs until every sender is gone and the queue is drained.
    fn run(mut self, receiver: LaneReceiver<C>) {
        while let Some(job) = self.next_job(&receiver) {
            let outcome = catch_unwind(AssertUnwindSafe(|| self.process(job)));
            if outcome.is_err() {
                // Only the bookkeeping around `apply` (e.g. a panicking log
                // subscriber) can get here; keep the lane alive, even if
                // logging this panics too.
                let lane = self.context.lane;
                let _ = catch_unwind(|| {
                    tracing::error!(lane, "secondary lane recovered from a panic");
                });
            }
        }
    }

    /// The next job, or `None` once every sender is gone and the queue is
    /// drained. An empty queue is polled for `idle_poll` before the lane
    /// blocks, so a submission right after another finds the lane awake.
    fn next_job(&self, receiver: &LaneReceiver<C>) -> Option<Job<C>> {
        match receiver.take() {
            Take::Job(job) => return Some(job),
            Take::Closed => return None,
            Take::Empty => {}
        }
        if !self.config.idle_poll.is_zero() {
            // `None` (an idle poll too long to add) polls for good.
            let deadline = Instant::now().checked_add(self.config.idle_poll);
            let mut polls = 0_u32;
            while deadline.is_none_or(|deadline| Instant::now() < deadline) {
                match receiver.take() {
                    Take::Job(job) => return Some(job),
                    Take::Closed => return None,
                    Take::Empty => {}
                }
                polls += 1;
                if polls.is_multiple_of(16) {
                    // Let other threads run: on a small machine the caller
                    // may be waiting for this core.
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        // Nap without registering as a waiter on the queue: a sender that
        // finds no waiter makes no wake-up call, so handing a write over
        // costs the caller no system call. The lane checks again after a short
        // sleep that grows while it stays idle.
        let mut nap = IDLE_NAP_MIN;
        let mut napped = Duration::ZERO;
        loop {
            if self.config.idle_park.is_some_and(|park| napped >= park) {
                // Long idle: block until a sender wakes the lane.
                return receiver.wait();
            }
            thread::sleep(nap);
            napped += nap;
            match receiver.take() {
                Take::Job(job) => return Some(job),
                Take::Closed => return None,
                Take::Empty => nap = (nap * 2).min(self.config.idle_nap_max()),
            }
        }
    }

    /// Applies one job, retrying with backoff; dead-letters it after the
    /// last attempt.
    fn process(&mut self, job: Job<C>) {
        let _finish = FinishGuard {
            pending: &self.pending,
            lane: self.context.lane,
        };
        let Job {
            method,
            key,
            render_key,
            key_hash: _,
            target,
            command,
        } = job;
        // The key is rendered only if a failure has to be logged.
        let mut key = key;
        let mut rendered = false;
        let limit = self.config.attempt_limit();
        let mut attempt = 1;
        loop {
            self.context.attempt.set(attempt);
            let result = catch_unwind(AssertUnwindSafe(|| {
                (self.apply)(&self.context, target, &command)
            }))
            .unwrap_or_else(|payload| {
                Err(format!(
                    "secondary write panicked: {}",
                    panic_message(payload.as_ref())
                ))
            });
            self.stats
                .record_write(target, Role::Secondary, result.is_ok());
            let Err(error) = result else {
                return;
            };
            if !rendered {
                // A key type whose rendering panics costs the log its key,
                // not the job its dead letter.
                key = key.or_else(|| {
                    let render = render_key?;
                    catch_unwind(AssertUnwindSafe(|| render(&command))).unwrap_or(None)
                });
                rendered = true;
            }
            let key_text = key.as_deref().unwrap_or("-");
            if attempt < limit {
                tracing::warn!(
                    method,
                    key = key_text,
                    target = %target,
                    attempt,
                    error = %error,
                    "secondary write failed, retrying"
                );
                let delay = equal_jitter(self.config.backoff(attempt), self.rng.next_u64());
                thread::sleep(delay);
                self.stats.record_secondary_retry();
                attempt += 1;
                continue;
            }
            tracing::warn!(
                method,
                key = key_text,
                target = %target,
                attempt,
                error = %error,
                "secondary write failed, giving up: kept as a dead letter"
            );
            self.stats.record_dead_letter();
            let letter = DeadLetter {
                method,
                key,
                target,
                command,
                error,
                attempts: attempt,
                at: SystemTime::now(),
            };
            // Pushed before `_finish` runs, so a flush sees it.
            self.dead_letters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(letter);
            return;
        }
    }
}

/// The message of a panic payload, for the dead letter's error.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_minimums() {
        let config = LaneConfig::default();
        assert_eq!(config.lanes, 4);
        assert_eq!(config.max_attempts, 5);
        assert_eq!(config.initial_backoff, Duration::from_millis(10));
        assert_eq!(config.max_backoff, Duration::from_secs(1));
        assert_eq!(config.attempt_timeout, None);
        assert_eq!(config.idle_park, Some(Duration::from_millis(20)));
        assert_eq!(config.queue_capacity, 1024);
        let zero = config.with_lanes(0).with_max_attempts(0);
        assert_eq!(zero.lane_count(), 1);
        assert_eq!(zero.attempt_limit(), 1);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let config = LaneConfig::default()
            .with_initial_backoff(Duration::from_millis(10))
            .with_max_backoff(Duration::from_millis(75));
        assert_eq!(config.backoff(1), Duration::from_millis(10));
        assert_eq!(config.backoff(2), Duration::from_millis(20));
        assert_eq!(config.backoff(3), Duration::from_millis(40));
        assert_eq!(config.backoff(4), Duration::from_millis(75));
        assert_eq!(config.backoff(u32::MAX), Duration::from_millis(75));
        let huge = config.with_max_backoff(Duration::MAX);
        assert_eq!(huge.backoff(200), Duration::from_millis(10) * u32::MAX);
    }

    #[test]
    fn equal_jitter_stays_within_half_and_full() {
        let mut rng = XorShift64::seeded(7);
        let delay = Duration::from_millis(10);
        for _ in 0..1_000 {
            let jittered = equal_jitter(delay, rng.next_u64());
            assert!(jittered >= delay / 2 && jittered <= delay, "{jittered:?}");
        }
        assert_eq!(equal_jitter(Duration::ZERO, u64::MAX), Duration::ZERO);
        assert!(equal_jitter(Duration::MAX, u64::MAX) <= Duration::MAX);
    }

    #[test]
    fn xorshift_never_sticks_at_zero() {
        let mut rng = XorShift64::seeded(0);
        assert!((0..100).all(|_| rng.next_u64() != 0));
    }

    fn job(key: u64, command: u64) -> Job<u64> {
        Job {
            method: "put",
            key: None,
            render_key: None,
            key_hash: Some(key),
            target: Store::New,
            command,
        }
    }

    #[test]
    fn a_parked_lane_wakes_for_the_next_write() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&applied);
        let config = LaneConfig::default()
            .with_lanes(1)
            .with_idle_poll(Duration::ZERO)
            .with_idle_sleep(Duration::from_micros(100))
            .with_idle_park(Some(Duration::from_millis(1)));
        let lanes = SecondaryLanes::start(
            config,
            Stats::new(),
            Arc::default(),
            move |_: &LaneContext, _: Store, command: &u64| {
                sink.lock().unwrap().push(*command);
                Ok(())
            },
        );
        assert!(lanes.submit(job(1, 10)).is_ok());
        lanes.flush();
        // Long enough for the lane to nap past `idle_park` and block.
        thread::sleep(Duration::from_millis(30));
        assert!(lanes.submit(job(1, 11)).is_ok());
        assert!(lanes.submit(job(2, 12)).is_ok());
        lanes.flush();
        assert_eq!(*applied.lock().unwrap(), vec![10, 11, 12]);
        assert_eq!(lanes.pending(), 0);
    }

    /// Lanes whose apply records `(key, command)`, slowly.
    fn recording_lanes(config: LaneConfig) -> (SecondaryLanes<u64>, Arc<Mutex<Vec<u64>>>) {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&applied);
        let lanes = SecondaryLanes::start(
            config,
            Stats::new(),
            Arc::default(),
            move |_: &LaneContext, _: Store, command: &u64| {
                std::hint::black_box((0..200).sum::<u64>());
                sink.lock().unwrap().push(*command);
                Ok(())
            },
        );
        (lanes, applied)
    }

    #[test]
    fn writes_beyond_the_queue_capacity_wait_in_order() {
        let (lanes, applied) = recording_lanes(
            LaneConfig::default()
                .with_lanes(1)
                .with_queue_capacity(2)
                .with_idle_park(None),
        );
        for command in 0..500 {
            assert!(lanes.submit(job(command % 3, command)).is_ok());
        }
        lanes.flush();
        assert_eq!(*applied.lock().unwrap(), (0..500).collect::<Vec<_>>());
        assert_eq!(lanes.pending(), 0);
        // After the overflow drained, the ring is used again.
        assert!(lanes.submit(job(1, 500)).is_ok());
        lanes.flush();
        assert_eq!(applied.lock().unwrap().len(), 501);
    }

    #[test]
    fn concurrent_senders_keep_their_own_order_through_the_overflow() {
        let (lanes, applied) = recording_lanes(
            LaneConfig::default()
                .with_lanes(1)
                .with_queue_capacity(4)
                .with_idle_poll(Duration::ZERO),
        );
        let lanes = Arc::new(lanes);
        let senders: Vec<_> = (0..4_u64)
            .map(|sender| {
                let lanes = Arc::clone(&lanes);
                thread::spawn(move || {
                    for n in 0..300 {
                        // The command encodes the sender and its sequence.
                        assert!(lanes.submit(job(sender, sender * 1000 + n)).is_ok());
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.join().unwrap();
        }
        lanes.flush();
        let applied = applied.lock().unwrap();
        assert_eq!(applied.len(), 1200);
        for sender in 0..4 {
            let own: Vec<u64> = applied
                .iter()
                .copied()
                .filter(|c| c / 1000 == sender)
                .collect();
            assert_eq!(own, (0..300).map(|n| sender * 1000 + n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn dropping_the_lanes_applies_what_waits_in_the_overflow() {
        let (lanes, applied) =
            recording_lanes(LaneConfig::default().with_lanes(1).with_queue_capacity(1));
        for command in 0..100 {
            assert!(lanes.submit(job(7, command)).is_ok());
        }
        drop(lanes);
        // The lane drains the ring, then the overflow, then exits.
        let deadline = Instant::now() + Duration::from_secs(10);
        while applied.lock().unwrap().len() < 100 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*applied.lock().unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn extreme_settings_still_apply_writes() {
        // A ring larger than any allocation and a poll too long to add to
        // the clock: both are clamped, not panics.
        let (lanes, applied) = recording_lanes(
            LaneConfig::default()
                .with_lanes(1)
                .with_queue_capacity(usize::MAX)
                .with_idle_poll(Duration::MAX),
        );
        for command in 0..10 {
            assert!(lanes.submit(job(1, command)).is_ok());
        }
        lanes.flush();
        assert_eq!(*applied.lock().unwrap(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_key_whose_rendering_panics_still_leaves_a_dead_letter() {
        let dead_letters: DeadLetterSink<u64> = Arc::default();
        let lanes = SecondaryLanes::start(
            LaneConfig::default().with_lanes(1).with_max_attempts(1),
            Stats::new(),
            Arc::clone(&dead_letters),
            |_: &LaneContext, _: Store, _: &u64| Err("down".to_owned()),
        );
        let mut failing = job(1, 5);
        failing.render_key = Some(|_| panic!("rendering the key failed"));
        assert!(lanes.submit(failing).is_ok());
        lanes.flush();
        let letters = dead_letters.lock().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!((letters[0].command, letters[0].key.as_deref()), (5, None));
        assert_eq!(letters[0].error, "down");
    }

    #[test]
    fn flush_returns_under_a_steady_stream_of_writes() {
        // A lane slower than the stream: the queue never empties, so a flush
        // that waited for an empty queue would never return.
        let applied = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&applied);
        let lanes = Arc::new(SecondaryLanes::start(
            LaneConfig::default().with_lanes(2),
            Stats::new(),
            Arc::default(),
            move |_: &LaneContext, _: Store, command: &u64| {
                thread::sleep(Duration::from_millis(2));
                sink.lock().unwrap().push(*command);
                Ok(())
            },
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let stream = {
            let (lanes, stop) = (Arc::clone(&lanes), Arc::clone(&stop));
            thread::spawn(move || {
                let mut command = 1_000;
                while !stop.load(Ordering::SeqCst) {
                    for key in 0..2 {
                        assert!(lanes.submit(job(key, command)).is_ok());
                        command += 1;
                    }
                    thread::sleep(Duration::from_micros(500));
                }
            })
        };
        while lanes.pending() < 100 {
            thread::sleep(Duration::from_millis(1));
        }
        assert!(lanes.submit(job(0, 1)).is_ok());
        assert!(lanes.submit(job(1, 2)).is_ok());
        let (done, flushed) = std::sync::mpsc::channel();
        let flusher = Arc::clone(&lanes);
        thread::spawn(move || {
            flusher.flush();
            // What the flush waited for is applied the moment it returns.
            let seen = applied.lock().unwrap();
            done.send(seen.contains(&1) && seen.contains(&2))
                .expect("test thread");
        });
        let returned = flushed.recv_timeout(Duration::from_secs(30));
        assert!(lanes.pending() > 0, "the stream kept the lanes busy");
        stop.store(true, Ordering::SeqCst);
        stream.join().unwrap();
        assert_eq!(
            returned,
            Ok(true),
            "flush waited for later writes or missed earlier ones"
        );
    }

    #[test]
    fn panic_messages() {
        assert_eq!(panic_message(&"boom"), "boom");
        assert_eq!(panic_message(&String::from("bang")), "bang");
        assert_eq!(panic_message(&42_u8), "non-string panic payload");
    }
}

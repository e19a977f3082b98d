//! How the lanes run and retry: [`LaneConfig`], backoff and jitter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first sleep of an idle lane between two looks at its queue.
pub(super) const IDLE_NAP_MIN: Duration = Duration::from_micros(50);

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
    /// Time limit of one attempt of an async store call (run through
    /// [`LaneContext::block_on`], what the adapter of an async trait does);
    /// default 30 s. Needs timers in the runtime the lanes run the store's
    /// futures on (a tokio runtime built with `enable_time`). The call is cancelled at the limit, its outcome is
    /// unknown, so the write is not retried but kept as a dead letter.
    /// `None` waits for ever.
    ///
    /// [`LaneContext::block_on`]: crate::LaneContext::block_on
    pub attempt_timeout: Option<Duration>,
    /// Time limit of one attempt of a blocking store call (run through
    /// [`LaneContext::run_blocking`], what the adapter of a sync trait
    /// does); default none. A blocking call cannot be cancelled: with a
    /// limit, each call runs on a helper thread of the lane and the lane
    /// stops waiting at the limit (the write becomes a dead letter, and the
    /// abandoned call counts as pending until it returns). That hand-off
    /// costs two thread wake-ups a write, which on a small machine shows in
    /// the callers' tail latency (see the README's benchmarks), so it is off
    /// by default: a hung blocking call then holds its lane, whose queue
    /// fills up to [`LaneConfig::max_queued`]; callers are still bounded by
    /// [`LaneConfig::full_wait`], flushes and phase changes by their
    /// deadlines.
    ///
    /// [`LaneContext::run_blocking`]: crate::LaneContext::run_blocking
    pub blocking_attempt_timeout: Option<Duration>,
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
    /// The most secondary writes the lanes hold in all, ring and overflow;
    /// default 65 536, split evenly over the lanes (at least 1 each). The
    /// check is made before the primary write, so a write refused for lack
    /// of room never reaches either store. The check reserves nothing (the
    /// slot is taken at the hand-off, after the primary call), so the bound
    /// can be passed by as many writes as have their primary call in flight.
    pub max_queued: usize,
    /// How long a write waits for room in a full lane, before its primary
    /// write; default 1 s. Then [`LaneConfig::when_full`] applies.
    pub full_wait: Duration,
    /// What happens to a write whose lane stayed full for `full_wait`;
    /// default [`WhenFull::DeadLetter`].
    pub when_full: WhenFull,
    /// The queue in front of each lane; default [`LaneQueue::Ring`].
    pub queue: LaneQueue,
}

/// The queue in front of each lane. Both keep the order of the writes handed
/// over, and both are bounded by [`LaneConfig::max_queued`] through the
/// caller's room check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LaneQueue {
    /// A ring of [`LaneConfig::queue_capacity`] slots allocated once, with an
    /// ordered overflow behind it (`ring.rs`): a hand-off stores into a slot
    /// without reading any line the lane writes.
    #[default]
    Ring,
    /// A crossbeam channel (unbounded in itself; its memory grows in blocks
    /// and is bounded by the room check).
    Channel,
}

/// What a write does when its lane's queue stays full (see
/// [`LaneConfig::full_wait`]). Either way it is counted in
/// [`crate::StatsSnapshot::queue_full`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// The primary is written and the caller gets its result; the secondary
    /// write becomes a dead letter (0 attempts) for reconciliation.
    #[default]
    DeadLetter,
    /// The call fails before either store is written, with a
    /// [`WriteRefused`](crate::WriteRefused) converted into the method's
    /// error type (`E: From<WriteRefused>`). A method whose error type has no
    /// such conversion (or that returns no `Result`) falls back to
    /// `DeadLetter`.
    FailCall,
}

impl Default for LaneConfig {
    fn default() -> Self {
        LaneConfig {
            lanes: 4,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            attempt_timeout: Some(Duration::from_secs(30)),
            blocking_attempt_timeout: None,
            idle_poll: Duration::from_micros(200),
            idle_sleep: Duration::from_millis(1),
            idle_park: Some(Duration::from_millis(20)),
            queue_capacity: 1024,
            max_queued: 1 << 16,
            full_wait: Duration::from_secs(1),
            when_full: WhenFull::DeadLetter,
            queue: LaneQueue::Ring,
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

    /// Sets [`LaneConfig::blocking_attempt_timeout`].
    #[must_use]
    pub fn with_blocking_attempt_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.blocking_attempt_timeout = timeout;
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

    /// Sets [`LaneConfig::max_queued`].
    #[must_use]
    pub fn with_max_queued(mut self, max_queued: usize) -> Self {
        self.max_queued = max_queued;
        self
    }

    /// Sets [`LaneConfig::full_wait`].
    #[must_use]
    pub fn with_full_wait(mut self, full_wait: Duration) -> Self {
        self.full_wait = full_wait;
        self
    }

    /// Sets [`LaneConfig::when_full`].
    #[must_use]
    pub fn with_when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// Sets [`LaneConfig::queue`].
    #[must_use]
    pub fn with_queue(mut self, queue: LaneQueue) -> Self {
        self.queue = queue;
        self
    }

    /// The most writes one lane holds.
    pub(crate) fn lane_cap(&self) -> u64 {
        let per_lane = self.max_queued.div_ceil(self.lane_count()).max(1);
        u64::try_from(per_lane).unwrap_or(u64::MAX)
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
pub(crate) fn equal_jitter(delay: Duration, random: u64) -> Duration {
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
        assert_eq!(config.attempt_timeout, Some(Duration::from_secs(30)));
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
}

//! Secondary lanes: the async-secondary write strategy.
//!
//! The secondary write runs off the caller's path, on one of a fixed set of
//! OS threads ("lanes"). A key always maps to the same lane and each lane
//! applies its jobs strictly in FIFO order, retrying a failing job before any
//! later one, so writes to one key reach the secondary in the order they were
//! handed over; the caller's stripe (see [`crate::stripes`]) makes that the
//! order the primary committed them (architecture invariant 3). A job that
//! keeps failing becomes a [`DeadLetter`](crate::DeadLetter) and the lane
//! moves on, so every submitted job ends applied or dead-lettered
//! (invariant 2).
//!
//! - [`config`]: [`LaneConfig`], backoff and jitter;
//! - [`queue`]: each lane's queue, a bounded ring allocated once ([`crate::ring`])
//!   with an ordered overflow behind it; how much a lane holds is bounded by
//!   [`LaneConfig::max_queued`], checked before the primary write;
//! - [`flush`]: per-lane counts of submitted and finished jobs, for flushes
//!   and the room check;
//! - [`worker`]: the lane thread, its retries and dead letters.

mod config;
mod flush;
mod queue;
mod worker;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};

pub use config::{LaneConfig, LaneQueue, WhenFull};
pub(crate) use config::{XorShift64, equal_jitter};
pub use worker::LaneContext;

use crate::phase::Store;
use crate::shared::Shared;
pub(crate) use flush::Pending;
use queue::{LaneSender, lane_queue};
use worker::{Abandoned, Lane};

/// One secondary write waiting in a lane.
pub(crate) struct Job<C> {
    pub(crate) method: &'static str,
    pub(crate) key: Option<String>,
    /// Renders the key from the command, only when a log or a dead letter
    /// needs it (keeps the hand-off free of allocation).
    pub(crate) render_key: Option<fn(&C) -> Option<String>>,
    /// `None` for keyless jobs, which share lane 0.
    pub(crate) key_hash: Option<u64>,
    /// The key's stripe, whose pending count the job holds until it is
    /// finished.
    pub(crate) stripe: usize,
    pub(crate) target: Store,
    pub(crate) command: C,
}

/// The running lanes of one adapter: a queue per lane thread.
///
/// Dropping it closes the queues; each lane drains what it holds and exits.
/// [`SecondaryLanes::shutdown`] does the same and waits for it.
pub(crate) struct SecondaryLanes<C> {
    senders: Vec<LaneSender<C>>,
    pending: Arc<Pending>,
    shared: Arc<Shared<C>>,
    exit: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    config: LaneConfig,
    lane_cap: u64,
}

impl<C: Send + 'static> SecondaryLanes<C> {
    /// Spawns `config.lanes` threads named `dualwrite-lane-N` that run
    /// `apply` for each job.
    pub(crate) fn start<F>(config: LaneConfig, shared: Arc<Shared<C>>, apply: F) -> Self
    where
        F: Fn(&LaneContext, Store, &C) -> Result<(), String> + Send + Sync + 'static,
    {
        let apply = Arc::new(apply);
        let pending = Arc::new(Pending::new(config.lane_count()));
        let exit = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let handle = Handle::try_current()
            .ok()
            .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
        let mut senders = Vec::with_capacity(config.lane_count());
        let mut threads = Vec::with_capacity(config.lane_count());
        for index in 0..config.lane_count() {
            let (sender, receiver) =
                lane_queue(config.queue, config.queue_capacity, Arc::clone(&exit));
            let lane = Lane {
                context: LaneContext::new(
                    index,
                    config.attempt_timeout,
                    config.blocking_attempt_timeout,
                    handle.clone(),
                    Some(Abandoned {
                        pending: Arc::clone(&pending),
                        stripes: Arc::clone(&shared.stripes),
                        stats: shared.stats.clone(),
                        outstanding: Arc::default(),
                    }),
                ),
                config: config.clone(),
                apply: Arc::clone(&apply),
                shared: Arc::clone(&shared),
                pending: Arc::clone(&pending),
                abort: Arc::clone(&abort),
                rng: XorShift64::seeded(index as u64),
            };
            let spawned = thread::Builder::new()
                .name(format!("dualwrite-lane-{index}"))
                .spawn(move || lane.run(receiver));
            // A lane that failed to start drops its receiver: submissions to
            // it fail and become dead letters, never silently lost.
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(error) => {
                    tracing::error!(lane = index, %error, "cannot start a secondary lane");
                }
            }
            senders.push(sender);
        }
        shared.lanes.store(Some(Arc::clone(&pending)));
        SecondaryLanes {
            senders,
            pending,
            shared,
            exit,
            abort,
            threads: Mutex::new(threads),
            lane_cap: config.lane_cap(),
            config,
        }
    }
}

impl<C> SecondaryLanes<C> {
    /// The lane that owns a key with this route hash; keyless jobs share
    /// lane 0, so they stay ordered among themselves.
    pub(crate) fn lane_of(&self, key_hash: Option<u64>) -> usize {
        match key_hash {
            // The remainder is below the lane count, so it fits in usize.
            Some(hash) => (hash % self.senders.len() as u64) as usize,
            None => 0,
        }
    }

    /// Whether `lane` has room for one more write now.
    pub(crate) fn has_room(&self, lane: usize) -> bool {
        self.pending.has_room(lane, self.lane_cap)
    }

    /// Blocks up to `config.full_wait` for room in `lane`; whether there is.
    pub(crate) fn wait_for_room(&self, lane: usize) -> bool {
        let deadline = Instant::now()
            .checked_add(self.config.full_wait)
            .unwrap_or_else(far_future);
        self.pending.wait_for_room(lane, self.lane_cap, deadline)
    }

    /// Waits, without blocking the thread, up to `config.full_wait` for room
    /// in `lane`; whether there is. Needs a tokio runtime's timer to wait:
    /// without one, only looks.
    pub(crate) async fn wait_for_room_async(&self, lane: usize) -> bool {
        if self.config.full_wait.is_zero() || Handle::try_current().is_err() {
            return self.has_room(lane);
        }
        let wait = self.pending.wait_for_room_async(lane, self.lane_cap);
        tokio::time::timeout(self.config.full_wait, wait)
            .await
            .is_ok()
    }

    /// Queues `job` on `lane` (its key's). Never blocks. Gives the job back
    /// if that lane is not running.
    pub(crate) fn submit(&self, lane: usize, job: Job<C>) -> Result<(), Job<C>> {
        let stripe = job.stripe;
        // The pending gauge of the stats is read from these counters (see
        // `SecondaryLanes::pending`).
        self.shared.stripes.add_pending(stripe);
        self.pending.start(lane);
        self.senders[lane].push(job).inspect_err(|_| {
            self.shared.stripes.finish_pending(stripe);
            self.pending.finish(lane);
        })
    }

    /// Writes handed to the lanes and not yet applied or dead-lettered.
    pub(crate) fn pending(&self) -> u64 {
        self.pending.count()
    }

    /// Blocks until every job submitted so far is applied or dead-lettered,
    /// or `deadline` passes; whether they all finished. Jobs submitted
    /// meanwhile are not waited for.
    pub(crate) fn flush(&self, deadline: Option<Instant>) -> bool {
        self.pending.wait(deadline)
    }

    /// Waits, without blocking the thread, until every job submitted so far
    /// is applied or dead-lettered.
    pub(crate) async fn flush_async(&self) {
        self.pending.wait_async().await;
    }

    /// Tells the lanes to exit once their queues are empty, and waits for
    /// their threads until `deadline`; whether they all exited. Call with
    /// every stripe fenced, so no write can be queued any more.
    pub(crate) fn close_and_join(&self, deadline: Instant) -> bool {
        self.exit.store(true, Ordering::SeqCst);
        self.wake_all();
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        while threads.iter().any(|thread| !thread.is_finished()) {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_micros(200));
        }
        for thread in threads.drain(..) {
            // A lane thread catches panics around every job.
            let _ = thread.join();
        }
        true
    }

    /// Makes the lanes dead-letter what they hold instead of applying it
    /// (the shutdown deadline has passed).
    pub(crate) fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    fn wake_all(&self) {
        for sender in &self.senders {
            sender.wake();
        }
    }

    /// The configuration the lanes run with.
    pub(crate) fn config(&self) -> &LaneConfig {
        &self.config
    }
}

/// An instant no deadline reaches in practice (for durations too long to
/// add to the clock).
pub(crate) fn far_future() -> Instant {
    let now = Instant::now();
    [86_400 * 365 * 30, 86_400 * 365, 86_400]
        .into_iter()
        .find_map(|seconds| now.checked_add(Duration::from_secs(seconds)))
        .unwrap_or(now)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(key: u64, command: u64) -> Job<u64> {
        Job {
            method: "put",
            key: None,
            render_key: None,
            key_hash: Some(key),
            stripe: crate::stripes::KeyStripes::index(Some(key)),
            target: Store::New,
            command,
        }
    }

    fn shared() -> Arc<Shared<u64>> {
        Arc::new(Shared::new(1_000, crate::TraitInfo::UNNAMED))
    }

    /// Queues a job on its key's lane.
    fn submit(lanes: &SecondaryLanes<u64>, job: Job<u64>) -> Result<(), Job<u64>> {
        lanes.submit(lanes.lane_of(job.key_hash), job)
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
            shared(),
            move |_: &LaneContext, _: Store, command: &u64| {
                sink.lock().unwrap().push(*command);
                Ok(())
            },
        );
        assert!(submit(&lanes, job(1, 10)).is_ok());
        lanes.flush(None);
        // Long enough for the lane to nap past `idle_park` and block.
        thread::sleep(Duration::from_millis(30));
        assert!(submit(&lanes, job(1, 11)).is_ok());
        assert!(submit(&lanes, job(2, 12)).is_ok());
        lanes.flush(None);
        assert_eq!(*applied.lock().unwrap(), vec![10, 11, 12]);
        assert_eq!(lanes.pending(), 0);
    }

    /// Lanes whose apply records `(key, command)`, slowly.
    fn recording_lanes(config: LaneConfig) -> (SecondaryLanes<u64>, Arc<Mutex<Vec<u64>>>) {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&applied);
        let lanes = SecondaryLanes::start(
            config,
            shared(),
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
            assert!(submit(&lanes, job(command % 3, command)).is_ok());
        }
        lanes.flush(None);
        assert_eq!(*applied.lock().unwrap(), (0..500).collect::<Vec<_>>());
        assert_eq!(lanes.pending(), 0);
        // After the overflow drained, the ring is used again.
        assert!(submit(&lanes, job(1, 500)).is_ok());
        lanes.flush(None);
        assert_eq!(applied.lock().unwrap().len(), 501);
    }

    /// Four threads each hand 300 jobs to `lanes`, the command encoding the
    /// sender and its sequence.
    fn four_senders(lanes: &Arc<SecondaryLanes<u64>>) {
        let senders: Vec<_> = (0..4_u64)
            .map(|sender| {
                let lanes = Arc::clone(lanes);
                thread::spawn(move || {
                    for n in 0..300 {
                        assert!(submit(&lanes, job(sender, sender * 1000 + n)).is_ok());
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.join().unwrap();
        }
    }

    /// Every job of `four_senders` was applied, each sender's in its order.
    fn assert_each_senders_order(applied: &[u64]) {
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
    fn concurrent_senders_keep_their_own_order_through_the_overflow() {
        let (lanes, applied) = recording_lanes(
            LaneConfig::default()
                .with_lanes(1)
                .with_queue_capacity(4)
                .with_idle_poll(Duration::ZERO),
        );
        let lanes = Arc::new(lanes);
        four_senders(&lanes);
        lanes.flush(None);
        assert_each_senders_order(&applied.lock().unwrap());
    }

    #[test]
    fn the_channel_queue_keeps_each_senders_order_and_exits_on_close() {
        let (lanes, applied) = recording_lanes(
            LaneConfig::default()
                .with_lanes(1)
                .with_queue(LaneQueue::Channel)
                .with_idle_poll(Duration::ZERO)
                .with_idle_park(Some(Duration::from_millis(1))),
        );
        let lanes = Arc::new(lanes);
        four_senders(&lanes);
        assert!(lanes.flush(Some(Instant::now() + Duration::from_secs(30))));
        assert_each_senders_order(&applied.lock().unwrap());
        // A parked lane sees the exit flag within its recheck period.
        thread::sleep(Duration::from_millis(20));
        assert!(lanes.close_and_join(Instant::now() + Duration::from_secs(5)));
    }

    #[test]
    fn dropping_the_lanes_applies_what_waits_in_the_overflow() {
        let (lanes, applied) =
            recording_lanes(LaneConfig::default().with_lanes(1).with_queue_capacity(1));
        for command in 0..100 {
            assert!(submit(&lanes, job(7, command)).is_ok());
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
            assert!(submit(&lanes, job(1, command)).is_ok());
        }
        lanes.flush(None);
        assert_eq!(*applied.lock().unwrap(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_key_whose_rendering_panics_still_leaves_a_dead_letter() {
        let shared = shared();
        let lanes = SecondaryLanes::start(
            LaneConfig::default().with_lanes(1).with_max_attempts(1),
            Arc::clone(&shared),
            |_: &LaneContext, _: Store, _: &u64| Err("down".to_owned()),
        );
        let mut failing = job(1, 5);
        failing.render_key = Some(|_| panic!("rendering the key failed"));
        assert!(submit(&lanes, failing).is_ok());
        lanes.flush(None);
        let letters = shared.dead_letters.take();
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
            shared(),
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
                        assert!(submit(&lanes, job(key, command)).is_ok());
                        command += 1;
                    }
                    thread::sleep(Duration::from_micros(500));
                }
            })
        };
        while lanes.pending() < 100 {
            thread::sleep(Duration::from_millis(1));
        }
        assert!(submit(&lanes, job(0, 1)).is_ok());
        assert!(submit(&lanes, job(1, 2)).is_ok());
        let (done, flushed) = std::sync::mpsc::channel();
        let flusher = Arc::clone(&lanes);
        thread::spawn(move || {
            flusher.flush(None);
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
}

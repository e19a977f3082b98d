//! Flush accounting: jobs submitted and finished per lane, so a flush waits
//! for exactly the writes handed over before it, and a caller can tell when
//! its lane's queue is full.

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

use crate::stripes::KeyStripes;

/// How often (in finished jobs) a lane refreshes `finished_hint`.
const HINT_EVERY: u64 = 64;

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
pub(crate) struct Pending {
    lanes: Box<[LaneCounts]>,
    /// Calls abandoned at their deadline that have not returned yet (they
    /// may still write): flushes wait for them too.
    abandoned: CacheLine<AtomicU64>,
    waiters: CacheLine<AtomicU64>,
    lock: Mutex<()>,
    idle: Condvar,
    idle_async: Notify,
}

#[derive(Default)]
struct LaneCounts {
    submitted: CacheLine<AtomicU64>,
    finished: CacheLine<AtomicU64>,
    /// `finished` as it was at most `HINT_EVERY` jobs ago: callers check
    /// for room against it, so a hand-off reads a line the lane writes only
    /// once every `HINT_EVERY` jobs.
    finished_hint: CacheLine<AtomicU64>,
}

/// A value alone on a cache line.
#[derive(Default)]
#[repr(align(128))]
pub(super) struct CacheLine<T>(pub(super) T);

impl Pending {
    pub(super) fn new(lanes: usize) -> Self {
        Pending {
            lanes: (0..lanes).map(|_| LaneCounts::default()).collect(),
            abandoned: CacheLine::default(),
            waiters: CacheLine::default(),
            lock: Mutex::new(()),
            idle: Condvar::new(),
            idle_async: Notify::new(),
        }
    }

    pub(super) fn start(&self, lane: usize) {
        self.lanes[lane].submitted.0.fetch_add(1, Ordering::SeqCst);
    }

    /// A call was abandoned at its deadline and may still write.
    pub(super) fn start_abandoned(&self) {
        self.abandoned.0.fetch_add(1, Ordering::SeqCst);
    }

    /// An abandoned call returned.
    pub(super) fn finish_abandoned(&self) {
        self.abandoned.0.fetch_sub(1, Ordering::SeqCst);
        self.wake();
    }

    pub(super) fn finish(&self, lane: usize) {
        let counts = &self.lanes[lane];
        let finished = counts.finished.0.fetch_add(1, Ordering::SeqCst) + 1;
        if finished.is_multiple_of(HINT_EVERY) {
            counts.finished_hint.0.store(finished, Ordering::Relaxed);
        }
        self.wake();
    }

    fn wake(&self) {
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

    /// Whether the lane holds fewer than `cap` jobs. Reads the lane's
    /// `finished` line only when the hint says the queue may be full.
    pub(super) fn has_room(&self, lane: usize, cap: u64) -> bool {
        let counts = &self.lanes[lane];
        let submitted = counts.submitted.0.load(Ordering::Relaxed);
        if submitted.saturating_sub(counts.finished_hint.0.load(Ordering::Relaxed)) < cap {
            return true;
        }
        submitted.saturating_sub(counts.finished.0.load(Ordering::SeqCst)) < cap
    }

    /// Waits until the lane holds fewer than `cap` jobs or `deadline` passes;
    /// whether there is room.
    pub(super) fn wait_for_room(&self, lane: usize, cap: u64, deadline: Instant) -> bool {
        self.wait_until(deadline, || self.has_room(lane, cap))
    }

    /// Waits, without blocking the thread, until the lane holds fewer than
    /// `cap` jobs. Cancel-safe.
    pub(super) async fn wait_for_room_async(&self, lane: usize, cap: u64) {
        let _waiter = Waiter::register(self);
        loop {
            let mut notified = pin!(self.idle_async.notified());
            notified.as_mut().enable();
            if self.has_room(lane, cap) {
                return;
            }
            notified.await;
        }
    }

    /// Jobs submitted and not finished, and abandoned calls not returned.
    /// For each lane `finished` is read first: it never passes `submitted`,
    /// so no lane counts below zero.
    pub(crate) fn count(&self) -> u64 {
        self.abandoned.0.load(Ordering::SeqCst)
            + self
                .lanes
                .iter()
                .map(|lane| {
                    let finished = lane.finished.0.load(Ordering::SeqCst);
                    lane.submitted
                        .0
                        .load(Ordering::SeqCst)
                        .saturating_sub(finished)
                })
                .sum::<u64>()
    }

    /// Each lane's `(submitted, finished)`, `finished` read first (it never
    /// passes `submitted`): queue depths, for metrics.
    pub(crate) fn lane_counts(&self) -> Vec<(u64, u64)> {
        self.lanes
            .iter()
            .map(|lane| {
                let finished = lane.finished.0.load(Ordering::SeqCst);
                (lane.submitted.0.load(Ordering::SeqCst), finished)
            })
            .collect()
    }

    /// Each lane's `submitted` now: what a flush starting now waits for.
    fn tickets(&self) -> Vec<u64> {
        self.lanes
            .iter()
            .map(|lane| lane.submitted.0.load(Ordering::SeqCst))
            .collect()
    }

    /// Whether every lane has finished the jobs of `tickets`, and no
    /// abandoned call may still write.
    fn reached(&self, tickets: &[u64]) -> bool {
        self.abandoned.0.load(Ordering::SeqCst) == 0
            && self
                .lanes
                .iter()
                .zip(tickets)
                .all(|(lane, &ticket)| lane.finished.0.load(Ordering::SeqCst) >= ticket)
    }

    /// Blocks until the jobs submitted so far are finished or `deadline`
    /// passes (`None`: no deadline); whether they finished.
    pub(super) fn wait(&self, deadline: Option<Instant>) -> bool {
        let _waiter = Waiter::register(self);
        let tickets = self.tickets();
        match deadline {
            Some(deadline) => self.wait_until(deadline, || self.reached(&tickets)),
            None => {
                let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
                while !self.reached(&tickets) {
                    guard = self
                        .idle
                        .wait(guard)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                true
            }
        }
    }

    /// Blocks until `done` holds (re-checked after each finished job) or
    /// `deadline` passes; whether `done` holds.
    fn wait_until(&self, deadline: Instant, done: impl Fn() -> bool) -> bool {
        let _waiter = Waiter::register(self);
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if done() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .idle
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits, without blocking the thread, until the jobs submitted so far
    /// are finished. Cancel-safe.
    pub(super) async fn wait_async(&self) {
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

/// Counts a job finished when dropped, even if processing it unwinds, so a
/// flush or a fence can never wait forever.
pub(super) struct FinishGuard<'a> {
    pub(super) pending: &'a Pending,
    pub(super) stripes: &'a KeyStripes,
    pub(super) lane: usize,
    pub(super) stripe: usize,
}

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        // The stripe first: a fence that sees the lane count done must see
        // the stripe done too.
        self.stripes.finish_pending(self.stripe);
        self.pending.finish(self.lane);
    }
}

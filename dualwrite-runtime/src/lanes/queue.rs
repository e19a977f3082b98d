//! A lane's queue: a bounded ring allocated once, then an ordered overflow.
//!
//! How many writes a lane holds in all is bounded by the caller's admission
//! check (`LaneConfig::max_queued`), made before the primary write; the
//! overflow only takes what the ring cannot hold below that bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use super::Job;
use super::config::LaneQueue;
use crate::ring::{self, PopError, PushError, RingReceiver, RingSender};

/// The longest a parked lane sleeps before it looks at its queue again: the
/// most a write handed over just as the lane parks can wait (see
/// [`crate::ring`]).
const PARK_RECHECK: Duration = Duration::from_millis(100);

/// The largest ring a lane allocates (`LaneConfig::queue_capacity` is
/// clamped to it); writes beyond it wait in the overflow.
const MAX_RING: usize = 1 << 16;

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
pub(super) struct RingLaneSender<C> {
    pub(super) ring: RingSender<Job<C>>,
    overflow: Arc<Overflow<C>>,
}

/// The lane's side of its queue.
pub(super) struct RingLaneReceiver<C> {
    ring: RingReceiver<Job<C>>,
    overflow: Arc<Overflow<C>>,
    /// Set when the adapter shuts down: the lane exits once its queue is
    /// empty.
    exit: Arc<AtomicBool>,
}

/// What a look at a lane's queue found.
pub(super) enum Take<C> {
    Job(Job<C>),
    Empty,
    /// Every sender is gone and nothing is left.
    Closed,
}

pub(super) fn lane_queue<C>(
    kind: LaneQueue,
    capacity: usize,
    exit: Arc<AtomicBool>,
) -> (LaneSender<C>, LaneReceiver<C>) {
    if kind == LaneQueue::Channel {
        let (sender, receiver) = crossbeam_channel::unbounded();
        return (
            LaneSender::Channel(sender),
            LaneReceiver::Channel { receiver, exit },
        );
    }
    let (sender, receiver) = ring_queue(capacity, exit);
    (LaneSender::Ring(sender), LaneReceiver::Ring(receiver))
}

/// The sending side of a lane's queue.
pub(super) enum LaneSender<C> {
    Ring(RingLaneSender<C>),
    Channel(crossbeam_channel::Sender<Job<C>>),
}

/// The lane's side of its queue.
pub(super) enum LaneReceiver<C> {
    Ring(RingLaneReceiver<C>),
    Channel {
        receiver: crossbeam_channel::Receiver<Job<C>>,
        /// Set when the adapter shuts down: the lane exits once its queue
        /// is empty.
        exit: Arc<AtomicBool>,
    },
}

impl<C> LaneSender<C> {
    /// Queues `job` without blocking; gives it back if the lane is gone.
    pub(super) fn push(&self, job: Job<C>) -> Result<(), Job<C>> {
        match self {
            LaneSender::Ring(ring) => ring.push(job),
            LaneSender::Channel(sender) => sender
                .send(job)
                .map_err(|crossbeam_channel::SendError(job)| job),
        }
    }

    /// Wakes the lane if it sleeps (to see the exit or abort flag).
    pub(super) fn wake(&self) {
        match self {
            LaneSender::Ring(ring) => ring.ring.wake(),
            // A waiting lane looks at its flags every `PARK_RECHECK`.
            LaneSender::Channel(_) => {}
        }
    }
}

impl<C> LaneReceiver<C> {
    /// The oldest write, if one is queued.
    pub(super) fn take(&self) -> Take<C> {
        match self {
            LaneReceiver::Ring(ring) => ring.take(),
            LaneReceiver::Channel { receiver, exit } => match receiver.try_recv() {
                Ok(job) => Take::Job(job),
                // Shut down and empty: no write can arrive any more (the
                // adapter's fence holds every key).
                Err(crossbeam_channel::TryRecvError::Empty) if exit.load(Ordering::SeqCst) => {
                    Take::Closed
                }
                Err(crossbeam_channel::TryRecvError::Empty) => Take::Empty,
                Err(crossbeam_channel::TryRecvError::Disconnected) => Take::Closed,
            },
        }
    }

    /// Blocks until a sender hands over a write; `None` once every sender
    /// is gone (or the adapter shut down) and the queue is drained.
    pub(super) fn wait(&self) -> Option<Job<C>> {
        match self {
            LaneReceiver::Ring(ring) => ring.wait(),
            LaneReceiver::Channel { receiver, exit } => loop {
                match receiver.recv_timeout(PARK_RECHECK) {
                    Ok(job) => return Some(job),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        if exit.load(Ordering::SeqCst) && receiver.is_empty() {
                            return None;
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return None,
                }
            },
        }
    }
}

fn ring_queue<C>(
    capacity: usize,
    exit: Arc<AtomicBool>,
) -> (RingLaneSender<C>, RingLaneReceiver<C>) {
    let (sender, receiver) = ring::ring(capacity.min(MAX_RING), PARK_RECHECK);
    let overflow = Arc::new(Overflow {
        active: AtomicBool::new(false),
        jobs: Mutex::new(VecDeque::new()),
    });
    (
        RingLaneSender {
            ring: sender,
            overflow: Arc::clone(&overflow),
        },
        RingLaneReceiver {
            ring: receiver,
            overflow,
            exit,
        },
    )
}

impl<C> RingLaneSender<C> {
    /// Queues `job` without blocking; gives it back if the lane is gone.
    pub(super) fn push(&self, mut job: Job<C>) -> Result<(), Job<C>> {
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

impl<C> RingLaneReceiver<C> {
    /// The oldest write: the ring's first, since the overflow only holds
    /// writes queued after the ring filled up.
    pub(super) fn take(&self) -> Take<C> {
        match self.ring.try_pop() {
            Ok(job) => Take::Job(job),
            Err(PopError::Empty)
                if !self.overflow.active.load(Ordering::Acquire)
                    && self.exit.load(Ordering::SeqCst)
                    && !self.ring.push_in_progress() =>
            {
                // Shut down and empty: no write can arrive any more (the
                // adapter's fence holds every key).
                Take::Closed
            }
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
    pub(super) fn wait(&self) -> Option<Job<C>> {
        loop {
            match self.take() {
                Take::Job(job) => return Some(job),
                Take::Closed => return None,
                // A caller is between claiming a slot and writing it: it is
                // running, not waiting, so let it finish.
                Take::Empty if self.ring.push_in_progress() => thread::yield_now(),
                Take::Empty => self.ring.park(|| {
                    self.overflow.active.load(Ordering::SeqCst) || self.exit.load(Ordering::SeqCst)
                }),
            }
        }
    }
}

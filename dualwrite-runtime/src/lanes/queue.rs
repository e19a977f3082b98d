//! A lane's queue: a bounded ring allocated once, then an ordered overflow.
//!
//! How many writes a lane holds in all is bounded by the caller's admission
//! check (`LaneConfig::max_queued`), made before the primary write; the
//! overflow only takes what the ring cannot hold below that bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::Job;
use super::config::LaneQueue;
use crate::ring::{self, PopError, PushError, RingReceiver, RingSender};
// The ring and its overflow, which the loom models check (`loom_tests`
// below); the lanes' shutdown flag (`exit`) stays std's.
use crate::sync::{self, MutexGuard, thread};

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
    active: sync::AtomicBool,
    jobs: sync::Mutex<VecDeque<Job<C>>>,
}

impl<C> Overflow<C> {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Job<C>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side of one lane's queue: a bounded ring allocated once,
/// then the overflow.
pub(super) struct RingLaneSender<C> {
    pub(super) ring: RingSender<Job<C>>,
    overflow: sync::Arc<Overflow<C>>,
}

/// The lane's side of its queue.
pub(super) struct RingLaneReceiver<C> {
    ring: RingReceiver<Job<C>>,
    overflow: sync::Arc<Overflow<C>>,
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
    let overflow = sync::Arc::new(Overflow {
        active: sync::AtomicBool::new(false),
        jobs: sync::Mutex::new(VecDeque::new()),
    });
    (
        RingLaneSender {
            ring: sender,
            overflow: sync::Arc::clone(&overflow),
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

/// Loom models of the ring's hand-over to the overflow and back (see
/// `crate::ring`'s `loom_tests` for the ring itself and how to run them).
/// The lane runs the real `wait` loop; under loom its park is a yield.
///
/// Each model runs twice: free, and with a gate that holds the later pushes
/// until the lane has taken some jobs. Loom's partial-order reduction does
/// not reorder a store after another thread's earlier load of the same
/// atomic when the storing thread loaded it itself just before (the lane
/// reads `head` before it moves it; tokio-rs/loom#166), so without the gate
/// it never lets a push see the room the lane has just made. The gate is
/// relaxed on both sides: it steers the schedule and orders no memory, so
/// the queue's own orderings must still do that.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::phase::Store;
    use crate::sync::{model, thread};

    /// A command naming its sender and its number in that sender's
    /// sequence.
    type Command = (usize, usize);

    fn job(sender: usize, n: usize) -> Job<Command> {
        Job {
            method: "put",
            key: None,
            render_key: None,
            key_hash: Some(sender as u64),
            stripe: 0,
            target: Store::New,
            command: (sender, n),
        }
    }

    fn queue() -> (RingLaneSender<Command>, RingLaneReceiver<Command>) {
        ring_queue(2, Arc::new(AtomicBool::new(false)))
    }

    fn push(sender: &RingLaneSender<Command>, job: Job<Command>) {
        assert!(sender.push(job).is_ok(), "the lane is gone");
    }

    /// Opened by the lane once it has taken `after` jobs.
    #[derive(Clone)]
    struct Gate {
        after: usize,
        open: sync::Arc<sync::AtomicBool>,
    }

    impl Gate {
        /// A gate that opens after `after` jobs, if `gated`.
        fn new(gated: bool, after: usize) -> Option<Gate> {
            gated.then(|| Gate {
                after,
                open: sync::Arc::new(sync::AtomicBool::new(false)),
            })
        }

        fn wait(gate: &Option<Gate>) {
            if let Some(gate) = gate {
                while !gate.open.load(Ordering::Relaxed) {
                    thread::yield_now();
                }
            }
        }
    }

    /// Runs the lane's `wait` loop until the queue closes; what it got.
    fn run_lane(
        receiver: RingLaneReceiver<Command>,
        gate: Option<Gate>,
    ) -> loom::thread::JoinHandle<Vec<Command>> {
        thread::spawn(move || {
            let mut taken = Vec::new();
            while let Some(job) = receiver.wait() {
                taken.push(job.command);
                if let Some(gate) = &gate
                    && taken.len() == gate.after
                {
                    gate.open.store(true, Ordering::Relaxed);
                }
            }
            taken
        })
    }

    fn in_order(sender: usize, count: usize) -> Vec<Command> {
        (0..count).map(|n| (sender, n)).collect()
    }

    /// The ring (two slots) is full and job 2 went to the overflow; then
    /// jobs 3 and 4 of the same sender are pushed while the lane drains
    /// (gated: after the lane took job 0, so the ring has room). They must
    /// queue behind job 2: all five come out in push order.
    #[test]
    fn loom_pushes_after_an_overflowed_job_queue_behind_it() {
        for gated in [false, true] {
            model(3, move || {
                let (sender, receiver) = queue();
                for n in 0..3 {
                    push(&sender, job(0, n));
                }
                assert!(
                    sender.overflow.active.load(Ordering::Relaxed),
                    "job 2 found the ring full"
                );
                let gate = Gate::new(gated, 1);
                let lane = run_lane(receiver, gate.clone());
                Gate::wait(&gate);
                for n in 3..5 {
                    push(&sender, job(0, n));
                }
                drop(sender);
                assert_eq!(lane.join().expect("lane"), in_order(0, 5));
            });
        }
    }

    /// The ring (two slots) is full when the lane starts; the sender pushes
    /// three more jobs as the lane drains it (gated: after the lane took
    /// both), so a job can land in the ring just before the next one goes
    /// to the overflow, and the lane must not take the overflow's job while
    /// the ring job before it is on its way. All five come out in order.
    #[test]
    fn loom_a_ring_job_goes_before_the_overflow_job_pushed_after_it() {
        for gated in [false, true] {
            model(3, move || {
                let (sender, receiver) = queue();
                for n in 0..2 {
                    push(&sender, job(0, n));
                }
                let gate = Gate::new(gated, 2);
                let lane = run_lane(receiver, gate.clone());
                Gate::wait(&gate);
                for n in 2..5 {
                    push(&sender, job(0, n));
                }
                drop(sender);
                assert_eq!(lane.join().expect("lane"), in_order(0, 5));
            });
        }
    }

    /// Two senders. Sender 0 fills the ring and puts job (0, 2) in the
    /// overflow; then, while the lane drains, sender 0 pushes (0, 3) and a
    /// second sender, started after (0, 2) was queued (gated: once the lane
    /// took a job), pushes (1, 0) and (1, 1). Each sender's jobs come out
    /// in its order, and sender 1's after (0, 2), queued before they were
    /// pushed.
    #[test]
    fn loom_two_senders_keep_their_order_behind_the_overflow() {
        for gated in [false, true] {
            model(2, move || {
                let (sender, receiver) = queue();
                for n in 0..3 {
                    push(&sender, job(0, n));
                }
                let gate = Gate::new(gated, 1);
                let lane = run_lane(receiver, gate.clone());
                // loom's `Arc`, so that the last drop (which closes the
                // queue) is ordered after the other sender's pushes.
                let sender = sync::Arc::new(sender);
                let other = {
                    let sender = sync::Arc::clone(&sender);
                    thread::spawn(move || {
                        Gate::wait(&gate);
                        for n in 0..2 {
                            push(&sender, job(1, n));
                        }
                    })
                };
                push(&sender, job(0, 3));
                drop(sender);
                other.join().expect("sender 1");
                let taken = lane.join().expect("lane");
                let of = |who: usize| -> Vec<Command> {
                    taken.iter().copied().filter(|job| job.0 == who).collect()
                };
                assert_eq!(of(0), in_order(0, 4), "sender 0's order");
                assert_eq!(of(1), in_order(1, 2), "sender 1's order");
                let position = |command| taken.iter().position(|job| *job == command);
                assert!(
                    position((0, 2)) < position((1, 0)),
                    "a job pushed after the overflowed one overtook it: {taken:?}"
                );
            });
        }
    }
}

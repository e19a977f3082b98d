//! The bounded queue in front of each secondary lane: many callers push,
//! one lane thread pops.
//!
//! A push reads only lines the callers own (the tail and a cached copy of the
//! lane's head) and then stores the job into its slot. It never loads a line
//! the lane has just written and runs no fence after the store, so the caller
//! does not wait for the slot's cache line to arrive from the lane's core:
//! the store buffer carries it. (std's `sync_channel` reads the slot's stamp,
//! which the lane writes on every receive, so each send stalls on that line.)
//!
//! The lane finds a job by its slot's sequence number: slot `i % capacity`
//! (the capacity is a power of two, so this holds across the wrap of `usize`)
//! holds job `i` once its sequence reads `i + 1`. It publishes how far it has
//! read through `head`; callers reload `head` only when their cached copy
//! says the ring is full.
//!
//! Jobs come out in the order their pushes claimed indices. A push that has
//! claimed an index and not yet written its slot (a caller preempted between
//! the two) holds back the jobs behind it until it finishes; it never loses
//! them.
//!
//! A lane that has been idle for a while parks. A caller that finds it parked
//! unparks it. Since the caller runs no fence between its store and that
//! check, a push racing with the lane going to sleep can miss it; the lane
//! therefore parks for a bounded time (the `park_recheck` given to [`ring`])
//! before it looks again, which bounds the delay of such a job.

use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::time::Duration;

use crate::sync::thread::{self, Thread};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Ordering, UnsafeCell, fence, unsync_usize};

/// A value alone on a pair of cache lines (adjacent-line prefetch pulls lines
/// in pairs on x86).
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

struct Slot<T> {
    /// `i + 1` once job `i` is written here; a job is never overwritten
    /// before the lane has read it (see `RingSender::try_push`).
    seq: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

struct Shared<T> {
    /// The next index to claim. Only callers touch it.
    tail: Padded<AtomicUsize>,
    /// A recent value of `head`, never ahead of it. Only callers touch it.
    cached_head: Padded<AtomicUsize>,
    /// The next index the lane reads. Only the lane writes it.
    head: Padded<AtomicUsize>,
    /// Set by the lane while it parks (or is about to).
    parked: Padded<AtomicBool>,
    /// The sender is gone: no job will be pushed any more.
    closed: AtomicBool,
    /// The receiver is gone: pushes are refused.
    receiver_gone: AtomicBool,
    /// The lane thread, recorded the first time it parks.
    lane: OnceLock<Thread>,
    /// The longest the lane parks before it looks at the ring again.
    park_recheck: Duration,
    slots: Box<[Slot<T>]>,
}

// SAFETY: a slot's value is written by exactly one pusher (the one whose
// compare-exchange claimed its index) and read by the one receiver, and the
// sequence number (release/acquire) orders the write before the read, while
// `head` (release/acquire) orders the read before the next write to the slot.
// So values move between threads (`T: Send`) and are never accessed by two
// threads at once.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The slot of job `index`. The length is a power of two, so indices
    /// map to slots the same way across the wrap of `usize`.
    fn slot(&self, index: usize) -> &Slot<T> {
        &self.slots[index & (self.slots.len() - 1)]
    }

    fn wake_lane(&self) {
        if let Some(lane) = self.lane.get() {
            thread::unpark(lane);
        }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        let tail = unsync_usize(&mut self.tail.0);
        let mut index = unsync_usize(&mut self.head.0);
        let mask = self.slots.len() - 1;
        while index != tail {
            let slot = &mut self.slots[index & mask];
            if unsync_usize(&mut slot.seq) == index.wrapping_add(1) {
                // SAFETY: the sequence says job `index` was written here and
                // `head` says the lane has not taken it; `&mut self` means no
                // one else can reach it.
                unsafe { slot.value.get_mut().assume_init_drop() };
            }
            index = index.wrapping_add(1);
        }
    }
}

/// Why a push was refused; the value comes back.
pub(crate) enum PushError<T> {
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// Why [`RingSender::claim`] found no index to give (a [`PushError`] without
/// the value).
enum Refused {
    Full,
    Closed,
}

/// Why a pop found nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PopError {
    Empty,
    /// The sender is gone and every job has been taken.
    Closed,
}

/// The callers' side. Shared by reference among threads; dropping it closes
/// the ring.
pub(crate) struct RingSender<T> {
    shared: Arc<Shared<T>>,
}

/// The lane's side. Used by one thread: it is `Send` but not `Sync`, since
/// two concurrent pops could take the same value.
pub(crate) struct RingReceiver<T> {
    shared: Arc<Shared<T>>,
    _one_thread: PhantomData<Cell<()>>,
}

/// A ring of at least `capacity` slots (rounded up to a power of two),
/// allocated once, whose receiver parks for at most `park_recheck` at a time.
pub(crate) fn ring<T>(capacity: usize, park_recheck: Duration) -> (RingSender<T>, RingReceiver<T>) {
    let length = capacity
        .max(1)
        .checked_next_power_of_two()
        .unwrap_or(1 << (usize::BITS - 1));
    let slots: Box<[Slot<T>]> = (0..length)
        .map(|_| Slot {
            seq: AtomicUsize::new(0),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })
        .collect();
    let shared = Arc::new(Shared {
        tail: Padded::default(),
        cached_head: Padded::default(),
        head: Padded::default(),
        parked: Padded::default(),
        closed: AtomicBool::new(false),
        receiver_gone: AtomicBool::new(false),
        lane: OnceLock::new(),
        park_recheck,
        slots,
    });
    (
        RingSender {
            shared: Arc::clone(&shared),
        },
        RingReceiver {
            shared,
            _one_thread: PhantomData,
        },
    )
}

impl<T> RingSender<T> {
    /// Queues `value` behind every value pushed before it; never blocks.
    pub(crate) fn try_push(&self, value: T) -> Result<(), PushError<T>> {
        match self.claim() {
            Ok(index) => {
                // SAFETY: `claim` gave `index` to this call alone.
                unsafe { self.fill(index, value) };
                Ok(())
            }
            Err(Refused::Full) => Err(PushError::Full(value)),
            Err(Refused::Closed) => Err(PushError::Closed(value)),
        }
    }

    /// The first half of a push: claims the next index, whose slot the lane
    /// is done with. Until [`RingSender::fill`] writes it, the jobs behind
    /// it wait (and [`RingReceiver::push_in_progress`] says so).
    #[inline(always)]
    fn claim(&self) -> Result<usize, Refused> {
        let shared = &*self.shared;
        if shared.receiver_gone.load(Ordering::Relaxed) {
            return Err(Refused::Closed);
        }
        let capacity = shared.slots.len();
        // `tail` is acquired and released so that whatever a caller did
        // before its push (the lanes count the job as submitted) is visible
        // to every caller whose push comes after it in the ring: a flush
        // counts on that. On x86 this costs nothing over relaxed.
        let mut tail = shared.tail.0.load(Ordering::Acquire);
        loop {
            // Slot `tail` is free once the lane has read job `tail - capacity`,
            // that is once `head > tail - capacity`.
            let head = shared.cached_head.0.load(Ordering::Acquire);
            if tail.wrapping_sub(head) >= capacity {
                let head = shared.head.0.load(Ordering::Acquire);
                shared.cached_head.0.store(head, Ordering::Release);
                if tail.wrapping_sub(head) >= capacity {
                    // `tail` may be stale (other pushes, then the lane, moved
                    // on since it was read): only a current one says full.
                    let current = shared.tail.0.load(Ordering::Acquire);
                    if current != tail {
                        tail = current;
                        continue;
                    }
                    return Err(Refused::Full);
                }
            }
            match shared.tail.0.compare_exchange_weak(
                tail,
                tail.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(tail),
                Err(current) => tail = current,
            }
        }
    }

    /// The second half of a push: writes job `index` into its slot and
    /// wakes the lane if it is parked.
    ///
    /// # Safety
    ///
    /// `index` comes from [`RingSender::claim`], and is filled once.
    #[inline(always)]
    unsafe fn fill(&self, index: usize, value: T) {
        let shared = &*self.shared;
        let slot = shared.slot(index);
        // SAFETY: this call alone claimed `index`, and the claim (acquiring
        // `head`, directly or through `cached_head`) saw the lane done with
        // the slot's previous job, so nobody else touches the value.
        slot.value.with_mut(|cell| unsafe { (*cell).write(value) });
        slot.seq.store(index.wrapping_add(1), Ordering::Release);
        if shared.parked.0.load(Ordering::Relaxed) {
            shared.wake_lane();
        }
    }

    /// Wakes the lane if it is parked, after work went somewhere else (the
    /// `ready` check of [`RingReceiver::park`] must see that work). Unlike a
    /// push, this one fences, so it cannot miss a lane going to sleep.
    pub(crate) fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.shared.parked.0.load(Ordering::SeqCst) {
            self.shared.wake_lane();
        }
    }

    /// Whether the receiver is gone (pushes are refused).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.receiver_gone.load(Ordering::SeqCst)
    }
}

impl<T> Drop for RingSender<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake_lane();
    }
}

impl<T> RingReceiver<T> {
    /// The oldest job, if its push has finished.
    pub(crate) fn try_pop(&self) -> Result<T, PopError> {
        match self.pop() {
            Some(value) => Ok(value),
            None if self.shared.closed.load(Ordering::Acquire) => {
                // Every push happened before the close: look once more.
                self.pop().ok_or(PopError::Closed)
            }
            None => Err(PopError::Empty),
        }
    }

    /// Whether a push has claimed a slot and not finished writing it yet
    /// (`try_pop` then reports `Empty` although a job is on its way). Reads
    /// the callers' line, so look only when it matters.
    pub(crate) fn push_in_progress(&self) -> bool {
        self.shared.tail.0.load(Ordering::Acquire) != self.shared.head.0.load(Ordering::Relaxed)
    }

    /// `head`, if the job there has been written (its sequence read with
    /// `order`).
    fn written_head(&self, order: Ordering) -> Option<usize> {
        let shared = &*self.shared;
        let head = shared.head.0.load(Ordering::Relaxed);
        (shared.slot(head).seq.load(order) == head.wrapping_add(1)).then_some(head)
    }

    fn pop(&self) -> Option<T> {
        let shared = &*self.shared;
        let head = self.written_head(Ordering::Acquire)?;
        let slot = shared.slot(head);
        // SAFETY: the sequence (acquired) says the pusher that claimed `head`
        // has written the value, and only this receiver reads it, once:
        // `head` moves past it right after.
        let value = slot
            .value
            .with(|cell| unsafe { (*cell).assume_init_read() });
        shared.head.0.store(head.wrapping_add(1), Ordering::Release);
        Some(value)
    }

    /// Sleeps until a push, the close or [`RingSender::wake`] wakes the lane,
    /// or for at most the ring's `park_recheck`; not at all if `ready` (the
    /// caller's other sources of work) says there is something to do. Call
    /// from the lane thread, after `try_pop` found the ring empty; it may
    /// return early, so look again after.
    pub(crate) fn park(&self, ready: impl Fn() -> bool) {
        let shared = &*self.shared;
        shared.lane.get_or_init(thread::current);
        shared.parked.0.store(true, Ordering::SeqCst);
        // Work whose store is visible by now needs no wake-up call.
        let pushed = self.written_head(Ordering::SeqCst).is_some();
        if !pushed && !shared.closed.load(Ordering::SeqCst) && !ready() {
            thread::park_timeout(shared.park_recheck);
        }
        shared.parked.0.store(false, Ordering::Relaxed);
    }
}

impl<T> Drop for RingReceiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::thread;

    const RECHECK: Duration = Duration::from_millis(100);

    #[test]
    fn values_come_out_in_order_across_many_laps() {
        let (sender, receiver) = ring(4, RECHECK);
        for value in 0..1000_u32 {
            assert!(sender.try_push(value).is_ok());
            if value % 3 == 2 {
                // Let the ring run three deep now and then.
                for expected in value - 2..=value {
                    assert_eq!(receiver.try_pop(), Ok(expected));
                }
            }
        }
        assert_eq!(receiver.try_pop(), Ok(999));
        assert_eq!(receiver.try_pop(), Err(PopError::Empty));
    }

    #[test]
    fn a_full_ring_gives_the_value_back() {
        let (sender, receiver) = ring(2, RECHECK);
        assert!(sender.try_push(1).is_ok());
        assert!(sender.try_push(2).is_ok());
        assert!(matches!(sender.try_push(3), Err(PushError::Full(3))));
        assert_eq!(receiver.try_pop(), Ok(1));
        assert!(sender.try_push(3).is_ok());
        assert_eq!(receiver.try_pop(), Ok(2));
        assert_eq!(receiver.try_pop(), Ok(3));
    }

    #[test]
    fn the_capacity_is_rounded_up_to_a_power_of_two() {
        let (sender, receiver) = ring(3, RECHECK);
        for value in 0..4 {
            assert!(sender.try_push(value).is_ok());
        }
        assert!(matches!(sender.try_push(4), Err(PushError::Full(4))));
        assert_eq!(receiver.try_pop(), Ok(0));
        let (one, _receiver) = ring(0, RECHECK);
        assert!(one.try_push(1).is_ok());
        assert!(matches!(one.try_push(2), Err(PushError::Full(2))));
    }

    #[test]
    fn the_receiver_drains_what_is_left_after_the_sender_goes() {
        let (sender, receiver) = ring(8, RECHECK);
        assert!(sender.try_push("a").is_ok());
        drop(sender);
        assert_eq!(receiver.try_pop(), Ok("a"));
        assert_eq!(receiver.try_pop(), Err(PopError::Closed));
    }

    #[test]
    fn a_claimed_slot_is_a_push_in_progress() {
        let (sender, receiver) = ring::<u32>(4, RECHECK);
        assert!(!receiver.push_in_progress());
        // Claim a slot the way a push does, without writing it yet.
        sender.shared.tail.0.store(1, Ordering::SeqCst);
        assert_eq!(receiver.try_pop(), Err(PopError::Empty));
        assert!(receiver.push_in_progress());
        // Finish that push by hand.
        let slot = sender.shared.slot(0);
        // SAFETY: the slot was claimed above and nobody else writes it.
        slot.value.with_mut(|cell| unsafe { (*cell).write(5) });
        slot.seq.store(1, Ordering::Release);
        assert_eq!(receiver.try_pop(), Ok(5));
        assert!(!receiver.push_in_progress());
    }

    #[test]
    fn pushes_after_the_receiver_is_gone_are_refused() {
        let (sender, receiver) = ring(8, RECHECK);
        drop(receiver);
        assert!(sender.is_closed());
        assert!(matches!(sender.try_push(7), Err(PushError::Closed(7))));
    }

    #[test]
    fn values_left_in_the_ring_are_dropped_once() {
        let value = Arc::new(());
        let (sender, receiver) = ring(4, RECHECK);
        for _ in 0..3 {
            assert!(sender.try_push(Arc::clone(&value)).is_ok());
        }
        drop(receiver.try_pop());
        assert_eq!(Arc::strong_count(&value), 3);
        drop((sender, receiver));
        assert_eq!(Arc::strong_count(&value), 1);
    }

    #[test]
    fn concurrent_pushers_lose_nothing_and_keep_their_own_order() {
        const PUSHERS: u64 = 4;
        const EACH: u64 = 50_000;
        let (sender, receiver) = ring::<(u64, u64)>(64, RECHECK);
        let consumer = thread::spawn(move || {
            let mut next = [0_u64; PUSHERS as usize];
            let mut received = 0;
            loop {
                match receiver.try_pop() {
                    Ok((pusher, n)) => {
                        assert_eq!(n, next[pusher as usize], "pusher {pusher} out of order");
                        next[pusher as usize] += 1;
                        received += 1;
                    }
                    Err(PopError::Empty) => receiver.park(|| false),
                    Err(PopError::Closed) => return (received, next),
                }
            }
        });
        thread::scope(|scope| {
            for pusher in 0..PUSHERS {
                let sender = &sender;
                scope.spawn(move || {
                    for n in 0..EACH {
                        let mut value = (pusher, n);
                        loop {
                            match sender.try_push(value) {
                                Ok(()) => break,
                                Err(PushError::Full(back)) => {
                                    value = back;
                                    thread::yield_now();
                                }
                                Err(PushError::Closed(_)) => panic!("receiver gone"),
                            }
                        }
                    }
                });
            }
        });
        drop(sender);
        let (received, next) = consumer.join().expect("consumer");
        assert_eq!(received, PUSHERS * EACH);
        assert!(next.iter().all(|&n| n == EACH));
    }

    /// Runs a lane that parks until it gets one value (`Some`) or the
    /// close (`None`), and reports which.
    fn lane_reporting_first<T: Send + 'static>(
        receiver: RingReceiver<T>,
    ) -> std::sync::mpsc::Receiver<Option<T>> {
        let shared = Arc::clone(&receiver.shared);
        let (report, reports) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let first = loop {
                match receiver.try_pop() {
                    Ok(value) => break Some(value),
                    Err(PopError::Empty) => receiver.park(|| false),
                    Err(PopError::Closed) => break None,
                }
            };
            report.send(first).expect("test thread");
        });
        // Wait until the lane has parked: a push then sees it parked, since
        // this thread reads the flag after the lane set it.
        while !shared.parked.0.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
        reports
    }

    #[test]
    fn a_parked_receiver_wakes_for_a_push() {
        // Parks for up to an hour at a time, so only the push can wake it.
        let (sender, receiver) = ring::<u32>(4, Duration::from_secs(3600));
        let reports = lane_reporting_first(receiver);
        assert!(sender.try_push(42).is_ok());
        assert_eq!(reports.recv_timeout(Duration::from_secs(30)), Ok(Some(42)));
    }

    #[test]
    fn wake_reaches_a_receiver_parked_on_other_work() {
        let (sender, receiver) = ring::<u32>(4, Duration::from_secs(3600));
        let other_work = Arc::new(AtomicBool::new(false));
        let (report, reports) = std::sync::mpsc::channel();
        let seen = Arc::clone(&other_work);
        thread::spawn(move || {
            while !seen.load(Ordering::SeqCst) {
                receiver.park(|| seen.load(Ordering::SeqCst));
            }
            report.send(()).expect("test thread");
        });
        thread::sleep(Duration::from_millis(50));
        other_work.store(true, Ordering::SeqCst);
        sender.wake();
        assert_eq!(reports.recv_timeout(Duration::from_secs(30)), Ok(()));
    }

    #[test]
    fn a_parked_receiver_wakes_when_the_sender_goes() {
        let (sender, receiver) = ring::<u32>(4, Duration::from_secs(3600));
        let reports = lane_reporting_first(receiver);
        drop(sender);
        assert_eq!(reports.recv_timeout(Duration::from_secs(30)), Ok(None));
    }
}

/// Loom models of the ring: each test runs its closure in every interleaving
/// (and every value a load may read under the memory model) that loom
/// reaches within the preemption bound. Run with
/// `RUSTFLAGS="--cfg loom" cargo test -p dualwrite-runtime --release --lib loom`.
///
/// At most one thread of a model waits (yielding) for another at a time:
/// with two such threads loom also explores the unfair schedules in which
/// they take turns forever and never run the thread they wait for, and it
/// stops at its branch limit.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{model, thread};

    /// Unused: under loom a timed park is a yield (see `crate::sync`).
    const RECHECK: Duration = Duration::from_millis(100);

    /// Pops the next value, parking while the ring is empty; `None` once
    /// the sender is gone and the ring drained.
    fn pop<T>(receiver: &RingReceiver<T>) -> Option<T> {
        loop {
            match receiver.try_pop() {
                Ok(value) => return Some(value),
                Err(PopError::Empty) => receiver.park(|| false),
                Err(PopError::Closed) => return None,
            }
        }
    }

    /// Two pushers, two values each, into a ring of two slots while the
    /// receiver pops (a push that finds the ring full gives up: a pusher
    /// spinning on a full ring would, in loom's unfair schedules, starve
    /// the claimed push the receiver waits for). Each pushed value comes
    /// out exactly once, each pusher's in the order it pushed them, and
    /// `Closed` only after all of them.
    #[test]
    fn loom_two_pushers_one_popper() {
        model(2, || {
            let (sender, receiver) = ring::<(usize, usize)>(2, RECHECK);
            let sender = Arc::new(sender);
            let pushers: Vec<_> = (0..2)
                .map(|pusher| {
                    let sender = Arc::clone(&sender);
                    thread::spawn(move || {
                        let mut pushed = Vec::new();
                        for n in 0..2 {
                            match sender.try_push((pusher, n)) {
                                Ok(()) => pushed.push(n),
                                Err(PushError::Full(value)) => assert_eq!(value, (pusher, n)),
                                Err(PushError::Closed(_)) => panic!("the receiver is gone"),
                            }
                        }
                        pushed
                    })
                })
                .collect();
            // The last pusher to finish drops the sender, closing the ring.
            drop(sender);
            let mut popped = [Vec::new(), Vec::new()];
            while let Some((pusher, n)) = pop(&receiver) {
                popped[pusher].push(n);
            }
            for (pusher, handle) in pushers.into_iter().enumerate() {
                let pushed = handle.join().expect("pusher");
                assert_eq!(
                    popped[pusher], pushed,
                    "pusher {pusher}: lost, repeated or reordered"
                );
            }
        });
    }

    /// Pushes racing with pops in a ring of two slots on its second lap
    /// (slot 0 holds job 2 and is reused for job 4): a full ring gives the
    /// value back, a ring the pusher knows has room takes it, and the lane's
    /// read of a slot is ordered before the next write to it (loom checks
    /// every access to the slot's value).
    #[test]
    fn loom_push_races_pop_across_the_wrap() {
        model(3, || {
            let (sender, receiver) = ring::<usize>(2, RECHECK);
            for value in 0..2 {
                assert!(sender.try_push(value).is_ok());
                assert_eq!(receiver.try_pop(), Ok(value));
            }
            assert!(sender.try_push(2).is_ok());
            let popped = Arc::new(AtomicBool::new(false));
            let lane = {
                let popped = Arc::clone(&popped);
                thread::spawn(move || {
                    assert_eq!(pop(&receiver), Some(2));
                    popped.store(true, Ordering::Release);
                    assert_eq!(pop(&receiver), Some(3));
                    assert_eq!(pop(&receiver), Some(4));
                    assert_eq!(pop(&receiver), None);
                })
            };
            assert!(sender.try_push(3).is_ok(), "slot 1 is free");
            loop {
                let room = popped.load(Ordering::Acquire);
                match sender.try_push(4) {
                    Ok(()) => break,
                    Err(PushError::Full(value)) => {
                        assert_eq!(value, 4, "a full ring gives the value back");
                        assert!(!room, "the lane took job 2, yet the ring said full");
                        thread::yield_now();
                    }
                    Err(PushError::Closed(_)) => panic!("the receiver is gone"),
                }
            }
            drop(sender);
            lane.join().expect("lane");
        });
    }

    /// Counts its drops, by the number it carries.
    struct Counted {
        id: usize,
        drops: std::sync::Arc<[std::sync::atomic::AtomicUsize; 3]>,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.drops[self.id].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Tallies (std atomics: bookkeeping for the test, not part of the
    /// model, and loom runs one thread at a time).
    fn tallies() -> std::sync::Arc<[std::sync::atomic::AtomicUsize; 3]> {
        std::sync::Arc::new(Default::default())
    }

    fn dropped_once(drops: &[std::sync::atomic::AtomicUsize; 3]) {
        for (id, count) in drops.iter().enumerate() {
            let count = count.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(count, 1, "value {id} dropped {count} times");
        }
    }

    /// The sender pushes three values into two slots (giving up on a full
    /// ring) and goes away while the receiver pops: the receiver gets the
    /// pushed values in order, then `Closed`, and every value is dropped
    /// exactly once.
    #[test]
    fn loom_close_while_popping_drains_then_reports_closed() {
        model(3, || {
            let drops = tallies();
            let (sender, receiver) = ring::<Counted>(2, RECHECK);
            let pusher = {
                let drops = std::sync::Arc::clone(&drops);
                thread::spawn(move || {
                    let mut pushed = Vec::new();
                    for id in 0..3 {
                        let value = Counted {
                            id,
                            drops: std::sync::Arc::clone(&drops),
                        };
                        match sender.try_push(value) {
                            Ok(()) => pushed.push(id),
                            // Dropped here, by the pusher.
                            Err(PushError::Full(_)) => {}
                            Err(PushError::Closed(_)) => panic!("the receiver is gone"),
                        }
                    }
                    // `sender` is dropped here: the ring closes.
                    pushed
                })
            };
            let mut popped = Vec::new();
            while let Some(value) = pop(&receiver) {
                popped.push(value.id);
            }
            assert_eq!(receiver.try_pop().err(), Some(PopError::Closed));
            let pushed = pusher.join().expect("pusher");
            assert_eq!(
                popped, pushed,
                "the receiver must drain every pushed value, in order"
            );
            drop(receiver);
            dropped_once(&drops);
        });
    }

    /// The receiver takes one value and goes away while the sender still
    /// pushes: pushes after that are refused (the value comes back), and
    /// the values left in the ring are dropped with it, each exactly once.
    #[test]
    fn loom_values_left_in_the_ring_are_dropped_once() {
        model(3, || {
            let drops = tallies();
            let (sender, receiver) = ring::<Counted>(2, RECHECK);
            let pusher = {
                let drops = std::sync::Arc::clone(&drops);
                thread::spawn(move || {
                    for id in 0..3 {
                        let value = Counted {
                            id,
                            drops: std::sync::Arc::clone(&drops),
                        };
                        // A refused value is dropped here, by the pusher.
                        match sender.try_push(value) {
                            Ok(()) | Err(PushError::Full(_)) => {}
                            Err(PushError::Closed(value)) => assert_eq!(value.id, id),
                        }
                    }
                })
            };
            if let Some(value) = pop(&receiver) {
                assert_eq!(value.id, 0, "the first value out is the first pushed");
            }
            drop(receiver);
            pusher.join().expect("pusher");
            dropped_once(&drops);
        });
    }

    /// A pusher that has claimed an index and not yet written its slot: a
    /// receiver that knows of the claim (it read the flag the pusher set
    /// after claiming) and finds the ring empty sees `push_in_progress`,
    /// and a value pushed behind the claim waits for it.
    #[test]
    fn loom_a_claimed_unwritten_slot_is_a_push_in_progress() {
        model(3, || {
            let (sender, receiver) = ring::<usize>(2, RECHECK);
            let sender = Arc::new(sender);
            let claimed = Arc::new(AtomicBool::new(false));
            let slow = {
                let (sender, claimed) = (Arc::clone(&sender), Arc::clone(&claimed));
                thread::spawn(move || {
                    let Ok(index) = sender.claim() else {
                        panic!("an empty ring has room")
                    };
                    claimed.store(true, Ordering::Release);
                    // SAFETY: `index` was claimed just above.
                    unsafe { sender.fill(index, 1) };
                })
            };
            let fast = {
                let sender = Arc::clone(&sender);
                thread::spawn(move || assert!(sender.try_push(2).is_ok(), "two slots, two values"))
            };
            drop(sender);
            let mut popped = Vec::new();
            loop {
                let knows_claim = claimed.load(Ordering::Acquire);
                match receiver.try_pop() {
                    Ok(value) => popped.push(value),
                    Err(PopError::Empty) => {
                        if knows_claim && !popped.contains(&1) {
                            assert!(
                                receiver.push_in_progress(),
                                "an index is claimed and its slot not written"
                            );
                        }
                        thread::yield_now();
                    }
                    Err(PopError::Closed) => break,
                }
            }
            popped.sort_unstable();
            assert_eq!(popped, [1, 2]);
            assert!(!receiver.push_in_progress(), "every push is done");
            slow.join().expect("slow pusher");
            fast.join().expect("fast pusher");
        });
    }
}

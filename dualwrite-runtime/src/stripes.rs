//! Per-key sequencing: striped locks held from a write's routing through its
//! primary call to the hand-off (or the call) of its secondary write.
//!
//! Why: two callers writing one key must reach the secondary in the order
//! the primary committed them. Nothing orders them between the primary's
//! reply and the secondary write unless the second caller waits for the
//! first, so each write holds the stripe of its key for that span. Keys are
//! hashed onto a fixed number of stripes: two keys that share a stripe wait
//! for each other too (a cost, never a wrong order).
//!
//! Each stripe also counts the secondary writes of its keys that wait in the
//! lanes, and a shadow read looks at its key's stripe before and after the
//! reads: if a write was in flight or pending, the stores cannot agree yet
//! and the comparison is skipped rather than counted as a mismatch.
//!
//! A phase change fences: it stops new writes from starting
//! ([`KeyStripes::fence`]), waits for those in flight to hand off and for
//! the lanes to finish every pending write, and only then lets the route
//! change.
//!
//! The lock is a compare-and-swap on the stripe's state word when free (one
//! atomic read-modify-write, no allocation, no system call); contended
//! callers wait on a condition variable (blocking callers) or a
//! [`tokio::sync::Notify`] (async callers), which works on any executor.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Stripes for keyed writes; one more stripe serialises keyless writes.
pub(crate) const KEY_STRIPES: usize = 512;

/// The stripe of keyless writes and reads.
const KEYLESS: usize = KEY_STRIPES;

/// One stripe: a lock whose state word also counts acquisitions, the
/// number of its keys' secondary writes pending in the lanes, and the write
/// counters of the calls that held it (see [`StripeGuard::record_write`]).
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    /// `acquisitions << 1 | held`.
    state: AtomicU64,
    pending: AtomicU64,
    /// Writes made while holding the stripe, by `Stats` cell (store x role
    /// x outcome). Only the holder writes them, so a count is a plain load
    /// and store: no atomic read-modify-write, no line shared with other
    /// keys' callers.
    writes: [AtomicU64; 8],
    /// When the stripe's last write left to the change-data-capture
    /// follower was done on the primary (see [`KeyStripes::clock`]); 0:
    /// none.
    unfollowed: AtomicU64,
}

/// What a reader saw of a stripe; see [`KeyStripes::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observation {
    state: u64,
    pending: u64,
}

impl Observation {
    /// Whether no write of the stripe was in flight or pending.
    pub(crate) fn quiet(self) -> bool {
        self.state & 1 == 0 && self.pending == 0
    }
}

/// The striped locks and pending counts of one adapter.
pub(crate) struct KeyStripes {
    /// A fixed-size array, so that indexing by a stripe number reduced
    /// modulo `KEY_STRIPES` needs no bounds check.
    stripes: Box<[Stripe; KEY_STRIPES + 1]>,
    /// Fences holding (or taking) every stripe: while any does, new callers
    /// queue behind them instead of racing them for the stripes.
    fencing: AtomicUsize,
    /// Callers (and fences) waiting for a stripe.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    released: Condvar,
    released_async: Notify,
    /// Run by a fence once it holds every stripe, before it waits for the
    /// pending writes: the change-data-capture follower journals what the
    /// source holds up to now (counted pending). `false`: it could not.
    catch_up: Mutex<Option<CatchUp>>,
    /// Under change data capture: the follower has journaled every change
    /// committed on the source before this time ([`KeyStripes::clock`]).
    followed_until: AtomicU64,
    /// The latest `Stripe::unfollowed` of any stripe (for keyless reads).
    unfollowed_any: AtomicU64,
    /// Whether a change-data-capture follower carries writes now.
    following: AtomicBool,
    /// The origin of [`KeyStripes::clock`].
    base: Instant,
}

/// See `KeyStripes::catch_up`.
pub(crate) type CatchUp = std::sync::Arc<dyn Fn(Instant) -> bool + Send + Sync>;

impl Default for KeyStripes {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyStripes {
    pub(crate) fn new() -> Self {
        KeyStripes {
            stripes: (0..=KEY_STRIPES)
                .map(|_| Stripe::default())
                .collect::<Box<[Stripe]>>()
                .try_into()
                .unwrap_or_else(|_| unreachable!("KEY_STRIPES + 1 stripes were made")),
            fencing: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            released: Condvar::new(),
            released_async: Notify::new(),
            catch_up: Mutex::new(None),
            followed_until: AtomicU64::new(0),
            unfollowed_any: AtomicU64::new(0),
            following: AtomicBool::new(false),
            base: Instant::now(),
        }
    }

    /// Nanoseconds since the stripes were made, plus one (0 means never).
    fn clock(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// A change-data-capture follower carries the writes from now on
    /// (`true`), or no longer (`false`: what it did not journal stays in
    /// its source, and shadow reads stop waiting for it).
    pub(crate) fn set_following(&self, following: bool) {
        self.following.store(following, Ordering::SeqCst);
    }

    /// A write of the stripe succeeded on the primary and its copy is left
    /// to the change-data-capture follower. Called with the stripe held.
    pub(crate) fn left_to_follower(&self, index: usize) {
        let now = self.clock(Instant::now());
        self.stripes[index].unfollowed.store(now, Ordering::SeqCst);
        self.unfollowed_any.fetch_max(now, Ordering::SeqCst);
    }

    /// The follower has journaled (counted pending) every change committed
    /// on its source before `as_of`.
    pub(crate) fn followed_until(&self, as_of: Instant) {
        self.followed_until
            .fetch_max(self.clock(as_of), Ordering::SeqCst);
    }

    /// How far the follower trails at `now`: the time since the moment
    /// before which it has journaled every change (since the stripes were
    /// made, before its first round).
    pub(crate) fn follower_lag(&self, now: Instant) -> Duration {
        let until = self.followed_until.load(Ordering::SeqCst);
        Duration::from_nanos(self.clock(now).saturating_sub(until.max(1)))
    }

    /// Whether every write of the stripe ([`KeyStripes::ALL`]: of any
    /// stripe) left to the follower is journaled by now (counted pending or
    /// already applied); true when no follower runs.
    pub(crate) fn followed(&self, stripe: usize) -> bool {
        if !self.following.load(Ordering::SeqCst) {
            return true;
        }
        let until = self.followed_until.load(Ordering::SeqCst);
        let last = if stripe == Self::ALL {
            self.unfollowed_any.load(Ordering::SeqCst)
        } else {
            self.stripes[stripe].unfollowed.load(Ordering::SeqCst)
        };
        last < until || last == 0
    }

    /// The stripe of a key with this route hash; keyless calls share one.
    #[inline]
    pub(crate) fn index(key_hash: Option<u64>) -> usize {
        match key_hash {
            // The remainder is below KEY_STRIPES, so it fits in usize.
            Some(hash) => (hash % KEY_STRIPES as u64) as usize,
            None => KEYLESS,
        }
    }

    /// Takes the stripe if it is free and no fence is waiting.
    #[inline]
    fn try_take(&self, index: usize) -> bool {
        if self.fencing.load(Ordering::SeqCst) != 0 {
            return false;
        }
        self.take_unfenced(index)
    }

    #[inline]
    fn take_unfenced(&self, index: usize) -> bool {
        let state = &self.stripes[index].state;
        // SeqCst on both sides of the check, for the waiter/releaser
        // handshake (see `wake_waiters`).
        let current = state.load(Ordering::SeqCst) & !1;
        state
            .compare_exchange(current, current + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Takes the stripe, blocking the thread while another write of the
    /// stripe (or a fence) holds it.
    #[inline]
    pub(crate) fn lock(&self, index: usize) -> StripeGuard<'_> {
        if !self.try_take(index) {
            self.lock_slow(index);
        }
        StripeGuard {
            stripes: self,
            index,
        }
    }

    #[cold]
    fn lock_slow(&self, index: usize) {
        let _waiter = Waiter::register(self);
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !self.try_take(index) {
            guard = self
                .released
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Takes the stripe without blocking the thread. Cancel-safe: a dropped
    /// future holds nothing.
    pub(crate) async fn lock_async(&self, index: usize) -> StripeGuard<'_> {
        if !self.try_take(index) {
            let _waiter = Waiter::register(self);
            loop {
                // Register before the check, so a release between the check
                // and the await still wakes this future.
                let mut released = pin!(self.released_async.notified());
                released.as_mut().enable();
                if self.try_take(index) {
                    break;
                }
                released.await;
            }
        }
        StripeGuard {
            stripes: self,
            index,
        }
    }

    #[inline]
    fn release(&self, index: usize) {
        // `+ 1` turns `n << 1 | 1` into `(n + 1) << 1`: free, one more
        // acquisition counted.
        self.stripes[index].state.fetch_add(1, Ordering::SeqCst);
        self.wake_waiters();
    }

    #[inline]
    fn wake_waiters(&self) {
        // Paired with the SeqCst increment of `waiters` before a waiter's
        // last check: either this load sees the waiter, or its check sees the
        // stripe free.
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.wake_waiters_slow();
        }
    }

    #[cold]
    fn wake_waiters_slow(&self) {
        // Taking the lock orders this wake-up after a blocking waiter that
        // saw the stripe held has started waiting.
        drop(self.lock.lock().unwrap_or_else(PoisonError::into_inner));
        self.released.notify_all();
        self.released_async.notify_waiters();
    }

    /// What a shadow read needs to know of its key's stripe now.
    #[inline]
    pub(crate) fn observe(&self, index: usize) -> Observation {
        let stripe = &self.stripes[index];
        Observation {
            state: stripe.state.load(Ordering::SeqCst),
            pending: stripe.pending.load(Ordering::SeqCst),
        }
    }

    /// What a keyless shadow read needs to know: every stripe at once (a
    /// keyless read may see any key). Held if any stripe is held; the
    /// acquisitions and pending writes summed.
    pub(crate) fn observe_all(&self) -> Observation {
        let mut acquisitions = 0_u64;
        let mut held = false;
        let mut pending = 0_u64;
        for stripe in self.stripes.iter() {
            let state = stripe.state.load(Ordering::SeqCst);
            acquisitions = acquisitions.wrapping_add(state >> 1);
            held |= state & 1 == 1;
            pending += stripe.pending.load(Ordering::SeqCst);
        }
        Observation {
            state: (acquisitions << 1) | u64::from(held),
            pending,
        }
    }

    /// The [`ShadowWindow`](crate::ShadowWindow) stripe that stands for all
    /// of them (keyless reads).
    pub(crate) const ALL: usize = usize::MAX;

    /// [`KeyStripes::observe`], or [`KeyStripes::observe_all`] for
    /// [`KeyStripes::ALL`].
    pub(crate) fn observe_window(&self, stripe: usize) -> Observation {
        if stripe == Self::ALL {
            self.observe_all()
        } else {
            self.observe(stripe)
        }
    }

    /// Secondary writes of the stripe pending (in a lane, or abandoned at
    /// their deadline and not returned yet).
    pub(crate) fn pending_of(&self, index: usize) -> u64 {
        self.stripes[index].pending.load(Ordering::SeqCst)
    }

    /// One more secondary write of the stripe waits in a lane.
    pub(crate) fn add_pending(&self, index: usize) {
        self.stripes[index].pending.fetch_add(1, Ordering::SeqCst);
    }

    /// A lane finished (applied or dead-lettered) a write of the stripe.
    pub(crate) fn finish_pending(&self, index: usize) {
        self.stripes[index].pending.fetch_sub(1, Ordering::SeqCst);
    }

    /// The write counts recorded under the stripes, by `Stats` cell.
    pub(crate) fn write_counts(&self) -> [u64; 8] {
        let mut counts = [0_u64; 8];
        for stripe in self.stripes.iter() {
            for (count, cell) in counts.iter_mut().zip(&stripe.writes) {
                *count += cell.load(Ordering::Relaxed);
            }
        }
        counts
    }

    /// Secondary writes pending in the lanes, over every stripe.
    pub(crate) fn total_pending(&self) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.pending.load(Ordering::SeqCst))
            .sum()
    }

    /// Stops new writes and waits, until `deadline`, for the writes in
    /// flight to hand off and for every pending secondary write to finish.
    /// While the returned hold lives no write of this adapter starts.
    ///
    /// On timeout everything taken is released and the number of secondary
    /// writes still pending is returned.
    pub(crate) fn fence(&self, deadline: Instant) -> Result<FenceHold<'_>, u64> {
        // Inside a multi-thread tokio runtime, let the runtime move this
        // worker's other tasks (async writers holding stripes across an
        // await) to other threads while the fence waits.
        match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.fence_blocking(deadline))
            }
            _ => self.fence_blocking(deadline),
        }
    }

    fn fence_blocking(&self, deadline: Instant) -> Result<FenceHold<'_>, u64> {
        self.fencing.fetch_add(1, Ordering::SeqCst);
        let mut hold = FenceHold {
            stripes: self,
            taken: 0,
        };
        let _waiter = Waiter::register(self);
        for index in 0..self.stripes.len() {
            if !self.take_until(index, deadline) {
                return Err(self.total_pending());
            }
            hold.taken += 1;
        }
        let catch_up = self.catch_up_hook();
        if let Some(catch_up) = catch_up
            && !catch_up(deadline)
        {
            return Err(self.total_pending().max(1));
        }
        // Nothing can start now; the lanes drain what is queued.
        let mut nap = Duration::from_micros(20);
        loop {
            let pending = self.total_pending();
            if pending == 0 {
                return Ok(hold);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(pending);
            }
            thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(1));
        }
    }

    /// Sets (or clears) what a fence runs before it waits for the pending
    /// writes; see `KeyStripes::catch_up`.
    pub(crate) fn set_catch_up(&self, catch_up: Option<CatchUp>) {
        *self.catch_up.lock().unwrap_or_else(PoisonError::into_inner) = catch_up;
    }

    /// What a fence runs before it waits for the pending writes, if set.
    pub(crate) fn catch_up_hook(&self) -> Option<CatchUp> {
        self.catch_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes a stripe for a fence (ignoring `fencing`), waiting until
    /// `deadline`.
    fn take_until(&self, index: usize, deadline: Instant) -> bool {
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.take_unfenced(index) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .released
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl KeyStripes {
    /// Takes the stripes at `indices` (sorted, distinct), blocking until
    /// all are held. The first is taken as a write takes it (behind a fence
    /// that is waiting); the rest are taken even while a fence waits, since
    /// the fence, which takes stripes in ascending order, may already be
    /// waiting for one of those held, and the writers holding the others
    /// finish without taking another.
    pub(crate) fn lock_many(&self, indices: &[usize]) -> ManyHold<'_> {
        let mut hold = ManyHold {
            stripes: self,
            held: Vec::with_capacity(indices.len()),
        };
        let Some((first, rest)) = indices.split_first() else {
            return hold;
        };
        std::mem::forget(self.lock(*first));
        hold.held.push(*first);
        for &index in rest {
            if !self.take_unfenced(index) {
                let _waiter = Waiter::register(self);
                let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
                while !self.take_unfenced(index) {
                    guard = self
                        .released
                        .wait(guard)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            hold.held.push(index);
        }
        hold
    }
}

/// Stripes held by [`KeyStripes::lock_many`]; released on drop.
pub(crate) struct ManyHold<'a> {
    stripes: &'a KeyStripes,
    held: Vec<usize>,
}

impl Drop for ManyHold<'_> {
    fn drop(&mut self) {
        for &index in &self.held {
            self.stripes.release(index);
        }
    }
}

/// A held stripe; released on drop (also when the caller's future is
/// dropped or the call unwinds).
pub(crate) struct StripeGuard<'a> {
    stripes: &'a KeyStripes,
    index: usize,
}

impl StripeGuard<'_> {
    /// The stripe held.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Counts one write in `Stats` cell `cell`, in the held stripe's own
    /// counters: holding the stripe makes this thread their only writer,
    /// and the next holder's acquisition sees the count.
    #[inline]
    pub(crate) fn record_write(&self, cell: usize) {
        let counter = &self.stripes.stripes[self.index].writes[cell];
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

impl Drop for StripeGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.stripes.release(self.index);
    }
}

/// Every stripe of an adapter, held by a fence; released on drop.
pub(crate) struct FenceHold<'a> {
    stripes: &'a KeyStripes,
    taken: usize,
}

impl Drop for FenceHold<'_> {
    fn drop(&mut self) {
        for index in 0..self.taken {
            self.stripes.stripes[index]
                .state
                .fetch_add(1, Ordering::SeqCst);
        }
        self.stripes.fencing.fetch_sub(1, Ordering::SeqCst);
        // Waiters saw `fencing`; wake them whatever they wait for.
        drop(
            self.stripes
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.stripes.released.notify_all();
        self.stripes.released_async.notify_waiters();
    }
}

/// A waiter counted in `KeyStripes::waiters` while it lives.
struct Waiter<'a>(&'a KeyStripes);

impl<'a> Waiter<'a> {
    fn register(stripes: &'a KeyStripes) -> Self {
        stripes.waiters.fetch_add(1, Ordering::SeqCst);
        Waiter(stripes)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_stripe_admits_one_writer_at_a_time() {
        let stripes = Arc::new(KeyStripes::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (stripes, inside) = (Arc::clone(&stripes), Arc::clone(&inside));
                thread::spawn(move || {
                    for _ in 0..2_000 {
                        let _guard = stripes.lock(7);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        std::hint::spin_loop();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // Every acquisition is counted in the state word.
        assert_eq!(stripes.observe(7).state, 8_000 << 1);
    }

    #[test]
    fn observation_sees_holders_and_pending_writes() {
        let stripes = KeyStripes::new();
        assert!(stripes.observe(3).quiet());
        let guard = stripes.lock(3);
        assert!(!stripes.observe(3).quiet());
        stripes.add_pending(guard.index());
        drop(guard);
        assert!(!stripes.observe(3).quiet());
        stripes.finish_pending(3);
        assert!(stripes.observe(3).quiet());
        assert_ne!(
            stripes.observe(3),
            Observation {
                state: 0,
                pending: 0
            }
        );
    }

    #[test]
    fn a_keyless_window_watches_every_stripe() {
        let stripes = KeyStripes::new();
        let before = stripes.observe_all();
        assert!(before.quiet());
        drop(stripes.lock(9));
        assert_ne!(stripes.observe_all(), before, "an acquisition anywhere");
        let guard = stripes.lock(300);
        assert!(!stripes.observe_all().quiet(), "a holder anywhere");
        drop(guard);
        stripes.add_pending(4);
        assert!(!stripes.observe_all().quiet(), "a pending write anywhere");
        assert_eq!(
            stripes.observe_window(KeyStripes::ALL),
            stripes.observe_all()
        );
    }

    #[test]
    fn keyless_calls_have_their_own_stripe() {
        assert_eq!(KeyStripes::index(None), KEY_STRIPES);
        assert!(KeyStripes::index(Some(u64::MAX)) < KEY_STRIPES);
    }

    #[test]
    fn a_fence_waits_for_holders_and_pending_writes_and_blocks_new_ones() {
        let stripes = Arc::new(KeyStripes::new());
        let guard = stripes.lock(1);
        stripes.add_pending(1);
        // Held and pending: a short fence times out and releases all.
        let error = stripes
            .fence(Instant::now() + Duration::from_millis(20))
            .err();
        assert_eq!(error, Some(1));
        assert_eq!(stripes.fencing.load(Ordering::SeqCst), 0);
        drop(guard);
        let drainer = {
            let stripes = Arc::clone(&stripes);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                stripes.finish_pending(1);
            })
        };
        let hold = stripes
            .fence(Instant::now() + Duration::from_secs(10))
            .expect("the pending write finishes");
        drainer.join().unwrap();
        // New writers wait while the fence holds.
        let writer = {
            let stripes = Arc::clone(&stripes);
            thread::spawn(move || drop(stripes.lock(2)))
        };
        thread::sleep(Duration::from_millis(20));
        assert!(!writer.is_finished());
        drop(hold);
        writer.join().unwrap();
    }

    #[test]
    fn async_waiters_are_woken_and_cancel_cleanly() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let stripes = Arc::new(KeyStripes::new());
        runtime.block_on(async {
            let guard = stripes.lock_async(5).await;
            // A waiter that gives up deregisters.
            let timed_out =
                tokio::time::timeout(Duration::from_millis(5), stripes.lock_async(5)).await;
            assert!(timed_out.is_err());
            assert_eq!(stripes.waiters.load(Ordering::SeqCst), 0);
            let waiter = {
                let stripes = Arc::clone(&stripes);
                std::thread::spawn(move || drop(stripes.lock(5)))
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(guard);
            waiter.join().unwrap();
            drop(stripes.lock_async(5).await);
        });
    }

    #[test]
    fn a_write_left_to_the_follower_counts_until_it_is_followed() {
        let stripes = KeyStripes::new();
        // No follower: nothing to wait for.
        stripes.left_to_follower(3);
        assert!(stripes.followed(3));
        stripes.set_following(true);
        assert!(!stripes.followed(3));
        assert!(!stripes.followed(KeyStripes::ALL));
        assert!(stripes.followed(4), "another stripe");
        let before = Instant::now();
        stripes.left_to_follower(5);
        // A round that started before the write does not cover it.
        stripes.followed_until(before);
        assert!(stripes.followed(3));
        assert!(!stripes.followed(5));
        stripes.followed_until(Instant::now());
        assert!(stripes.followed(5));
        assert!(stripes.followed(KeyStripes::ALL));
        // An older round seen late does not move the mark back.
        stripes.followed_until(before);
        assert!(stripes.followed(5));
        stripes.left_to_follower(5);
        stripes.set_following(false);
        assert!(stripes.followed(5), "a stopped follower is not waited for");
    }
}

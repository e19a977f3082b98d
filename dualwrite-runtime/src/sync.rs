//! The synchronisation primitives of the lane queue ([`crate::ring`] and the
//! ring's overflow in `lanes::queue`): std's, or under `--cfg loom` the
//! [`loom`](https://docs.rs/loom) model checker's, so that the model tests
//! (`loom_tests` in both modules) explore every interleaving of the real code.
//!
//! The std build is unchanged: the re-exports are std's own types, and the
//! adapters below (`UnsafeCell`, `unsync_usize`, `thread::unpark`: loom
//! spells these accesses differently) are `#[inline(always)]` functions
//! that compile to what they wrap; the ring's push and pop compile to the
//! same machine code as before.
//!
//! Run the models with
//! `RUSTFLAGS="--cfg loom" cargo test -p dualwrite-runtime --release --lib loom`.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

pub(crate) mod thread {
    #[cfg(not(loom))]
    pub(crate) use std::thread::{Thread, current, park_timeout, yield_now};

    #[cfg(loom)]
    pub(crate) use loom::thread::{Thread, current, yield_now};

    /// For the models' threads; the std build's tests use std's directly.
    #[cfg(all(loom, test))]
    pub(crate) use loom::thread::spawn;

    /// Wakes `thread` if it parks (or lets its next park return at once).
    #[cfg(not(loom))]
    #[inline(always)]
    pub(crate) fn unpark(thread: &Thread) {
        thread.unpark();
    }

    /// Nothing to do under loom, where [`park_timeout`] is a yield and so
    /// never needs waking. (Loom's `unpark` also makes a thread runnable
    /// when it is blocked on something else, a join or a mutex, where a
    /// real unpark leaves a token; the model then aborts.)
    #[cfg(loom)]
    pub(crate) fn unpark(_thread: &Thread) {}

    /// Loom has no timed park. A timed park promises only that it returns
    /// by the timeout, woken or not; `yield_now` lets every other thread run
    /// first and then returns, which is one of those outcomes, and the
    /// callers (the lane's wait loop) look at the queue again after it
    /// either way. A real `loom::thread::park` would instead turn the
    /// wake-up a push can miss by design (see [`crate::ring`]: the push runs
    /// no fence, and the timeout bounds that delay) into a reported
    /// deadlock, and loom reads `SeqCst` loads and stores as `AcqRel`, which
    /// would also report wake-ups the real fences do not miss.
    #[cfg(loom)]
    pub(crate) fn park_timeout(_timeout: std::time::Duration) {
        loom::thread::yield_now();
    }
}

/// std's `UnsafeCell`, with loom's closure-based access, which is how loom
/// sees every read and write of the value (and reports two threads touching
/// it at once).
#[cfg(not(loom))]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a pointer to the value, to read it.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a pointer to the value, to write it.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }
}

#[cfg(loom)]
pub(crate) struct UnsafeCell<T>(loom::cell::UnsafeCell<T>);

#[cfg(loom)]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(loom::cell::UnsafeCell::new(value))
    }

    #[track_caller]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        self.0.with(f)
    }

    #[track_caller]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        self.0.with_mut(f)
    }

    #[track_caller]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` excludes every other access for the borrow.
        self.0.with_mut(|value| unsafe { &mut *value })
    }
}

/// `*atomic.get_mut()`: the value of an atomic no other thread can reach.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn unsync_usize(atomic: &mut AtomicUsize) -> usize {
    *atomic.get_mut()
}

/// Loom's atomics spell `get_mut` as `with_mut`.
#[cfg(loom)]
pub(crate) fn unsync_usize(atomic: &mut AtomicUsize) -> usize {
    atomic.with_mut(|value| *value)
}

/// Checks `f` in every interleaving loom finds with at most `preemptions`
/// preemptions (`LOOM_MAX_PREEMPTIONS` overrides it), which keeps a model's
/// run to seconds. Like `loom::model`, prints each execution's steps with
/// `LOOM_LOG=trace`.
#[cfg(all(loom, test))]
pub(crate) fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    let subscriber = tracing_subscriber::fmt::Subscriber::builder()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LOOM_LOG"))
        .with_test_writer()
        .without_time()
        .finish();
    tracing::subscriber::with_default(subscriber, || builder.check(f));
}

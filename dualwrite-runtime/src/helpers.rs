//! Blocking store calls under a deadline: the call runs on a helper thread
//! and the caller stops waiting at the deadline.
//!
//! A blocking call cannot be interrupted, so a call that overruns its
//! deadline is *abandoned*: the caller goes on, the helper thread stays
//! blocked in the store until the call returns, and a fresh helper serves
//! the next call. Whoever decides the call's fate first (the helper
//! returning, or the caller giving up) wins a compare-and-swap, so the
//! outcome is counted exactly once: by the caller when the call returned in
//! time, by the helper's `late` hook when it returned after being
//! abandoned.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::Duration;

/// A job for a helper thread.
type HelperJob = Box<dyn FnOnce() + Send>;

/// States of a call run under a deadline.
const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// What became of a call run by [`Helpers::run`].
#[derive(Debug)]
pub(crate) enum Deadline<T> {
    /// The call returned in time, with this value.
    Returned(T),
    /// The deadline passed first: the call may still complete; its late
    /// value goes to the `late` hook.
    Abandoned,
}

/// Idle helper threads, reused from call to call; a helper whose call was
/// abandoned is not returned to the pool.
pub(crate) struct Helpers {
    name: String,
    idle: Mutex<Vec<mpsc::Sender<HelperJob>>>,
}

impl Helpers {
    /// Helpers whose threads are named `{name}-call`.
    pub(crate) fn new(name: impl Into<String>) -> Self {
        Helpers {
            name: name.into(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn take_idle(&self) -> Option<mpsc::Sender<HelperJob>> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn put_idle(&self, sender: mpsc::Sender<HelperJob>) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sender);
    }

    fn spawn(&self) -> Result<mpsc::Sender<HelperJob>, String> {
        let (sender, jobs) = mpsc::channel::<HelperJob>();
        thread::Builder::new()
            .name(format!("{}-call", self.name))
            .spawn(move || {
                for job in jobs {
                    job();
                }
            })
            .map_err(|error| format!("cannot start a helper thread for {}: {error}", self.name))?;
        Ok(sender)
    }

    /// Runs `call` on a helper thread and waits for it up to `limit`.
    ///
    /// A panic in `call` is caught and turned into a value by `panicked`.
    /// At the deadline `abandon` runs *before* the call can be seen
    /// abandoned (count it there, so its late return never uncounts what was
    /// not counted yet); if the call returned in that instant after all,
    /// `unabandon` undoes it and the value is returned as usual. A call that
    /// returns after it was abandoned hands its value to `late`, on the
    /// helper thread.
    pub(crate) fn run<T, F>(
        &self,
        limit: Duration,
        call: F,
        panicked: fn(&(dyn std::any::Any + Send)) -> T,
        late: impl FnOnce(T) + Send + 'static,
        abandon: impl FnOnce(),
        unabandon: impl FnOnce(),
    ) -> Result<Deadline<T>, String>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, outcome) = mpsc::sync_channel(1);
        let state = Arc::new(AtomicU8::new(RUNNING));
        let helper_state = Arc::clone(&state);
        let job: HelperJob = Box::new(move || {
            let value = catch_unwind(AssertUnwindSafe(call))
                .unwrap_or_else(|payload| panicked(payload.as_ref()));
            let in_time = helper_state
                .compare_exchange(RUNNING, DONE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            if in_time {
                let _ = reply.send(value);
            } else {
                late(value);
            }
        });
        let sender = match self.take_idle() {
            Some(sender) => sender,
            None => self.spawn()?,
        };
        let sender = match sender.send(job) {
            Ok(()) => sender,
            // The helper died (it cannot, short of an abort): start another.
            Err(mpsc::SendError(job)) => {
                let sender = self.spawn()?;
                sender
                    .send(job)
                    .map_err(|_| format!("cannot reach a helper thread of {}", self.name))?;
                sender
            }
        };
        match outcome.recv_timeout(limit) {
            Ok(value) => {
                self.put_idle(sender);
                Ok(Deadline::Returned(value))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                abandon();
                let abandoned = state
                    .compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
                if abandoned {
                    // The helper stays blocked in the store; its channel is
                    // dropped, so it exits once the call returns.
                    return Ok(Deadline::Abandoned);
                }
                // It returned just now: an ordinary outcome.
                unabandon();
                self.put_idle(sender);
                outcome
                    .recv()
                    .map(Deadline::Returned)
                    .map_err(|_| format!("a helper thread of {} stopped", self.name))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(format!("a helper thread of {} stopped", self.name))
            }
        }
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
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
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    fn no_panic(_: &(dyn std::any::Any + Send)) -> u32 {
        u32::MAX
    }

    #[test]
    fn a_call_in_time_returns_its_value_and_reuses_the_helper() {
        let helpers = Helpers::new("test");
        for i in 0..3 {
            let out = helpers
                .run(
                    Duration::from_secs(5),
                    move || i,
                    no_panic,
                    |_| {},
                    || {},
                    || {},
                )
                .expect("ran");
            assert!(matches!(out, Deadline::Returned(v) if v == i));
        }
        assert_eq!(helpers.idle.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_call_past_its_deadline_is_abandoned_and_reports_late() {
        let helpers = Helpers::new("test");
        let (release, gate) = mpsc::channel::<()>();
        let (late_tx, late_rx) = mpsc::channel();
        let abandoned = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&abandoned);
        let start = Instant::now();
        let out = helpers
            .run(
                Duration::from_millis(50),
                move || {
                    let _ = gate.recv();
                    7_u32
                },
                no_panic,
                move |value| late_tx.send(value).expect("late"),
                || {
                    counted.fetch_add(1, Ordering::SeqCst);
                },
                || unreachable!("the call is still blocked"),
            )
            .expect("ran");
        assert!(matches!(out, Deadline::Abandoned));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(abandoned.load(Ordering::SeqCst), 1);
        // The next call gets a fresh helper while the first is blocked.
        let out = helpers
            .run(Duration::from_secs(5), || 8, no_panic, |_| {}, || {}, || {})
            .expect("ran");
        assert!(matches!(out, Deadline::Returned(8)));
        release.send(()).expect("release");
        assert_eq!(late_rx.recv_timeout(Duration::from_secs(5)), Ok(7));
    }

    #[test]
    fn panic_messages() {
        assert_eq!(panic_message(&"boom"), "boom");
        assert_eq!(panic_message(&String::from("bang")), "bang");
        assert_eq!(panic_message(&42_u8), "non-string panic payload");
    }

    #[test]
    fn a_panicking_call_becomes_a_value() {
        let helpers = Helpers::new("test");
        let out = helpers
            .run(
                Duration::from_secs(5),
                || -> u32 { panic!("boom") },
                no_panic,
                |_| {},
                || {},
                || {},
            )
            .expect("ran");
        assert!(matches!(out, Deadline::Returned(u32::MAX)));
    }
}

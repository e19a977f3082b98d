//! One lane thread: takes jobs from its queue, applies them with retries,
//! and dead-letters what it gives up on.

use std::cell::{Cell, OnceCell};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};

use super::Job;
use super::config::{LaneConfig, XorShift64, equal_jitter};
use super::flush::{FinishGuard, Pending};
use super::queue::{LaneReceiver, Take};
use crate::by_method::MethodEvent;
use crate::dead_letter::DeadLetter;
use crate::helpers::{Deadline, Helpers, panic_message};
use crate::phase::Store;
use crate::shared::Shared;
use crate::stats::Role;

/// What an `apply` function gets besides the command: where it runs, which
/// attempt this is, and a way to run async store code.
///
/// One context lives on each lane thread and is reused for all its jobs.
pub struct LaneContext {
    lane: usize,
    attempt: Cell<u32>,
    attempt_timeout: Option<Duration>,
    blocking_timeout: Option<Duration>,
    /// The multi-thread runtime the lanes were started in, if any.
    handle: Option<Handle>,
    /// Otherwise a current-thread runtime of this lane, made on first use.
    local: OnceCell<Runtime>,
    /// The helper threads of [`LaneContext::run_blocking`].
    helpers: Helpers,
    /// Set when the current attempt timed out: its outcome is unknown.
    timed_out: Cell<bool>,
    /// The stripe of the job being applied.
    pub(super) stripe: Cell<usize>,
    /// Where an abandoned call is counted until it returns.
    abandoned: Option<Abandoned>,
}

/// What counts a call abandoned at its deadline until it returns, so fences,
/// flushes and shadow comparisons wait for a write that may still land.
#[derive(Clone)]
pub(super) struct Abandoned {
    pub(super) pending: Arc<Pending>,
    pub(super) stripes: Arc<crate::stripes::KeyStripes>,
    pub(super) stats: crate::stats::Stats,
    /// The lane's stripes with an abandoned call outstanding, and how many:
    /// the lane applies no later write of those stripes until the calls
    /// return (a later write could land before the abandoned one).
    pub(super) outstanding: Arc<std::sync::Mutex<std::collections::HashMap<usize, usize>>>,
}

impl Abandoned {
    fn outstanding(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<usize, usize>> {
        self.outstanding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether an abandoned call of `stripe` has not returned yet.
    pub(super) fn blocks(&self, stripe: usize) -> bool {
        self.outstanding().contains_key(&stripe)
    }

    fn start(&self, stripe: usize) {
        *self.outstanding().entry(stripe).or_insert(0) += 1;
        self.stripes.add_pending(stripe);
        self.pending.start_abandoned();
    }

    fn finish(&self, stripe: usize) {
        {
            let mut outstanding = self.outstanding();
            if let Some(count) = outstanding.get_mut(&stripe) {
                *count -= 1;
                if *count == 0 {
                    outstanding.remove(&stripe);
                }
            }
        }
        self.stripes.finish_pending(stripe);
        self.pending.finish_abandoned();
    }
}

impl LaneContext {
    pub(super) fn new(
        lane: usize,
        attempt_timeout: Option<Duration>,
        blocking_timeout: Option<Duration>,
        handle: Option<Handle>,
        abandoned: Option<Abandoned>,
    ) -> Self {
        LaneContext {
            lane,
            attempt: Cell::new(0),
            attempt_timeout,
            blocking_timeout,
            handle,
            local: OnceCell::new(),
            helpers: Helpers::new(format!("dualwrite-lane-{lane}")),
            timed_out: Cell::new(false),
            stripe: Cell::new(0),
            abandoned,
        }
    }

    /// A context for an outbox applier (no blocking-call bound: the
    /// outbox's secondary calls run on the applier thread).
    pub(crate) fn for_outbox(
        applier: usize,
        attempt_timeout: Option<Duration>,
        handle: Option<Handle>,
    ) -> Self {
        Self::new(applier, attempt_timeout, None, handle, None)
    }

    /// Sets the attempt number [`LaneContext::attempt`] reports.
    pub(crate) fn set_attempt(&self, attempt: u32) {
        self.attempt.set(attempt);
    }

    /// Whether the attempt just made timed out (and clears it).
    pub(crate) fn take_timed_out(&self) -> bool {
        self.timed_out.replace(false)
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
        let timed_out = &self.timed_out;
        let attempt = async move {
            match timeout {
                None => fut.await,
                Some(limit) => tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
                    timed_out.set(true);
                    Err(format!(
                        "secondary write timed out after {limit:?}: its outcome is unknown (the store may have applied it)"
                    ))
                }),
            }
        };
        match &self.handle {
            Some(handle) => handle.block_on(attempt),
            None => self.local_runtime()?.block_on(attempt),
        }
    }

    /// Runs a blocking store call under the attempt's deadline
    /// ([`LaneConfig::blocking_attempt_timeout`]). Without a deadline it runs on the
    /// lane thread. With one it runs on a helper thread of the lane, and the
    /// lane stops waiting at the deadline: the attempt then fails with
    /// "timed out" and the helper, still blocked in the store, is abandoned
    /// (a new one serves the next call).
    ///
    /// A call that overran its deadline may still complete later, so its
    /// outcome is unknown: the write is not retried (a retry could land
    /// before it and be overwritten by it) but kept as a dead letter, and
    /// the abandoned call counts as pending until it returns, so phase
    /// changes, flushes and shadow comparisons wait for it. When it returns
    /// late it is logged and counted (`late_completions`).
    pub fn run_blocking<F>(&self, call: F) -> Result<(), String>
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
    {
        let Some(limit) = self.blocking_timeout else {
            return call();
        };
        let stripe = self.stripe.get();
        let late = self
            .abandoned
            .clone()
            .map(|abandoned| (abandoned, stripe, self.lane));
        let outcome = self.helpers.run(
            limit,
            call,
            |payload| {
                Err(format!(
                    "secondary write panicked: {}",
                    panic_message(payload)
                ))
            },
            move |result: Result<(), String>| {
                if let Some((abandoned, stripe, lane)) = late {
                    // Logging first: the count releases whoever waits for it.
                    abandoned.stats.record_late_completion();
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        tracing::warn!(
                            lane,
                            ok = result.is_ok(),
                            "a secondary write abandoned at its deadline returned late; its dead letter names the key to reconcile"
                        );
                    }));
                    abandoned.finish(stripe);
                }
            },
            || {
                if let Some(counts) = &self.abandoned {
                    counts.start(stripe);
                }
            },
            || {
                if let Some(counts) = &self.abandoned {
                    counts.finish(stripe);
                }
            },
        )?;
        match outcome {
            Deadline::Returned(result) => result,
            Deadline::Abandoned => {
                self.timed_out.set(true);
                Err(format!(
                    "secondary write timed out after {limit:?}: its outcome is unknown (the call may still complete)"
                ))
            }
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

/// The state of one lane thread.
pub(super) struct Lane<C, F> {
    pub(super) context: LaneContext,
    pub(super) config: LaneConfig,
    pub(super) apply: Arc<F>,
    pub(super) shared: Arc<Shared<C>>,
    pub(super) pending: Arc<Pending>,
    pub(super) abort: Arc<AtomicBool>,
    pub(super) rng: XorShift64,
}

impl<C, F> Lane<C, F>
where
    F: Fn(&LaneContext, Store, &C) -> Result<(), String>,
{
    /// Applies jobs until every sender is gone and the queue is drained.
    pub(super) fn run(mut self, receiver: LaneReceiver<C>) {
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
        let mut nap = super::config::IDLE_NAP_MIN;
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
    /// last attempt, or at once when the adapter's shutdown deadline has
    /// passed.
    fn process(&mut self, job: Job<C>) {
        let _finish = FinishGuard {
            pending: &self.pending,
            stripes: &self.shared.stripes,
            lane: self.context.lane,
            stripe: job.stripe,
        };
        let Job {
            method,
            key,
            render_key,
            key_hash: _,
            stripe: job_stripe,
            target,
            command,
        } = job;
        // The key is rendered only if a failure has to be logged.
        let render = |key: Option<String>, command: &C| {
            // A key type whose rendering panics costs the log its key, not
            // the job its dead letter.
            key.or_else(|| {
                let render = render_key?;
                catch_unwind(AssertUnwindSafe(|| render(command))).unwrap_or(None)
            })
        };
        let mut key = key;
        let mut rendered = false;
        let stats = &self.shared.stats;
        // The retries and the dead letter below are logged inside it.
        let _span = crate::trace::lane_span(
            self.shared.info.name,
            method,
            &|| render(key.clone(), &command),
            target,
            self.context.lane,
        );
        let limit = self.config.attempt_limit();
        let mut attempt = 0;
        let error = loop {
            if self.abort.load(Ordering::SeqCst) {
                break "not applied: the adapter shut down before this write's turn".to_owned();
            }
            if self.context.blocking_timeout.is_some()
                && self
                    .context
                    .abandoned
                    .as_ref()
                    .is_some_and(|abandoned| abandoned.blocks(job_stripe))
            {
                // Applying it could land before an earlier write of its key
                // that timed out and may still complete: keep the order.
                break "not applied: an earlier write of this key timed out and may still land; reconcile the key".to_owned();
            }
            attempt += 1;
            self.context.attempt.set(attempt);
            self.context.stripe.set(job_stripe);
            let result = catch_unwind(AssertUnwindSafe(|| {
                (self.apply)(&self.context, target, &command)
            }))
            .unwrap_or_else(|payload| {
                Err(format!(
                    "secondary write panicked: {}",
                    panic_message(payload.as_ref())
                ))
            });
            stats.record_write(target, Role::Secondary, result.is_ok());
            let Err(error) = result else {
                return;
            };
            stats.record_method(method, MethodEvent::SecondaryFailed(target));
            // A timed-out attempt may still land: a retry could be
            // overwritten by it, so its outcome is left to reconciliation.
            let timed_out = self.context.take_timed_out();
            if attempt >= limit || timed_out {
                break error;
            }
            if !rendered {
                key = render(key.take(), &command);
                rendered = true;
            }
            tracing::warn!(
                method,
                key = key.as_deref().unwrap_or("-"),
                target = %target,
                attempt,
                error = %error,
                "secondary write failed, retrying"
            );
            let delay = equal_jitter(self.config.backoff(attempt), self.rng.next_u64());
            thread::sleep(delay);
            stats.record_secondary_retry();
            stats.record_method(method, MethodEvent::Retry(target));
        };
        let key = if rendered { key } else { render(key, &command) };
        // Pushed before `_finish` runs, so a flush sees it.
        self.shared.dead_letters.push(DeadLetter::now(
            method, key, target, command, error, attempt,
        ));
    }
}

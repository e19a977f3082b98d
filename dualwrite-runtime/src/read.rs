//! The read path's shadow comparison, off the caller's path.
//!
//! In the shadow phase a read is answered by the authoritative store, and the
//! other store is read and compared. Inline (the default, and what tests
//! want), the adapter makes both reads on the caller's path. With
//! [`ShadowRunner`] (the adapter's `with_background_shadow`), the caller only
//! reads the authoritative store: the read, its owned arguments and a copy of
//! the answer go to a bounded queue, and worker threads read the other store
//! and compare. A full queue drops the comparison (counted in
//! `shadow_dropped`), never the caller's time.
//!
//! Either way a comparison is made only if no write of the read's key was in
//! flight or pending in the lanes from before the primary read until after
//! the shadow read ([`DualWriteCore::shadow_begin`],
//! [`ShadowContext::comparable`]): otherwise the stores cannot agree yet and
//! the read counts in `reads_skipped_pending`. Under change data capture a
//! write counts from its primary call until the follower has journaled it
//! too (`KeyStripes::followed`).
//!
//! Every read starts at [`DualWriteCore::begin_read`] (or
//! [`DualWriteCore::begin_async_read`]), which routes it and opens its
//! `tracing` span: the [`ReadCall`] carries the route and the span.

use std::cell::OnceCell;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use crate::by_method::MethodEvent;
use crate::core::{Comparison, DualWriteCore, ShadowWindow};
use crate::key::RoutingKey;
use crate::phase::{ReadRoute, Store};
use crate::stats::Stats;
use crate::stripes::KeyStripes;
use crate::trace::{self, CallSpan};

/// One read routed through an adapter: where it goes, and its `tracing`
/// span (`dualwrite.read`, see module `trace`), closed when the call drops.
/// Made by [`DualWriteCore::begin_read`].
pub struct ReadCall<'a, C> {
    /// The store whose answer is returned.
    pub primary: Store,
    /// The store also read and compared against the primary's answer, if
    /// any.
    pub shadow: Option<Store>,
    core: &'a DualWriteCore<C>,
    method: &'static str,
    span: CallSpan,
}

impl<C> DualWriteCore<C> {
    /// Routes a read of `method` for `key` (see [`DualWriteCore::read_route`])
    /// and opens its span, entered until the returned call is dropped: for
    /// a blocking method.
    #[inline]
    pub fn begin_read(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
    ) -> ReadCall<'_, C> {
        self.read_call(method, key, true)
    }

    /// Like [`DualWriteCore::begin_read`], for an async method: the span is
    /// not held entered across the method's awaits (see module `trace`).
    #[inline]
    pub fn begin_async_read(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
    ) -> ReadCall<'_, C> {
        self.read_call(method, key, false)
    }

    #[inline(always)]
    fn read_call(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
        enter: bool,
    ) -> ReadCall<'_, C> {
        let route = self.read_route(key);
        let span = if trace::enabled() {
            trace::read_span(
                self.trait_info().name,
                method,
                key,
                self.migration().phase_for(key),
                route,
                enter,
            )
        } else {
            CallSpan::none()
        };
        ReadCall {
            primary: route.primary,
            shadow: route.shadow,
            core: self,
            method,
            span,
        }
    }
}

impl<C> ReadCall<'_, C> {
    /// The route, as [`DualWriteCore::read_route`] gives it.
    pub fn route(&self) -> ReadRoute {
        ReadRoute {
            primary: self.primary,
            shadow: self.shadow,
        }
    }

    /// The method read.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// [`DualWriteCore::record_comparison`] for this read's method, logged
    /// inside its span.
    pub fn record_comparison(&self, key: Option<&dyn RoutingKey>, outcome: Comparison) {
        let stats = &self.core.shared().stats;
        self.span
            .in_scope(|| record(stats, self.method, key, outcome));
    }

    /// [`DualWriteCore::shadow_comparable`] for this read: a read not
    /// compared is counted for its method too.
    pub fn comparable(&self, window: ShadowWindow) -> bool {
        let shared = self.core.shared();
        self.span
            .in_scope(|| comparable(&shared.stats, &shared.stripes, window, Some(self.method)))
    }
}

impl<C> Drop for ReadCall<'_, C> {
    #[inline]
    fn drop(&mut self) {
        self.span.close();
    }
}

impl<C> fmt::Debug for ReadCall<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadCall")
            .field("method", &self.method)
            .field("route", &self.route())
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

/// A read captured as a value for a background comparison: the generated
/// `<Trait>Read` enum implements it.
pub trait ShadowRead {
    /// The trait method read.
    fn method(&self) -> &'static str;
    /// The read's routing key as text, if the method has one.
    fn key_text(&self) -> Option<String>;
}

/// How background shadow comparisons run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowConfig {
    /// Worker threads that read the other store and compare; default 1
    /// (0 is treated as 1).
    pub workers: usize,
    /// Reads waiting for a worker; default 1 024 (at least 1). Beyond it a
    /// comparison is dropped and counted, so the caller never waits.
    pub queue: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            workers: 1,
            queue: 1024,
        }
    }
}

impl ShadowConfig {
    /// Sets [`ShadowConfig::workers`].
    #[must_use]
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Sets [`ShadowConfig::queue`].
    #[must_use]
    pub fn with_queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }
}

/// What a worker needs of the adapter: its counters and its stripes.
#[derive(Clone)]
pub struct ShadowContext {
    stats: Stats,
    stripes: Arc<KeyStripes>,
}

impl ShadowContext {
    /// Whether the comparison of a read whose window opened with `window`
    /// may count (no write of its key in flight or pending since); counts the
    /// read as skipped otherwise.
    pub fn comparable(&self, window: ShadowWindow) -> bool {
        comparable(&self.stats, &self.stripes, window, None)
    }
}

/// See [`DualWriteCore::shadow_comparable`]; counts a read not compared
/// for its method too, when known.
pub(crate) fn comparable(
    stats: &Stats,
    stripes: &KeyStripes,
    window: ShadowWindow,
    method: Option<&'static str>,
) -> bool {
    // Under change data capture, a write done on the primary reaches the
    // stripe's pending count only once the follower journals it: until
    // then the stores cannot agree either. Looked at before the stripe, so
    // a write journaled by then shows in `after`.
    let followed = stripes.followed(window.stripe);
    let after = stripes.observe_window(window.stripe);
    let quiet = followed && window.before.quiet() && after == window.before;
    if !quiet {
        stats.record_read_skipped_pending();
        if let Some(method) = method {
            stats.record_method(method, MethodEvent::ShadowPending);
        }
    }
    quiet
}

impl<C> DualWriteCore<C> {
    /// What background shadow workers need of this adapter.
    pub fn shadow_context(&self) -> ShadowContext {
        ShadowContext {
            stats: self.stats().clone(),
            stripes: Arc::clone(&self.shared().stripes),
        }
    }
}

/// What a comparison function gets besides the read: a way to run async
/// store code on the worker thread.
pub struct ShadowWorker {
    /// The multi-thread runtime the runner was started in, if any.
    handle: Option<Handle>,
    /// Otherwise a current-thread runtime of this worker, made on first use.
    local: OnceCell<Runtime>,
}

impl ShadowWorker {
    /// Runs a future to completion on the worker thread: on the
    /// multi-thread tokio runtime the runner was started in, else on a
    /// runtime of the worker's own.
    pub fn block_on<F: Future<Output = Comparison>>(&self, future: F) -> Comparison {
        if let Some(handle) = &self.handle {
            return handle.block_on(future);
        }
        let runtime = match self.local.get() {
            Some(runtime) => runtime,
            None => match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(runtime) => self.local.get_or_init(|| runtime),
                Err(error) => {
                    return Comparison::ShadowFailed(format!(
                        "cannot start a shadow worker runtime: {error}"
                    ));
                }
            },
        };
        runtime.block_on(future)
    }
}

impl fmt::Debug for ShadowWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShadowWorker")
            .field("uses_caller_runtime", &self.handle.is_some())
            .finish()
    }
}

struct Task<R> {
    read: R,
    shadow: Store,
    window: ShadowWindow,
}

/// Counts of comparisons handed over and done, for [`ShadowRunner::flush`].
#[derive(Default)]
struct Progress {
    submitted: AtomicU64,
    done: AtomicU64,
}

/// Background shadow comparisons of reads of type `R` (the generated
/// `<Trait>Read` enum); see the module docs.
pub struct ShadowRunner<R> {
    sender: Mutex<Option<SyncSender<Task<R>>>>,
    progress: Arc<Progress>,
    stats: Stats,
    config: ShadowConfig,
}

impl<R: ShadowRead + Send + 'static> ShadowRunner<R> {
    /// Starts `config.workers` threads named `dualwrite-shadow-N`; each
    /// runs `compare` (read the other store, compare with the answer the
    /// read carries) for a queued read.
    pub fn start<F>(config: ShadowConfig, context: ShadowContext, compare: F) -> Self
    where
        F: Fn(&ShadowWorker, &R, Store) -> Comparison + Send + Sync + 'static,
    {
        let handle = Handle::try_current()
            .ok()
            .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
        let (sender, receiver) = mpsc::sync_channel::<Task<R>>(config.queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let compare = Arc::new(compare);
        let progress = Arc::new(Progress::default());
        for index in 0..config.workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let compare = Arc::clone(&compare);
            let progress = Arc::clone(&progress);
            let context = context.clone();
            let handle = handle.clone();
            let spawned = thread::Builder::new()
                .name(format!("dualwrite-shadow-{index}"))
                .spawn(move || {
                    let worker = ShadowWorker {
                        handle,
                        local: OnceCell::new(),
                    };
                    loop {
                        let task = {
                            let receiver = receiver.lock().unwrap_or_else(PoisonError::into_inner);
                            receiver.recv()
                        };
                        let Ok(task) = task else {
                            return;
                        };
                        run_task(&context, &worker, compare.as_ref(), task);
                        progress.done.fetch_add(1, Ordering::SeqCst);
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(worker = index, %error, "cannot start a shadow worker");
            }
        }
        ShadowRunner {
            sender: Mutex::new(Some(sender)),
            progress,
            stats: context.stats,
            config,
        }
    }
}

fn run_task<R: ShadowRead>(
    context: &ShadowContext,
    worker: &ShadowWorker,
    compare: &(dyn Fn(&ShadowWorker, &R, Store) -> Comparison + Send + Sync),
    task: Task<R>,
) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        compare(worker, &task.read, task.shadow)
    }))
    .unwrap_or_else(|_| Comparison::ShadowFailed("the shadow read panicked".to_owned()));
    if !comparable(
        &context.stats,
        &context.stripes,
        task.window,
        Some(task.read.method()),
    ) {
        return;
    }
    record_text(
        &context.stats,
        task.read.method(),
        task.read.key_text(),
        outcome,
    );
}

/// Records a shadow comparison. A mismatch is logged with the method and
/// the key, never the values (they may be personal data); a failed shadow
/// read with its error. Both count as mismatched.
pub(crate) fn record(
    stats: &Stats,
    method: &'static str,
    key: Option<&dyn RoutingKey>,
    outcome: Comparison,
) {
    // Rendered only for a log line.
    let key_text = || key.map(RoutingKey::render);
    record_with(stats, method, key_text, outcome);
}

/// [`record`] for a key already rendered.
fn record_text(stats: &Stats, method: &'static str, key: Option<String>, outcome: Comparison) {
    record_with(stats, method, || key, outcome);
}

fn record_with(
    stats: &Stats,
    method: &'static str,
    key: impl FnOnce() -> Option<String>,
    outcome: Comparison,
) {
    let key_text = || key().unwrap_or_else(|| "-".to_owned());
    let event = match outcome {
        Comparison::Matched => MethodEvent::ShadowMatched,
        _ => MethodEvent::ShadowMismatched,
    };
    stats.record_method(method, event);
    match outcome {
        Comparison::Matched => stats.record_comparison(true),
        Comparison::Mismatched => {
            stats.record_comparison(false);
            tracing::warn!(method, key = %key_text(), "shadow read mismatch (values redacted)");
        }
        Comparison::MismatchedFields(fields) => {
            stats.record_comparison(false);
            tracing::warn!(
                method,
                key = %key_text(),
                fields = %fields.join(", "),
                "shadow read mismatch (values redacted)"
            );
        }
        Comparison::ShadowFailed(error) => {
            stats.record_comparison(false);
            tracing::warn!(method, key = %key_text(), error = %error, "shadow read failed");
        }
    }
}

/// The paths at which two JSON trees differ: `a.b`, `items[2]`, `(value)`
/// for two different scalars at the top. At most 20 paths.
#[cfg(feature = "serde")]
pub(crate) fn diff_paths(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        use serde_json::Value;
        if out.len() >= 20 || a == b {
            return;
        }
        match (a, b) {
            (Value::Object(left), Value::Object(right)) => {
                let mut keys: Vec<&String> = left.keys().chain(right.keys()).collect();
                keys.sort_unstable();
                keys.dedup();
                for key in keys {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    match (left.get(key), right.get(key)) {
                        (Some(x), Some(y)) => walk(x, y, &child, out),
                        _ => out.push(child),
                    }
                }
            }
            (Value::Array(left), Value::Array(right)) if left.len() == right.len() => {
                for (index, (x, y)) in left.iter().zip(right).enumerate() {
                    walk(x, y, &format!("{path}[{index}]"), out);
                }
            }
            _ => out.push(if path.is_empty() {
                "(value)".to_owned()
            } else {
                path.to_owned()
            }),
        }
    }
    let mut out = Vec::new();
    walk(a, b, "", &mut out);
    out
}

impl<R> ShadowRunner<R> {
    /// Queues a read for comparison without waiting: dropped (and counted in
    /// `shadow_dropped`) when the queue is full.
    pub fn submit(&self, read: R, shadow: Store, window: ShadowWindow) {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sender) = sender.as_ref() else {
            return;
        };
        self.progress.submitted.fetch_add(1, Ordering::SeqCst);
        let task = Task {
            read,
            shadow,
            window,
        };
        match sender.try_send(task) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.progress.done.fetch_add(1, Ordering::SeqCst);
                self.stats.record_shadow_dropped();
            }
        }
    }

    /// Waits until the comparisons queued before the call are done, or
    /// `timeout` passes; whether they are.
    pub fn flush(&self, timeout: Duration) -> bool {
        let target = self.progress.submitted.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(50);
        while self.progress.done.load(Ordering::SeqCst) < target {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(2));
        }
        true
    }

    /// The configuration the workers run with.
    pub fn config(&self) -> &ShadowConfig {
        &self.config
    }
}

impl<R> Drop for ShadowRunner<R> {
    fn drop(&mut self) {
        // Closing the queue lets the workers finish what it holds and exit.
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl<R> fmt::Debug for ShadowRunner<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShadowRunner")
            .field("config", &self.config)
            .field(
                "queued",
                &(self.progress.submitted.load(Ordering::Relaxed)
                    - self.progress.done.load(Ordering::Relaxed)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::Migration;
    use crate::phase::Phase;

    struct Read(u64, bool);

    impl ShadowRead for Read {
        fn method(&self) -> &'static str {
            "get"
        }
        fn key_text(&self) -> Option<String> {
            Some(self.0.to_string())
        }
    }

    #[test]
    fn background_comparisons_are_counted_and_a_full_queue_drops() {
        let core: DualWriteCore<()> = DualWriteCore::new(Migration::new(Phase::ShadowRead));
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let worker_gate = Arc::clone(&gate);
        let runner = ShadowRunner::start(
            ShadowConfig::default().with_queue(2),
            core.shadow_context(),
            move |_: &ShadowWorker, read: &Read, _| {
                drop(worker_gate.lock().unwrap_or_else(PoisonError::into_inner));
                if read.1 {
                    Comparison::Matched
                } else {
                    Comparison::Mismatched
                }
            },
        );
        for n in 0..6 {
            let key = &n as &dyn RoutingKey;
            runner.submit(
                Read(n, n % 2 == 0),
                Store::New,
                core.shadow_begin(Some(key)),
            );
        }
        drop(held);
        assert!(runner.flush(Duration::from_secs(10)));
        let stats = core.snapshot();
        // One read is with the blocked worker, two wait: three dropped.
        assert!(stats.shadow_dropped >= 3, "{stats:?}");
        assert_eq!(stats.reads_compared + stats.shadow_dropped, 6, "{stats:?}");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn diff_paths_name_fields_not_values() {
        let a =
            serde_json::json!({"id": 1, "name": "x", "tags": ["a", "b"], "address": {"city": "P"}});
        let b = serde_json::json!({"id": 1, "name": "y", "tags": ["a", "c"], "address": {"city": "P", "zip": 7}});
        assert_eq!(diff_paths(&a, &b), vec!["address.zip", "name", "tags[1]"]);
        assert_eq!(
            diff_paths(&serde_json::json!(1), &serde_json::json!(2)),
            vec!["(value)"]
        );
        assert!(diff_paths(&a, &a).is_empty());
    }

    #[test]
    fn a_write_of_the_key_meanwhile_skips_the_comparison() {
        let core: DualWriteCore<()> = DualWriteCore::new(Migration::new(Phase::ShadowRead));
        let runner = ShadowRunner::start(
            ShadowConfig::default(),
            core.shadow_context(),
            |_: &ShadowWorker, _: &Read, _| Comparison::Mismatched,
        );
        let window = core.shadow_begin(Some(&7_u64));
        // A write of key 7 starts and ends between the two reads.
        drop(core.begin_write("put", Some(&7_u64), Some(&7_u64), false));
        runner.submit(Read(7, false), Store::New, window);
        assert!(runner.flush(Duration::from_secs(10)));
        let stats = core.snapshot();
        assert_eq!(stats.reads_compared, 0);
        assert_eq!(stats.reads_skipped_pending, 1);
    }
}

//! The outbox of one adapter: the caller's side (journal the record, count
//! it pending) and the threads that apply the journal to the secondary.
//!
//! ```text
//! caller (key's stripe held)        coordinator thread            applier thread i
//! prepare: record, pending +1  ..>  claim pending records    ..>  apply (retry, backoff)
//! primary call (may journal it)     with id > cursor, in id       pending -1
//! submit: append unless journaled   order; record i gets those    outcome -> coordinator
//!         wake the coordinator      with key_hash % n == i        (done / dead, batched)
//! ```
//!
//! Every record of a key goes to the same applier, which applies one record
//! at a time in the order it was claimed (journal order), so a key never
//! has two records in flight and its records reach the secondary in order.
//!
//! Pending counts live on the adapter's stripes, as the lanes' do, so a
//! phase change (a fence), a flush and a key guard wait for journal records
//! exactly as they wait for queued lane writes: the count is raised before
//! a record can be claimed (before the primary call, before a replay) and
//! lowered when it is applied or dead-lettered. Records of an earlier run
//! are counted when the outbox starts. A record counted this way is
//! remembered by idempotency id until it is claimed; a claimed record that
//! was not (appended or replayed by another process, or through another
//! journal handle) is counted when claimed, so every decrement has its
//! increment.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::runtime::{Handle, RuntimeFlavor};

use super::context::{self, ApplyScope, OutboxScope, Side, WriteContext};
use super::ids::IdempotencyId;
use super::relay::{OutboxRelay, Processor, RelayParts};
use super::{
    Journal, JournalCodec, JournalListener, JournalRecord, NewRecord, OutboxConfig, OutboxError,
    Outcome, Unreadable, default_stream,
};
use crate::command::WriteCommand;
use crate::dead_letter::DeadLetter;
use crate::helpers::panic_message;
use crate::lanes::{LaneContext, XorShift64, equal_jitter};
use crate::phase::Store;
use crate::shared::Shared;
use crate::stats::{Role, Stats};
use crate::stripes::KeyStripes;

/// Outcomes written to the journal in one transaction, at most.
const OUTCOME_BATCH: usize = 1024;

/// How long finished records wait before their outcome is written, at most.
const OUTCOME_DELAY: Duration = Duration::from_millis(10);

/// Done records deleted per pruning transaction.
const PRUNE_BATCH: usize = 1000;

/// The coordinator's first nap when nothing happens.
const NAP_MIN: Duration = Duration::from_micros(100);

/// Its longest nap: how long a journaled record can wait to be claimed
/// while the outbox is active.
const NAP_MAX: Duration = Duration::from_millis(1);

/// How long the coordinator naps before it parks (blocks until woken).
const PARK_AFTER: Duration = Duration::from_millis(20);

/// What the caller's path, the coordinator, the appliers and the journal's
/// replay notice share.
pub(crate) struct OutboxShared {
    pub(super) journal: Arc<dyn Journal>,
    location: Arc<str>,
    pub(super) stream: String,
    pub(super) stripes: Arc<KeyStripes>,
    stats: Stats,
    wake_tx: Sender<()>,
    /// Appliers stop taking records.
    pub(super) exit: AtomicBool,
    /// The coordinator writes the last outcomes and stops.
    pub(super) coordinator_exit: AtomicBool,
    /// Set once the coordinator and the appliers stopped: the stream is
    /// free for another adapter.
    pub(super) stopped: AtomicBool,
    /// Records handed to appliers and not finished.
    in_flight: AtomicUsize,
    /// Records were journaled (or replayed) since the coordinator looked.
    pub(super) dirty: AtomicBool,
    /// The coordinator is blocked until woken (see `Coordinator::park`).
    pub(super) parked: AtomicBool,
    /// Records counted pending by this adapter and not claimed yet.
    counted: Mutex<HashSet<IdempotencyId>>,
    /// The highest id counted when the outbox started: every pending record
    /// up to it was counted then.
    counted_at_start: i64,
}

impl OutboxShared {
    /// The identity of this outbox, for the thread-local frames it installs.
    pub(crate) fn owner(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Tells the coordinator to look at the journal: it will at its next
    /// look (within `NAP_MAX`), and a parked one is woken.
    fn wake_coordinator(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            let _ = self.wake_tx.try_send(());
        }
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, HashSet<IdempotencyId>> {
        self.counted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a record pending before it can be claimed.
    fn count(&self, id: IdempotencyId, stripe: usize) {
        self.counted().insert(id);
        self.stripes.add_pending(stripe);
    }

    /// Takes back the count of a record that will not be claimed.
    fn uncount(&self, id: IdempotencyId, stripe: usize) {
        if self.counted().remove(&id) {
            self.stripes.finish_pending(stripe);
        }
    }

    /// A record is claimed: counts it now unless it was counted before.
    pub(super) fn claimed(&self, row_id: i64, id: Option<IdempotencyId>, stripe: usize) {
        let counted =
            row_id <= self.counted_at_start || id.is_some_and(|id| self.counted().remove(&id));
        if !counted {
            self.stripes.add_pending(stripe);
        }
    }

    /// A prepared record was not handed to the outbox: the primary call
    /// failed (or unwound). If the store journaled it in a transaction that
    /// committed, it stays pending (the appliers will apply it: the primary
    /// has the write); otherwise its pending count is taken back.
    pub(crate) fn not_submitted(&self, ctx: &WriteContext, stripe: usize) {
        if !ctx.is_journaled() {
            self.uncount(ctx.idempotency_id(), stripe);
            return;
        }
        match self.journal.contains(&ctx.idempotency_id()) {
            Ok(true) => {
                tracing::warn!(
                    method = ctx.method(),
                    key = ctx.key_text().unwrap_or("-"),
                    "the primary call failed after its transaction journaled the record: the record is applied to the secondary as journaled"
                );
                self.wake_coordinator();
            }
            Ok(false) => self.uncount(ctx.idempotency_id(), stripe),
            Err(error) => {
                // Counted as pending rather than dropped: a phase change
                // then waits (and times out) instead of passing a record
                // that may still be applied.
                tracing::error!(
                    method = ctx.method(),
                    key = ctx.key_text().unwrap_or("-"),
                    %error,
                    "cannot tell whether a failed primary call journaled its record; it stays counted as pending"
                );
            }
        }
    }
}

impl OutboxShared {
    /// The journal.
    pub(crate) fn journal(&self) -> &dyn Journal {
        &*self.journal
    }

    /// The adapter's stream in the journal.
    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    /// The adapter's stripes.
    pub(crate) fn stripes(&self) -> &KeyStripes {
        &self.stripes
    }

    /// Journals records made outside the write path (change data capture)
    /// in one transaction, counted pending first so a fence waits for
    /// them; wakes the coordinator.
    pub(crate) fn journal_external(&self, records: &[NewRecord]) -> Result<(), OutboxError> {
        for record in records {
            self.count(record.idempotency_id, KeyStripes::index(record.key_hash));
        }
        let appended = match Handle::try_current().map(|handle| handle.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.journal.append_many(records))
            }
            _ => self.journal.append_many(records),
        };
        if let Err(error) = appended {
            for record in records {
                self.uncount(record.idempotency_id, KeyStripes::index(record.key_hash));
            }
            return Err(error);
        }
        self.wake_coordinator();
        Ok(())
    }
}

impl JournalListener for OutboxShared {
    fn requeuing(&self, id: IdempotencyId, key_hash: Option<u64>) {
        self.count(id, KeyStripes::index(key_hash));
    }

    fn requeue_failed(&self, id: IdempotencyId, key_hash: Option<u64>) {
        self.uncount(id, KeyStripes::index(key_hash));
    }

    fn wake(&self) {
        self.wake_coordinator();
    }

    fn draining(&self) -> bool {
        !self.stopped.load(Ordering::SeqCst)
    }
}

/// The running outbox of an adapter over commands `C`.
pub(crate) struct OutboxRuntime<C> {
    shared: Arc<OutboxShared>,
    core: Arc<Shared<C>>,
    codec: JournalCodec<C>,
    config: OutboxConfig,
    appliers: Mutex<Vec<JoinHandle<()>>>,
    coordinator: Mutex<Option<JoinHandle<()>>>,
}

impl<C: Send + 'static> OutboxRuntime<C> {
    /// Counts the stream's pending records, then starts the coordinator and
    /// `config.appliers` applier threads that run `apply` for each record.
    pub(crate) fn start<F>(
        journal: Arc<dyn Journal>,
        config: OutboxConfig,
        codec: JournalCodec<C>,
        core: Arc<Shared<C>>,
        apply: F,
    ) -> Result<Self, OutboxError>
    where
        F: Fn(&LaneContext, Store, &C) -> Result<(), String> + Send + Sync + 'static,
    {
        Self::start_with(journal, config, codec, core, apply, None)
    }

    /// Like [`OutboxRuntime::start`]; with a relay, the relay's threads
    /// take the places of the coordinator and the appliers.
    pub(crate) fn start_with<F>(
        journal: Arc<dyn Journal>,
        config: OutboxConfig,
        codec: JournalCodec<C>,
        core: Arc<Shared<C>>,
        apply: F,
        relay: Option<Box<dyn OutboxRelay>>,
    ) -> Result<Self, OutboxError>
    where
        F: Fn(&LaneContext, Store, &C) -> Result<(), String> + Send + Sync + 'static,
    {
        let stream = config.stream.clone().unwrap_or_else(default_stream::<C>);
        let pending = journal.pending_keys(&stream)?;
        let stripes = Arc::clone(&core.stripes);
        for (_, key_hash) in &pending {
            stripes.add_pending(KeyStripes::index(*key_hash));
        }
        let counted_at_start = pending.iter().map(|(id, _)| *id).max().unwrap_or(0);
        if !pending.is_empty() {
            tracing::info!(
                stream,
                pending = pending.len(),
                "outbox: resuming pending records of an earlier run"
            );
        }
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let shared = Arc::new(OutboxShared {
            location: Arc::from(journal.location()),
            journal,
            stream,
            stripes,
            stats: core.stats.clone(),
            wake_tx,
            exit: AtomicBool::new(false),
            coordinator_exit: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            dirty: AtomicBool::new(true),
            parked: AtomicBool::new(false),
            counted: Mutex::new(HashSet::new()),
            counted_at_start,
        });
        let listener: Weak<dyn JournalListener> =
            Arc::downgrade(&(Arc::clone(&shared) as Arc<dyn JournalListener>));
        if let Err(error) = shared.journal.attach(&shared.stream, listener) {
            // Not started: the pending records counted above are another
            // adapter's to drain.
            for (_, key_hash) in &pending {
                shared.stripes.finish_pending(KeyStripes::index(*key_hash));
            }
            return Err(error);
        }
        let runtime = OutboxRuntime {
            shared,
            core,
            codec,
            config,
            appliers: Mutex::new(Vec::new()),
            coordinator: Mutex::new(None),
        };
        let spawned = match relay {
            None => runtime
                .spawn(apply, wake_rx)
                .map_err(|error| OutboxError::Storage {
                    during: "starting the outbox threads",
                    error: error.to_string(),
                }),
            Some(relay) => runtime.spawn_relay(relay, apply, wake_rx, pending.clone()),
        };
        if let Err(error) = spawned {
            runtime.stop(Instant::now() + Duration::from_secs(5));
            for (_, key_hash) in pending {
                runtime
                    .shared
                    .stripes
                    .finish_pending(KeyStripes::index(key_hash));
            }
            return Err(error);
        }
        Ok(runtime)
    }

    /// Starts a relay's threads, with a record processor per consumer that
    /// applies records as the appliers do.
    fn spawn_relay<F>(
        &self,
        relay: Box<dyn OutboxRelay>,
        apply: F,
        wake_rx: Receiver<()>,
        pending: Vec<(i64, Option<u64>)>,
    ) -> Result<(), OutboxError>
    where
        F: Fn(&LaneContext, Store, &C) -> Result<(), String> + Send + Sync + 'static,
    {
        let apply = Arc::new(apply);
        let handle = Handle::try_current()
            .ok()
            .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
        let (shared, config, decode) = (
            Arc::clone(&self.shared),
            self.config.clone(),
            self.codec.decode,
        );
        let processor = move |index: usize| -> Processor {
            let (outcome_tx, outcome_rx) = crossbeam_channel::unbounded();
            let mut applier = Applier {
                index,
                context: LaneContext::for_outbox(index, config.attempt_timeout, handle.clone()),
                apply: Arc::clone(&apply),
                decode,
                shared: Arc::clone(&shared),
                config: config.clone(),
                outcomes: outcome_tx,
                rng: XorShift64::seeded(index as u64 ^ 0x0B0C),
            };
            Box::new(move |record: JournalRecord| {
                let finished = applier.process(record);
                (finished, outcome_rx.try_iter().collect())
            })
        };
        let threads = relay.spawn(RelayParts {
            shared: Arc::clone(&self.shared),
            config: self.config.clone(),
            wake: wake_rx,
            pending_at_start: pending,
            processor: Arc::new(processor),
        })?;
        self.appliers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(threads.consumers);
        *self
            .coordinator
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(threads.relay);
        Ok(())
    }

    fn spawn<F>(&self, apply: F, wake_rx: Receiver<()>) -> std::io::Result<()>
    where
        F: Fn(&LaneContext, Store, &C) -> Result<(), String> + Send + Sync + 'static,
    {
        let apply = Arc::new(apply);
        let handle = Handle::try_current()
            .ok()
            .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
        let (outcome_tx, outcome_rx) = crossbeam_channel::unbounded();
        let mut queues = Vec::with_capacity(self.config.applier_count());
        for index in 0..self.config.applier_count() {
            let (queue_tx, queue_rx) = crossbeam_channel::unbounded();
            let applier = Applier {
                index,
                context: LaneContext::for_outbox(
                    index,
                    self.config.attempt_timeout,
                    handle.clone(),
                ),
                apply: Arc::clone(&apply),
                decode: self.codec.decode,
                shared: Arc::clone(&self.shared),
                config: self.config.clone(),
                outcomes: outcome_tx.clone(),
                rng: XorShift64::seeded(index as u64 ^ 0x0B0C),
            };
            let thread = thread::Builder::new()
                .name(format!("dualwrite-outbox-{index}"))
                .spawn(move || applier.run(&queue_rx))?;
            self.appliers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(thread);
            queues.push(queue_tx);
        }
        drop(outcome_tx);
        let coordinator = Coordinator {
            shared: Arc::clone(&self.shared),
            config: self.config.clone(),
            queues,
            outcomes: outcome_rx,
            wake: wake_rx,
            cursor: 0,
            unwritten: Vec::new(),
            last_written: Instant::now(),
            last_prune: Instant::now(),
            last_settled: Instant::now(),
            reported: None,
            limited: false,
        };
        let thread = thread::Builder::new()
            .name("dualwrite-outbox".to_owned())
            .spawn(move || coordinator.run())?;
        *self
            .coordinator
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok(())
    }
}

impl<C> OutboxRuntime<C> {
    /// The adapter's stream in the journal.
    pub(crate) fn stream(&self) -> &str {
        &self.shared.stream
    }

    /// Over a journal shared by instances: what a flush or a fence runs to
    /// wait for the records pending in the journal before it, which this
    /// adapter does not count (an earlier run's, another instance's).
    pub(crate) fn barrier_hook(&self) -> Option<crate::stripes::CatchUp> {
        if !self.shared.journal.is_shared() {
            return None;
        }
        let shared = Arc::clone(&self.shared);
        Some(Arc::new(move |deadline| {
            match shared.journal.barrier(&shared.stream, deadline) {
                Ok(done) => done,
                Err(error) => {
                    tracing::warn!(stream = shared.stream, %error, "outbox: cannot tell whether the records journaled before a flush or phase change were applied");
                    false
                }
            }
        }))
    }

    /// The state the appliers share (for the change-data-capture follower).
    pub(crate) fn shared(&self) -> Arc<OutboxShared> {
        Arc::clone(&self.shared)
    }

    /// The configuration the outbox runs with.
    pub(crate) fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// A record for a write, with a fresh idempotency id and sequence.
    fn record(
        &self,
        key_text: Option<String>,
        key_hash: Option<u64>,
        method: &'static str,
        target: Store,
        payload: String,
    ) -> NewRecord {
        NewRecord {
            stream: self.shared.stream.clone(),
            idempotency_id: IdempotencyId::generate(),
            sequence: self.shared.journal.next_sequence(),
            key_text,
            key_hash,
            method: method.to_owned(),
            target,
            payload,
        }
    }

    /// Builds the record of a write about to reach its primary, counts it
    /// pending and makes it the thread's [`WriteContext`] for the primary
    /// call. A command that cannot be encoded sets nothing (the hand-off
    /// reports it).
    pub(crate) fn prepare(
        &self,
        stripe: usize,
        key_hash: Option<u64>,
        method: &'static str,
        target: Store,
        command: C,
    ) -> OutboxScope
    where
        C: WriteCommand,
    {
        let Ok(payload) = (self.codec.encode)(&command) else {
            return OutboxScope::inert();
        };
        let record = self.record(command.key_text(), key_hash, method, target, payload);
        self.shared.count(record.idempotency_id, stripe);
        let ctx = WriteContext::new(record, Side::Primary, 0, Arc::clone(&self.shared.location));
        OutboxScope::enter(ctx, Arc::clone(&self.shared), stripe)
    }

    /// Hands a write whose primary succeeded to the outbox, with its key's
    /// stripe held: nothing to do if the primary store journaled it,
    /// otherwise the record is appended now and the call returns when it
    /// is durable. A record that cannot be journaled (the append failed, or
    /// the command cannot be encoded) is kept as an in-memory dead letter
    /// with the error, and logged: the primary's write cannot be undone.
    /// `render` renders the write's key.
    pub(crate) fn submit(
        &self,
        stripe: usize,
        key_hash: Option<u64>,
        method: &'static str,
        target: Store,
        command: C,
        render: impl FnOnce(&C) -> Option<String>,
    ) {
        let prepared = context::take_matching(self.shared.owner(), |ctx| {
            ctx.key_hash() == key_hash && ctx.method() == method
        });
        let record = match prepared {
            Some(ctx) if ctx.is_journaled() => {
                self.shared.wake_coordinator();
                return;
            }
            // Counted pending when prepared.
            Some(ctx) => ctx.record().clone(),
            None => match (self.codec.encode)(&command) {
                Ok(payload) => {
                    let record = self.record(render(&command), key_hash, method, target, payload);
                    self.shared.count(record.idempotency_id, stripe);
                    record
                }
                Err(error) => {
                    let key = render(&command);
                    let error = OutboxError::Encode { method, error };
                    return self.not_journaled(method, key, target, command, &error);
                }
            },
        };
        match append_blocking(&*self.shared.journal, &record) {
            Ok(()) => self.shared.wake_coordinator(),
            Err(error) => {
                self.shared.uncount(record.idempotency_id, stripe);
                let key = record.key_text;
                self.not_journaled(method, key, target, command, &error);
            }
        }
    }

    /// Keeps a write that could not be journaled as an in-memory dead letter.
    #[cold]
    fn not_journaled(
        &self,
        method: &'static str,
        key: Option<String>,
        target: Store,
        command: C,
        error: &OutboxError,
    ) {
        tracing::error!(
            method,
            key = key.as_deref().unwrap_or("-"),
            %error,
            "the primary was written but its outbox record could not be journaled: kept as an in-memory dead letter"
        );
        self.core.dead_letters.push(DeadLetter::now(
            method,
            key,
            target,
            command,
            format!("not journaled: {error}"),
            0,
        ));
    }

    /// Stops the appliers (a record being applied is finished first) and
    /// the coordinator, which writes the outcomes it holds; waits for them
    /// until `deadline`. Records not applied stay pending in the journal,
    /// for the next adapter over it. Whether every thread stopped.
    pub(crate) fn stop(&self, deadline: Instant) -> bool {
        self.shared.exit.store(true, Ordering::SeqCst);
        let mut stopped = join_until(
            &mut self.appliers.lock().unwrap_or_else(PoisonError::into_inner),
            deadline,
        );
        self.shared.coordinator_exit.store(true, Ordering::SeqCst);
        self.shared.wake_coordinator();
        let mut coordinator = self
            .coordinator
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut threads: Vec<JoinHandle<()>> = coordinator.take().into_iter().collect();
        stopped &= join_until(&mut threads, deadline);
        if let Some(thread) = threads.pop() {
            *coordinator = Some(thread);
        }
        if stopped {
            self.shared.stopped.store(true, Ordering::SeqCst);
        }
        stopped
    }
}

impl<C> Drop for OutboxRuntime<C> {
    fn drop(&mut self) {
        if !self.stop(Instant::now() + Duration::from_secs(5)) {
            tracing::warn!(
                stream = self.shared.stream,
                "outbox threads still busy when the adapter was dropped; they finish in the background"
            );
        }
    }
}

/// Joins the threads that finish before `deadline`; whether all did.
fn join_until(threads: &mut Vec<JoinHandle<()>>, deadline: Instant) -> bool {
    let mut nap = Duration::from_micros(100);
    loop {
        let (done, busy): (Vec<_>, Vec<_>) = threads.drain(..).partition(JoinHandle::is_finished);
        for thread in done {
            // Applier and coordinator catch panics around their work.
            let _ = thread.join();
        }
        *threads = busy;
        if threads.is_empty() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(10));
    }
}

/// Appends a record, letting a multi-thread tokio runtime move this
/// worker's other tasks while the append waits for the disk.
fn append_blocking(journal: &dyn Journal, record: &NewRecord) -> Result<(), OutboxError> {
    match Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| journal.append(record)),
        _ => journal.append(record),
    }
}

/// The thread that reads the journal and hands records to the appliers,
/// writes their outcomes and prunes done records.
struct Coordinator {
    shared: Arc<OutboxShared>,
    config: OutboxConfig,
    queues: Vec<Sender<JournalRecord>>,
    outcomes: Receiver<Outcome>,
    wake: Receiver<()>,
    /// The highest id handed to an applier.
    cursor: i64,
    /// Outcomes not yet written.
    unwritten: Vec<Outcome>,
    last_written: Instant,
    last_prune: Instant,
    /// When a shared journal was last asked about records applied elsewhere.
    last_settled: Instant,
    /// The last storage error logged, so a failing journal is logged once
    /// per kind of error, not once per round.
    reported: Option<String>,
    /// The last claim was cut short by `max_in_flight`: look again.
    limited: bool,
}

impl Coordinator {
    fn run(mut self) {
        let mut nap = NAP_MIN;
        let mut idle = Duration::ZERO;
        let mut last_poll = Instant::now();
        // The last claim read a full batch: more records may be waiting.
        let mut more = false;
        loop {
            let stopping = self.shared.coordinator_exit.load(Ordering::SeqCst);
            let dirty = self.shared.dirty.swap(false, Ordering::SeqCst);
            let poll = last_poll.elapsed() >= self.config.poll_interval;
            if poll {
                last_poll = Instant::now();
            }
            let look = dirty || poll || more || self.limited;
            let round = catch_unwind(AssertUnwindSafe(|| self.round(stopping, look)));
            more = match round {
                Ok(more) => more,
                Err(payload) => {
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        tracing::error!(
                            panic = panic_message(payload.as_ref()),
                            "outbox coordinator recovered from a panic"
                        );
                    }));
                    false
                }
            };
            if stopping {
                return;
            }
            if more {
                continue;
            }
            let busy = dirty
                || !self.unwritten.is_empty()
                || self.shared.in_flight.load(Ordering::SeqCst) > 0;
            if busy {
                idle = Duration::ZERO;
                nap = NAP_MIN;
            } else {
                idle += nap;
            }
            if idle >= PARK_AFTER {
                self.park();
                idle = Duration::ZERO;
                nap = NAP_MIN;
                continue;
            }
            // Callers do not wake a napping coordinator (that would cost
            // each write a system call): it looks again after a short
            // sleep, longer while nothing happens.
            thread::sleep(nap);
            nap = (nap * 2).min(NAP_MAX);
        }
    }

    /// Blocks until a caller wakes the coordinator or the poll interval
    /// passes. A write that set `dirty` before `parked` was seen is looked
    /// at without blocking; one after sees `parked` and wakes it.
    fn park(&self) {
        self.shared.parked.store(true, Ordering::SeqCst);
        if !self.shared.dirty.load(Ordering::SeqCst)
            && !self.shared.coordinator_exit.load(Ordering::SeqCst)
        {
            let _ = self.wake.recv_timeout(self.config.poll_interval);
        }
        self.shared.parked.store(false, Ordering::SeqCst);
    }

    /// One round: write outcomes, claim records (when `look`), prune.
    /// Whether a full batch was claimed (more may be waiting).
    fn round(&mut self, stopping: bool, look: bool) -> bool {
        self.collect_outcomes(stopping);
        if stopping {
            return false;
        }
        let more = if !look || self.shared.exit.load(Ordering::SeqCst) {
            false
        } else {
            self.claim()
        };
        self.prune_if_due();
        self.settle_if_due();
        more
    }

    /// On a journal drained by several instances: releases the pending
    /// count of records this process journaled that another applied.
    fn settle_if_due(&mut self) {
        if !self.shared.journal.is_shared()
            || self.last_settled.elapsed() < self.config.poll_interval
        {
            return;
        }
        self.last_settled = Instant::now();
        let ids: Vec<IdempotencyId> = self.shared.counted().iter().take(4096).copied().collect();
        if ids.is_empty() {
            return;
        }
        match self.shared.journal.settled(&self.shared.stream, &ids) {
            Ok(settled) => {
                for (id, key_hash) in settled {
                    self.shared.uncount(id, KeyStripes::index(key_hash));
                }
            }
            Err(error) => self.report(&error),
        }
    }

    fn collect_outcomes(&mut self, stopping: bool) {
        while let Ok(outcome) = self.outcomes.try_recv() {
            self.unwritten.push(outcome);
        }
        let due = self.unwritten.len() >= OUTCOME_BATCH
            || self.last_written.elapsed() >= OUTCOME_DELAY
            || stopping;
        if self.unwritten.is_empty() || !due {
            return;
        }
        for chunk in self.unwritten.chunks(OUTCOME_BATCH) {
            if let Err(error) = self.shared.journal.record_outcomes(chunk) {
                // Kept and retried: a lost "done" would only re-apply the
                // record after a restart, but a lost "dead" would retry a
                // dead letter.
                self.report(&error);
                return;
            }
        }
        self.unwritten.clear();
        self.last_written = Instant::now();
    }

    /// Hands pending records past the cursor to their appliers.
    fn claim(&mut self) -> bool {
        let in_flight = self.shared.in_flight.load(Ordering::SeqCst);
        let room = self.config.max_in_flight.max(1).saturating_sub(in_flight);
        let limit = room.min(self.config.claim_batch.max(1));
        self.limited = limit < self.config.claim_batch.max(1);
        if limit == 0 {
            return false;
        }
        let claimed = match self
            .shared
            .journal
            .claim(&self.shared.stream, self.cursor, limit)
        {
            Ok(claimed) => claimed,
            Err(error) => {
                self.report(&error);
                return false;
            }
        };
        self.reported = None;
        let full = claimed.records.len() + claimed.unreadable.len() >= limit;
        for row in claimed.unreadable {
            self.cursor = self.cursor.max(row.id);
            self.shared
                .claimed(row.id, row.idempotency_id, KeyStripes::index(row.key_hash));
            self.unreadable(row);
        }
        for record in claimed.records {
            self.cursor = self.cursor.max(record.id);
            self.shared.claimed(
                record.id,
                Some(record.record.idempotency_id),
                KeyStripes::index(record.record.key_hash),
            );
            let applier = match record.record.key_hash {
                // The remainder is below the applier count, so it fits.
                Some(hash) => (hash % self.queues.len() as u64) as usize,
                None => 0,
            };
            self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
            if self.queues[applier].send(record).is_err() {
                // The applier is gone (stopping): the record stays pending.
                self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
        full
    }

    /// A pending row that cannot be read becomes a dead letter.
    #[cold]
    fn unreadable(&mut self, row: Unreadable) {
        tracing::error!(
            stream = self.shared.stream,
            journal_id = row.id,
            error = %row.error,
            "outbox: a pending journal row cannot be read; kept as a dead letter"
        );
        self.shared.stats.record_dead_letter();
        self.unwritten.push(Outcome::Dead {
            id: row.id,
            attempts: 0,
            error: format!("cannot read the journal row: {}", row.error),
        });
        self.shared
            .stripes
            .finish_pending(KeyStripes::index(row.key_hash));
    }

    fn prune_if_due(&mut self) {
        let Some(retention) = self.config.retention else {
            return;
        };
        if self.last_prune.elapsed() < self.config.prune_interval {
            return;
        }
        self.last_prune = Instant::now();
        let Some(before) = SystemTime::now().checked_sub(retention) else {
            return;
        };
        // A few chunks a round, so outcomes and claims are not held up.
        for _ in 0..10 {
            match self.shared.journal.prune(before, PRUNE_BATCH) {
                Ok(deleted) if deleted as usize >= PRUNE_BATCH => continue,
                Ok(_) => break,
                Err(error) => {
                    self.report(&error);
                    break;
                }
            }
        }
    }

    fn report(&mut self, error: &OutboxError) {
        let text = error.to_string();
        if self.reported.as_deref() != Some(text.as_str()) {
            tracing::error!(stream = self.shared.stream, %error, "outbox journal operation failed; retrying");
            self.reported = Some(text);
        }
    }
}

/// One applier thread.
struct Applier<C, F> {
    index: usize,
    context: LaneContext,
    apply: Arc<F>,
    decode: fn(&str) -> Result<C, String>,
    shared: Arc<OutboxShared>,
    config: OutboxConfig,
    outcomes: Sender<Outcome>,
    rng: XorShift64,
}

impl<C, F> Applier<C, F>
where
    F: Fn(&LaneContext, Store, &C) -> Result<(), String>,
{
    fn run(mut self, queue: &Receiver<JournalRecord>) {
        loop {
            if self.shared.exit.load(Ordering::SeqCst) {
                return;
            }
            let record = match queue.recv_timeout(Duration::from_millis(50)) {
                Ok(record) => record,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if self.shared.exit.load(Ordering::SeqCst) {
                // Left pending in the journal for the next run.
                return;
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let _finished = self.process(record);
            }));
            if outcome.is_err() {
                let index = self.index;
                let _ = catch_unwind(|| {
                    tracing::error!(applier = index, "outbox applier recovered from a panic");
                });
            }
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Applies one record, retrying with backoff; reports it done or dead.
    /// Returns early, leaving the record pending, when the outbox stops.
    /// Whether the record was finished (done or dead).
    fn process(&mut self, record: JournalRecord) -> bool {
        let JournalRecord {
            id,
            record,
            attempts: earlier,
            ..
        } = record;
        let stripe = KeyStripes::index(record.key_hash);
        let target = record.target;
        if let Some(error) = crate::cdc::rejected_error(&record.payload) {
            let error = error.to_owned();
            self.dead(id, earlier, error, &record, stripe);
            return true;
        }
        let command = match (self.decode)(&record.payload) {
            Ok(command) => command,
            Err(error) => {
                let error = format!("cannot decode the journaled command: {error}");
                self.dead(id, earlier, error, &record, stripe);
                return true;
            }
        };
        let limit = self.config.max_attempts.max(1);
        let mut attempts = earlier.saturating_add(1);
        // One context per attempt: a store that keeps one sees its own
        // attempt number.
        let mut ctx = WriteContext::new(
            record,
            Side::Apply,
            attempts,
            Arc::clone(&self.shared.location),
        );
        loop {
            self.context.set_attempt(attempts);
            let result = {
                let _scope = ApplyScope::enter(ctx.clone(), self.shared.owner());
                catch_unwind(AssertUnwindSafe(|| {
                    (self.apply)(&self.context, target, &command)
                }))
                .unwrap_or_else(|payload| {
                    Err(format!(
                        "secondary write panicked: {}",
                        panic_message(payload.as_ref())
                    ))
                })
            };
            self.shared
                .stats
                .record_write(target, Role::Secondary, result.is_ok());
            let error = match result {
                Ok(()) => {
                    self.shared.stripes.finish_pending(stripe);
                    let _ = self.outcomes.send(Outcome::Done { id, attempts });
                    return true;
                }
                Err(error) => error,
            };
            // A timed-out attempt may still land: a retry could be
            // overwritten by it, so it is left to the dead letter.
            if attempts >= limit || self.context.take_timed_out() {
                self.dead(id, attempts, error, ctx.record(), stripe);
                return true;
            }
            tracing::warn!(
                method = ctx.method(),
                key = ctx.key_text().unwrap_or("-"),
                target = %target,
                attempt = attempts,
                %error,
                "outbox: secondary write failed, retrying"
            );
            let _ = self.outcomes.send(Outcome::Retrying {
                id,
                attempts,
                error,
            });
            self.shared.stats.record_secondary_retry();
            let delay = equal_jitter(self.config.backoff(attempts), self.rng.next_u64());
            if !self.sleep(delay) {
                return false;
            }
            attempts = attempts.saturating_add(1);
            ctx = WriteContext::new(
                ctx.record().clone(),
                Side::Apply,
                attempts,
                Arc::clone(&self.shared.location),
            );
        }
    }

    fn dead(&self, id: i64, attempts: u32, error: String, record: &NewRecord, stripe: usize) {
        tracing::error!(
            method = record.method,
            key = record.key_text.as_deref().unwrap_or("-"),
            target = %record.target,
            attempts,
            %error,
            journal_id = id,
            "outbox: secondary write given up on; kept as a dead letter in the journal"
        );
        self.shared.stats.record_dead_letter();
        // Written at once (dead letters are rare), so the journal lists it
        // by the time the pending count releases a flush or a fence; on a
        // storage error the coordinator retries it.
        let outcome = Outcome::Dead {
            id,
            attempts,
            error,
        };
        if self
            .shared
            .journal
            .record_outcomes(std::slice::from_ref(&outcome))
            .is_err()
        {
            let _ = self.outcomes.send(outcome);
        }
        self.shared.stripes.finish_pending(stripe);
    }

    /// Sleeps `delay`, waking early when the outbox stops; whether it slept
    /// the whole delay.
    fn sleep(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            if self.shared.exit.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }
}

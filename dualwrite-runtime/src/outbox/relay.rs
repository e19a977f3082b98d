//! What a relay of the journal to a message broker gets from the outbox,
//! and the bookkeeping every relay shares.
//!
//! A relay takes the places of the coordinator and the appliers: its relay
//! thread claims records not yet relayed, publishes them and marks them
//! relayed once the broker acknowledged them; its consumer threads receive
//! them from the broker and apply them through the appliers' own path (a
//! [`Processor`]: decode, `WriteContext`, retries with backoff, dead letters
//! in the journal), record the outcome in the journal, and only then
//! acknowledge the message.
//!
//! Pending counts: a record is counted on its key's stripe once per process
//! (when the caller prepared it, when the outbox started, or when the relay
//! claimed it) and released once, when a consumer finishes it, so a flush or
//! a phase change waits until the consumers applied what was journaled. A
//! record that reaches a consumer without having been counted here (a
//! redelivery of one applied before a crash) is counted when it arrives.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use super::applier::OutboxShared;
use super::{IdempotencyId, JournalRecord, OutboxConfig, OutboxError, Outcome};
use crate::stripes::KeyStripes;

/// Applies one record as an applier does; whether it was finished (done or
/// dead: `false` when the outbox stopped first) and the outcomes to record
/// (the dead letter is recorded already).
pub(crate) type Processor = Box<dyn FnMut(JournalRecord) -> (bool, Vec<Outcome>) + Send>;

/// A relay of the outbox journal to a message broker, chosen with
/// `with_outbox_relay` on a generated adapter (or
/// [`DualWriteCore::start_outbox_relay`](crate::DualWriteCore::start_outbox_relay)).
/// Implemented by the runtime's relays (`nats::NatsConfig`, feature
/// `outbox-nats`).
pub trait OutboxRelay: Send {
    /// Starts the relay's threads over the outbox's `parts`.
    fn spawn(self: Box<Self>, parts: RelayParts) -> Result<RelayThreads, OutboxError>;
    /// The relay's name, for messages.
    fn describe(&self) -> String;
}

impl fmt::Debug for dyn OutboxRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What a relay gets from the outbox it runs for (opaque outside the
/// runtime).
pub struct RelayParts {
    pub(crate) shared: Arc<OutboxShared>,
    pub(crate) config: OutboxConfig,
    /// Woken when records are journaled (see `OutboxShared::wake_coordinator`).
    pub(crate) wake: Receiver<()>,
    /// The pending records counted when the outbox started.
    pub(crate) pending_at_start: Vec<(i64, Option<u64>)>,
    /// A record processor for consumer `index`.
    pub(crate) processor: Arc<dyn Fn(usize) -> Processor + Send + Sync>,
}

impl fmt::Debug for RelayParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayParts")
            .field("stream", &self.shared.stream)
            .finish_non_exhaustive()
    }
}

/// The threads a relay started: stopping the outbox stops the consumers
/// first (each finishes or gives back the record it holds), then the relay.
#[derive(Debug)]
pub struct RelayThreads {
    /// Claims and publishes records; stops when the outbox's coordinator
    /// would.
    pub relay: JoinHandle<()>,
    /// Apply records received from the broker; stop when the appliers
    /// would.
    pub consumers: Vec<JoinHandle<()>>,
}

/// The records counted pending by this process and not finished yet, by
/// journal id.
pub(crate) struct Counted {
    shared: Arc<OutboxShared>,
    ids: Mutex<HashSet<i64>>,
}

impl Counted {
    /// Starts with the records counted when the outbox started.
    pub(crate) fn new(shared: Arc<OutboxShared>, pending_at_start: &[(i64, Option<u64>)]) -> Self {
        Counted {
            shared,
            ids: Mutex::new(pending_at_start.iter().map(|(id, _)| *id).collect()),
        }
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The relay claimed a record: counted now unless it was before (by
    /// the caller who journaled it, at the start, or at an earlier claim).
    pub(crate) fn claimed(
        &self,
        id: i64,
        idempotency_id: Option<IdempotencyId>,
        key_hash: Option<u64>,
    ) {
        let mut ids = self.ids();
        if ids.insert(id) {
            self.shared
                .claimed(id, idempotency_id, KeyStripes::index(key_hash));
        }
    }

    /// A consumer is about to apply a record: counted now if it was not,
    /// so the applier's release has its count.
    pub(crate) fn applying(&self, id: i64, key_hash: Option<u64>) {
        if self.ids().insert(id) {
            self.shared.stripes.add_pending(KeyStripes::index(key_hash));
        }
    }

    /// The applier finished a record (it released the count itself).
    pub(crate) fn finished(&self, id: i64) {
        self.ids().remove(&id);
    }

    /// A record is finished without being applied here (applied or
    /// dead-lettered before, or unreadable): its count, if any, is released.
    pub(crate) fn release(&self, id: i64, key_hash: Option<u64>) {
        if self.ids().remove(&id) {
            self.shared
                .stripes
                .finish_pending(KeyStripes::index(key_hash));
        }
    }
}

impl RelayParts {
    /// Whether the consumers should stop.
    pub(crate) fn consumers_exit(&self) -> bool {
        self.shared.exit.load(Ordering::SeqCst)
    }

    /// Whether the relay thread should stop.
    pub(crate) fn relay_exit(&self) -> bool {
        self.shared.coordinator_exit.load(Ordering::SeqCst)
    }

    /// Takes the "records were journaled" flag.
    pub(crate) fn take_dirty(&self) -> bool {
        self.shared.dirty.swap(false, Ordering::SeqCst)
    }

    /// Blocks until records are journaled, the outbox stops, or `timeout`
    /// passes (as the coordinator parks).
    pub(crate) fn park(&self, timeout: std::time::Duration) {
        self.shared.parked.store(true, Ordering::SeqCst);
        if !self.shared.dirty.load(Ordering::SeqCst) && !self.relay_exit() {
            let _ = self.wake.recv_timeout(timeout);
        }
        self.shared.parked.store(false, Ordering::SeqCst);
    }
}

/// Group commit of outcomes for threads that each wait for their own
/// (a relay's consumers): the first thread to arrive writes what every
/// thread queued meanwhile in one journal transaction, the others wait for
/// that write. Each thread's outcomes stay together and in their order.
#[derive(Default)]
pub(crate) struct OutcomeGroup {
    state: Mutex<GroupState>,
    written: Condvar,
}

#[derive(Default)]
struct GroupState {
    /// Outcomes of the batch being gathered.
    queue: Vec<Outcome>,
    /// The number of the batch being gathered; batches are written in
    /// number order.
    gathering: u64,
    /// Whether a thread is writing a batch.
    writing: bool,
    /// Batches below this number are written (or failed).
    completed: u64,
    /// The errors of recent failed batches, by number.
    failed: Vec<(u64, OutboxError)>,
}

/// Failed batches remembered for their waiters.
const FAILED_KEPT: usize = 64;

impl OutcomeGroup {
    /// Writes `outcomes` to `journal` with whatever other threads queue at
    /// the same time; returns once they are written, with the error of
    /// the write they were part of.
    pub(crate) fn record(
        &self,
        journal: &dyn super::Journal,
        outcomes: &[Outcome],
    ) -> Result<(), OutboxError> {
        let lock = || self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = lock();
        state.queue.extend_from_slice(outcomes);
        let mine = state.gathering;
        loop {
            if state.completed > mine {
                return match state.failed.iter().find(|(batch, _)| *batch == mine) {
                    Some((_, error)) => Err(error.clone()),
                    None => Ok(()),
                };
            }
            if state.writing {
                state = self
                    .written
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // This thread writes the batch gathered so far (its own
            // outcomes are in it: batches are written in order).
            state.writing = true;
            let batch = std::mem::take(&mut state.queue);
            let number = state.gathering;
            state.gathering += 1;
            drop(state);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                journal.record_outcomes(&batch)
            }))
            .unwrap_or_else(|_| {
                Err(OutboxError::Storage {
                    during: "recording outcomes",
                    error: "the journal panicked".to_owned(),
                })
            });
            state = lock();
            state.writing = false;
            state.completed = number + 1;
            if let Err(error) = result {
                if state.failed.len() >= FAILED_KEPT {
                    state.failed.remove(0);
                }
                state.failed.push((number, error));
            }
            self.written.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::outbox::{Claimed, Journal, JournalListener, NewRecord};

    /// A journal that records the batches of outcomes it is given, slowly
    /// (as a flushed commit is), and fails the batches holding id 0.
    #[derive(Debug, Default)]
    struct Batches {
        written: Mutex<Vec<Vec<Outcome>>>,
        calls: AtomicUsize,
    }

    impl Journal for Batches {
        fn location(&self) -> &str {
            "batches"
        }
        fn next_sequence(&self) -> u64 {
            0
        }
        fn append(&self, _: &NewRecord) -> Result<(), OutboxError> {
            Ok(())
        }
        fn contains(&self, _: &IdempotencyId) -> Result<bool, OutboxError> {
            Ok(false)
        }
        fn pending_keys(&self, _: &str) -> Result<Vec<(i64, Option<u64>)>, OutboxError> {
            Ok(Vec::new())
        }
        fn claim(&self, _: &str, _: i64, _: usize) -> Result<Claimed, OutboxError> {
            Ok(Claimed::default())
        }
        fn record_outcomes(&self, outcomes: &[Outcome]) -> Result<(), OutboxError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            if outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Done { id: 0, .. }))
            {
                return Err(OutboxError::Storage {
                    during: "recording outcomes",
                    error: "disk full".to_owned(),
                });
            }
            self.written.lock().unwrap().push(outcomes.to_vec());
            Ok(())
        }
        fn prune(&self, _: SystemTime, _: usize) -> Result<u64, OutboxError> {
            Ok(0)
        }
        fn attach(&self, _: &str, _: Weak<dyn JournalListener>) -> Result<(), OutboxError> {
            Ok(())
        }
        fn dead_letters(&self) -> Result<Vec<JournalRecord>, OutboxError> {
            Ok(Vec::new())
        }
        fn replay(&self, id: i64) -> Result<i64, OutboxError> {
            Err(OutboxError::NotFound { id })
        }
        fn discard(&self, id: i64) -> Result<(), OutboxError> {
            Err(OutboxError::NotFound { id })
        }
    }

    #[test]
    fn concurrent_outcomes_are_written_in_groups_each_thread_in_order() {
        let journal = Batches::default();
        let group = OutcomeGroup::default();
        let (threads, calls) = (8_i64, 40_i64);
        let results: Vec<Vec<Result<(), OutboxError>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|thread| {
                    let (journal, group) = (&journal, &group);
                    scope.spawn(move || {
                        (0..calls)
                            .map(|call| {
                                // Each call: a retry, then the record done.
                                let id = thread * 1_000 + call;
                                let outcomes = [
                                    Outcome::Retrying {
                                        id,
                                        attempts: 1,
                                        error: "busy".to_owned(),
                                    },
                                    Outcome::Done { id, attempts: 2 },
                                ];
                                group.record(journal, &outcomes)
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Thread 0's first call (id 0) failed, and with it every call of
        // its batch; every other call succeeded.
        let failed: Vec<(usize, usize)> = results
            .iter()
            .enumerate()
            .flat_map(|(t, calls)| {
                calls
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.is_err())
                    .map(move |(c, _)| (t, c))
            })
            .collect();
        assert!(failed.contains(&(0, 0)));
        let written = journal.written.lock().unwrap();
        let outcomes: Vec<&Outcome> = written.iter().flatten().collect();
        let succeeded = (threads * calls) as usize - failed.len();
        assert_eq!(outcomes.len(), succeeded * 2, "every written call, whole");
        // A record's outcomes are adjacent and in order.
        for pair in outcomes.chunks(2) {
            match pair {
                [Outcome::Retrying { id: a, .. }, Outcome::Done { id: b, .. }] => {
                    assert_eq!(a, b);
                }
                other => panic!("split or reordered: {other:?}"),
            }
        }
        let calls_made = journal.calls.load(Ordering::SeqCst);
        assert!(
            calls_made < (threads * calls) as usize,
            "grouped: {calls_made} journal writes for {} calls",
            threads * calls
        );
    }
}

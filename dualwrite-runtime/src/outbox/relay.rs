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
use std::sync::{Arc, Mutex, PoisonError};
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

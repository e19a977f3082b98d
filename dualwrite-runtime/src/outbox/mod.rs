//! The outbox strategy: secondary writes kept in a durable journal, so a
//! crash between the primary's commit and the secondary write loses nothing.
//!
//! With the async-secondary strategy ([`crate::LaneConfig`]) the secondary
//! write waits in memory: a process killed after the primary committed and
//! before a lane applied it loses the write. Here the write is first made
//! durable as a journal record, and only then is the caller acknowledged:
//!
//! ```text
//! caller:   route -> primary write -> append the record (durably) -> return
//!                                      |  or: the store inserts it in its own
//!                                      |  transaction (`WriteContext`), and the
//!                                      |  runtime sees it was journaled
//! appliers:          claim pending records in id order -> the key's applier
//!                    applies them in order -> done (or, after the last retry,
//!                    dead: a dead letter kept in the journal)
//! restart:           a new adapter over the same journal resumes every
//!                    pending record
//! ```
//!
//! - [`Journal`]: where records live; `sqlite::SqliteJournal` (feature
//!   `outbox-sqlite`) is the one implementation today, with the
//!   [`Durability`] policies (one commit per append, group commit, none).
//! - [`WriteContext`]: the record being written, reachable by the primary
//!   store during its call (to insert the record in its own transaction:
//!   the *transactional outbox*) and by the secondary store while a record
//!   is applied (idempotency id, sequence as a version, attempt).
//! - [`OutboxConfig`]: appliers, retries and backoff, claim sizes,
//!   retention of done records.
//!
//! Order: every record of one key goes to the same applier thread, which
//! applies them one at a time in journal order, and records of one key are
//! journaled in the order the primary committed them (the key's stripe is
//! held from the primary call through the append). Delivery is at least
//! once: a record applied just before a crash, and not yet marked done, is
//! applied again after the restart, with the same idempotency id and
//! sequence, so the secondary can recognise it (see
//! `sqlite::apply_once` and [`WriteContext::version`]).
//!
//! A journal shared by several processes: `postgres::PgJournal` (feature
//! `outbox-postgres`) partitions records by key and gives each partition to
//! one instance at a time through expiring leases. Other journals expect
//! one process at a time to run appliers for a stream.
//!
//! Change data capture ([`crate::cdc`]) journals the changes it reads from
//! the old database here too, and the same appliers apply them.
//!
//! With a relay ([`OutboxRelay`]; `nats::NatsConfig`, feature
//! `outbox-nats`) the journal's records are published to a message broker
//! instead, and the broker's consumers apply them through the same path
//! (see the `nats` module).

mod applier;
mod context;
mod ids;
#[cfg(feature = "outbox-nats")]
pub mod nats;
#[cfg(feature = "outbox-postgres")]
pub mod postgres;
// The relays' shared bookkeeping: only the NATS relay uses all of it.
#[cfg_attr(not(feature = "outbox-nats"), allow(dead_code))]
mod relay;
#[cfg(feature = "outbox-sqlite")]
pub mod sqlite;

use std::collections::HashMap;
use std::fmt;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::phase::Store;

pub(crate) use applier::{OutboxRuntime, OutboxShared};
pub use context::{OutboxScope, Side, WriteContext};
pub use ids::IdempotencyId;
pub use relay::{OutboxRelay, RelayParts, RelayThreads};

/// A write command that can be kept in a journal: encoded as text when it
/// is journaled, decoded when an applier replays it.
///
/// Every command enum generated with `#[dual_write(serde)]` is one when the
/// runtime's `serde` feature is on (encoded with `serde_json`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be kept in the outbox journal: it must be serialisable",
    label = "the write command journaled by the outbox",
    note = "add `serde` to the trait's `#[dual_write(..)]` attribute and enable the `serde` feature of dualwrite-runtime"
)]
pub trait JournalCommand: Sized {
    /// The command as journal text.
    fn encode(&self) -> Result<String, String>;
    /// A command read back from journal text.
    fn decode(text: &str) -> Result<Self, String>;
}

#[cfg(feature = "serde")]
#[diagnostic::do_not_recommend]
impl<T> JournalCommand for T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self) -> Result<String, String> {
        serde_json::to_string(self).map_err(|error| error.to_string())
    }

    fn decode(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|error| error.to_string())
    }
}

/// How an adapter encodes its commands for the journal and reads them back;
/// [`JournalCodec::of`] for a [`JournalCommand`].
pub struct JournalCodec<C> {
    /// The command as journal text.
    pub encode: fn(&C) -> Result<String, String>,
    /// A command read back from journal text.
    pub decode: fn(&str) -> Result<C, String>,
}

impl<C: JournalCommand> JournalCodec<C> {
    /// The codec of a journal command type.
    pub fn of() -> Self {
        JournalCodec {
            encode: C::encode,
            decode: C::decode,
        }
    }
}

impl<C> Clone for JournalCodec<C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for JournalCodec<C> {}

impl<C> fmt::Debug for JournalCodec<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalCodec").finish_non_exhaustive()
    }
}

/// When an appended record is on disk, for the appends the runtime makes
/// after the primary write (a store that journals in its own transaction
/// follows its own connection's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// One transaction per append, committed with `synchronous=FULL`: the
    /// caller is acknowledged once its record is on disk. Concurrent callers
    /// commit one after the other.
    #[default]
    PerWrite,
    /// Group commit (`synchronous=FULL`): appends of concurrent callers that
    /// arrive while a commit is under way are written together in the next
    /// transaction; each caller waits for the commit of its batch. As
    /// durable as [`Durability::PerWrite`], with one disk flush per batch
    /// instead of one per append.
    Grouped,
    /// `synchronous=OFF`: commits are not flushed to disk. A crash of the
    /// process keeps them (they are in the operating system's cache), a
    /// crash of the machine may not. For tests and benchmarks.
    None,
}

impl Durability {
    /// The `PRAGMA synchronous` value of the policy.
    pub fn synchronous(self) -> &'static str {
        match self {
            Durability::PerWrite | Durability::Grouped => "FULL",
            Durability::None => "OFF",
        }
    }
}

/// The state of a journal record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// Waiting to be applied to the secondary.
    Pending,
    /// Applied to the secondary.
    Done,
    /// Given up on after the last attempt: a dead letter, kept in the
    /// journal until replayed or discarded.
    Dead,
}

impl RecordState {
    /// The state's number in a journal table.
    pub fn code(self) -> i64 {
        match self {
            RecordState::Pending => 0,
            RecordState::Done => 1,
            RecordState::Dead => 2,
        }
    }

    /// The state of a number read from a journal table.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(RecordState::Pending),
            1 => Some(RecordState::Done),
            2 => Some(RecordState::Dead),
            _ => None,
        }
    }
}

impl fmt::Display for RecordState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordState::Pending => "pending",
            RecordState::Done => "done",
            RecordState::Dead => "dead",
        })
    }
}

/// A record about to be journaled: one secondary write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// The adapter's stream in the journal ([`OutboxConfig::stream`]).
    pub stream: String,
    /// Unique per record; the secondary can use it to apply a record once.
    pub idempotency_id: IdempotencyId,
    /// Drawn from one counter of the journal, strictly increasing (with
    /// gaps): the records of one key carry increasing sequences in the
    /// order the primary committed them, so it serves as a version.
    pub sequence: u64,
    /// The write's routing key as text, if the method has one.
    pub key_text: Option<String>,
    /// The route hash of the key, which picks the applier.
    pub key_hash: Option<u64>,
    /// The repository method.
    pub method: String,
    /// The store the write is for.
    pub target: Store,
    /// The command, encoded ([`JournalCommand::encode`]).
    pub payload: String,
}

/// A record read from a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    /// The record's position in the journal (increasing in append order).
    pub id: i64,
    /// The write itself.
    pub record: NewRecord,
    /// Where it stands.
    pub state: RecordState,
    /// Attempts made to apply it so far.
    pub attempts: u32,
    /// The error of the last failed attempt, if any.
    pub last_error: Option<String>,
    /// When it was journaled.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

impl JournalRecord {
    /// The command of the record, decoded (e.g. a dead letter's, to look at
    /// or to repair by hand).
    pub fn command<C: JournalCommand>(&self) -> Result<C, OutboxError> {
        C::decode(&self.record.payload).map_err(|error| OutboxError::Decode { id: self.id, error })
    }
}

/// What [`Journal::claim`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Pending records, in id order.
    pub records: Vec<JournalRecord>,
    /// Pending rows among them that cannot be read.
    pub unreadable: Vec<Unreadable>,
}

/// A journal row that cannot be read as a record (a value this runtime
/// does not know, written by hand or by another version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The row's id.
    pub id: i64,
    /// Its key hash, if that much can be read.
    pub key_hash: Option<u64>,
    /// Its idempotency id, if that much can be read.
    pub idempotency_id: Option<IdempotencyId>,
    /// What cannot be read.
    pub error: String,
}

/// What an applier reports of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied after `attempts` attempts in all.
    Done {
        /// The record.
        id: i64,
        /// Attempts made in all.
        attempts: u32,
    },
    /// An attempt failed; it will be retried.
    Retrying {
        /// The record.
        id: i64,
        /// Attempts made so far.
        attempts: u32,
        /// The attempt's error.
        error: String,
    },
    /// Given up on: a dead letter.
    Dead {
        /// The record.
        id: i64,
        /// Attempts made in all.
        attempts: u32,
        /// The last attempt's error.
        error: String,
    },
}

/// Told by a journal when a dead letter is replayed, so the adapter whose
/// stream it belongs to counts it as pending (a phase change waits for it)
/// and looks for it at once.
pub trait JournalListener: Send + Sync {
    /// The record with this idempotency id, of the key with this route
    /// hash, is about to become pending again (called before the journal
    /// changes, so it is counted before an applier can finish it).
    fn requeuing(&self, id: IdempotencyId, key_hash: Option<u64>);
    /// The requeue announced by [`JournalListener::requeuing`] failed.
    fn requeue_failed(&self, id: IdempotencyId, key_hash: Option<u64>);
    /// New pending records may be in the journal.
    fn wake(&self);
    /// Whether the adapter still claims records (false once its outbox
    /// threads stopped, so another adapter may take the stream).
    fn draining(&self) -> bool {
        true
    }
}

/// Where outbox records are kept: the backend-neutral operations the
/// runtime uses. `sqlite::SqliteJournal` implements it.
///
/// One process at a time should run appliers for a stream of a journal.
pub trait Journal: Send + Sync + fmt::Debug {
    /// Where the journal lives, for messages (a file path for SQLite), and
    /// what `sqlite::append_in` compares with the store's database.
    fn location(&self) -> &str;
    /// The next sequence number: strictly greater than any handed out or
    /// journaled before, also across restarts.
    fn next_sequence(&self) -> u64;
    /// Appends a record durably, as the journal's [`Durability`] says;
    /// returns when it is committed.
    fn append(&self, record: &NewRecord) -> Result<(), OutboxError>;
    /// Whether a record with this idempotency id is in the journal.
    fn contains(&self, id: &IdempotencyId) -> Result<bool, OutboxError>;
    /// The id and key hash of every pending record of a stream (counted as
    /// pending by the adapter that starts on it).
    fn pending_keys(&self, stream: &str) -> Result<Vec<(i64, Option<u64>)>, OutboxError>;
    /// Up to `limit` pending records of a stream with an id above `after`,
    /// in id order; rows that cannot be read come back apart, so the
    /// runtime dead-letters them instead of stalling on them or skipping
    /// them silently.
    fn claim(&self, stream: &str, after: i64, limit: usize) -> Result<Claimed, OutboxError>;
    /// Appends records durably in one transaction when the journal can
    /// (the change-data-capture follower journals a batch of changes at a
    /// time); by default one [`Journal::append`] after the other.
    fn append_many(&self, records: &[NewRecord]) -> Result<(), OutboxError> {
        records.iter().try_for_each(|record| self.append(record))
    }
    /// Records what appliers did, in one transaction. `outcomes` are in the
    /// order they were reported, and one record can have several (failed
    /// attempts, then the final one): the last one of each record is what
    /// the journal keeps.
    fn record_outcomes(&self, outcomes: &[Outcome]) -> Result<(), OutboxError>;
    /// Deletes up to `limit` done records last changed at or before `before`;
    /// how many it deleted.
    fn prune(&self, before: SystemTime, limit: usize) -> Result<u64, OutboxError>;
    /// Registers the adapter running appliers for `stream`; fails with
    /// [`OutboxError::StreamTaken`] while another live adapter drains it.
    fn attach(&self, stream: &str, listener: Weak<dyn JournalListener>) -> Result<(), OutboxError>;
    /// Every dead letter (records in state dead), oldest first.
    fn dead_letters(&self) -> Result<Vec<JournalRecord>, OutboxError>;
    /// Makes a dead letter pending again, at the end of the journal (a new
    /// id; the same idempotency id and sequence); returns the new id.
    fn replay(&self, id: i64) -> Result<i64, OutboxError>;
    /// Deletes a dead letter.
    fn discard(&self, id: i64) -> Result<(), OutboxError>;
    /// Whether other processes may apply this journal's records (a journal
    /// drained by several instances): then the runtime asks
    /// [`Journal::settled`] about the records it journaled and has not
    /// claimed. False unless a journal says otherwise.
    fn is_shared(&self) -> bool {
        false
    }
    /// Of these records (journaled by this process and not claimed by it),
    /// the ones no longer pending: applied or dead-lettered by another
    /// instance, with their key hash. Records not in the journal (not
    /// committed yet) are not among them. None unless
    /// [`Journal::is_shared`].
    fn settled(
        &self,
        stream: &str,
        ids: &[IdempotencyId],
    ) -> Result<Vec<(IdempotencyId, Option<u64>)>, OutboxError> {
        let _ = (stream, ids);
        Ok(Vec::new())
    }
    /// Waits until no record of `stream` journaled before the call is
    /// pending any more, whichever process journaled it and whichever
    /// drains it (records left by an earlier run included); whether that
    /// happened by `deadline`. A flush and a phase change of an adapter over
    /// a shared journal wait for it, so no record from before them is
    /// applied after them. Journals whose pending records the adapter counts
    /// itself ([`Journal::pending_keys`]) have nothing more to wait for: the
    /// default.
    fn barrier(&self, stream: &str, deadline: std::time::Instant) -> Result<bool, OutboxError> {
        let _ = (stream, deadline);
        Ok(true)
    }

    /// Like [`Journal::claim`], for a relay to a message broker: pending
    /// records not yet marked relayed ([`Journal::mark_relayed`]). The
    /// default reads every pending record (a journal that keeps no relay
    /// state): after a restart the relay publishes again what it had
    /// published, and the broker's deduplication (or the idempotency id)
    /// makes the copies harmless.
    fn claim_unrelayed(
        &self,
        stream: &str,
        after: i64,
        limit: usize,
    ) -> Result<Claimed, OutboxError> {
        self.claim(stream, after, limit)
    }

    /// Marks records as relayed: the broker acknowledged them, so a relay
    /// started later does not publish them again. They stay pending until
    /// applied. The default keeps nothing.
    fn mark_relayed(&self, ids: &[i64]) -> Result<(), OutboxError> {
        let _ = ids;
        Ok(())
    }

    /// Where a record stands, for a broker's consumer that receives a record
    /// again (a redelivery after a crash) and skips it if it was applied or
    /// dead-lettered meanwhile. The default cannot tell.
    fn status(&self, id: i64) -> Result<RecordStatus, OutboxError> {
        let _ = id;
        Ok(RecordStatus::Unknown)
    }
}

/// What [`Journal::status`] knows of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStatus {
    /// The journal keeps no state it can look up.
    Unknown,
    /// No such record: pruned after it was applied, or a discarded dead
    /// letter.
    Gone,
    /// In the journal.
    Present {
        /// Its state.
        state: RecordState,
        /// Attempts made so far.
        attempts: u32,
    },
}

/// The next per-key sequence of a journal that numbers records by the
/// clock: microseconds since the epoch, and always above the last one
/// `sequence` handed out (so a clock that steps back keeps the order).
#[cfg_attr(not(feature = "outbox-sqlite"), allow(dead_code))]
pub(crate) fn clock_sequence(sequence: &AtomicU64) -> u64 {
    clock_sequence_with(sequence, 0)
}

/// Like [`clock_sequence`], with the clock moved by `offset` microseconds
/// (a shared journal numbers by its database server's clock).
#[cfg_attr(
    not(any(feature = "outbox-sqlite", feature = "outbox-postgres")),
    allow(dead_code)
)]
pub(crate) fn clock_sequence_with(sequence: &AtomicU64, offset: i64) -> u64 {
    let local = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        });
    let now = u64::try_from(local.saturating_add(offset)).unwrap_or(0);
    let mut previous = sequence.load(Ordering::SeqCst);
    loop {
        let next = previous.saturating_add(1).max(now);
        match sequence.compare_exchange_weak(previous, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(actual) => previous = actual,
        }
    }
}

/// What went wrong with a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxError {
    /// The journal file is damaged (its integrity check failed, it is not a
    /// database, or it is shorter than its header says): nothing was read
    /// from it, so no record was dropped. Restore it from a backup, or move
    /// it away to start a new journal.
    Corrupt {
        /// The file.
        path: String,
        /// What the check found.
        detail: String,
    },
    /// The file is a database, but its outbox tables are not this
    /// runtime's (another format version, or other columns).
    Format {
        /// The file.
        path: String,
        /// What does not match.
        detail: String,
    },
    /// The journal was to be opened, not created, and the file holds none.
    Missing {
        /// The file.
        path: String,
    },
    /// A storage operation failed.
    Storage {
        /// What was being done.
        during: &'static str,
        /// The storage's error.
        error: String,
    },
    /// No record with this id.
    NotFound {
        /// The id asked for.
        id: i64,
    },
    /// The record is not a dead letter (only dead letters can be replayed
    /// or discarded).
    NotDead {
        /// The record.
        id: i64,
        /// Its state.
        state: RecordState,
    },
    /// A command could not be encoded for the journal.
    Encode {
        /// The method of the write.
        method: &'static str,
        /// The encoder's error.
        error: String,
    },
    /// A record's command could not be decoded.
    Decode {
        /// The record.
        id: i64,
        /// The decoder's error.
        error: String,
    },
    /// A record read from the journal holds a value this runtime cannot
    /// read (an unknown state or target).
    BadRecord {
        /// The record.
        id: i64,
        /// What is wrong.
        detail: String,
    },
    /// Another adapter of this process already drains the stream from this
    /// journal; two would apply its records twice and out of order.
    StreamTaken {
        /// The stream.
        stream: String,
    },
}

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboxError::Corrupt { path, detail } => write!(
                f,
                "the outbox journal {path} is corrupt or truncated ({detail}); nothing was read from it: restore it from a backup, or move it away to start a new journal"
            ),
            OutboxError::Format { path, detail } => {
                write!(
                    f,
                    "{path} does not hold an outbox journal of this format: {detail}"
                )
            }
            OutboxError::Missing { path } => write!(f, "no outbox journal in {path}"),
            OutboxError::Storage { during, error } => {
                write!(f, "outbox journal: {during} failed: {error}")
            }
            OutboxError::NotFound { id } => write!(f, "no journal record with id {id}"),
            OutboxError::NotDead { id, state } => write!(
                f,
                "journal record {id} is {state}: only dead letters can be replayed or discarded"
            ),
            OutboxError::Encode { method, error } => {
                write!(
                    f,
                    "cannot encode the `{method}` command for the journal: {error}"
                )
            }
            OutboxError::Decode { id, error } => {
                write!(
                    f,
                    "cannot decode the command of journal record {id}: {error}"
                )
            }
            OutboxError::BadRecord { id, detail } => {
                write!(f, "journal record {id} cannot be read: {detail}")
            }
            OutboxError::StreamTaken { stream } => write!(
                f,
                "another adapter already drains the outbox stream \"{stream}\" from this journal: give each adapter its own stream (OutboxConfig::with_stream), or shut the other one down first (Migration adapters: shutdown)"
            ),
        }
    }
}

impl std::error::Error for OutboxError {}

/// Registers `listener` for `stream` in a journal handle's table, unless a
/// live one is there already.
#[cfg_attr(
    not(any(feature = "outbox-sqlite", feature = "outbox-postgres")),
    allow(dead_code)
)]
pub(crate) fn attach_listener(
    listeners: &mut HashMap<String, Weak<dyn JournalListener>>,
    stream: &str,
    listener: Weak<dyn JournalListener>,
) -> Result<(), OutboxError> {
    if listeners
        .get(stream)
        .and_then(Weak::upgrade)
        .is_some_and(|attached| attached.draining())
    {
        return Err(OutboxError::StreamTaken {
            stream: stream.to_owned(),
        });
    }
    listeners.insert(stream.to_owned(), listener);
    Ok(())
}

/// How the outbox's appliers run; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    /// Applier threads; default 2, at least 1. A key always goes to the
    /// same applier.
    pub appliers: usize,
    /// Attempts per record, including the first, before it becomes a dead
    /// letter; default 5 (0 is treated as 1). Attempts of earlier runs of
    /// the process count too.
    pub max_attempts: u32,
    /// Delay before the first retry; default 10 ms, doubling on each retry.
    /// An applier retries a record before it applies any later one (of any
    /// of its keys).
    pub initial_backoff: Duration,
    /// Upper bound of the retry delay; default 1 s.
    pub max_backoff: Duration,
    /// Time limit of one attempt of an async store call (see
    /// [`crate::LaneConfig::attempt_timeout`]); default 30 s. A timed-out
    /// attempt's outcome is unknown: the record becomes a dead letter.
    pub attempt_timeout: Option<Duration>,
    /// Records read from the journal at a time; default 256.
    pub claim_batch: usize,
    /// Records handed to appliers and not finished, at most; default 4096.
    pub max_in_flight: usize,
    /// How often the journal is looked at when no append woke the appliers
    /// (replays by another handle, records of an earlier run); default
    /// 50 ms.
    pub poll_interval: Duration,
    /// How long done records are kept; default 1 hour. `None` keeps them
    /// (until `sqlite::SqliteJournal::prune_done`).
    pub retention: Option<Duration>,
    /// How often done records past their retention are deleted; default
    /// 10 s.
    pub prune_interval: Duration,
    /// The adapter's name in the journal, which several adapters may share;
    /// default: the command type's name (`UserStoreWrite`). Set it when the
    /// journal must outlive a rename of the trait.
    pub stream: Option<String>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            appliers: 2,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            attempt_timeout: Some(Duration::from_secs(30)),
            claim_batch: 256,
            max_in_flight: 4096,
            poll_interval: Duration::from_millis(50),
            retention: Some(Duration::from_secs(3600)),
            prune_interval: Duration::from_secs(10),
            stream: None,
        }
    }
}

impl OutboxConfig {
    /// The default configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`OutboxConfig::appliers`].
    #[must_use]
    pub fn with_appliers(mut self, appliers: usize) -> Self {
        self.appliers = appliers;
        self
    }

    /// Sets [`OutboxConfig::max_attempts`].
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets [`OutboxConfig::initial_backoff`].
    #[must_use]
    pub fn with_initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Sets [`OutboxConfig::max_backoff`].
    #[must_use]
    pub fn with_max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Sets [`OutboxConfig::attempt_timeout`].
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets [`OutboxConfig::claim_batch`].
    #[must_use]
    pub fn with_claim_batch(mut self, batch: usize) -> Self {
        self.claim_batch = batch;
        self
    }

    /// Sets [`OutboxConfig::max_in_flight`].
    #[must_use]
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    /// Sets [`OutboxConfig::poll_interval`].
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`OutboxConfig::retention`].
    #[must_use]
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Sets [`OutboxConfig::prune_interval`].
    #[must_use]
    pub fn with_prune_interval(mut self, interval: Duration) -> Self {
        self.prune_interval = interval;
        self
    }

    /// Sets [`OutboxConfig::stream`].
    #[must_use]
    pub fn with_stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    /// Applier threads, at least 1.
    pub(crate) fn applier_count(&self) -> usize {
        self.appliers.max(1)
    }

    /// The delay before retry number `attempt` (1-based), before jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1_u32 << attempt.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// The stream of an adapter whose config names none: the command type's
/// name without its path or generic arguments (`UserStoreWrite`).
pub(crate) fn default_stream<C>() -> String {
    let full = std::any::type_name::<C>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_stream_is_the_command_type_name() {
        struct UserStoreWrite;
        #[allow(dead_code)]
        struct Generic<T>(T);
        assert_eq!(default_stream::<UserStoreWrite>(), "UserStoreWrite");
        assert_eq!(default_stream::<Generic<Vec<u8>>>(), "Generic");
        assert_eq!(default_stream::<u64>(), "u64");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = OutboxConfig::default()
            .with_initial_backoff(Duration::from_millis(10))
            .with_max_backoff(Duration::from_millis(50));
        assert_eq!(config.backoff(1), Duration::from_millis(10));
        assert_eq!(config.backoff(2), Duration::from_millis(20));
        assert_eq!(config.backoff(3), Duration::from_millis(40));
        assert_eq!(config.backoff(4), Duration::from_millis(50));
        assert_eq!(config.backoff(u32::MAX), Duration::from_millis(50));
    }

    #[test]
    fn record_states_round_trip_through_their_codes() {
        for state in [RecordState::Pending, RecordState::Done, RecordState::Dead] {
            assert_eq!(RecordState::from_code(state.code()), Some(state));
        }
        assert_eq!(RecordState::from_code(7), None);
    }
}

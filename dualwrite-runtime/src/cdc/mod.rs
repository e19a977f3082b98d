//! The change-data-capture strategy: the adapter writes the primary only,
//! and a follower reads the old database's change stream and applies it to
//! the new store through the outbox's appliers.
//!
//! ```text
//! caller:    route -> primary write (the old store) -> return
//!                     (no secondary write on the caller's path)
//! follower:  read the source's changes after its confirmed position
//!            -> map each row change to a write command (the user's function)
//!            -> journal the commands (durably, one transaction a batch)
//!            -> confirm the position to the source (only now)
//! appliers:  the outbox's: per-key order, retries, dead letters, metrics
//! ```
//!
//! - [`ChangeSource`]: where changes come from; `postgres::PostgresSource`
//!   (feature `cdc-postgres`) reads a PostgreSQL logical replication slot;
//!   `mariadb::MariadbSource` (feature `cdc-mariadb`) the binary log of
//!   MariaDB or MySQL.
//! - [`RowChange`]: one inserted, updated or deleted row, with its columns
//!   as text.
//! - [`Cdc`]: a source and the mapping function, given to the generated
//!   `with_cdc(journal, Cdc::new(source, map), OutboxConfig)`.
//!
//! **Position.** A change is journaled before the source is told it was
//! consumed, so a crash between the two reads it again after the restart;
//! its journal record then already exists (its idempotency id is derived
//! from the change's position and index, [`RowChange::idempotency_id`]) and
//! it is not journaled twice. A crash before the journal commit loses
//! nothing: the source still holds the change. Delivery to the new store is
//! at least once, as with the outbox (a record applied and not yet marked
//! done is applied again after a crash, with the same idempotency id).
//!
//! **Routes.** The follower carries changes from the old store to the new
//! one. A change whose key is routed with the new store as primary (from
//! `Cutover` on) is not carried: it is the appliers' own copy of a write
//! the adapter made on the new store (under this strategy the old store's
//! copy of such a write is journaled by the adapter, as with the outbox),
//! and carrying it back could overwrite a newer value.
//!
//! **Phase changes and flushes.** A phase change that moves a route (a
//! fence) first has the follower read the source up to its head at that
//! moment and journal it, then waits for the appliers as with the outbox;
//! [`DualWriteCore::flush`](crate::DualWriteCore::flush) does the same. No
//! change committed before the phase change is left behind. The follower
//! cannot reach the source (or the deadline passes): the fence fails and
//! the phase stays.
//!
//! **Several instances.** One follower reads a source at a time: it holds a
//! lock on the source's server while it does (see [`ChangeSource::open`]).
//! With a journal that every instance drains (`PgJournal`, whose
//! [`Journal::is_shared`](crate::outbox::Journal::is_shared) is true), the
//! adapters of the other instances start as standbys: each checks every
//! [`CdcConfig::standby_interval`] whether the lock is free and takes the
//! source over when the leading follower is gone (its process died, its
//! connection ended), reading again from the position that follower
//! confirmed (changes it journaled and did not confirm are found in the
//! journal and not journaled twice). A standby's fence or flush waits for
//! the position the leading follower confirmed to pass the source's head
//! as of the call, then for the shared journal as usual: no change
//! committed before it is left behind, whichever instance journals it.
//! With a journal only one instance drains (SQLite) a second follower is
//! refused instead ([`CdcError::Busy`]): a standby taking over would apply
//! newer changes while the first instance's unapplied records wait in its
//! own file, to be applied after them when it restarts.
//!
//! A change the mapping function rejects (`Some(Err(..))`), or that panics
//! in it, is journaled as a dead letter with the error and the change as
//! text, so it is listed with the journal's dead letters; `None` skips a
//! change (another table, a column the new store does not keep).

mod follower;
#[cfg(feature = "cdc-mariadb")]
pub mod mariadb;
#[cfg(feature = "cdc-postgres")]
pub mod postgres;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::outbox::{IdempotencyId, OutboxError};

pub(crate) use follower::CdcFollower;

/// A point in a source's change stream; positions grow along the stream
/// (a PostgreSQL LSN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    /// In PostgreSQL's LSN notation (`16/B374D848`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    /// Parses PostgreSQL's LSN notation (`16/B374D848`).
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a log position (expected `hex/hex`)");
        let (high, low) = text.split_once('/').ok_or_else(bad)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| bad())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| bad())?;
        Ok(Position(u64::from(high) << 32 | u64::from(low)))
    }
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A row was inserted: [`RowChange::columns`] holds it.
    Insert,
    /// A row was updated: [`RowChange::columns`] holds its new values;
    /// [`RowChange::old_key`] its old key columns when the key changed (or
    /// the table's replica identity is `FULL`).
    Update,
    /// A row was deleted: [`RowChange::columns`] holds its key columns (all
    /// its columns with replica identity `FULL`).
    Delete,
    /// The table was truncated: no columns.
    Truncate,
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeKind::Insert => "INSERT",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
            ChangeKind::Truncate => "TRUNCATE",
        })
    }
}

/// A column's value, as the source renders it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// The value in the database's text format (`42`, `t`, `2026-01-02
    /// 10:00:00+00`, `{1,2}`).
    Text(String),
    /// A large (TOASTed) value the update did not change: the source does
    /// not send it. Map such an update to a command that keeps the column,
    /// or set the table's replica identity to `FULL`.
    Unchanged,
}

/// One column of a changed row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    /// The column's name.
    pub name: String,
    /// Its type, as the source names it (`integer`, `text`, `timestamp with
    /// time zone`).
    pub type_name: String,
    /// Its value.
    pub value: Value,
}

/// One row change read from a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowChange {
    /// Where the change is in the source's stream.
    pub position: Position,
    /// The transaction that made it.
    pub xid: u64,
    /// Its index in its transaction (from 0).
    pub index: u32,
    /// The table's schema (`public`).
    pub schema: String,
    /// The table.
    pub table: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The row's columns; see [`ChangeKind`].
    pub columns: Vec<Column>,
    /// The old key columns of an update that changed them; empty otherwise.
    pub old_key: Vec<Column>,
}

impl RowChange {
    /// The column `name`'s value, if the change has that column.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.columns
            .iter()
            .find(|column| column.name == name)
            .map(|column| &column.value)
    }

    /// The column `name` as text: `None` when it is missing, `NULL` or
    /// unchanged.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.value(name) {
            Some(Value::Text(text)) => Some(text),
            _ => None,
        }
    }

    /// The column `name` parsed as `T`: an error naming the column and the
    /// table when it is missing, `NULL`, unchanged or does not parse.
    pub fn parse<T>(&self, name: &str) -> Result<T, String>
    where
        T: std::str::FromStr,
        T::Err: fmt::Display,
    {
        let text = match self.value(name) {
            Some(Value::Text(text)) => text,
            Some(Value::Null) => return Err(format!("{}.{name} is NULL", self.table)),
            Some(Value::Unchanged) => {
                return Err(format!(
                    "{}.{name} is an unchanged large value (not sent)",
                    self.table
                ));
            }
            None => {
                return Err(format!(
                    "the {} of {}.{} has no column {name}",
                    self.kind, self.schema, self.table
                ));
            }
        };
        text.parse::<T>()
            .map_err(|error| format!("{}.{name} = {text:?}: {error}", self.table))
    }

    /// The column `name` parsed as `T`, `None` when it is `NULL`; an error
    /// when it is missing, unchanged or does not parse.
    pub fn parse_nullable<T>(&self, name: &str) -> Result<Option<T>, String>
    where
        T: std::str::FromStr,
        T::Err: fmt::Display,
    {
        match self.value(name) {
            Some(Value::Null) => Ok(None),
            _ => self.parse(name).map(Some),
        }
    }

    /// Whether the change is to `schema.table`.
    pub fn is_table(&self, schema: &str, table: &str) -> bool {
        self.schema == schema && self.table == table
    }

    /// The idempotency id of the change's journal record in `stream`: the
    /// same every time the change is read, so a change read again after a
    /// crash is recognised; distinct for distinct changes of one source
    /// (the position in the high 64 bits, the index in the transaction and
    /// a hash of the stream below).
    pub fn idempotency_id(&self, stream: &str) -> IdempotencyId {
        let hash = fnv1a(stream);
        IdempotencyId::from_u128(
            u128::from(self.position.0) << 64
                | u128::from(self.index) << 32
                | u128::from(hash & 0xFFFF_FFFF),
        )
    }
}

impl fmt::Display for RowChange {
    /// `UPDATE public.users @ 0/16B3748 (xid 731, #0): id=1 name='Ada'`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}.{} @ {} (xid {}, #{}):",
            self.kind, self.schema, self.table, self.position, self.xid, self.index
        )?;
        let render = |f: &mut fmt::Formatter<'_>, column: &Column| match &column.value {
            Value::Null => write!(f, " {}=NULL", column.name),
            Value::Text(text) => write!(f, " {}='{}'", column.name, text.replace('\'', "''")),
            Value::Unchanged => write!(f, " {}=(unchanged)", column.name),
        };
        for column in &self.old_key {
            f.write_str(" old")?;
            render(f, column)?;
        }
        for column in &self.columns {
            render(f, column)?;
        }
        Ok(())
    }
}

/// FNV-1a (64-bit) of `text`: a fixed hash (the same in every process and
/// build) for ids derived from names.
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Changes read from a source, and how far they reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeBatch {
    /// Whole transactions, in commit order.
    pub changes: Vec<RowChange>,
    /// Every change before this position is in `changes` or was confirmed
    /// before: once they are journaled, the source can be confirmed to it.
    pub through: Position,
    /// The read stopped at its limit: more changes may be waiting, so the
    /// follower reads again at once and does not take the batch as the
    /// source's end (shadow reads wait until a read reached the end).
    pub more: bool,
}

/// Where a source stands, as a standby sees it ([`ChangeSource::observe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// The position of the newest change committed so far.
    pub head: Position,
    /// The position the leading follower confirmed: every change before it
    /// is journaled.
    pub confirmed: Position,
}

/// A database's change stream, read by the follower's thread (so its calls
/// may block).
///
/// The source keeps every change after its confirmed position until
/// [`ChangeSource::confirm`] moves the position: reading does not consume.
pub trait ChangeSource: Send + 'static {
    /// Connects, takes the follower lock (one follower per source: a lock
    /// on the source's server held while the follower reads) and checks
    /// that the stream can be read (for PostgreSQL: `wal_level`, the slot
    /// and its plugin); called on the follower's thread before the
    /// adapter's `with_cdc` returns. Returns the confirmed position.
    ///
    /// Another follower holding the lock: [`CdcError::Busy`], after a short
    /// wait for one that is going away. A standby calls `open` again to
    /// take the source over (without the wait, then). A call that needs
    /// the server once the connection holding the lock is gone fails with
    /// [`CdcError::LockLost`] rather than taking the lock again on a new
    /// connection: another follower may have read the source meanwhile, so
    /// the follower opens it again. `open` releases the lock when it fails
    /// after taking it.
    fn open(&mut self) -> Result<Position, CdcError>;
    /// The position of the newest change committed so far: a catch-up reads
    /// until it is confirmed.
    fn head(&mut self) -> Result<Position, CdcError>;
    /// Whole transactions after the confirmed position, about `limit`
    /// changes (a transaction is never cut, so it may be more).
    fn read(&mut self, limit: usize) -> Result<ChangeBatch, CdcError>;
    /// Tells the source that every change before `through` is journaled.
    fn confirm(&mut self, through: Position) -> Result<(), CdcError>;
    /// The source, for messages (`postgres slot dualwrite_users`).
    fn describe(&self) -> String;
    /// Where the source stands while another follower reads it: its head
    /// and the position that follower confirmed, read without the
    /// follower lock (PostgreSQL: the slot's `confirmed_flush_lsn`). A
    /// standby's catch-up waits for the second to pass the first. The
    /// default cannot tell: such a source cannot have standbys.
    fn observe(&mut self) -> Result<Observed, CdcError> {
        Err(CdcError::Setup {
            source: self.describe(),
            detail: "this source cannot be watched by a standby".to_owned(),
        })
    }
}

/// A source chosen at run time (one server or another, from the
/// configuration) is a source.
impl ChangeSource for Box<dyn ChangeSource> {
    fn open(&mut self) -> Result<Position, CdcError> {
        (**self).open()
    }

    fn head(&mut self) -> Result<Position, CdcError> {
        (**self).head()
    }

    fn read(&mut self, limit: usize) -> Result<ChangeBatch, CdcError> {
        (**self).read(limit)
    }

    fn confirm(&mut self, through: Position) -> Result<(), CdcError> {
        (**self).confirm(through)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }

    fn observe(&mut self) -> Result<Observed, CdcError> {
        (**self).observe()
    }
}

/// The mapping function: a row change to a write command, `None` to skip
/// it, `Err` to keep it as a dead letter.
pub type MapFn<C> = dyn Fn(&RowChange) -> Option<Result<C, String>> + Send + Sync;

/// A change source and the function that maps its row changes to the
/// adapter's write commands: what the generated `with_cdc` takes.
pub struct Cdc<C> {
    pub(crate) source: Box<dyn ChangeSource>,
    pub(crate) map: Arc<MapFn<C>>,
    pub(crate) config: CdcConfig,
}

impl<C> Cdc<C> {
    /// Follows `source`, mapping each row change with `map`.
    pub fn new<S, F>(source: S, map: F) -> Self
    where
        S: ChangeSource,
        F: Fn(&RowChange) -> Option<Result<C, String>> + Send + Sync + 'static,
    {
        Cdc {
            source: Box::new(source),
            map: Arc::new(map),
            config: CdcConfig::default(),
        }
    }

    /// Sets how the follower reads the source.
    #[must_use]
    pub fn with_config(mut self, config: CdcConfig) -> Self {
        self.config = config;
        self
    }
}

impl<C> fmt::Debug for Cdc<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cdc")
            .field("source", &self.source.describe())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How the follower reads its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcConfig {
    /// How often the source is read when the last read found it caught
    /// up; default 10 ms (the floor of the lag of an idle stream).
    pub poll_interval: Duration,
    /// Changes read at a time (whole transactions, so possibly more);
    /// default 1000.
    pub batch: usize,
    /// How long the follower waits after a failed read before the next;
    /// default 1 s.
    pub retry_interval: Duration,
    /// How long `with_cdc` waits for the source to open; default 30 s.
    pub open_timeout: Duration,
    /// How often a standby (another instance's follower reads the source)
    /// checks whether it can take the source over, and how far the leading
    /// follower has come; default 200 ms.
    pub standby_interval: Duration,
}

impl Default for CdcConfig {
    fn default() -> Self {
        CdcConfig {
            poll_interval: Duration::from_millis(10),
            batch: 1000,
            retry_interval: Duration::from_secs(1),
            open_timeout: Duration::from_secs(30),
            standby_interval: Duration::from_millis(200),
        }
    }
}

impl CdcConfig {
    /// Sets [`CdcConfig::poll_interval`].
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`CdcConfig::batch`].
    #[must_use]
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// Sets [`CdcConfig::retry_interval`].
    #[must_use]
    pub fn with_retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// Sets [`CdcConfig::open_timeout`].
    #[must_use]
    pub fn with_open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Sets [`CdcConfig::standby_interval`].
    #[must_use]
    pub fn with_standby_interval(mut self, interval: Duration) -> Self {
        self.standby_interval = interval;
        self
    }
}

/// What the follower has done so far; see
/// [`DualWriteCore::cdc_status`](crate::DualWriteCore::cdc_status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdcStatus {
    /// The position confirmed to the source: every change before it is
    /// journaled (on a standby, as the leading follower confirmed it).
    pub confirmed: Position,
    /// Another instance's follower reads the source; this one stands by to
    /// take it over.
    pub standby: bool,
    /// Times this follower took the source over from another one.
    pub takeovers: u64,
    /// Changes read from the source.
    pub changes_read: u64,
    /// Records journaled (mapped changes, and rejected ones as dead
    /// letters).
    pub journaled: u64,
    /// Changes the mapping function skipped (`None`), or whose key is
    /// routed with the new store as primary.
    pub skipped: u64,
    /// Changes the mapping function rejected (journaled as dead letters).
    pub rejected: u64,
    /// Changes read again after a restart and found in the journal already.
    pub duplicates: u64,
    /// The last error of the source or the journal, until a read succeeds.
    pub last_error: Option<String>,
}

/// What went wrong with change data capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdcError {
    /// The source's server is not set up for it (PostgreSQL: `wal_level`
    /// is not `logical`).
    Setup {
        /// The source.
        source: String,
        /// What is missing, and how to fix it.
        detail: String,
    },
    /// Another follower reads the source (it holds the follower lock on
    /// the source's server).
    Busy {
        /// The source.
        source: String,
        /// Which lock, and what to do.
        detail: String,
    },
    /// The connection that held the follower lock was lost (the server
    /// ended it, a network fault, an error that broke it): another
    /// follower may have taken the source over, so this one opens it again
    /// before it reads on.
    LockLost {
        /// The source.
        source: String,
    },
    /// The replication slot (or the source's equivalent) does not exist.
    MissingSlot {
        /// The source.
        source: String,
        /// The slot's name.
        slot: String,
    },
    /// The source could not be reached or read.
    Source {
        /// The source.
        source: String,
        /// What was being done.
        during: &'static str,
        /// The error.
        error: String,
    },
    /// The source sent something the follower cannot read.
    Decode {
        /// The source.
        source: String,
        /// The text that cannot be read.
        text: String,
        /// What is wrong with it.
        error: String,
    },
    /// The journal failed.
    Journal(OutboxError),
    /// The deadline passed before the follower caught up.
    TimedOut {
        /// What was being waited for.
        waiting_for: &'static str,
    },
    /// The follower thread is not running.
    Stopped,
}

impl fmt::Display for CdcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CdcError::Setup { source, detail } => {
                write!(
                    f,
                    "change data capture from {source} cannot start: {detail}"
                )
            }
            CdcError::Busy { source, detail } => {
                write!(f, "change data capture from {source}: {detail}")
            }
            CdcError::LockLost { source } => write!(
                f,
                "change data capture from {source}: the connection holding the follower lock ended; the follower opens the source again (another follower may have taken it over)"
            ),
            CdcError::MissingSlot { source, slot } => write!(
                f,
                "change data capture from {source}: the replication slot `{slot}` does not exist; create it first (`SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')`, or `PostgresSource::create_slot`)"
            ),
            CdcError::Source {
                source,
                during,
                error,
            } => write!(
                f,
                "change data capture from {source}: {during} failed: {error}"
            ),
            CdcError::Decode {
                source,
                text,
                error,
            } => write!(
                f,
                "change data capture from {source}: cannot read the change {text:?}: {error}"
            ),
            CdcError::Journal(error) => write!(f, "change data capture: {error}"),
            CdcError::TimedOut { waiting_for } => write!(
                f,
                "change data capture: the deadline passed while waiting for {waiting_for}"
            ),
            CdcError::Stopped => f.write_str("change data capture: the follower is not running"),
        }
    }
}

impl std::error::Error for CdcError {}

impl From<OutboxError> for CdcError {
    fn from(error: OutboxError) -> Self {
        CdcError::Journal(error)
    }
}

/// How long a source's opening (or reconnecting) waits for another follower
/// of its slot or position to let go of it (one follower per slot: each
/// holds a lock on the source's server while it reads).
#[cfg_attr(
    not(any(feature = "cdc-postgres", feature = "cdc-mariadb")),
    allow(dead_code)
)]
pub(crate) const FOLLOWER_LOCK_WAIT: Duration = Duration::from_secs(3);

/// The payload of a journal record that holds a change the mapping
/// function rejected starts with this; the applier dead-letters it with
/// the text that follows.
pub(crate) const REJECTED_MARKER: &str = "#dualwrite:cdc-rejected#\n";

/// The error of a rejected change's record, if `payload` is one.
pub(crate) fn rejected_error(payload: &str) -> Option<&str> {
    payload.strip_prefix(REJECTED_MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> RowChange {
        RowChange {
            position: Position(0x1_0000_0010),
            xid: 7,
            index: 2,
            schema: "public".into(),
            table: "users".into(),
            kind: ChangeKind::Update,
            columns: vec![
                Column {
                    name: "id".into(),
                    type_name: "integer".into(),
                    value: Value::Text("5".into()),
                },
                Column {
                    name: "name".into(),
                    type_name: "text".into(),
                    value: Value::Null,
                },
            ],
            old_key: Vec::new(),
        }
    }

    #[test]
    fn positions_round_trip_through_lsn_text() {
        let position: Position = "16/B374D848".parse().expect("an LSN");
        assert_eq!(position, Position(0x16_B374_D848));
        assert_eq!(position.to_string(), "16/B374D848");
        assert!("16-B3".parse::<Position>().is_err());
        assert!("x/1".parse::<Position>().is_err());
    }

    #[test]
    fn columns_parse_with_clear_errors() {
        let change = change();
        assert_eq!(change.parse::<i64>("id"), Ok(5));
        assert_eq!(change.parse_nullable::<String>("name"), Ok(None));
        assert!(change.parse::<String>("name").unwrap_err().contains("NULL"));
        assert!(
            change
                .parse::<i64>("missing")
                .unwrap_err()
                .contains("no column missing")
        );
        assert!(change.is_table("public", "users"));
    }

    #[test]
    fn idempotency_ids_are_stable_and_distinct() {
        let a = change();
        let mut b = change();
        b.index = 3;
        assert_eq!(a.idempotency_id("s"), a.clone().idempotency_id("s"));
        assert_ne!(a.idempotency_id("s"), b.idempotency_id("s"));
        assert_ne!(a.idempotency_id("s"), a.idempotency_id("t"));
    }

    #[test]
    fn rejected_payloads_are_recognised() {
        let payload = format!("{REJECTED_MARKER}bad row");
        assert_eq!(rejected_error(&payload), Some("bad row"));
        assert_eq!(rejected_error("{\"Put\":{}}"), None);
    }
}

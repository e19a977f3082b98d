//! The outbox journal in a SQLite file (feature `outbox-sqlite`).
//!
//! One table, `dualwrite_outbox`, one row per record, in WAL mode:
//!
//! ```text
//! id INTEGER PRIMARY KEY   journal order, assigned at insert: never reused
//! stream, idempotency_id UNIQUE, seq, key_text, key_hash, method, target ('old'/'new'),
//! payload (the command, serde_json), state (0 pending, 1 done, 2 dead),
//! attempts, last_error, created_at, updated_at (Unix milliseconds)
//! ```
//!
//! and `dualwrite_outbox_meta` (format version, and the high-water marks of
//! the id and the sequence, which survive pruning).
//!
//! An append writes the table and the idempotency id's index, nothing
//! else: no other index (claims read the table in id order from a cursor;
//! listings and the count at start scan it), and ids are not
//! `AUTOINCREMENT` (whose counter table is written on every insert)
//! but the largest id plus one, never below the high-water mark kept in
//! the meta table by whatever deletes rows. Ids are assigned under the
//! database's write lock, so they grow in commit order, which is what
//! lets the appliers read past a cursor without missing a record.
//!
//! **Durability** ([`Durability`], chosen at open, for the appends the
//! runtime makes after the primary write):
//!
//! | policy | `synchronous` | commits | a caller returns when |
//! |---|---|---|---|
//! | `PerWrite` | `FULL` | one per append | its record is on disk |
//! | `Grouped` | `FULL` | one per batch of concurrent appends | its batch is on disk |
//! | `None` | `OFF` | one per append, not flushed | its record is in the OS cache |
//!
//! Group commit needs no extra thread: the first caller to find no commit
//! under way writes every record queued so far in one transaction, the
//! others wait for the commit of their batch, and records that arrive
//! meanwhile form the next batch.
//!
//! **Opening** checks the file before anything is read from it: the header
//! (a SQLite database, not shorter than the page count it states, when no
//! write-ahead log is pending), then `PRAGMA quick_check` (or
//! `integrity_check`, [`IntegrityCheck`]), then the tables' format. A file
//! that fails gives [`OutboxError::Corrupt`] (or `Format`), never a journal
//! with records missing. What no check can see: bytes changed inside a
//! record's payload (SQLite keeps no checksums; the record then fails to
//! decode and becomes a dead letter), and a write-ahead log cut short
//! after its last valid frame (SQLite's own recovery stops there: commits
//! after it are gone, which is what `synchronous=FULL` guards against).
//!
//! **Transactional outbox**: open the journal on the primary store's own
//! database file, and have the store insert the record in the transaction
//! of its write with [`append_in`]. The record then commits with the
//! primary's write or not at all, and the runtime does not append it
//! again. The journal's own writes (marking records done) then share the
//! database's write lock with the store: give the store's connection a
//! short busy wait ([`short_busy_handler`]).
//!
//! **On the secondary**: [`apply_once`] applies a record at most once by
//! its idempotency id; [`WriteContext::version`] guards a row against an
//! older record (`… WHERE version < ?`).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior, params,
};

use super::{
    Claimed, Durability, IdempotencyId, Journal, JournalListener, JournalRecord, NewRecord,
    OutboxError, Outcome, RecordState, RecordStatus, Side, Unreadable, WriteContext,
    clock_sequence,
};
use crate::phase::Store;

/// The table of journal records.
pub const TABLE: &str = "dualwrite_outbox";

/// The format version this runtime writes and reads.
const FORMAT: &str = "1";

const SCHEMA: &str = "
CREATE TABLE dualwrite_outbox (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    idempotency_id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    key_text TEXT,
    key_hash INTEGER,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE dualwrite_outbox_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The ids of pending records a relay published to a broker (and the broker
/// acknowledged); added to journals of this format when they are opened.
const RELAYED_SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS dualwrite_outbox_relayed (id INTEGER PRIMARY KEY)";

/// The columns of the records table, in the order [`read_record`] reads.
const COLUMNS: &str = "id, stream, idempotency_id, seq, key_text, key_hash, method, target, \
                       payload, state, attempts, last_error, created_at, updated_at";

/// The id of a new row: above every id the journal ever held (a literal,
/// for `concat!`).
macro_rules! next_id {
    () => {
        "(SELECT max(coalesce((SELECT max(id) FROM dualwrite_outbox), 0), \
         coalesce((SELECT CAST(value AS INTEGER) FROM dualwrite_outbox_meta WHERE name = 'last_id'), 0)) + 1)"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO dualwrite_outbox \
     (id, stream, idempotency_id, seq, key_text, key_hash, method, target, payload, state, attempts, created_at, updated_at) \
     VALUES (",
    next_id!(),
    ", ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, ?9, ?9)"
);

/// Records the largest id in the meta table, before rows are deleted, so a
/// later insert never reuses it.
const KEEP_LAST_ID: &str = "UPDATE dualwrite_outbox_meta \
    SET value = CAST(max(CAST(value AS INTEGER), coalesce((SELECT max(id) FROM dualwrite_outbox), 0)) AS TEXT) \
    WHERE name = 'last_id'";

/// Which check runs when a journal is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntegrityCheck {
    /// `PRAGMA quick_check`: the structure of every page, in time linear in
    /// the file's size.
    #[default]
    Quick,
    /// `PRAGMA integrity_check`: also that indexes match their tables.
    Full,
    /// Only the header check (for very large journals opened often).
    HeaderOnly,
}

/// How [`SqliteJournal::open_with`] opens a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteJournalOptions {
    /// When appends are on disk; default [`Durability::PerWrite`].
    pub durability: Durability,
    /// The check made at open; default [`IntegrityCheck::Quick`].
    pub check: IntegrityCheck,
    /// Whether a missing journal is created (default); `false` fails with
    /// [`OutboxError::Missing`] (e.g. a restart that must find the journal
    /// it left).
    pub create: bool,
    /// How long a journal write waits for the database's write lock held by
    /// another connection (the primary store's, in the transactional
    /// outbox); default 5 s.
    pub busy_timeout: Duration,
}

impl Default for SqliteJournalOptions {
    fn default() -> Self {
        SqliteJournalOptions {
            durability: Durability::PerWrite,
            check: IntegrityCheck::Quick,
            create: true,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl SqliteJournalOptions {
    /// Options with this durability.
    pub fn new(durability: Durability) -> Self {
        SqliteJournalOptions {
            durability,
            ..Self::default()
        }
    }

    /// Sets [`SqliteJournalOptions::check`].
    #[must_use]
    pub fn with_check(mut self, check: IntegrityCheck) -> Self {
        self.check = check;
        self
    }

    /// Sets [`SqliteJournalOptions::create`].
    #[must_use]
    pub fn with_create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Sets [`SqliteJournalOptions::busy_timeout`].
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
}

/// How many records are in a journal, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalCounts {
    /// Waiting to be applied.
    pub pending: u64,
    /// Applied and not pruned yet.
    pub done: u64,
    /// Dead letters.
    pub dead: u64,
}

/// Appends committed by the runtime, and in how many transactions (the
/// average batch of group commit is `records / commits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions that appended records.
    pub commits: u64,
    /// Records they appended.
    pub records: u64,
}

/// An outbox journal in a SQLite file; see the module docs. Share it with
/// `Arc` between the adapter (`with_outbox`) and the code that lists,
/// replays or discards its dead letters.
pub struct SqliteJournal {
    path: PathBuf,
    location: String,
    durability: Durability,
    /// Every write of this journal goes through this connection, so two of
    /// them never wait on SQLite's lock (whose busy wait sleeps in
    /// milliseconds).
    writer: Mutex<Connection>,
    /// Claims and listings.
    reader: Mutex<Connection>,
    group: GroupCommit,
    /// The last sequence handed out.
    sequence: AtomicU64,
    commits: AtomicU64,
    committed_records: AtomicU64,
    listeners: Mutex<HashMap<String, Weak<dyn JournalListener>>>,
}

impl SqliteJournal {
    /// Opens (or creates) the journal in the SQLite file at `path` with a
    /// durability policy and the default checks.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, OutboxError> {
        Self::open_with(path, SqliteJournalOptions::new(durability))
    }

    /// Opens (or, with `options.create`, creates) the journal at `path`,
    /// checking the file first (see the module docs).
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteJournalOptions,
    ) -> Result<Self, OutboxError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let exists = path.exists();
        if !exists && !options.create {
            return Err(OutboxError::Missing { path: shown });
        }
        if exists {
            check_header(&path)?;
        }
        let writer = connect(&path, &shown, options.create, &options)?;
        if options.check != IntegrityCheck::HeaderOnly {
            check_integrity(&writer, &shown, options.check)?;
        }
        let created = ensure_schema(&writer, &shown, options.create)?;
        if created {
            tracing::info!(path = %shown, "outbox journal created");
        }
        let sequence = high_water_mark(&writer, &shown)?;
        let reader = connect(&path, &shown, false, &options)?;
        let location = fs::canonicalize(&path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string();
        Ok(SqliteJournal {
            path,
            location,
            durability: options.durability,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            group: GroupCommit::default(),
            sequence: AtomicU64::new(sequence),
            commits: AtomicU64::new(0),
            committed_records: AtomicU64::new(0),
            listeners: Mutex::new(HashMap::new()),
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability policy of the appends.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Appends committed so far by this handle, and in how many
    /// transactions.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            records: self.committed_records.load(Ordering::Relaxed),
        }
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer, for the journal's bookkeeping (outcomes, pruning):
    /// committed without a disk flush (`synchronous=NORMAL` in WAL mode),
    /// so marking records done does not hold the database's write lock
    /// through a flush (a primary store sharing the file would wait for
    /// it). A machine crash can lose such a commit: a done record is then
    /// applied again (delivery is at least once), a dead letter retried.
    /// The next flushed commit makes it durable too (the log is appended
    /// in order).
    fn bookkeeping(&self) -> Bookkeeping<'_> {
        let conn = self.writer();
        let relax = self.durability != Durability::None
            && conn.execute_batch("PRAGMA synchronous = NORMAL").is_ok();
        Bookkeeping {
            conn,
            restore: relax.then(|| self.durability.synchronous()),
        }
    }

    /// Every dead letter of every stream, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<JournalRecord>, OutboxError> {
        self.select(
            "listing dead letters",
            &format!("SELECT {COLUMNS} FROM dualwrite_outbox WHERE state = 2 ORDER BY id"),
            [],
        )
    }

    /// Every record of a stream (pending, done and dead), in journal order.
    pub fn records(&self, stream: &str) -> Result<Vec<JournalRecord>, OutboxError> {
        self.select(
            "listing records",
            &format!("SELECT {COLUMNS} FROM dualwrite_outbox WHERE stream = ?1 ORDER BY id"),
            [stream],
        )
    }

    /// How many records the journal holds, by state, over every stream.
    pub fn counts(&self) -> Result<JournalCounts, OutboxError> {
        let conn = self.reader();
        let mut statement = conn
            .prepare_cached("SELECT state, count(*) FROM dualwrite_outbox GROUP BY state")
            .map_err(storage("counting records"))?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))
            .map_err(storage("counting records"))?;
        let mut counts = JournalCounts::default();
        for row in rows {
            let (state, count) = row.map_err(storage("counting records"))?;
            let count = u64::try_from(count).unwrap_or(0);
            match RecordState::from_code(state) {
                Some(RecordState::Pending) => counts.pending += count,
                Some(RecordState::Done) => counts.done += count,
                Some(RecordState::Dead) => counts.dead += count,
                None => {}
            }
        }
        Ok(counts)
    }

    /// Makes a dead letter pending again, at the end of the journal: a new
    /// id, the same idempotency id and sequence, attempts from zero. The
    /// adapter running this record's stream counts it pending and applies
    /// it; without one, the next adapter over the journal does. Returns the
    /// new id.
    pub fn replay(&self, id: i64) -> Result<i64, OutboxError> {
        let conn = self.writer();
        let tx = immediate(&conn, "replaying a dead letter")?;
        let (stream, key_hash, state, idempotency_id) = tx
            .query_row(
                "SELECT stream, key_hash, state, idempotency_id FROM dualwrite_outbox WHERE id = ?1",
                [id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        lenient_key_hash(row, 1),
                        row.get::<_, i64>(2)?,
                        lenient_id(row, 3),
                    ))
                },
            )
            .optional()
            .map_err(storage("replaying a dead letter"))?
            .ok_or(OutboxError::NotFound { id })?;
        let state = RecordState::from_code(state).ok_or_else(|| OutboxError::BadRecord {
            id,
            detail: format!("unknown state {state}"),
        })?;
        if state != RecordState::Dead {
            return Err(OutboxError::NotDead { id, state });
        }
        let listener = self.listener(&stream).zip(idempotency_id);
        if let Some((listener, idempotency_id)) = &listener {
            listener.requeuing(*idempotency_id, key_hash);
        }
        let moved = requeue_rows(&tx, "id = ?1", params![id], unix_millis(SystemTime::now()))
            .and_then(|ids| {
                tx.commit()?;
                Ok(ids)
            });
        match moved {
            Ok(ids) => {
                if let Some((listener, _)) = &listener {
                    listener.wake();
                }
                ids.first().copied().ok_or(OutboxError::NotFound { id })
            }
            Err(error) => {
                if let Some((listener, idempotency_id)) = &listener {
                    listener.requeue_failed(*idempotency_id, key_hash);
                }
                Err(storage("replaying a dead letter")(error))
            }
        }
    }

    /// Deletes a dead letter (after repairing its write by other means).
    pub fn discard(&self, id: i64) -> Result<(), OutboxError> {
        let conn = self.writer();
        let tx = immediate(&conn, "discarding a dead letter")?;
        let state = tx
            .query_row(
                "SELECT state FROM dualwrite_outbox WHERE id = ?1",
                [id],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map_err(storage("discarding a dead letter"))?
            .ok_or(OutboxError::NotFound { id })?;
        match RecordState::from_code(state) {
            Some(RecordState::Dead) => {}
            Some(state) => return Err(OutboxError::NotDead { id, state }),
            None => {
                return Err(OutboxError::BadRecord {
                    id,
                    detail: format!("unknown state {state}"),
                });
            }
        }
        // dualwrite-lint: allow(DW002) the journal's own table (the durable queue of secondary writes), not a store write
        tx.execute(KEEP_LAST_ID, [])
            .map_err(storage("discarding a dead letter"))?;
        // dualwrite-lint: allow(DW002) the journal's own table (the durable queue of secondary writes), not a store write
        tx.execute("DELETE FROM dualwrite_outbox WHERE id = ?1", [id])
            .map_err(storage("discarding a dead letter"))?;
        tx.commit().map_err(storage("discarding a dead letter"))
    }

    /// Makes every done record of `stream` (not pruned yet) pending again,
    /// at the end of the journal in their order: a redelivery drill. A
    /// secondary that applies records idempotently ([`apply_once`],
    /// [`WriteContext::version`]) shows no change afterwards. Returns how
    /// many records were requeued.
    pub fn requeue_done(&self, stream: &str) -> Result<u64, OutboxError> {
        let conn = self.writer();
        let tx = immediate(&conn, "requeueing done records")?;
        let keys: Vec<(Option<IdempotencyId>, Option<u64>)> = {
            let mut statement = tx
                .prepare(
                    "SELECT idempotency_id, key_hash FROM dualwrite_outbox WHERE state = 1 AND stream = ?1",
                )
                .map_err(storage("requeueing done records"))?;
            let rows = statement
                .query_map([stream], |row| {
                    Ok((lenient_id(row, 0), lenient_key_hash(row, 1)))
                })
                .map_err(storage("requeueing done records"))?;
            rows.collect::<Result<_, _>>()
                .map_err(storage("requeueing done records"))?
        };
        let listener = self.listener(stream);
        if let Some(listener) = &listener {
            for (id, key_hash) in &keys {
                if let Some(id) = id {
                    listener.requeuing(*id, *key_hash);
                }
            }
        }
        let moved = requeue_rows(
            &tx,
            "state = 1 AND stream = ?1",
            params![stream],
            unix_millis(SystemTime::now()),
        )
        .and_then(|ids| {
            tx.commit()?;
            Ok(ids)
        });
        match moved {
            Ok(ids) => {
                if let Some(listener) = &listener {
                    listener.wake();
                }
                Ok(ids.len() as u64)
            }
            Err(error) => {
                if let Some(listener) = &listener {
                    for (id, key_hash) in &keys {
                        if let Some(id) = id {
                            listener.requeue_failed(*id, *key_hash);
                        }
                    }
                }
                Err(storage("requeueing done records")(error))
            }
        }
    }

    /// Deletes done records last changed more than `older_than` ago, every
    /// stream; how many it deleted. The adapter's appliers do this on their
    /// own ([`super::OutboxConfig::retention`]).
    pub fn prune_done(&self, older_than: Duration) -> Result<u64, OutboxError> {
        let before = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(UNIX_EPOCH);
        let mut total = 0;
        loop {
            let deleted = Journal::prune(self, before, 10_000)?;
            total += deleted;
            if deleted < 10_000 {
                return Ok(total);
            }
        }
    }

    fn listener(&self, stream: &str) -> Option<Arc<dyn JournalListener>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream)
            .and_then(Weak::upgrade)
    }

    fn select<P: rusqlite::Params>(
        &self,
        during: &'static str,
        sql: &str,
        params: P,
    ) -> Result<Vec<JournalRecord>, OutboxError> {
        let conn = self.reader();
        let mut statement = conn.prepare_cached(sql).map_err(storage(during))?;
        let mut rows = statement.query(params).map_err(storage(during))?;
        let mut records = Vec::new();
        while let Some(row) = rows.next().map_err(storage(during))? {
            records.push(read_record(row)?);
        }
        Ok(records)
    }

    /// Writes records in one transaction.
    fn write_records(&self, records: &[NewRecord]) -> Result<(), OutboxError> {
        let now = unix_millis(SystemTime::now());
        let conn = self.writer();
        let tx = immediate(&conn, "appending records")?;
        {
            let mut insert = tx
                // dualwrite-lint: allow(DW002) the journal's own table (the durable queue of secondary writes), not a store write
                .prepare_cached(INSERT)
                .map_err(storage("appending records"))?;
            for record in records {
                insert_record(&mut insert, record, now).map_err(storage("appending records"))?;
            }
        }
        tx.commit().map_err(storage("appending records"))?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.committed_records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Group commit: see the module docs.
    fn append_grouped(&self, record: &NewRecord) -> Result<(), OutboxError> {
        let group = &self.group;
        let mut state = group.lock();
        state.open.push(record.clone());
        let mine = Arc::clone(&state.open_result);
        loop {
            if let Some(result) = mine.get() {
                return result.clone();
            }
            if !state.committing {
                state.committing = true;
                let batch = std::mem::take(&mut state.open);
                let result_slot =
                    std::mem::replace(&mut state.open_result, Arc::new(OnceLock::new()));
                drop(state);
                let result = catch_unwind(AssertUnwindSafe(|| self.write_records(&batch)))
                    .unwrap_or_else(|_| {
                        Err(OutboxError::Storage {
                            during: "appending records",
                            error: "the group commit panicked".to_owned(),
                        })
                    });
                let _ = result_slot.set(result);
                state = group.lock();
                state.committing = false;
                group.committed.notify_all();
                continue;
            }
            state = group
                .committed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Journal for SqliteJournal {
    fn location(&self) -> &str {
        &self.location
    }

    fn next_sequence(&self) -> u64 {
        clock_sequence(&self.sequence)
    }

    fn append(&self, record: &NewRecord) -> Result<(), OutboxError> {
        match self.durability {
            Durability::Grouped => self.append_grouped(record),
            Durability::PerWrite | Durability::None => {
                self.write_records(std::slice::from_ref(record))
            }
        }
    }

    fn append_many(&self, records: &[NewRecord]) -> Result<(), OutboxError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write_records(records)
    }

    fn contains(&self, id: &IdempotencyId) -> Result<bool, OutboxError> {
        let conn = self.reader();
        conn.prepare_cached("SELECT 1 FROM dualwrite_outbox WHERE idempotency_id = ?1")
            .and_then(|mut statement| statement.exists([id.to_string()]))
            .map_err(storage("looking a record up"))
    }

    fn pending_keys(&self, stream: &str) -> Result<Vec<(i64, Option<u64>)>, OutboxError> {
        let conn = self.reader();
        let mut statement = conn
            .prepare_cached(
                "SELECT id, key_hash FROM dualwrite_outbox WHERE state = 0 AND stream = ?1",
            )
            .map_err(storage("counting pending records"))?;
        let rows = statement
            .query_map([stream], |row| Ok((row.get(0)?, lenient_key_hash(row, 1))))
            .map_err(storage("counting pending records"))?;
        rows.collect::<Result<_, _>>()
            .map_err(storage("counting pending records"))
    }

    fn claim(&self, stream: &str, after: i64, limit: usize) -> Result<Claimed, OutboxError> {
        let conn = self.reader();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM dualwrite_outbox \
                 WHERE state = 0 AND stream = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))
            .map_err(storage("claiming records"))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = statement
            .query(params![stream, after, limit])
            .map_err(storage("claiming records"))?;
        let mut claimed = Claimed::default();
        while let Some(row) = rows.next().map_err(storage("claiming records"))? {
            match read_record(row) {
                Ok(record) => claimed.records.push(record),
                Err(error) => claimed.unreadable.push(Unreadable {
                    id: row.get(0).map_err(storage("claiming records"))?,
                    key_hash: lenient_key_hash(row, 5),
                    idempotency_id: lenient_id(row, 2),
                    error: error.to_string(),
                }),
            }
        }
        Ok(claimed)
    }

    fn record_outcomes(&self, outcomes: &[Outcome]) -> Result<(), OutboxError> {
        const DURING: &str = "recording applied records";
        let now = unix_millis(SystemTime::now());
        let conn = self.bookkeeping();
        let tx = immediate(&conn, DURING)?;
        {
            let mut done = tx
                // dualwrite-lint: allow(DW002) the journal's own table (the durable queue of secondary writes), not a store write
                .prepare_cached(
                    "UPDATE dualwrite_outbox SET state = 1, attempts = ?2, updated_at = ?3 \
                     WHERE id = ?1 AND state = 0",
                )
                .map_err(storage(DURING))?;
            let mut failed = tx
                // dualwrite-lint: allow(DW002) the journal's own table (the durable queue of secondary writes), not a store write
                .prepare_cached(
                    "UPDATE dualwrite_outbox SET state = ?2, attempts = ?3, last_error = ?4, updated_at = ?5 \
                     WHERE id = ?1 AND state = 0",
                )
                .map_err(storage(DURING))?;
            for outcome in outcomes {
                match outcome {
                    Outcome::Done { id, attempts } => done.execute(params![id, attempts, now]),
                    Outcome::Retrying {
                        id,
                        attempts,
                        error,
                    } => failed.execute(params![id, 0, attempts, error, now]),
                    Outcome::Dead {
                        id,
                        attempts,
                        error,
                    } => failed.execute(params![id, 2, attempts, error, now]),
                }
                .map_err(storage(DURING))?;
            }
        }
        tx.commit().map_err(storage(DURING))
    }

    fn prune(&self, before: SystemTime, limit: usize) -> Result<u64, OutboxError> {
        const DURING: &str = "pruning done records";
        let before = unix_millis(before);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let high_water = i64::try_from(self.sequence.load(Ordering::SeqCst)).unwrap_or(i64::MAX);
        let conn = self.bookkeeping();
        let tx = immediate(&conn, DURING)?;
        // The sequence must not go back when its largest values are pruned.
        // dualwrite-lint: allow(DW002) the journal's own meta table, not a store write
        tx.execute(
            "UPDATE dualwrite_outbox_meta SET value = CAST(max(CAST(value AS INTEGER), ?1) AS TEXT) \
             WHERE name = 'last_seq'",
            [high_water],
        )
        .map_err(storage(DURING))?;
        // dualwrite-lint: allow(DW002) the journal's own meta table, not a store write
        tx.execute(KEEP_LAST_ID, []).map_err(storage(DURING))?;
        // dualwrite-lint: allow(DW002) the journal's own relay table, not a store write
        tx.execute(
            "DELETE FROM dualwrite_outbox_relayed WHERE id IN \
             (SELECT id FROM dualwrite_outbox WHERE state = 1 AND updated_at <= ?1 ORDER BY id LIMIT ?2)",
            params![before, limit],
        )
        .map_err(storage(DURING))?;
        let deleted = tx
            // dualwrite-lint: allow(DW002) the journal's own table (the durable queue of secondary writes), not a store write
            .execute(
                "DELETE FROM dualwrite_outbox WHERE id IN \
                 (SELECT id FROM dualwrite_outbox WHERE state = 1 AND updated_at <= ?1 ORDER BY id LIMIT ?2)",
                params![before, limit],
            )
            .map_err(storage(DURING))?;
        tx.commit().map_err(storage(DURING))?;
        Ok(deleted as u64)
    }

    fn attach(&self, stream: &str, listener: Weak<dyn JournalListener>) -> Result<(), OutboxError> {
        super::attach_listener(
            &mut self
                .listeners
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            stream,
            listener,
        )
    }

    fn dead_letters(&self) -> Result<Vec<JournalRecord>, OutboxError> {
        SqliteJournal::dead_letters(self)
    }

    fn replay(&self, id: i64) -> Result<i64, OutboxError> {
        SqliteJournal::replay(self, id)
    }

    fn discard(&self, id: i64) -> Result<(), OutboxError> {
        SqliteJournal::discard(self, id)
    }

    fn claim_unrelayed(
        &self,
        stream: &str,
        after: i64,
        limit: usize,
    ) -> Result<Claimed, OutboxError> {
        const DURING: &str = "claiming records to relay";
        let conn = self.reader();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM dualwrite_outbox o \
                 WHERE state = 0 AND stream = ?1 AND id > ?2 \
                 AND NOT EXISTS (SELECT 1 FROM dualwrite_outbox_relayed r WHERE r.id = o.id) \
                 ORDER BY id LIMIT ?3"
            ))
            .map_err(storage(DURING))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = statement
            .query(params![stream, after, limit])
            .map_err(storage(DURING))?;
        let mut claimed = Claimed::default();
        while let Some(row) = rows.next().map_err(storage(DURING))? {
            match read_record(row) {
                Ok(record) => claimed.records.push(record),
                Err(error) => claimed.unreadable.push(Unreadable {
                    id: row.get(0).map_err(storage(DURING))?,
                    key_hash: lenient_key_hash(row, 5),
                    idempotency_id: lenient_id(row, 2),
                    error: error.to_string(),
                }),
            }
        }
        Ok(claimed)
    }

    fn mark_relayed(&self, ids: &[i64]) -> Result<(), OutboxError> {
        const DURING: &str = "marking records relayed";
        if ids.is_empty() {
            return Ok(());
        }
        let conn = self.bookkeeping();
        let tx = immediate(&conn, DURING)?;
        {
            let mut mark = tx
                // dualwrite-lint: allow(DW002) the journal's own relay table, not a store write
                .prepare_cached("INSERT OR IGNORE INTO dualwrite_outbox_relayed (id) VALUES (?1)")
                .map_err(storage(DURING))?;
            for id in ids {
                mark.execute([id]).map_err(storage(DURING))?;
            }
        }
        tx.commit().map_err(storage(DURING))
    }

    fn status(&self, id: i64) -> Result<RecordStatus, OutboxError> {
        const DURING: &str = "looking a record up";
        let conn = self.reader();
        let row: Option<(i64, i64)> = conn
            .prepare_cached("SELECT state, attempts FROM dualwrite_outbox WHERE id = ?1")
            .and_then(|mut statement| {
                statement
                    .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .map_err(storage(DURING))?;
        let Some((state, attempts)) = row else {
            return Ok(RecordStatus::Gone);
        };
        let state = RecordState::from_code(state).ok_or_else(|| OutboxError::BadRecord {
            id,
            detail: format!("unknown state {state}"),
        })?;
        Ok(RecordStatus::Present {
            state,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        })
    }
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteJournal")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// The writer connection set to commit without a flush while it lives.
struct Bookkeeping<'a> {
    conn: MutexGuard<'a, Connection>,
    restore: Option<&'static str>,
}

impl std::ops::Deref for Bookkeeping<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for Bookkeeping<'_> {
    fn drop(&mut self) {
        if let Some(level) = self.restore
            && let Err(error) = self
                .conn
                .execute_batch(&format!("PRAGMA synchronous = {level}"))
        {
            tracing::error!(%error, "outbox journal: cannot restore the durability of appends");
        }
    }
}

/// The state of group commit.
#[derive(Default)]
struct GroupCommit {
    state: Mutex<GroupState>,
    committed: Condvar,
}

#[derive(Default)]
struct GroupState {
    /// Records waiting for the next commit.
    open: Vec<NewRecord>,
    /// The outcome of the next commit, shared by its callers.
    open_result: Arc<OnceLock<Result<(), OutboxError>>>,
    /// A caller is committing a batch.
    committing: bool,
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Inserts the record of the write in progress ([`WriteContext::current`])
/// into the journal table of `conn`'s database, as part of the transaction
/// the caller has open there; then the runtime does not append it again.
/// This is the transactional outbox: call it from the primary store's write,
/// in the same transaction, with the journal opened on the same file.
///
/// ```ignore
/// fn put(&self, id: u64, name: &str) -> Result<(), Error> {
///     let mut conn = self.conn.lock()?;
///     let tx = conn.transaction()?;
///     tx.execute("INSERT INTO users (id, name) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET name = excluded.name", params![id, name])?;
///     if let Some(ctx) = WriteContext::current() {
///         dualwrite_runtime::outbox::sqlite::append_in(&tx, &ctx)?;
///     }
///     tx.commit()?;
///     Ok(())
/// }
/// ```
///
/// Fails (so the caller's transaction should roll back, and the write
/// fail) when the context is an applier's (a secondary call journals
/// nothing), or when `conn` is not the journal's database: a record
/// written anywhere else would never be applied.
pub fn append_in(conn: &Connection, ctx: &WriteContext) -> rusqlite::Result<()> {
    if ctx.side() != Side::Primary {
        return Err(misuse(
            "dualwrite outbox: append_in is for the primary store's write; this is an applier's secondary call",
        ));
    }
    if !same_database(conn, ctx.journal_location()) {
        return Err(misuse(&format!(
            "dualwrite outbox: append_in on {}, but the adapter's journal is {}: the record would never be applied",
            conn.path().unwrap_or("an unnamed database"),
            ctx.journal_location()
        )));
    }
    {
        // dualwrite-lint: allow(DW002) the journal record, inserted in the primary store's own transaction on purpose (transactional outbox)
        let mut insert = conn.prepare_cached(INSERT)?;
        insert_record(&mut insert, ctx.record(), unix_millis(SystemTime::now()))?;
    }
    ctx.mark_journaled();
    Ok(())
}

/// The table [`apply_once`] keeps applied idempotency ids in.
pub const APPLIED_TABLE: &str = "dualwrite_applied";

/// Creates the table of applied idempotency ids ([`apply_once`]) in a
/// secondary store's database, if it is missing. Call it where the store
/// creates its own tables.
pub fn create_applied_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS dualwrite_applied (
            idempotency_id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            applied_at INTEGER NOT NULL
        )",
    )
}

/// Applies a journal record at most once on a secondary SQL store: in one
/// savepoint (inside the caller's transaction, if one is open), records the
/// record's idempotency id in [`APPLIED_TABLE`] and runs `write`; when the
/// id is already there (the record was applied before a crash, or the
/// journal is replayed), runs nothing and returns `Ok(false)`. Without a
/// context (not under an applier) it just runs `write`.
///
/// For writes that are not idempotent in themselves (counters, appends).
/// For upserts, a version guard is cheaper ([`WriteContext::version`]) and
/// also keeps an older replayed record from overwriting a newer one.
pub fn apply_once(
    conn: &Connection,
    ctx: Option<&WriteContext>,
    write: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<bool> {
    let Some(ctx) = ctx else {
        write(conn)?;
        return Ok(true);
    };
    conn.execute_batch("SAVEPOINT dualwrite_apply_once")?;
    let outcome = (|| {
        // dualwrite-lint: allow(DW002) the secondary store's table of applied idempotency ids, inside the store's own write
        let fresh = conn.execute(
            "INSERT OR IGNORE INTO dualwrite_applied (idempotency_id, seq, applied_at) VALUES (?1, ?2, ?3)",
            params![
                ctx.idempotency_id().to_string(),
                ctx.version(),
                unix_millis(SystemTime::now())
            ],
        )? == 1;
        if fresh {
            write(conn)?;
        }
        Ok(fresh)
    })();
    match outcome {
        Ok(fresh) => {
            conn.execute_batch("RELEASE dualwrite_apply_once")?;
            Ok(fresh)
        }
        Err(error) => {
            let _ = conn
                .execute_batch("ROLLBACK TO dualwrite_apply_once; RELEASE dualwrite_apply_once");
            Err(error)
        }
    }
}

/// Replaces a connection's busy wait (SQLite's sleeps 1 to 100 ms between
/// tries) with short sleeps (20 µs, then 100 µs, then 1 ms; about 5 s in
/// all): for a store whose database also holds the journal, whose writes
/// briefly hold the write lock.
pub fn short_busy_handler(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_handler(Some(short_busy as fn(i32) -> bool))
}

fn short_busy(tries: i32) -> bool {
    let nap = match tries {
        0..10 => Duration::from_micros(20),
        10..100 => Duration::from_micros(100),
        100..5_000 => Duration::from_millis(1),
        _ => return false,
    };
    thread::sleep(nap);
    true
}

/// Whether `conn`'s main database is the file at `location`.
fn same_database(conn: &Connection, location: &str) -> bool {
    let Some(path) = conn.path() else {
        return false;
    };
    if path == location {
        return true;
    }
    match (fs::canonicalize(path), fs::canonicalize(location)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn misuse(message: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
        Some(message.to_owned()),
    )
}

fn insert_record(
    insert: &mut rusqlite::CachedStatement<'_>,
    record: &NewRecord,
    now: i64,
) -> rusqlite::Result<usize> {
    insert.execute(params![
        record.stream,
        record.idempotency_id.to_string(),
        i64::try_from(record.sequence).unwrap_or(i64::MAX),
        record.key_text,
        record
            .key_hash
            .map(|hash| i64::from_ne_bytes(hash.to_ne_bytes())),
        record.method,
        record.target.as_str(),
        record.payload,
        now,
    ])
}

/// Moves the rows matching `filter` to the end of the journal as pending
/// (delete and insert again, in id order, in the caller's transaction);
/// the new ids.
fn requeue_rows(
    tx: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
    now: i64,
) -> rusqlite::Result<Vec<i64>> {
    tx.execute_batch(
        "DROP TABLE IF EXISTS temp.dualwrite_requeue; \
         CREATE TEMP TABLE dualwrite_requeue AS SELECT * FROM dualwrite_outbox WHERE 0",
    )?;
    // dualwrite-lint: allow(DW002) the journal's own table (the durable queue of secondary writes), not a store write
    tx.execute(
        &format!(
            "INSERT INTO temp.dualwrite_requeue SELECT * FROM dualwrite_outbox WHERE {filter} ORDER BY id"
        ),
        params,
    )?;
    // dualwrite-lint: allow(DW002) the journal's own meta table, not a store write
    tx.execute(KEEP_LAST_ID, [])?;
    // dualwrite-lint: allow(DW002) the journal's own table (the durable queue of secondary writes), not a store write
    tx.execute(
        "DELETE FROM dualwrite_outbox WHERE id IN (SELECT id FROM temp.dualwrite_requeue)",
        [],
    )?;
    let mut ids = Vec::new();
    {
        let mut rows = tx.prepare(
            "SELECT stream, idempotency_id, seq, key_text, key_hash, method, target, payload, last_error, created_at \
             FROM temp.dualwrite_requeue ORDER BY id",
        )?;
        // dualwrite-lint: allow(DW002) the journal's own table (the durable queue of secondary writes), not a store write
        let mut insert = tx.prepare(concat!(
            "INSERT INTO dualwrite_outbox \
             (id, stream, idempotency_id, seq, key_text, key_hash, method, target, payload, state, attempts, last_error, created_at, updated_at) \
             VALUES (",
            next_id!(),
            ", ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, ?9, ?10, ?11)"
        ))?;
        let mut query = rows.query([])?;
        while let Some(row) = query.next()? {
            let value = |index: usize| row.get::<_, rusqlite::types::Value>(index);
            insert.execute(params![
                value(0)?,
                value(1)?,
                value(2)?,
                value(3)?,
                value(4)?,
                value(5)?,
                value(6)?,
                value(7)?,
                value(8)?,
                value(9)?,
                now,
            ])?;
            ids.push(tx.last_insert_rowid());
        }
    }
    tx.execute_batch("DROP TABLE temp.dualwrite_requeue")?;
    Ok(ids)
}

/// A key hash read as leniently as possible (`None` if unreadable).
fn lenient_key_hash(row: &Row<'_>, index: usize) -> Option<u64> {
    row.get::<_, Option<i64>>(index)
        .ok()
        .flatten()
        .map(|hash| u64::from_ne_bytes(hash.to_ne_bytes()))
}

/// An idempotency id read as leniently as possible.
fn lenient_id(row: &Row<'_>, index: usize) -> Option<IdempotencyId> {
    row.get::<_, String>(index).ok()?.parse().ok()
}

/// A record from a row of [`COLUMNS`].
fn read_record(row: &Row<'_>) -> Result<JournalRecord, OutboxError> {
    let id: i64 = row.get(0).map_err(storage("reading a record"))?;
    let bad = |detail: String| OutboxError::BadRecord { id, detail };
    let column = |error: rusqlite::Error| bad(error.to_string());
    let idempotency_id: String = row.get(2).map_err(column)?;
    let target: String = row.get(7).map_err(column)?;
    let state: i64 = row.get(9).map_err(column)?;
    let sequence: i64 = row.get(3).map_err(column)?;
    let attempts: i64 = row.get(10).map_err(column)?;
    Ok(JournalRecord {
        id,
        record: NewRecord {
            stream: row.get(1).map_err(column)?,
            idempotency_id: idempotency_id
                .parse()
                .map_err(|error: super::ids::ParseIdError| bad(error.to_string()))?,
            sequence: u64::try_from(sequence)
                .map_err(|_| bad(format!("negative sequence {sequence}")))?,
            key_text: row.get(4).map_err(column)?,
            key_hash: row
                .get::<_, Option<i64>>(5)
                .map_err(column)?
                .map(|hash| u64::from_ne_bytes(hash.to_ne_bytes())),
            method: row.get(6).map_err(column)?,
            target: match target.as_str() {
                "old" => Store::Old,
                "new" => Store::New,
                other => return Err(bad(format!("unknown target `{other}`"))),
            },
            payload: row.get(8).map_err(column)?,
        },
        state: RecordState::from_code(state)
            .ok_or_else(|| bad(format!("unknown state {state}")))?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        last_error: row.get(11).map_err(column)?,
        created_at: from_unix_millis(row.get(12).map_err(column)?),
        updated_at: from_unix_millis(row.get(13).map_err(column)?),
    })
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    })
}

/// The time of a Unix-epoch millisecond count.
fn from_unix_millis(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// Maps a storage error of an operation.
fn storage(during: &'static str) -> impl Fn(rusqlite::Error) -> OutboxError {
    move |error| OutboxError::Storage {
        during,
        error: error.to_string(),
    }
}

fn immediate<'c>(
    conn: &'c Connection,
    during: &'static str,
) -> Result<rusqlite::Transaction<'c>, OutboxError> {
    rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(storage(during))
}

/// Whether a SQLite error says the file is damaged.
fn is_corruption(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Maps an error met while opening or checking a journal.
fn open_error(path: &str, during: &'static str) -> impl Fn(rusqlite::Error) -> OutboxError {
    move |error| {
        if is_corruption(&error) {
            OutboxError::Corrupt {
                path: path.to_owned(),
                detail: error.to_string(),
            }
        } else {
            OutboxError::Storage {
                during,
                error: format!("{path}: {error}"),
            }
        }
    }
}

/// Checks the database header of an existing file: a SQLite database, and
/// not shorter than the page count it states (unless a write-ahead log
/// holds pages not checkpointed into the file yet).
fn check_header(path: &Path) -> Result<(), OutboxError> {
    let shown = path.display().to_string();
    let corrupt = |detail: String| OutboxError::Corrupt {
        path: shown.clone(),
        detail,
    };
    let length = fs::metadata(path)
        .map_err(|error| OutboxError::Storage {
            during: "opening the journal",
            error: format!("{shown}: {error}"),
        })?
        .len();
    if length == 0 {
        // SQLite's empty database (a new file, or one whose content is all
        // in its write-ahead log).
        return Ok(());
    }
    let mut header = [0_u8; 100];
    let mut file = fs::File::open(path).map_err(|error| OutboxError::Storage {
        during: "opening the journal",
        error: format!("{shown}: {error}"),
    })?;
    if file.read_exact(&mut header).is_err() {
        return Err(corrupt(format!(
            "the file is {length} bytes, shorter than a database header"
        )));
    }
    if &header[..16] != b"SQLite format 3\0" {
        return Err(corrupt("the file is not a SQLite database".to_owned()));
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        size => u64::from(size),
    };
    let pages = u64::from(u32::from_be_bytes([
        header[28], header[29], header[30], header[31],
    ]));
    // The page count is valid when the change counter matches the
    // "version valid for" number.
    let valid = header[24..28] == header[92..96];
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let wal_pending = fs::metadata(&wal).is_ok_and(|meta| meta.len() > 0);
    if valid && !wal_pending && pages.saturating_mul(page_size) > length {
        return Err(corrupt(format!(
            "the file is {length} bytes, but its header says {pages} pages of {page_size} bytes: it was truncated"
        )));
    }
    Ok(())
}

fn connect(
    path: &Path,
    shown: &str,
    create: bool,
    options: &SqliteJournalOptions,
) -> Result<Connection, OutboxError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|error| {
        if error.sqlite_error_code() == Some(ErrorCode::CannotOpen) && !path.exists() {
            OutboxError::Missing {
                path: shown.to_owned(),
            }
        } else {
            open_error(shown, "opening the journal")(error)
        }
    })?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(open_error(shown, "opening the journal"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(open_error(shown, "setting WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OutboxError::Storage {
            during: "setting WAL mode",
            error: format!("{shown}: the database stays in `{mode}` mode"),
        });
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}",
        options.durability.synchronous()
    ))
    .map_err(open_error(shown, "setting the durability"))?;
    Ok(conn)
}

fn check_integrity(
    conn: &Connection,
    shown: &str,
    check: IntegrityCheck,
) -> Result<(), OutboxError> {
    let pragma = match check {
        IntegrityCheck::Full => "PRAGMA integrity_check(20)",
        IntegrityCheck::Quick | IntegrityCheck::HeaderOnly => "PRAGMA quick_check(20)",
    };
    let during = "checking the journal's integrity";
    let mut statement = conn.prepare(pragma).map_err(open_error(shown, during))?;
    let lines: Vec<String> = statement
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(open_error(shown, during))?
        .collect::<Result<_, _>>()
        .map_err(open_error(shown, during))?;
    if lines.len() == 1 && lines[0] == "ok" {
        return Ok(());
    }
    Err(OutboxError::Corrupt {
        path: shown.to_owned(),
        detail: format!("{pragma}: {}", lines.join("; ")),
    })
}

/// Creates the tables in a new database, or checks those of an existing
/// journal; whether it created them.
fn ensure_schema(conn: &Connection, shown: &str, create: bool) -> Result<bool, OutboxError> {
    let during = "reading the journal's tables";
    let table_exists = |name: &str| -> Result<bool, OutboxError> {
        conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .and_then(|mut statement| statement.exists([name]))
            .map_err(open_error(shown, during))
    };
    let has_records = table_exists(TABLE)?;
    let has_meta = table_exists("dualwrite_outbox_meta")?;
    let format_error = |detail: String| OutboxError::Format {
        path: shown.to_owned(),
        detail,
    };
    match (has_records, has_meta) {
        (false, false) if !create => Err(OutboxError::Missing {
            path: shown.to_owned(),
        }),
        (false, false) => {
            let tx = immediate(conn, "creating the journal's tables")?;
            tx.execute_batch(SCHEMA)
                .map_err(open_error(shown, "creating the journal's tables"))?;
            tx.execute_batch(RELAYED_SCHEMA)
                .map_err(open_error(shown, "creating the journal's tables"))?;
            // dualwrite-lint: allow(DW002) the journal's own meta table, written when the journal is created
            tx.execute(
                "INSERT INTO dualwrite_outbox_meta (name, value) VALUES ('format', ?1), ('last_seq', '0'), ('last_id', '0')",
                [FORMAT],
            )
            .map_err(open_error(shown, "creating the journal's tables"))?;
            tx.commit()
                .map_err(open_error(shown, "creating the journal's tables"))?;
            Ok(true)
        }
        (true, true) => {
            let format: Option<String> = conn
                .query_row(
                    "SELECT value FROM dualwrite_outbox_meta WHERE name = 'format'",
                    [],
                    |row| row.get(0),
                )
                .optional()
                .map_err(open_error(shown, during))?;
            if format.as_deref() != Some(FORMAT) {
                return Err(format_error(format!(
                    "format {}, this runtime reads format {FORMAT}",
                    format.as_deref().unwrap_or("(none)")
                )));
            }
            let mut statement = conn
                .prepare("SELECT name FROM pragma_table_info('dualwrite_outbox')")
                .map_err(open_error(shown, during))?;
            let columns: Vec<String> = statement
                .query_map([], |row| row.get(0))
                .map_err(open_error(shown, during))?
                .collect::<Result<_, _>>()
                .map_err(open_error(shown, during))?;
            let missing: Vec<&str> = COLUMNS
                .split(", ")
                .filter(|column| !columns.iter().any(|have| have == column))
                .collect();
            if !missing.is_empty() {
                return Err(format_error(format!(
                    "the table `{TABLE}` lacks the columns {}",
                    missing.join(", ")
                )));
            }
            conn.execute_batch(RELAYED_SCHEMA)
                .map_err(open_error(shown, "creating the journal's relay table"))?;
            Ok(false)
        }
        _ => Err(format_error(format!(
            "one of the tables `{TABLE}` and `dualwrite_outbox_meta` is missing"
        ))),
    }
}

/// The largest sequence journaled or handed out before.
fn high_water_mark(conn: &Connection, shown: &str) -> Result<u64, OutboxError> {
    let during = "reading the journal's sequence";
    let journaled: Option<i64> = conn
        .query_row("SELECT max(seq) FROM dualwrite_outbox", [], |row| {
            row.get(0)
        })
        .map_err(open_error(shown, during))?;
    let kept: Option<String> = conn
        .query_row(
            "SELECT value FROM dualwrite_outbox_meta WHERE name = 'last_seq'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(open_error(shown, during))?;
    let kept = kept
        .and_then(|value| value.parse::<i64>().ok())
        .unwrap_or(0);
    Ok(u64::try_from(journaled.unwrap_or(0).max(kept)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dualwrite-journal-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        fs::create_dir_all(&dir).unwrap();
        dir.join("journal.db")
    }

    fn record(journal: &SqliteJournal, key: u64, payload: &str) -> NewRecord {
        NewRecord {
            stream: "s".to_owned(),
            idempotency_id: IdempotencyId::generate(),
            sequence: journal.next_sequence(),
            key_text: Some(key.to_string()),
            key_hash: Some(key),
            method: "put".to_owned(),
            target: Store::New,
            payload: payload.to_owned(),
        }
    }

    #[test]
    fn group_commit_batches_concurrent_appends() {
        let journal =
            Arc::new(SqliteJournal::open(temp_path("group"), Durability::Grouped).unwrap());
        let threads: Vec<_> = (0..8_u64)
            .map(|thread| {
                let journal = Arc::clone(&journal);
                std::thread::spawn(move || {
                    for n in 0..50 {
                        let record = record(&journal, thread, &format!("{thread}:{n}"));
                        journal.append(&record).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let stats = journal.commit_stats();
        assert_eq!(stats.records, 400);
        assert!(stats.commits >= 1 && stats.commits <= 400);
        let records = journal.records("s").unwrap();
        assert_eq!(records.len(), 400);
        // Each thread's records are in its order, and sequences grow with
        // the id within a key (one thread per key here).
        for thread in 0..8_u64 {
            let own: Vec<String> = records
                .iter()
                .filter(|r| r.record.key_hash == Some(thread))
                .map(|r| r.record.payload.clone())
                .collect();
            let expected: Vec<String> = (0..50).map(|n| format!("{thread}:{n}")).collect();
            assert_eq!(own, expected);
        }
    }

    #[test]
    fn claims_follow_the_cursor_and_outcomes_change_states() {
        let journal = SqliteJournal::open(temp_path("claim"), Durability::None).unwrap();
        for n in 0..10 {
            journal.append(&record(&journal, n % 3, "{}")).unwrap();
        }
        let first = journal.claim("s", 0, 4).unwrap();
        assert!(first.unreadable.is_empty());
        let ids: Vec<i64> = first.records.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 4);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let rest = journal.claim("s", ids[3], 100).unwrap();
        assert_eq!(rest.records.len(), 6);
        assert!(journal.claim("other", 0, 100).unwrap().records.is_empty());
        journal
            .record_outcomes(&[
                Outcome::Done {
                    id: ids[0],
                    attempts: 1,
                },
                Outcome::Retrying {
                    id: ids[1],
                    attempts: 2,
                    error: "busy".to_owned(),
                },
                Outcome::Dead {
                    id: ids[2],
                    attempts: 5,
                    error: "gone".to_owned(),
                },
            ])
            .unwrap();
        let counts = journal.counts().unwrap();
        assert_eq!((counts.pending, counts.done, counts.dead), (8, 1, 1));
        let retrying = journal
            .claim("s", 0, 100)
            .unwrap()
            .records
            .into_iter()
            .find(|r| r.id == ids[1])
            .unwrap();
        assert_eq!(
            (retrying.attempts, retrying.last_error.as_deref()),
            (2, Some("busy"))
        );
        // Pending key hashes, for the adapter that starts on the stream.
        assert_eq!(journal.pending_keys("s").unwrap().len(), 8);
        // An outcome for a record no longer pending changes nothing.
        journal
            .record_outcomes(&[Outcome::Done {
                id: ids[2],
                attempts: 9,
            }])
            .unwrap();
        assert_eq!(journal.dead_letters().unwrap()[0].attempts, 5);
    }

    /// Records what a journal tells the adapter of a replay.
    #[derive(Default)]
    struct Events {
        requeuing: AtomicUsize,
        failed: AtomicUsize,
        woken: AtomicUsize,
    }

    impl JournalListener for Events {
        fn requeuing(&self, _id: IdempotencyId, _key_hash: Option<u64>) {
            self.requeuing.fetch_add(1, Ordering::SeqCst);
        }
        fn requeue_failed(&self, _id: IdempotencyId, _key_hash: Option<u64>) {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        fn wake(&self) {
            self.woken.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn replay_and_discard_change_only_dead_letters_and_tell_the_adapter() {
        let journal = SqliteJournal::open(temp_path("replay"), Durability::None).unwrap();
        let events = Arc::new(Events::default());
        let listener: Weak<dyn JournalListener> =
            Arc::downgrade(&(Arc::clone(&events) as Arc<dyn JournalListener>));
        journal.attach("s", listener).unwrap();
        let kept = record(&journal, 1, "{\"a\":1}");
        journal.append(&kept).unwrap();
        journal.append(&record(&journal, 2, "{}")).unwrap();
        let ids: Vec<i64> = journal.records("s").unwrap().iter().map(|r| r.id).collect();
        assert_eq!(
            journal.replay(ids[0]),
            Err(OutboxError::NotDead {
                id: ids[0],
                state: RecordState::Pending
            })
        );
        journal
            .record_outcomes(&[
                Outcome::Dead {
                    id: ids[0],
                    attempts: 3,
                    error: "down".to_owned(),
                },
                Outcome::Dead {
                    id: ids[1],
                    attempts: 3,
                    error: "down".to_owned(),
                },
            ])
            .unwrap();
        let new_id = journal.replay(ids[0]).unwrap();
        assert!(new_id > ids[1]);
        assert_eq!(events.requeuing.load(Ordering::SeqCst), 1);
        assert_eq!(events.woken.load(Ordering::SeqCst), 1);
        let replayed = journal
            .records("s")
            .unwrap()
            .into_iter()
            .find(|r| r.id == new_id)
            .unwrap();
        // The same write: idempotency id, sequence and payload kept.
        assert_eq!(replayed.record, kept);
        assert_eq!(
            (replayed.state, replayed.attempts),
            (RecordState::Pending, 0)
        );
        journal.discard(ids[1]).unwrap();
        assert!(journal.dead_letters().unwrap().is_empty());
        assert_eq!(
            journal.replay(ids[1]),
            Err(OutboxError::NotFound { id: ids[1] })
        );
        assert_eq!(events.failed.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_unreadable_row_is_claimed_apart() {
        let path = temp_path("unreadable");
        let journal = SqliteJournal::open(&path, Durability::None).unwrap();
        journal.append(&record(&journal, 1, "{}")).unwrap();
        journal.append(&record(&journal, 2, "{}")).unwrap();
        let conn = Connection::open(&path).unwrap();
        // dualwrite-lint: allow(DW002) the test damages a journal row on purpose
        conn.execute(
            "UPDATE dualwrite_outbox SET target = 'elsewhere' WHERE key_hash = 1",
            [],
        )
        .unwrap();
        let claimed = journal.claim("s", 0, 10).unwrap();
        assert_eq!(claimed.records.len(), 1);
        assert_eq!(claimed.unreadable.len(), 1);
        assert_eq!(claimed.unreadable[0].key_hash, Some(1));
        assert!(
            claimed.unreadable[0]
                .error
                .contains("unknown target `elsewhere`")
        );
    }

    #[test]
    fn append_in_needs_a_primary_context_on_the_journals_database() {
        let path = temp_path("append-in");
        let journal = SqliteJournal::open(&path, Durability::None).unwrap();
        let location: Arc<str> = Arc::from(journal.location());
        let conn = Connection::open(&path).unwrap();
        let apply = WriteContext::new(record(&journal, 1, "{}"), Side::Apply, 1, location.clone());
        let error = append_in(&conn, &apply).unwrap_err();
        assert!(
            error.to_string().contains("applier's secondary call"),
            "{error}"
        );
        let elsewhere = Connection::open(temp_path("elsewhere")).unwrap();
        let primary = WriteContext::new(record(&journal, 1, "{}"), Side::Primary, 0, location);
        let error = append_in(&elsewhere, &primary).unwrap_err();
        assert!(
            error.to_string().contains("would never be applied"),
            "{error}"
        );
        assert!(!primary.is_journaled());
        append_in(&conn, &primary).unwrap();
        assert!(primary.is_journaled());
        assert!(journal.contains(&primary.idempotency_id()).unwrap());
        // The runtime's commit counters count only its own appends.
        assert_eq!(journal.commit_stats(), CommitStats::default());
    }

    #[test]
    fn apply_once_runs_a_write_once_per_idempotency_id() {
        let conn = Connection::open_in_memory().unwrap();
        create_applied_table(&conn).unwrap();
        // dualwrite-lint: allow(DW002) the test's own in-memory table
        conn.execute_batch("CREATE TABLE n (v INTEGER); INSERT INTO n VALUES (0)")
            .unwrap();
        let journal = SqliteJournal::open(temp_path("once"), Durability::None).unwrap();
        let ctx = WriteContext::new(record(&journal, 1, "{}"), Side::Apply, 1, "j".into());
        // dualwrite-lint: allow(DW002) a counter in the test's own in-memory table
        let bump = |conn: &Connection| conn.execute("UPDATE n SET v = v + 1", []).map(drop);
        assert!(apply_once(&conn, Some(&ctx), bump).unwrap());
        assert!(!apply_once(&conn, Some(&ctx), bump).unwrap());
        // A failing write leaves no trace: the id is not recorded.
        let other = WriteContext::new(record(&journal, 1, "{}"), Side::Apply, 1, "j".into());
        let failed = apply_once(&conn, Some(&other), |_| Err(rusqlite::Error::InvalidQuery));
        assert!(failed.is_err());
        assert!(apply_once(&conn, Some(&other), bump).unwrap());
        // Without a context the write just runs.
        assert!(apply_once(&conn, None, bump).unwrap());
        let v: i64 = conn
            .query_row("SELECT v FROM n", [], |row| row.get(0))
            .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn sequences_are_strictly_increasing_and_survive_reopening() {
        let path = temp_path("sequence");
        let last = {
            let journal = SqliteJournal::open(&path, Durability::None).unwrap();
            let mut previous = 0;
            for _ in 0..1_000 {
                let next = journal.next_sequence();
                assert!(next > previous);
                previous = next;
            }
            journal.append(&record(&journal, 1, "{}")).unwrap();
            journal.records("s").unwrap()[0].record.sequence
        };
        let journal = SqliteJournal::open(&path, Durability::None).unwrap();
        assert!(journal.next_sequence() > last);
    }

    #[test]
    fn an_empty_file_is_a_new_journal_and_a_short_one_is_corrupt() {
        let path = temp_path("empty");
        fs::write(&path, b"").unwrap();
        assert!(SqliteJournal::open(&path, Durability::None).is_ok());
        let short = temp_path("short");
        fs::write(&short, b"SQLite format 3\0 and then nothing").unwrap();
        let error = SqliteJournal::open(&short, Durability::None).unwrap_err();
        assert!(
            matches!(&error, OutboxError::Corrupt { detail, .. } if detail.contains("shorter than a database header")),
            "{error}"
        );
    }

    #[test]
    fn ids_are_never_reused_after_the_newest_rows_are_deleted() {
        let journal = SqliteJournal::open(temp_path("ids"), Durability::None).unwrap();
        let max_id = |journal: &SqliteJournal| {
            journal
                .records("s")
                .unwrap()
                .iter()
                .map(|r| r.id)
                .max()
                .unwrap()
        };
        for _ in 0..3 {
            journal.append(&record(&journal, 1, "{}")).unwrap();
        }
        let first = max_id(&journal);
        // Pruned: every row gone, the next id still grows.
        let done: Vec<Outcome> = journal
            .records("s")
            .unwrap()
            .iter()
            .map(|r| Outcome::Done {
                id: r.id,
                attempts: 1,
            })
            .collect();
        journal.record_outcomes(&done).unwrap();
        assert_eq!(journal.prune_done(Duration::ZERO).unwrap(), 3);
        journal.append(&record(&journal, 1, "{}")).unwrap();
        let second = max_id(&journal);
        assert!(second > first, "{second} after {first}");
        // The newest row discarded as a dead letter, then replayed ones.
        journal
            .record_outcomes(&[Outcome::Dead {
                id: second,
                attempts: 1,
                error: "x".to_owned(),
            }])
            .unwrap();
        journal.discard(second).unwrap();
        journal.append(&record(&journal, 1, "{}")).unwrap();
        let third = max_id(&journal);
        assert!(third > second);
        journal
            .record_outcomes(&[Outcome::Dead {
                id: third,
                attempts: 1,
                error: "x".to_owned(),
            }])
            .unwrap();
        let replayed = journal.replay(third).unwrap();
        assert!(replayed > third);
    }

    #[test]
    fn millis_round_trip() {
        let now = SystemTime::now();
        let back = from_unix_millis(unix_millis(now));
        let gap = now.duration_since(back).unwrap_or_default();
        assert!(gap < Duration::from_millis(1));
        assert_eq!(unix_millis(UNIX_EPOCH), 0);
        assert_eq!(from_unix_millis(-5), UNIX_EPOCH);
    }
}

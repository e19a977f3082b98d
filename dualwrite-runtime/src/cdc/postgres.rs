//! Change data capture from PostgreSQL: a logical replication slot with the
//! `test_decoding` output plugin, read through SQL.
//!
//! **Why `test_decoding` over SQL, not `pgoutput` over the replication
//! protocol.** `pgoutput` is read through the streaming replication
//! protocol (`START_REPLICATION` on a replication connection, a COPY-both
//! stream, standby status messages to confirm). sqlx, the workspace's
//! PostgreSQL client, has no replication protocol, and the crates that do
//! are forks or young (no `tokio-postgres` release supports it); a second
//! client stack for one feature is not worth it. The SQL interface needs
//! only an ordinary connection:
//!
//! - `pg_logical_slot_peek_changes` reads whole transactions after the
//!   slot's confirmed position **without consuming them**;
//! - `pg_replication_slot_advance` moves the position, and the follower
//!   calls it only after the changes are durable in the outbox journal. A
//!   crash anywhere leaves the changes in the slot: nothing is skipped, and
//!   what is read twice is recognised by its idempotency id (position and
//!   index in the transaction).
//!
//! The costs: the changes are text (`test_decoding` renders each column as
//! `name[type]:value`; values arrive in PostgreSQL's text format, which
//! [`RowChange::parse`](super::RowChange::parse) parses), each read decodes
//! the WAL from the slot's restart point (which the follower moves up about
//! once a second, see [`PostgresSource::with_restart_marks`]; a long-open
//! transaction makes reads slower until it ends), and the follower polls
//! ([`CdcConfig::poll_interval`](super::CdcConfig::poll_interval), default
//! 10 ms) where a stream would push. `test_decoding` ships with PostgreSQL
//! (contrib) and needs no setup beyond `wal_level = logical`.
//!
//! Set-up:
//!
//! ```sql
//! ALTER SYSTEM SET wal_level = logical;   -- then restart the server
//! SELECT pg_create_logical_replication_slot('dualwrite_users', 'test_decoding');
//! ```
//!
//! (or [`PostgresSource::create_slot`]). Create the slot **before** the
//! backfill starts: changes made before the slot existed are not in it.
//! A slot keeps WAL until it is advanced: drop it
//! ([`PostgresSource::drop_slot`]) when the migration is over, or the old
//! server's disk fills.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use ::sqlx::Connection;
use ::sqlx::postgres::PgConnection;

use super::{
    CdcError, ChangeBatch, ChangeKind, ChangeSource, Column, FOLLOWER_LOCK_WAIT, Observed,
    Position, RowChange, Value,
};

/// A PostgreSQL logical replication slot (`test_decoding`) as a
/// [`ChangeSource`]; see the module docs.
pub struct PostgresSource {
    url: String,
    slot: String,
    create: bool,
    /// Set once the source is opened to follow the slot: `open` takes the
    /// slot's follower lock on its connection, and a call after that
    /// connection is gone fails with [`CdcError::LockLost`].
    exclusive: bool,
    conn: Option<Connected>,
    /// How long taking the follower lock waits for another follower to let
    /// go: [`FOLLOWER_LOCK_WAIT`], none once the lock was found taken (a
    /// standby tries again later).
    lock_wait: Duration,
    /// The slot's confirmed position, as this source last set or read it.
    confirmed: Position,
    /// The WAL position a complete read (nothing left out) reached, once
    /// confirmed: while the WAL's head stays there, there is nothing to
    /// decode.
    read_to: Option<Position>,
    /// The WAL position the last read reached, if it was complete.
    complete_to: Option<Position>,
    /// How often the slot's restart point is moved up (see
    /// [`PostgresSource::with_restart_marks`]); `None`: never.
    restart_every: Option<Duration>,
    /// When the next restart mark is due (`None`: at the next confirm).
    next_mark: Option<Instant>,
    /// The server's `server_version_num`, read when the source opens.
    server_version: u32,
    /// A failed mark was logged (once per source).
    restart_warned: bool,
}

/// How often the slot's restart point is moved up by default.
const RESTART_EVERY: Duration = Duration::from_secs(1);

/// After a failed restart mark (no privilege, a long transaction holding
/// the temporary slot's creation up), the next attempt waits this long.
const RESTART_RETRY: Duration = Duration::from_secs(60);

/// The connection and the current-thread runtime it runs on.
struct Connected {
    runtime: tokio::runtime::Runtime,
    conn: PgConnection,
    /// The connection holds the slot's follower lock.
    locked: bool,
}

impl PostgresSource {
    /// Reads the slot `slot` of the database at `url` (a
    /// `postgres://` URL). Nothing is checked until the follower opens it.
    pub fn new(url: impl Into<String>, slot: impl Into<String>) -> Self {
        PostgresSource {
            url: url.into(),
            slot: slot.into(),
            create: false,
            exclusive: false,
            conn: None,
            lock_wait: FOLLOWER_LOCK_WAIT,
            confirmed: Position(0),
            read_to: None,
            complete_to: None,
            restart_every: Some(RESTART_EVERY),
            next_mark: None,
            server_version: 0,
            restart_warned: false,
        }
    }

    /// How often the follower moves the slot's restart point up to what it
    /// confirmed (default every second; `None`: never).
    ///
    /// PostgreSQL decodes a slot from its restart point, which moves only
    /// past a record of the running transactions; the server writes one
    /// every 15 s while there is activity, or at a checkpoint. Without
    /// more, every read re-decodes up to 15 s of WAL (3 ms for 5 000
    /// one-row transactions, on every poll). So after confirming, at most
    /// this often, the follower has the server write one: with
    /// `pg_log_standby_snapshot()` on PostgreSQL 16 and later, and before
    /// that by creating and dropping a temporary logical slot in one
    /// transaction (which writes the record; `statement_timeout` 1 s, since
    /// creating a slot waits for the transactions running at that moment).
    /// A mark that fails (no privilege, a transaction open longer than the
    /// timeout) is logged once and retried a minute later; reads go on as
    /// before.
    #[must_use]
    pub fn with_restart_marks(mut self, every: Option<Duration>) -> Self {
        self.restart_every = every;
        self
    }

    /// Creates the slot when it opens, if it is missing (by default a
    /// missing slot is an error: a slot created late misses the changes
    /// made before it, so it belongs before the backfill).
    #[must_use]
    pub fn creating_slot(mut self) -> Self {
        self.create = true;
        self
    }

    /// The slot's name.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// Creates the slot `slot` (`test_decoding`) in the database at `url`;
    /// `false` when it existed. Checks `wal_level` first. Runs on a thread
    /// of its own, so it can be called anywhere (also inside an async
    /// runtime; it blocks the caller).
    pub fn create_slot(url: &str, slot: &str) -> Result<bool, CdcError> {
        let mut source = PostgresSource::new(url, slot);
        on_own_thread(move || {
            source.connect()?;
            source.check_wal_level()?;
            source.ensure_slot(true)
        })
    }

    /// Drops the slot `slot` in the database at `url` (when the migration
    /// is over: a slot keeps the server's WAL); `false` when it did not
    /// exist. Runs on a thread of its own, like
    /// [`PostgresSource::create_slot`].
    pub fn drop_slot(url: &str, slot: &str) -> Result<bool, CdcError> {
        let mut source = PostgresSource::new(url, slot);
        on_own_thread(move || {
            source.connect()?;
            let slot = source.slot.clone();
            let dropped: Option<(bool,)> = source.run("dropping the slot", |conn| {
                Box::pin(
                    ::sqlx::query_as(
                        "SELECT pg_drop_replication_slot(slot_name) IS NULL FROM pg_replication_slots WHERE slot_name = $1",
                    )
                    .bind(slot)
                    .fetch_optional(conn),
                )
            })?;
            Ok(dropped.is_some())
        })
    }

    fn error(&self, during: &'static str, error: impl fmt::Display) -> CdcError {
        CdcError::Source {
            source: self.describe(),
            during,
            error: error.to_string(),
        }
    }

    /// Connects (keeping a connection that is still there), and takes the
    /// follower lock on it when the source follows the slot.
    fn connect(&mut self) -> Result<(), CdcError> {
        let mut connected = match self.conn.take() {
            Some(connected) => connected,
            None => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| self.error("starting the connection's runtime", error))?;
                let conn = runtime
                    .block_on(PgConnection::connect(&self.url))
                    .map_err(|error| self.error("connecting", error))?;
                Connected {
                    runtime,
                    conn,
                    locked: false,
                }
            }
        };
        if self.exclusive && !connected.locked {
            match self.take_follower_lock(&connected.runtime, &mut connected.conn) {
                Ok(()) => connected.locked = true,
                Err(error) => {
                    if matches!(error, CdcError::Busy { .. }) {
                        // Kept for a standby's observations; what was
                        // read is another follower's now.
                        self.conn = Some(connected);
                        self.stand_down();
                    }
                    return Err(error);
                }
            }
        }
        self.conn = Some(connected);
        Ok(())
    }

    /// Forgets what was read (another follower reads the slot now, or may
    /// have): the next lock attempt does not wait.
    fn stand_down(&mut self) {
        self.lock_wait = Duration::ZERO;
        self.read_to = None;
        self.complete_to = None;
    }

    /// One follower per slot: a session advisory lock keyed by the slot's
    /// name, held by the connection that reads it (released when it
    /// closes, also when its process is killed). Waits up to
    /// `lock_wait` for a follower that is going away.
    fn take_follower_lock(
        &self,
        runtime: &tokio::runtime::Runtime,
        conn: &mut PgConnection,
    ) -> Result<(), CdcError> {
        let key = format!("dualwrite_cdc:{}", self.slot);
        let deadline = Instant::now() + self.lock_wait;
        loop {
            let (taken,): (bool,) = runtime
                .block_on(
                    ::sqlx::query_as("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                        .bind(&key)
                        .fetch_one(&mut *conn),
                )
                .map_err(|error| self.error("taking the follower lock", error))?;
            if taken {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CdcError::Busy {
                    source: self.describe(),
                    detail: format!(
                        "another follower reads the slot `{}` (it holds the advisory lock on hashtextextended('{key}', 0)); one follower per slot: several application instances share a source through a shared journal (PostgreSQL), where the others stand by",
                        self.slot
                    ),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs one query on the connection. A query that failed with the
    /// connection (I/O, protocol, the server ending the session) drops it:
    /// the next call reconnects, or, for a source that follows the slot,
    /// fails with [`CdcError::LockLost`] (the lock went with it). A
    /// statement the server refused keeps the connection and its lock.
    fn run<T>(
        &mut self,
        during: &'static str,
        query: impl for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, ::sqlx::Error>> + 'c>,
        >,
    ) -> Result<T, CdcError> {
        let locked = self.conn.as_ref().is_some_and(|connected| connected.locked);
        if self.exclusive && !locked {
            // The connection that held the lock is gone: open again.
            self.conn = None;
            self.stand_down();
            return Err(CdcError::LockLost {
                source: self.describe(),
            });
        }
        if self.conn.is_none() {
            self.connect()?;
        }
        let Some(Connected { runtime, conn, .. }) = self.conn.as_mut() else {
            return Err(self.error(during, "no connection"));
        };
        match runtime.block_on(query(conn)) {
            Ok(value) => Ok(value),
            Err(error) => {
                if connection_lost(&error) {
                    self.conn = None;
                }
                Err(self.error(during, error))
            }
        }
    }

    fn check_wal_level(&mut self) -> Result<(), CdcError> {
        let (level,): (String,) = self.run("reading wal_level", |conn| {
            Box::pin(::sqlx::query_as("SHOW wal_level").fetch_one(conn))
        })?;
        if level != "logical" {
            return Err(CdcError::Setup {
                source: self.describe(),
                detail: format!(
                    "the server's wal_level is `{level}`; logical decoding needs `logical`: run `ALTER SYSTEM SET wal_level = logical` and restart the server"
                ),
            });
        }
        Ok(())
    }

    /// Checks the slot (creating it when `create`); whether it was created.
    fn ensure_slot(&mut self, create: bool) -> Result<bool, CdcError> {
        let slot = self.slot.clone();
        let found: Option<(Option<String>, String, bool, Option<String>)> =
            self.run("looking the slot up", |conn| {
                Box::pin(
                    ::sqlx::query_as(
                        "SELECT plugin::text, slot_type, database IS NOT DISTINCT FROM current_database(), confirmed_flush_lsn::text
                         FROM pg_replication_slots WHERE slot_name = $1",
                    )
                    .bind(slot)
                    .fetch_optional(conn),
                )
            })?;
        let Some((plugin, kind, this_database, confirmed)) = found else {
            if !create {
                return Err(CdcError::MissingSlot {
                    source: self.describe(),
                    slot: self.slot.clone(),
                });
            }
            let slot = self.slot.clone();
            let (lsn,): (String,) = self.run("creating the slot", |conn| {
                Box::pin(
                    ::sqlx::query_as(
                        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'test_decoding')",
                    )
                    .bind(slot)
                    .fetch_one(conn),
                )
            })?;
            self.confirmed = self.position(&lsn)?;
            return Ok(true);
        };
        let setup = |detail: String| CdcError::Setup {
            source: self.describe(),
            detail,
        };
        if kind != "logical" || plugin.as_deref() != Some("test_decoding") {
            return Err(setup(format!(
                "the slot `{}` is a {kind} slot with plugin {}; change data capture reads a logical slot with `test_decoding`",
                self.slot,
                plugin.as_deref().unwrap_or("none")
            )));
        }
        if !this_database {
            return Err(setup(format!(
                "the slot `{}` belongs to another database than the one in the URL",
                self.slot
            )));
        }
        if let Some(lsn) = confirmed {
            self.confirmed = self.position(&lsn)?;
        }
        Ok(false)
    }

    fn position(&self, text: &str) -> Result<Position, CdcError> {
        text.parse().map_err(|error| CdcError::Decode {
            source: self.describe(),
            text: text.to_owned(),
            error,
        })
    }

    /// Has the server write a record of the running transactions, if one
    /// is due (see [`PostgresSource::with_restart_marks`]): the next
    /// advance past it moves the slot's restart point up.
    fn mark_restart_point_if_due(&mut self) {
        let Some(every) = self.restart_every else {
            return;
        };
        if self.next_mark.is_some_and(|due| Instant::now() < due) {
            return;
        }
        let result = if self.server_version >= 160_000 {
            self.run("marking a restart point", |conn| {
                Box::pin(async move {
                    ::sqlx::query("SELECT pg_log_standby_snapshot()::text")
                        .execute(conn)
                        .await
                        .map(drop)
                })
            })
        } else {
            // Named after this connection's server process, which is
            // unique on the server while the connection lives (a process
            // id of the application's is not: every container's may be 1).
            self.run("marking a restart point", |conn| {
                Box::pin(async move {
                    let mut tx = conn.begin().await?;
                    ::sqlx::query("SET LOCAL statement_timeout = '1s'")
                        .execute(&mut *tx)
                        .await?;
                    ::sqlx::query(
                        "SELECT 1 FROM pg_create_logical_replication_slot('dualwrite_mark_' || pg_backend_pid(), 'test_decoding', true)",
                    )
                    .execute(&mut *tx)
                    .await?;
                    ::sqlx::query("SELECT pg_drop_replication_slot('dualwrite_mark_' || pg_backend_pid())")
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await
                })
            })
        };
        self.next_mark = Some(match result {
            Ok(()) => Instant::now() + every,
            Err(error) => {
                if !std::mem::replace(&mut self.restart_warned, true) {
                    tracing::warn!(
                        source = self.describe(),
                        %error,
                        "cdc: cannot mark a restart point on the slot; reads decode from its older one (slower) and a mark is tried again in a minute"
                    );
                }
                Instant::now() + RESTART_RETRY
            }
        });
    }

    fn current_lsn(&mut self) -> Result<Position, CdcError> {
        let (lsn,): (String,) = self.run("reading the WAL position", |conn| {
            Box::pin(::sqlx::query_as("SELECT pg_current_wal_lsn()::text").fetch_one(conn))
        })?;
        self.position(&lsn)
    }

    /// How far the WAL is flushed: logical decoding reads up to there, and
    /// the slot cannot be advanced past it. A commit acknowledged to its
    /// client is before it (with `synchronous_commit = off`, once the WAL
    /// writer flushed it: a catch-up waits for the write position as of
    /// its start, which such a commit may not have reached yet).
    fn flushed_lsn(&mut self) -> Result<Position, CdcError> {
        let (lsn,): (String,) = self.run("reading the WAL position", |conn| {
            Box::pin(::sqlx::query_as("SELECT pg_current_wal_flush_lsn()::text").fetch_one(conn))
        })?;
        self.position(&lsn)
    }
}

impl ChangeSource for PostgresSource {
    fn open(&mut self) -> Result<Position, CdcError> {
        self.exclusive = true;
        self.connect()?;
        let checked = self.check_wal_level().and_then(|()| {
            self.ensure_slot(self.create)?;
            self.run("reading the server's version", |conn| {
                Box::pin(
                    ::sqlx::query_as::<_, (i32,)>(
                        "SELECT current_setting('server_version_num')::int",
                    )
                    .fetch_one(conn),
                )
            })
        });
        match checked {
            Ok((version,)) => {
                self.server_version = u32::try_from(version).unwrap_or(0);
                self.lock_wait = FOLLOWER_LOCK_WAIT;
                Ok(self.confirmed)
            }
            Err(error) => {
                // Not followed after all: the lock is released, for an
                // instance that can open it.
                self.conn = None;
                self.exclusive = false;
                Err(error)
            }
        }
    }

    fn head(&mut self) -> Result<Position, CdcError> {
        self.current_lsn()
    }

    fn read(&mut self, limit: usize) -> Result<ChangeBatch, CdcError> {
        let upto = self.flushed_lsn()?;
        if self.read_to == Some(upto) {
            // No WAL since the last complete read: skip the decoding.
            return Ok(ChangeBatch {
                changes: Vec::new(),
                through: upto,
                more: false,
            });
        }
        let slot = self.slot.clone();
        let limit_rows = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        let upto_text = upto.to_string();
        let rows: Vec<(String, String, String)> = self.run("reading changes", |conn| {
            Box::pin(
                ::sqlx::query_as(
                    "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes($1, $2::pg_lsn, $3, 'include-xids', '1', 'skip-empty-xacts', '1')",
                )
                .bind(slot)
                .bind(upto_text)
                .bind(limit_rows)
                .fetch_all(conn),
            )
        })?;
        let complete = rows.len() < limit.max(1);
        let mut changes = Vec::new();
        let mut last_commit = None;
        let mut index = 0_u32;
        for (lsn, xid, data) in &rows {
            let position = self.position(lsn)?;
            let xid: u64 = xid.parse().map_err(|_| CdcError::Decode {
                source: self.describe(),
                text: xid.clone(),
                error: "not a transaction id".to_owned(),
            })?;
            match parse_row(data) {
                Ok(Parsed::Begin) => index = 0,
                Ok(Parsed::Commit) => last_commit = Some(position),
                Ok(Parsed::Other) => {}
                Ok(Parsed::Changes(parsed)) => {
                    for (schema, table, kind, columns, old_key) in parsed {
                        changes.push(RowChange {
                            position,
                            xid,
                            index,
                            schema,
                            table,
                            kind,
                            columns,
                            old_key,
                        });
                        index = index.saturating_add(1);
                    }
                }
                Err(error) => {
                    return Err(CdcError::Decode {
                        source: self.describe(),
                        text: data.clone(),
                        error,
                    });
                }
            }
        }
        self.complete_to = complete.then_some(upto);
        let through = if complete {
            upto
        } else {
            last_commit.unwrap_or(self.confirmed)
        };
        // The limit counts the slot's rows (BEGIN and COMMIT among them),
        // so an incomplete read may hold fewer changes than the limit.
        Ok(ChangeBatch {
            changes,
            through,
            more: !complete,
        })
    }

    fn confirm(&mut self, through: Position) -> Result<(), CdcError> {
        // Confirmed, so nothing before it is to be read again.
        if self.complete_to == Some(through) {
            self.read_to = Some(through);
        }
        if through <= self.confirmed {
            return Ok(());
        }
        let slot = self.slot.clone();
        let to = through.to_string();
        let (end,): (String,) = self.run("advancing the slot", |conn| {
            Box::pin(
                ::sqlx::query_as(
                    "SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::pg_lsn)",
                )
                .bind(slot)
                .bind(to)
                .fetch_one(conn),
            )
        })?;
        // The server does not advance past the flushed WAL.
        self.confirmed = self.confirmed.max(self.position(&end)?.min(through));
        self.mark_restart_point_if_due();
        Ok(())
    }

    fn describe(&self) -> String {
        format!("postgres slot `{}`", self.slot)
    }

    fn observe(&mut self) -> Result<Observed, CdcError> {
        // Read without the follower lock (another follower holds it).
        let exclusive = std::mem::replace(&mut self.exclusive, false);
        let slot = self.slot.clone();
        let found: Result<Option<(String, Option<String>)>, CdcError> =
            self.run("reading the slot's position", |conn| {
                Box::pin(
                    ::sqlx::query_as(
                        "SELECT pg_current_wal_lsn()::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    )
                    .bind(slot)
                    .fetch_optional(conn),
                )
            });
        self.exclusive = exclusive;
        let Some((head, confirmed)) = found? else {
            return Err(CdcError::MissingSlot {
                source: self.describe(),
                slot: self.slot.clone(),
            });
        };
        let confirmed = match confirmed {
            Some(confirmed) => self.position(&confirmed)?,
            None => Position(0),
        };
        Ok(Observed {
            head: self.position(&head)?,
            confirmed,
        })
    }
}

impl fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PostgresSource")
            .field("slot", &self.slot)
            .field("confirmed", &self.confirmed)
            .finish_non_exhaustive()
    }
}

/// Whether `error` ended the connection: anything but a statement the
/// server refused, and of those the connection exceptions (class 08) and
/// operator interventions (class 57: `pg_terminate_backend`, a shutdown).
fn connection_lost(error: &::sqlx::Error) -> bool {
    match error.as_database_error() {
        Some(database) => database
            .code()
            .is_none_or(|code| code.starts_with("08") || code.starts_with("57")),
        None => true,
    }
}

/// Runs `work` on a new thread (which may build its own runtime) and waits
/// for it.
fn on_own_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CdcError> + Send + 'static,
) -> Result<T, CdcError> {
    thread::spawn(work)
        .join()
        .unwrap_or_else(|_| Err(CdcError::Stopped))
}

/// One parsed change of a `test_decoding` row.
type ParsedChange = (String, String, ChangeKind, Vec<Column>, Vec<Column>);

/// A `test_decoding` row.
#[derive(Debug, PartialEq)]
enum Parsed {
    Begin,
    Commit,
    /// A logical message or anything else that is not a row change.
    Other,
    /// Row changes (several tables for one TRUNCATE).
    Changes(Vec<ParsedChange>),
}

/// Parses a `test_decoding` row: `BEGIN 731`, `COMMIT 731`, `table
/// public.users: UPDATE: id[integer]:1 name[text]:'Ada'`.
fn parse_row(data: &str) -> Result<Parsed, String> {
    if data.starts_with("BEGIN") {
        return Ok(Parsed::Begin);
    }
    if data.starts_with("COMMIT") {
        return Ok(Parsed::Commit);
    }
    let Some(rest) = data.strip_prefix("table ") else {
        return Ok(Parsed::Other);
    };
    let mut cursor = Cursor { text: rest, at: 0 };
    let mut tables = Vec::new();
    loop {
        let (schema, table) = cursor.qualified_name()?;
        tables.push((schema, table));
        if cursor.eat(", ") {
            continue;
        }
        cursor.expect(": ")?;
        break;
    }
    let kind = if cursor.eat("INSERT: ") {
        ChangeKind::Insert
    } else if cursor.eat("UPDATE: ") {
        ChangeKind::Update
    } else if cursor.eat("DELETE: ") {
        ChangeKind::Delete
    } else if cursor.eat("TRUNCATE: ") {
        ChangeKind::Truncate
    } else {
        return Err(format!("unknown change at {:?}", cursor.rest()));
    };
    if kind == ChangeKind::Truncate {
        return Ok(Parsed::Changes(
            tables
                .into_iter()
                .map(|(schema, table)| (schema, table, kind, Vec::new(), Vec::new()))
                .collect(),
        ));
    }
    let [(schema, table)]: [(String, String); 1] = tables
        .try_into()
        .map_err(|_| "a row change of several tables".to_owned())?;
    let mut old_key = Vec::new();
    if cursor.eat("old-key: ") {
        old_key = cursor.columns(Some(" new-tuple: "))?;
        cursor.expect(" new-tuple: ")?;
    }
    let columns = if cursor.rest() == "(no-tuple-data)" {
        Vec::new()
    } else {
        cursor.columns(None)?
    };
    Ok(Parsed::Changes(vec![(
        schema, table, kind, columns, old_key,
    )]))
}

/// A position in a `test_decoding` row.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn eat(&mut self, prefix: &str) -> bool {
        if self.rest().starts_with(prefix) {
            self.at += prefix.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, prefix: &str) -> Result<(), String> {
        if self.eat(prefix) {
            Ok(())
        } else {
            Err(format!("expected {prefix:?} at {:?}", self.rest()))
        }
    }

    /// An identifier: `"quoted ""name"""` or bare up to one of `ends`.
    fn identifier(&mut self, ends: &[char]) -> Result<String, String> {
        if self.eat("\"") {
            let mut name = String::new();
            loop {
                let rest = self.rest();
                let Some(quote) = rest.find('"') else {
                    return Err(format!("unterminated identifier at {rest:?}"));
                };
                name.push_str(&rest[..quote]);
                self.at += quote + 1;
                if self.eat("\"") {
                    name.push('"');
                } else {
                    return Ok(name);
                }
            }
        }
        let rest = self.rest();
        let end = rest.find(ends).unwrap_or(rest.len());
        if end == 0 {
            return Err(format!("expected a name at {rest:?}"));
        }
        self.at += end;
        Ok(rest[..end].to_owned())
    }

    /// `schema.table`, either part quoted.
    fn qualified_name(&mut self) -> Result<(String, String), String> {
        let schema = self.identifier(&['.', ':', ','])?;
        self.expect(".")?;
        let table = self.identifier(&[':', ','])?;
        Ok((schema, table))
    }

    /// Columns `name[type]:value` separated by spaces, up to the end or to
    /// `stop`.
    fn columns(&mut self, stop: Option<&str>) -> Result<Vec<Column>, String> {
        let mut columns = Vec::new();
        loop {
            if self.rest().is_empty() || stop.is_some_and(|stop| self.rest().starts_with(stop)) {
                return Ok(columns);
            }
            if !columns.is_empty() {
                self.expect(" ")?;
            }
            let name = self.identifier(&['['])?;
            self.expect("[")?;
            let rest = self.rest();
            let Some(end) = rest.find("]:") else {
                return Err(format!("expected a type at {rest:?}"));
            };
            let type_name = rest[..end].to_owned();
            self.at += end + 2;
            let value = self.value()?;
            columns.push(Column {
                name,
                type_name,
                value,
            });
        }
    }

    /// `'quoted ''text'''`, `null`, `unchanged-toast-datum`, or a bare
    /// value up to the next space.
    fn value(&mut self) -> Result<Value, String> {
        if self.eat("'") {
            let mut text = String::new();
            loop {
                let rest = self.rest();
                let Some(quote) = rest.find('\'') else {
                    return Err(format!("unterminated value at {rest:?}"));
                };
                text.push_str(&rest[..quote]);
                self.at += quote + 1;
                if self.eat("'") {
                    text.push('\'');
                } else {
                    return Ok(Value::Text(text));
                }
            }
        }
        let rest = self.rest();
        let end = rest.find(' ').unwrap_or(rest.len());
        let token = &rest[..end];
        self.at += end;
        Ok(match token {
            "null" => Value::Null,
            "unchanged-toast-datum" => Value::Unchanged,
            _ => Value::Text(token.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> Value {
        Value::Text(value.to_owned())
    }

    fn change(data: &str) -> ParsedChange {
        match parse_row(data) {
            Ok(Parsed::Changes(mut changes)) if changes.len() == 1 => changes.remove(0),
            other => panic!("{data}: {other:?}"),
        }
    }

    #[test]
    fn inserts_with_quotes_nulls_and_spaces_in_types() {
        let (schema, table, kind, columns, old) = change(
            "table public.cdc_probe: INSERT: id[integer]:1 name[text]:'a''b c' n[bigint]:null t[timestamp with time zone]:'2026-12-05 13:04:04+00' a[integer[]]:'{1,2}' ok[boolean]:true",
        );
        assert_eq!((schema.as_str(), table.as_str()), ("public", "cdc_probe"));
        assert_eq!(kind, ChangeKind::Insert);
        assert!(old.is_empty());
        let values: Vec<_> = columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_name.as_str(), c.value.clone()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("id", "integer", text("1")),
                ("name", "text", text("a'b c")),
                ("n", "bigint", Value::Null),
                (
                    "t",
                    "timestamp with time zone",
                    text("2026-12-05 13:04:04+00")
                ),
                ("a", "integer[]", text("{1,2}")),
                ("ok", "boolean", text("true")),
            ]
        );
    }

    #[test]
    fn updates_with_an_old_key_and_unchanged_values() {
        let (_, _, kind, columns, old) = change(
            "table public.t: UPDATE: old-key: id[integer]:2 new-tuple: id[integer]:3 body[text]:unchanged-toast-datum",
        );
        assert_eq!(kind, ChangeKind::Update);
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].value, text("2"));
        assert_eq!(columns[0].value, text("3"));
        assert_eq!(columns[1].value, Value::Unchanged);
    }

    #[test]
    fn quoted_names_deletes_and_truncates() {
        let (schema, table, kind, columns, _) =
            change("table \"My Schema\".\"odd \"\"t\"\"\": DELETE: \"Key Col\"[integer]:7");
        assert_eq!(
            (schema.as_str(), table.as_str()),
            ("My Schema", "odd \"t\"")
        );
        assert_eq!(kind, ChangeKind::Delete);
        assert_eq!(columns[0].name, "Key Col");
        let (_, _, _, columns, _) = change("table public.t: DELETE: (no-tuple-data)");
        assert!(columns.is_empty());
        match parse_row("table public.a, public.b: TRUNCATE: (no-flags)") {
            Ok(Parsed::Changes(changes)) => {
                assert_eq!(changes.len(), 2);
                assert_eq!(changes[1].1, "b");
                assert_eq!(changes[1].2, ChangeKind::Truncate);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transaction_markers_and_bad_rows() {
        assert_eq!(parse_row("BEGIN 7"), Ok(Parsed::Begin));
        assert_eq!(parse_row("COMMIT 7"), Ok(Parsed::Commit));
        assert_eq!(
            parse_row("message: transactional: 1 prefix: x, sz: 1 content:y"),
            Ok(Parsed::Other)
        );
        assert!(parse_row("table public.t: MERGE: x").is_err());
        assert!(parse_row("table public.t: INSERT: id[integer:1").is_err());
        assert!(parse_row("table public.t: INSERT: name[text]:'open").is_err());
    }
}

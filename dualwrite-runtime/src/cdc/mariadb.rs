//! Change data capture from MariaDB (and MySQL): the binary log in row
//! format, read through the replication protocol.
//!
//! **How it reads.** A thread of the source holds a replication connection
//! (`COM_BINLOG_DUMP`, through the `mysql` crate's binlog stream: sqlx has
//! no replication protocol) that the server pushes events down as they are
//! written, so there is no polling of the server; it decodes the row events
//! into [`RowChange`]s and hands whole transactions to the follower. The
//! server sends a heartbeat each second while idle, which also tells the
//! reader that the connection is alive (10 s of silence: reconnect).
//!
//! **Position.** The binary log has no slot that remembers what a reader
//! consumed, so the source keeps its confirmed position (file and offset) in
//! a row of `dualwrite_cdc_positions` in the URL's database, written with
//! `sql_log_bin = 0` so that its updates are not themselves in the log. A
//! position is a [`Position`] of the file's number (high 32 bits) and the
//! offset in it (low 32 bits): `mariadb-bin.000003` at 1234 is `3/4D2`. As
//! with PostgreSQL, the follower confirms a position only after the changes
//! before it are journaled: a crash reads them again, and their journal
//! records are recognised by idempotency id (the transaction's position and
//! the change's index in it).
//!
//! Set-up (the server needs a restart for `log_bin`):
//!
//! ```text
//! mariadbd --log-bin=mariadb-bin --binlog-format=ROW \
//!          --binlog-row-image=FULL --binlog-row-metadata=FULL
//! ```
//!
//! `binlog_row_metadata = FULL` (MariaDB 10.5, MySQL 8.0) puts the column
//! names, the primary key and the ENUM/SET labels in the log, so a change
//! is decoded as it was written, whatever the table's definition is when it
//! is read. The user needs `REPLICATION SLAVE` (to read the log), `BINLOG
//! MONITOR` or `REPLICATION CLIENT` (for `SHOW MASTER STATUS`), and
//! `BINLOG ADMIN` or `SUPER` (for `sql_log_bin`), and may write the
//! positions table. Create the position ([`MariadbSource::create_position`]
//! or [`MariadbSource::creating_position`]) **before** the backfill starts,
//! as with a slot; [`MariadbSource::drop_position`] when the migration is
//! over.
//!
//! **Values.** Columns arrive as text in MariaDB's text format: numbers,
//! `DECIMAL` exactly, `DATE` as `2026-01-02`, `DATETIME`/`TIMESTAMP` as
//! `2026-01-02 03:04:05` with the fraction when it is not zero (`.678`),
//! `TIME` as `-838:59:59`, `ENUM` and `SET` as their labels (`a,c`).
//! Binary columns (`BINARY`, `VARBINARY`, `BLOB`, `BIT`) and text that is
//! not valid UTF-8 are `\x` and lowercase hex, as PostgreSQL writes
//! `bytea`. `TIMESTAMP` values are in UTC (the log holds them so). An update
//! of a table with a primary key carries the old key columns in
//! [`RowChange::old_key`] when the key changed; a delete carries the whole
//! old row.
//!
//! **Limits.** The position is a file and an offset of one server: after a
//! failover to a replica it does not apply (create a new position and
//! backfill). A position whose file the server purged
//! (`binlog_expire_logs_seconds`) is an error at open: the changes after it
//! are gone. `TRUNCATE TABLE` is a [`ChangeKind::Truncate`]; other
//! statements (DDL) are not changes. XA transactions are not read.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use mysql::binlog::events::{EventData, OptionalMetadataField, RowsEventData, TableMapEvent};
use mysql::binlog::row::BinlogRow;
use mysql::binlog::value::BinlogValue;
use mysql::consts::{ColumnFlags, ColumnType};
use mysql::prelude::Queryable;
use mysql::{BinlogRequest, BinlogStream, Conn, Opts, OptsBuilder};

use super::{
    CdcError, ChangeBatch, ChangeKind, ChangeSource, Column, FOLLOWER_LOCK_WAIT, Observed,
    Position, RowChange, Value,
};

/// The table of confirmed positions, in the URL's database.
const POSITIONS: &str = "dualwrite_cdc_positions";

/// How often the server sends a heartbeat on an idle stream.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A stream silent this long (ten heartbeats) is broken: reconnect.
const SILENCE: Duration = Duration::from_secs(10);

/// How long a read waits for the reader thread when nothing is pending.
const FIRST_WAIT: Duration = Duration::from_millis(5);

/// Messages the reader thread may queue before it waits for the follower.
const QUEUE: usize = 1024;

/// The binary log of a MariaDB or MySQL server as a [`ChangeSource`]; see
/// the module docs.
pub struct MariadbSource {
    url: String,
    name: String,
    create: bool,
    /// Set once the source is opened to follow the log: `open` takes the
    /// position's follower lock on the control connection, and a call
    /// after that connection is gone fails with [`CdcError::LockLost`].
    exclusive: bool,
    server_id: Option<u32>,
    conn: Option<Conn>,
    /// The control connection holds the position's follower lock.
    locked: bool,
    /// How long taking the follower lock waits for another follower to let
    /// go: [`FOLLOWER_LOCK_WAIT`], none once the lock was found taken (a
    /// standby tries again later).
    lock_wait: Duration,
    /// The log's file name without its number (`mariadb-bin`).
    base: String,
    /// The position confirmed to the positions table.
    confirmed: Position,
    reader: Option<Reader>,
    /// Transactions received and not confirmed, in log order.
    pending: VecDeque<Transaction>,
    /// Everything before this position was received (whole transactions).
    received_to: Position,
}

/// The reader thread's end of things.
struct Reader {
    messages: Receiver<Message>,
    stop: Arc<AtomicBool>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        // The thread sees it at its next event (a heartbeat a second at
        // the latest) or when its next message finds no receiver.
        self.stop.store(true, Ordering::SeqCst);
    }
}

enum Message {
    Transaction(Transaction),
    /// Everything before the position was sent: no transaction is open.
    Reached(Position),
    /// The connection failed: reconnecting may help.
    Failed(String),
    /// The log holds what the reader cannot read (an XA transaction, a
    /// compressed event, rows logged as a statement): reading it again
    /// finds it again.
    Unreadable(String),
}

#[derive(Debug, Clone)]
struct Transaction {
    changes: Vec<RowChange>,
    end: Position,
}

impl MariadbSource {
    /// Reads the binary log of the server at `url` (a `mysql://` URL) from
    /// the position named `name` in the URL's database. Nothing is checked
    /// until the follower opens it.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        MariadbSource {
            url: url.into(),
            name: name.into(),
            create: false,
            exclusive: false,
            server_id: None,
            conn: None,
            locked: false,
            lock_wait: FOLLOWER_LOCK_WAIT,
            base: String::new(),
            confirmed: Position(0),
            reader: None,
            pending: VecDeque::new(),
            received_to: Position(0),
        }
    }

    /// Creates the position at the log's current end when it opens, if it
    /// is missing (by default a missing position is an error: one created
    /// late misses the changes made before it, so it belongs before the
    /// backfill).
    #[must_use]
    pub fn creating_position(mut self) -> Self {
        self.create = true;
        self
    }

    /// The server id the reader registers with (a replica's id; default: a
    /// hash of the position's name with the top bit set). Two readers with
    /// one id on one server stop each other.
    #[must_use]
    pub fn with_server_id(mut self, server_id: u32) -> Self {
        self.server_id = Some(server_id);
        self
    }

    /// The position's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the position `name` at the log's current end on the server
    /// at `url`; `false` when it existed (it is left as it was). Checks the
    /// server's set-up first.
    pub fn create_position(url: &str, name: &str) -> Result<bool, CdcError> {
        let mut source = MariadbSource::new(url, name);
        source.connect()?;
        source.check_setup()?;
        source.ensure_position(true)
    }

    /// Drops the position `name` on the server at `url`; `false` when it
    /// did not exist.
    pub fn drop_position(url: &str, name: &str) -> Result<bool, CdcError> {
        let mut source = MariadbSource::new(url, name);
        source.connect()?;
        source.ensure_table()?;
        let name = source.name.clone();
        let conn = source.conn()?;
        // dualwrite-lint: allow(DW002) the follower's own position table on the source, written outside the log (sql_log_bin = 0), not a store write
        let result = conn.exec_drop(format!("DELETE FROM {POSITIONS} WHERE name = ?"), (name,));
        let affected = conn.affected_rows();
        result.map_err(|error| source.error("dropping the position", error))?;
        Ok(affected > 0)
    }

    fn error(&self, during: &'static str, error: impl std::fmt::Display) -> CdcError {
        CdcError::Source {
            source: self.describe(),
            during,
            error: error.to_string(),
        }
    }

    fn setup(&self, detail: impl Into<String>) -> CdcError {
        CdcError::Setup {
            source: self.describe(),
            detail: detail.into(),
        }
    }

    fn opts(&self) -> Result<OptsBuilder, CdcError> {
        let opts =
            Opts::from_url(&self.url).map_err(|error| self.error("reading the URL", error))?;
        Ok(OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(Duration::from_secs(10)))
            .read_timeout(Some(SILENCE))
            .write_timeout(Some(SILENCE)))
    }

    /// Connects the control connection (keeping one that is still there),
    /// and takes the follower lock on it when the source follows the log.
    fn connect(&mut self) -> Result<(), CdcError> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                self.locked = false;
                let mut conn =
                    Conn::new(self.opts()?).map_err(|error| self.error("connecting", error))?;
                conn.query_drop("SET SESSION sql_log_bin = 0").map_err(|error| {
                    self.setup(format!(
                        "`SET SESSION sql_log_bin = 0` failed ({error}): the user needs BINLOG ADMIN (or SUPER) so that the follower's position updates stay out of the log"
                    ))
                })?;
                conn
            }
        };
        if self.exclusive && !self.locked {
            match self.take_follower_lock(&mut conn) {
                Ok(()) => self.locked = true,
                Err(error) => {
                    if matches!(error, CdcError::Busy { .. }) {
                        // Kept for a standby's observations; what was
                        // received is another follower's now.
                        self.conn = Some(conn);
                        self.stand_down();
                    }
                    return Err(error);
                }
            }
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Forgets what was received and stops the stream (another follower
    /// reads the log now, or may have): the next lock attempt does not
    /// wait.
    fn stand_down(&mut self) {
        self.lock_wait = Duration::ZERO;
        self.reader = None;
        self.pending.clear();
        self.received_to = self.confirmed;
    }

    /// The connection that held the lock is gone: open again.
    fn lock_lost(&mut self) -> CdcError {
        self.conn = None;
        self.locked = false;
        self.stand_down();
        CdcError::LockLost {
            source: self.describe(),
        }
    }

    /// One follower per position: a named lock (`GET_LOCK`) held by the
    /// control connection (released when it closes, also when its process
    /// is killed). Waits up to `lock_wait` for a follower that is going
    /// away.
    fn take_follower_lock(&self, conn: &mut Conn) -> Result<(), CdcError> {
        let key = self.lock_name();
        let taken: Option<Option<i64>> = conn
            .exec_first(
                "SELECT GET_LOCK(?, ?)",
                (key.as_str(), self.lock_wait.as_secs()),
            )
            .map_err(|error| self.error("taking the follower lock", error))?;
        if taken.flatten() == Some(1) {
            return Ok(());
        }
        Err(CdcError::Busy {
            source: self.describe(),
            detail: format!(
                "another follower reads the position `{}` (it holds the lock `{key}`, see IS_USED_LOCK('{key}')); one follower per position: several application instances share a source through a shared journal (PostgreSQL), where the others stand by",
                self.name
            ),
        })
    }

    /// The follower lock's name (at most 64 characters).
    fn lock_name(&self) -> String {
        let name = format!("dualwrite_cdc:{}", self.name);
        if name.len() <= 64 {
            return name;
        }
        format!("dualwrite_cdc:{:016x}", super::fnv1a(&self.name))
    }

    fn conn(&mut self) -> Result<&mut Conn, CdcError> {
        if self.exclusive && !(self.locked && self.conn.is_some()) {
            return Err(self.lock_lost());
        }
        if self.conn.is_none() {
            self.connect()?;
        }
        self.conn.as_mut().ok_or(CdcError::Stopped)
    }

    /// Runs `work` on the connection. A failure with the connection (I/O,
    /// the server ending the session) drops it: the next call reconnects,
    /// or, for a source that follows the log, fails with
    /// [`CdcError::LockLost`] (the lock went with it). A statement the
    /// server refused keeps the connection and its lock.
    fn with_conn<T>(
        &mut self,
        during: &'static str,
        work: impl FnOnce(&mut Conn) -> mysql::Result<T>,
    ) -> Result<T, CdcError> {
        let result = work(self.conn()?);
        result.map_err(|error| {
            // ER_SERVER_SHUTDOWN, ER_ABORTING_CONNECTION, ER_CONNECTION_KILLED.
            let lost = !matches!(&error, mysql::Error::MySqlError(server)
                if !matches!(server.code, 1053 | 1152 | 1927));
            if lost {
                self.conn = None;
                self.locked = false;
            }
            self.error(during, error)
        })
    }

    fn check_setup(&mut self) -> Result<(), CdcError> {
        // One read of every setting; a server without one (MariaDB has no
        // `binlog_transaction_compression`, MySQL no `log_bin_compress`)
        // leaves it out.
        let rows: Vec<(String, String)> =
            self.with_conn("reading the server's settings", |conn| {
                conn.query(
                    "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', \
                     'binlog_row_image', 'binlog_row_metadata', 'log_bin_compress', \
                     'binlog_transaction_compression')",
                )
            })?;
        let setting = |name: &str| {
            rows.iter()
                .find(|(variable, _)| variable.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };
        let on =
            |value: Option<&str>| value.is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("ON"));
        if !on(setting("log_bin")) {
            return Err(self.setup(
                "the binary log is off: start the server with `--log-bin` (and `--binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL`)",
            ));
        }
        for (variable, expected) in [("binlog_format", "ROW"), ("binlog_row_image", "FULL")] {
            let value = setting(variable);
            if value != Some(expected) {
                return Err(self.setup(format!(
                    "{variable} is `{}`, not `{expected}`: `SET GLOBAL {variable} = '{expected}'` (and in the server's options)",
                    value.unwrap_or_default()
                )));
            }
        }
        for variable in ["log_bin_compress", "binlog_transaction_compression"] {
            if on(setting(variable)) {
                return Err(self.setup(format!(
                    "{variable} is on: compressed events are not read; `SET GLOBAL {variable} = OFF`"
                )));
            }
        }
        match setting("binlog_row_metadata") {
            Some("FULL") => Ok(()),
            Some(value) => Err(self.setup(format!(
                "binlog_row_metadata is `{value}`, not `FULL`: `SET GLOBAL binlog_row_metadata = 'FULL'` (the log then carries column names)"
            ))),
            None => Err(self.setup(
                "the server has no binlog_row_metadata (MariaDB 10.5 or MySQL 8.0 is needed for column names in the log)",
            )),
        }
    }

    fn ensure_table(&mut self) -> Result<(), CdcError> {
        let database: Option<Option<String>> = self.with_conn("reading the database", |conn| {
            conn.query_first("SELECT DATABASE()")
        })?;
        if database.flatten().is_none() {
            return Err(self.setup(format!(
                "the URL names no database: add one (`mysql://user@host/db`); the follower keeps its position in {POSITIONS} there"
            )));
        }
        self.with_conn("creating the positions table", |conn| {
            conn.query_drop(format!(
                "CREATE TABLE IF NOT EXISTS {POSITIONS} (
                    name VARCHAR(191) NOT NULL PRIMARY KEY,
                    file VARCHAR(255) NOT NULL,
                    pos BIGINT UNSIGNED NOT NULL,
                    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
                ) ENGINE = InnoDB"
            ))
        })
    }

    /// The log's end: `SHOW MASTER STATUS`.
    fn log_end(&mut self) -> Result<(String, u64), CdcError> {
        let row: Option<mysql::Row> = self.with_conn("reading the log's end", |conn| {
            // `SHOW BINARY LOG STATUS` on MySQL 8.4, which removed the other.
            conn.query_first("SHOW MASTER STATUS")
                .or_else(|_| conn.query_first("SHOW BINARY LOG STATUS"))
        })?;
        let Some(row) = row else {
            return Err(self.setup("`SHOW MASTER STATUS` is empty: the binary log is off"));
        };
        let file: Option<String> = row.get_opt(0).and_then(Result::ok);
        let pos: Option<u64> = row.get_opt(1).and_then(Result::ok);
        match (file, pos) {
            (Some(file), Some(pos)) => Ok((file, pos)),
            _ => Err(self.setup("`SHOW MASTER STATUS` has no file and position")),
        }
    }

    fn position_of(&self, file: &str, offset: u64) -> Result<Position, CdcError> {
        let number = file_number(file).ok_or_else(|| CdcError::Decode {
            source: self.describe(),
            text: file.to_owned(),
            error: "not a binary log file name (`name.000001`)".to_owned(),
        })?;
        let offset = u32::try_from(offset).map_err(|_| CdcError::Decode {
            source: self.describe(),
            text: format!("{file}:{offset}"),
            error: "the offset is beyond 4 GiB".to_owned(),
        })?;
        Ok(Position(u64::from(number) << 32 | u64::from(offset)))
    }

    fn file_name(&self, position: Position) -> String {
        format!("{}.{:06}", self.base, position.0 >> 32)
    }

    /// Reads the position row (creating it at the log's end when `create`
    /// and it is missing); returns whether it was created.
    fn ensure_position(&mut self, create: bool) -> Result<bool, CdcError> {
        self.ensure_table()?;
        let (end_file, end_pos) = self.log_end()?;
        self.base = match end_file.rsplit_once('.') {
            Some((base, _)) => base.to_owned(),
            None => end_file.clone(),
        };
        let name = self.name.clone();
        let row: Option<(String, u64)> = self.with_conn("reading the position", |conn| {
            conn.exec_first(
                format!("SELECT file, pos FROM {POSITIONS} WHERE name = ?"),
                (name.clone(),),
            )
        })?;
        let (created, file, pos) = match row {
            Some((file, pos)) => (false, file, pos),
            None if create => {
                let (file, pos) = (end_file.clone(), end_pos);
                let inserted = self.with_conn("creating the position", |conn| {
                    // dualwrite-lint: allow(DW002) the follower's own position table on the source, written outside the log (sql_log_bin = 0), not a store write
                    conn.exec_drop(
                        format!(
                            "INSERT IGNORE INTO {POSITIONS} (name, file, pos) VALUES (?, ?, ?)"
                        ),
                        (name.clone(), file.clone(), pos),
                    )
                    .map(|()| conn.affected_rows())
                })?;
                if inserted == 0 {
                    // Created meanwhile by another caller: theirs stands.
                    let row: Option<(String, u64)> =
                        self.with_conn("reading the position", |conn| {
                            conn.exec_first(
                                format!("SELECT file, pos FROM {POSITIONS} WHERE name = ?"),
                                (name.clone(),),
                            )
                        })?;
                    let (file, pos) =
                        row.ok_or_else(|| self.setup("the position vanished as it was created"))?;
                    (false, file, pos)
                } else {
                    (true, file, pos)
                }
            }
            None => {
                return Err(self.setup(format!(
                    "no position `{}` in {POSITIONS}: create it before the backfill (`MariadbSource::create_position`, or `creating_position()`); one created now misses the changes made before it",
                    self.name
                )));
            }
        };
        if file_number(&file).is_some() && !file.starts_with(&self.base) {
            return Err(self.setup(format!(
                "the position `{}` is in `{file}`, but this server's log is `{}.*` (another server's position?)",
                self.name, self.base
            )));
        }
        let logs: Vec<mysql::Row> = self.with_conn("listing the log's files", |conn| {
            conn.query("SHOW BINARY LOGS")
        })?;
        let kept = logs.iter().any(|row| {
            row.get_opt::<String, _>(0).and_then(Result::ok).as_deref() == Some(file.as_str())
        });
        if !kept {
            return Err(self.setup(format!(
                "the position `{}` is in `{file}`, which the server no longer has (purged): the changes after it are lost; backfill again from a new position",
                self.name
            )));
        }
        self.confirmed = self.position_of(&file, pos)?;
        self.received_to = self.confirmed;
        Ok(created)
    }

    fn server_id(&self) -> u32 {
        // The high half of the name's hash, with the top bit set.
        self.server_id
            .unwrap_or_else(|| (super::fnv1a(&self.name) >> 32) as u32 | 0x8000_0000)
    }

    /// Fails with [`CdcError::LockLost`] unless the control connection
    /// still holds the follower lock. A stream registers the position's server
    /// id, and a second stream with that id ends the first: a follower
    /// whose lock was taken over (its control connection ended) must not
    /// start one, or it would end its successor's.
    fn check_lead(&mut self) -> Result<(), CdcError> {
        let key = self.lock_name();
        let held: Option<Option<i64>> = self.with_conn("checking the follower lock", |conn| {
            conn.exec_first("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (key,))
        })?;
        if held.flatten() == Some(1) {
            return Ok(());
        }
        Err(self.lock_lost())
    }

    fn start_reader(&mut self) -> Result<(), CdcError> {
        if self.exclusive {
            self.check_lead()?;
        }
        let from = self.received_to;
        let mut conn =
            Conn::new(self.opts()?).map_err(|error| self.error("connecting the reader", error))?;
        let heartbeat = format!("SET @master_heartbeat_period = {}", HEARTBEAT.as_nanos());
        conn.query_drop(heartbeat)
            .map_err(|error| self.error("setting the heartbeat", error))?;
        let request = BinlogRequest::new(self.server_id())
            .with_filename(self.file_name(from).into_bytes())
            .with_pos(from.0 & 0xFFFF_FFFF);
        let stream = conn
            .get_binlog_stream(request)
            .map_err(|error| self.error("starting the binary log stream", error))?;
        let (sender, messages) = crossbeam_channel::bounded(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("dualwrite-binlog".to_owned())
            .spawn(move || {
                let run =
                    std::panic::AssertUnwindSafe(|| follow(stream, from, &sender, &thread_stop));
                if let Err(payload) = std::panic::catch_unwind(run) {
                    let message = crate::helpers::panic_message(payload.as_ref());
                    let _ = sender.send(Message::Failed(format!("the reader panicked: {message}")));
                }
            })
            .map_err(|error| self.error("starting the reader thread", error))?;
        self.reader = Some(Reader { messages, stop });
        Ok(())
    }

    /// Takes what the reader sent: waits up to [`FIRST_WAIT`] for the first
    /// message when nothing is pending, then takes what is queued, until
    /// `limit` changes are pending.
    fn receive(&mut self, limit: usize) -> Result<(), CdcError> {
        if self.reader.is_none() {
            self.start_reader()?;
        }
        let mut pending_changes: usize = self.pending.iter().map(|t| t.changes.len()).sum();
        let mut wait = self.pending.is_empty();
        let mut restarted = false;
        while pending_changes < limit {
            let Some(reader) = &self.reader else { break };
            let message = if wait {
                wait = false;
                match reader.messages.recv_timeout(FIRST_WAIT) {
                    Ok(message) => message,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        Message::Failed("the reader thread stopped".to_owned())
                    }
                }
            } else {
                match reader.messages.try_recv() {
                    Ok(message) => message,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        Message::Failed("the reader thread stopped".to_owned())
                    }
                }
            };
            match message {
                Message::Transaction(transaction) => {
                    self.received_to = self.received_to.max(transaction.end);
                    pending_changes += transaction.changes.len();
                    self.pending.push_back(transaction);
                }
                Message::Reached(position) => self.received_to = self.received_to.max(position),
                Message::Unreadable(error) => {
                    self.reader = None;
                    return Err(CdcError::Decode {
                        source: self.describe(),
                        text: format!("the binary log after {}", self.received_to),
                        error,
                    });
                }
                Message::Failed(error) => {
                    // Restarted from what was received whole (a transaction
                    // cut by the failure is read again): at once the first
                    // time (a connection the server ended), else at the
                    // follower's next read.
                    self.reader = None;
                    if restarted {
                        return Err(self.error("reading the binary log", error));
                    }
                    tracing::warn!(
                        source = self.describe(),
                        %error,
                        "change data capture: the binary log stream failed; reconnecting"
                    );
                    restarted = true;
                    self.start_reader()?;
                    wait = self.pending.is_empty();
                }
            }
        }
        Ok(())
    }
}

impl ChangeSource for MariadbSource {
    fn open(&mut self) -> Result<Position, CdcError> {
        self.exclusive = true;
        self.connect()?;
        match self
            .check_setup()
            .and_then(|()| self.ensure_position(self.create))
        {
            Ok(_) => {
                self.lock_wait = FOLLOWER_LOCK_WAIT;
                Ok(self.confirmed)
            }
            Err(error) => {
                // Not followed after all: the lock is released, for an
                // instance that can open it.
                self.conn = None;
                self.locked = false;
                self.exclusive = false;
                Err(error)
            }
        }
    }

    fn head(&mut self) -> Result<Position, CdcError> {
        let (file, pos) = self.log_end()?;
        self.position_of(&file, pos)
    }

    fn read(&mut self, limit: usize) -> Result<ChangeBatch, CdcError> {
        let limit = limit.max(1);
        self.receive(limit)?;
        let mut changes = Vec::new();
        let mut through = None;
        let mut taken = 0;
        for transaction in &self.pending {
            if !changes.is_empty() && changes.len() >= limit {
                break;
            }
            changes.extend(transaction.changes.iter().cloned());
            through = Some(transaction.end);
            taken += 1;
        }
        let through = if taken == self.pending.len() {
            self.received_to
        } else {
            through.unwrap_or(self.confirmed)
        };
        // The stream reads on without the control connection: before its
        // changes are journaled, the lock is checked (a follower that lost
        // it would journal beside its successor).
        if !changes.is_empty() {
            self.check_lead()?;
        }
        let more = taken < self.pending.len() || changes.len() >= limit;
        Ok(ChangeBatch {
            changes,
            through: through.max(self.confirmed),
            more,
        })
    }

    fn confirm(&mut self, through: Position) -> Result<(), CdcError> {
        if through > self.confirmed {
            self.save(through)?;
            self.confirmed = through;
        }
        while self
            .pending
            .front()
            .is_some_and(|transaction| transaction.end <= through)
        {
            self.pending.pop_front();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("mariadb binlog position `{}`", self.name)
    }

    fn observe(&mut self) -> Result<Observed, CdcError> {
        // Read without the follower lock (another follower holds it).
        let exclusive = std::mem::replace(&mut self.exclusive, false);
        let name = self.name.clone();
        let read = self.log_end().and_then(|end| {
            let row: Option<(String, u64)> = self.with_conn("reading the position", |conn| {
                conn.exec_first(
                    format!("SELECT file, pos FROM {POSITIONS} WHERE name = ?"),
                    (name,),
                )
            })?;
            Ok((end, row))
        });
        self.exclusive = exclusive;
        let ((end_file, end_pos), row) = read?;
        let Some((file, pos)) = row else {
            return Err(self.setup(format!(
                "no position `{}` in {POSITIONS} (dropped while the follower ran?)",
                self.name
            )));
        };
        Ok(Observed {
            head: self.position_of(&end_file, end_pos)?,
            confirmed: self.position_of(&file, pos)?,
        })
    }
}

impl MariadbSource {
    /// Writes `through` to the position's row.
    fn save(&mut self, through: Position) -> Result<(), CdcError> {
        let (name, file, pos) = (
            self.name.clone(),
            self.file_name(through),
            through.0 & 0xFFFF_FFFF,
        );
        let saved = self.with_conn("saving the position", |conn| {
            // dualwrite-lint: allow(DW002) the follower's own position table on the source, written outside the log (sql_log_bin = 0), not a store write
            conn.exec_drop(
                format!("UPDATE {POSITIONS} SET file = ?, pos = ? WHERE name = ?"),
                (file, pos, name),
            )
            .map(|()| conn.affected_rows())
        })?;
        if saved == 0 {
            // Unchanged (an earlier save whose answer was lost), or gone.
            let name = self.name.clone();
            let row: Option<u8> = self.with_conn("reading the position", |conn| {
                conn.exec_first(format!("SELECT 1 FROM {POSITIONS} WHERE name = ?"), (name,))
            })?;
            if row.is_none() {
                return Err(self.setup(format!(
                    "the position `{}` was dropped from {POSITIONS} while the follower ran",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

/// The number of a log file's name (`mariadb-bin.000042`: 42).
fn file_number(file: &str) -> Option<u32> {
    let (_, number) = file.rsplit_once('.')?;
    if number.is_empty() || !number.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    number.parse().ok()
}

/// The position `offset` in the log file numbered `file`.
fn at(file: u64, offset: u64) -> Position {
    Position(file << 32 | (offset & 0xFFFF_FFFF))
}

/// A transaction being read.
struct Open {
    start: Position,
    changes: Vec<RowChange>,
}

/// The reader thread: decodes the stream from `from` and sends whole
/// transactions until the stream fails, `stop` is set or nobody listens.
fn follow(mut stream: BinlogStream, from: Position, sender: &Sender<Message>, stop: &AtomicBool) {
    let mut file = from.0 >> 32;
    let mut open: Option<Open> = None;
    let mut reached = from;
    let send = |message: Message| sender.send(message).is_ok();
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let event = match stream.next() {
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                send(Message::Failed(error.to_string()));
                return;
            }
            None => {
                send(Message::Failed("the server ended the stream".to_owned()));
                return;
            }
        };
        let header = event.header();
        let end = u64::from(header.log_pos());
        let data = match event.read_data() {
            Ok(data) => data,
            Err(error) => {
                send(Message::Unreadable(format!(
                    "cannot decode an event at {}: {error}",
                    at(file, end)
                )));
                return;
            }
        };
        let outcome = match data {
            Some(EventData::RotateEvent(rotate)) => {
                if let Some(number) = file_number(&rotate.name()) {
                    file = u64::from(number);
                }
                if open.is_none() {
                    reached = reached.max(at(file, rotate.position()));
                    Step::Reached
                } else {
                    Step::None
                }
            }
            Some(EventData::QueryEvent(query)) => {
                let text = query.query();
                match statement(&text) {
                    Statement::Begin => {
                        if open.is_some() {
                            send(Message::Unreadable(format!(
                                "a transaction begins at {} inside another",
                                at(file, end)
                            )));
                            return;
                        }
                        let start = at(file, end.saturating_sub(u64::from(header.event_size())));
                        open = Some(Open {
                            start,
                            changes: Vec::new(),
                        });
                        Step::None
                    }
                    Statement::Xa => {
                        send(Message::Unreadable(format!(
                            "an XA transaction at {} ({}): XA transactions are not read; the follower stops here",
                            at(file, end),
                            text.chars().take(120).collect::<String>()
                        )));
                        return;
                    }
                    Statement::Commit => Step::Commit(0),
                    Statement::Rollback => {
                        open = None;
                        Step::Idle
                    }
                    Statement::Truncate(schema, table) => {
                        let schema = schema.unwrap_or_else(|| query.schema().into_owned());
                        let position = at(file, end.saturating_sub(u64::from(header.event_size())));
                        let change = RowChange {
                            position,
                            xid: 0,
                            index: 0,
                            schema,
                            table,
                            kind: ChangeKind::Truncate,
                            columns: Vec::new(),
                            old_key: Vec::new(),
                        };
                        match &mut open {
                            Some(transaction) => {
                                push(transaction, change);
                                Step::None
                            }
                            None => {
                                open = Some(Open {
                                    start: position,
                                    changes: vec![change],
                                });
                                Step::Commit(0)
                            }
                        }
                    }
                    Statement::Dml => {
                        // Its rows are not in the log: stop rather than
                        // let the stores drift without a record.
                        send(Message::Unreadable(format!(
                            "the change at {} is logged as a statement, not as rows ({}): every session must write with binlog_format = ROW; the follower cannot carry it and stops here",
                            at(file, end),
                            text.chars().take(120).collect::<String>()
                        )));
                        return;
                    }
                    Statement::Other => Step::Idle,
                }
            }
            Some(EventData::XidEvent(xid)) => Step::Commit(xid.xid),
            Some(EventData::TableMapEvent(_)) => {
                // Rows that follow a statement without a `BEGIN` (MySQL's
                // `CREATE TABLE .. SELECT`): a transaction from here on.
                if open.is_none() {
                    open = Some(Open {
                        start: at(file, end.saturating_sub(u64::from(header.event_size()))),
                        changes: Vec::new(),
                    });
                }
                Step::None
            }
            Some(EventData::RowsEvent(rows)) => {
                let Some(transaction) = &mut open else {
                    send(Message::Unreadable(format!(
                        "a row event at {} with no table map before it",
                        at(file, end)
                    )));
                    return;
                };
                let Some(table) = stream.get_tme(rows.table_id()) else {
                    send(Message::Unreadable(format!(
                        "a row event at {} names table id {} with no table map before it",
                        at(file, end),
                        rows.table_id()
                    )));
                    return;
                };
                if let Err(error) = decode_rows(&rows, table, transaction) {
                    send(Message::Unreadable(format!(
                        "cannot decode the row event at {} ({}.{}): {error}",
                        at(file, end),
                        table.database_name(),
                        table.table_name()
                    )));
                    return;
                }
                Step::None
            }
            Some(EventData::TransactionPayloadEvent(_)) => {
                send(Message::Unreadable(format!(
                    "a compressed transaction at {}: turn binlog_transaction_compression off on the server; the follower cannot read it and stops here",
                    at(file, end)
                )));
                return;
            }
            Some(_) => Step::Idle,
            None => {
                // An event type the decoder does not know could hold rows
                // (MariaDB's compressed row events): stop, never skip.
                send(Message::Unreadable(format!(
                    "an event of unknown type {} at {}: the follower cannot read it and stops here (is log_bin_compress on?)",
                    header.event_type_raw(),
                    at(file, end)
                )));
                return;
            }
        };
        let delivered = match outcome {
            Step::None => true,
            Step::Idle if open.is_none() && end > 0 && at(file, end) > reached => {
                reached = at(file, end);
                send(Message::Reached(reached))
            }
            Step::Idle => true,
            Step::Reached => send(Message::Reached(reached)),
            Step::Commit(xid) => match open.take() {
                Some(mut transaction) => {
                    for change in &mut transaction.changes {
                        change.xid = xid;
                    }
                    let end = at(file, end).max(transaction.start);
                    reached = reached.max(end);
                    send(Message::Transaction(Transaction {
                        changes: transaction.changes,
                        end,
                    }))
                }
                None => true,
            },
        };
        if !delivered {
            return;
        }
    }
}

enum Step {
    None,
    /// An event outside the transactions: the position moves past it.
    Idle,
    /// A rotation moved `reached`.
    Reached,
    Commit(u64),
}

#[derive(Debug, PartialEq, Eq)]
enum Statement {
    Begin,
    Commit,
    Rollback,
    /// `TRUNCATE [TABLE] [schema.]table`.
    Truncate(Option<String>, String),
    /// A row change logged as a statement (a session with
    /// `binlog_format = STATEMENT`): its rows are not in the log.
    Dml,
    /// `XA START ..` and the rest of an XA transaction.
    Xa,
    Other,
}

fn statement(text: &str) -> Statement {
    let text = strip_comments(text);
    let is = |word: &str| text.eq_ignore_ascii_case(word);
    // MySQL logs `CREATE TABLE .. SELECT` as `CREATE .. START TRANSACTION`.
    let ends_with_begin = text.len() > 17
        && text
            .get(text.len() - 17..)
            .is_some_and(|end| end.eq_ignore_ascii_case("START TRANSACTION"));
    if is("BEGIN") || is("START TRANSACTION") || ends_with_begin {
        return Statement::Begin;
    }
    if is("COMMIT") {
        return Statement::Commit;
    }
    if is("ROLLBACK") {
        return Statement::Rollback;
    }
    let (first, rest) = split_word(text);
    if first.eq_ignore_ascii_case("XA") {
        return Statement::Xa;
    }
    if ["INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD"]
        .iter()
        .any(|verb| first.eq_ignore_ascii_case(verb))
    {
        return Statement::Dml;
    }
    if !first.eq_ignore_ascii_case("TRUNCATE") {
        return Statement::Other;
    }
    let (word, after) = split_word(rest);
    let name = if word.eq_ignore_ascii_case("TABLE") {
        after
    } else {
        rest
    };
    let parts = split_name(name);
    match parts.as_slice() {
        [table] if !table.is_empty() => Statement::Truncate(None, table.clone()),
        [schema, table] if !table.is_empty() => {
            Statement::Truncate(Some(schema.clone()), table.clone())
        }
        _ => Statement::Other,
    }
}

/// `text` without leading blanks and `/* .. */` comments, and trailing
/// blanks and `;`.
fn strip_comments(text: &str) -> &str {
    let mut text = text.trim();
    while let Some(rest) = text.strip_prefix("/*") {
        match rest.find("*/") {
            Some(end) => text = rest[end + 2..].trim_start(),
            None => break,
        }
    }
    text.trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

/// The first word of `text` and what follows it (trimmed).
fn split_word(text: &str) -> (&str, &str) {
    match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], text[at..].trim_start()),
        None => (text, ""),
    }
}

/// `db`.`t`, db.t, `a.b`, `my t` as identifiers (backquotes doubled
/// inside), up to the first blank outside backquotes.
fn split_name(name: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = name.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '`' if quoted && chars.peek() == Some(&'`') => {
                chars.next();
                current.push('`');
            }
            '`' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c if c.is_whitespace() && !quoted => break,
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

fn push(transaction: &mut Open, mut change: RowChange) {
    change.position = transaction.start;
    change.index = u32::try_from(transaction.changes.len()).unwrap_or(u32::MAX);
    transaction.changes.push(change);
}

/// The ENUM and SET labels of a table map, per column (empty for others).
fn labels(table: &TableMapEvent<'_>) -> Result<Vec<Vec<String>>, String> {
    let count = usize::try_from(table.columns_count()).unwrap_or(0);
    let mut enums = Vec::new();
    let mut sets = Vec::new();
    for field in table.iter_optional_meta() {
        match field.map_err(|error| error.to_string())? {
            OptionalMetadataField::EnumStrValue(values) => {
                for column in values.iter_values() {
                    let column = column.map_err(|error| error.to_string())?;
                    enums.push(
                        column
                            .values()
                            .iter()
                            .map(|value| value.value().into_owned())
                            .collect(),
                    );
                }
            }
            OptionalMetadataField::SetStrValue(values) => {
                for column in values.iter_values() {
                    let column = column.map_err(|error| error.to_string())?;
                    sets.push(
                        column
                            .values()
                            .iter()
                            .map(|value| value.value().into_owned())
                            .collect(),
                    );
                }
            }
            _ => {}
        }
    }
    let (mut enums, mut sets) = (enums.into_iter(), sets.into_iter());
    let mut labels = Vec::with_capacity(count);
    for index in 0..count {
        let kind = table.get_column_type(index).ok().flatten();
        labels.push(match kind {
            Some(ColumnType::MYSQL_TYPE_ENUM) => enums.next().unwrap_or_default(),
            Some(ColumnType::MYSQL_TYPE_SET) => sets.next().unwrap_or_default(),
            _ => Vec::new(),
        });
    }
    Ok(labels)
}

fn decode_rows(
    rows: &RowsEventData<'_>,
    table: &TableMapEvent<'static>,
    transaction: &mut Open,
) -> Result<(), String> {
    let kind = match rows {
        RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => ChangeKind::Insert,
        RowsEventData::UpdateRowsEventV1(_)
        | RowsEventData::UpdateRowsEvent(_)
        | RowsEventData::PartialUpdateRowsEvent(_) => ChangeKind::Update,
        RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => {
            ChangeKind::Delete
        }
    };
    let labels = labels(table)?;
    let width = usize::try_from(table.columns_count()).unwrap_or(usize::MAX);
    let schema = table.database_name().into_owned();
    let name = table.table_name().into_owned();
    for row in rows.rows(table) {
        let (before, after) = row.map_err(|error| error.to_string())?;
        for image in [&before, &after].into_iter().flatten() {
            if image.len() != width {
                return Err(format!(
                    "a row image with {} of the table's {width} columns: the writing session's binlog_row_image is not FULL",
                    image.len()
                ));
            }
        }
        let (columns, old_key) = match kind {
            ChangeKind::Insert => (columns(after.as_ref(), &labels)?, Vec::new()),
            ChangeKind::Delete => (columns(before.as_ref(), &labels)?, Vec::new()),
            _ => {
                let new = columns(after.as_ref(), &labels)?;
                let old = columns(before.as_ref(), &labels)?;
                let keys = key_names(before.as_ref());
                let old_key: Vec<Column> = old
                    .into_iter()
                    .filter(|column| keys.contains(&column.name))
                    .collect();
                let changed = old_key.iter().any(|old| {
                    new.iter()
                        .find(|column| column.name == old.name)
                        .is_none_or(|column| column.value != old.value)
                });
                (new, if changed { old_key } else { Vec::new() })
            }
        };
        push(
            transaction,
            RowChange {
                position: transaction.start,
                xid: 0,
                index: 0,
                schema: schema.clone(),
                table: name.clone(),
                kind,
                columns,
                old_key,
            },
        );
    }
    Ok(())
}

fn key_names(row: Option<&BinlogRow>) -> Vec<String> {
    row.map(|row| {
        row.columns_ref()
            .iter()
            .filter(|column| column.flags().contains(ColumnFlags::PRI_KEY_FLAG))
            .map(|column| column.name_str().into_owned())
            .collect()
    })
    .unwrap_or_default()
}

fn columns(row: Option<&BinlogRow>, labels: &[Vec<String>]) -> Result<Vec<Column>, String> {
    let Some(row) = row else {
        return Err("the row image is missing (is binlog_row_image FULL?)".to_owned());
    };
    let mut columns = Vec::with_capacity(row.len());
    for (index, column) in row.columns_ref().iter().enumerate() {
        let name = column.name_str().into_owned();
        let kind = column.column_type();
        let binary = column.character_set() == 63;
        let unsigned = column.flags().contains(ColumnFlags::UNSIGNED_FLAG);
        let labels = table_labels(labels, row, index);
        let value = match row.as_ref(index) {
            None => Value::Null,
            Some(value) => render(value, kind, binary, labels)
                .map_err(|error| format!("column {name}: {error}"))?,
        };
        columns.push(Column {
            type_name: type_name(kind, binary, unsigned),
            name,
            value,
        });
    }
    Ok(columns)
}

/// The labels of the row's `index`-th column: the table map numbers every
/// column, a row image only those it holds (all of them with `FULL`).
fn table_labels<'a>(labels: &'a [Vec<String>], row: &BinlogRow, index: usize) -> &'a [String] {
    if row.len() == labels.len() {
        labels.get(index).map_or(&[], Vec::as_slice)
    } else {
        &[]
    }
}

fn type_name(kind: ColumnType, binary: bool, unsigned: bool) -> String {
    use ColumnType::*;
    let name = match kind {
        MYSQL_TYPE_TINY => "tinyint",
        MYSQL_TYPE_SHORT => "smallint",
        MYSQL_TYPE_INT24 => "mediumint",
        MYSQL_TYPE_LONG => "int",
        MYSQL_TYPE_LONGLONG => "bigint",
        MYSQL_TYPE_FLOAT => "float",
        MYSQL_TYPE_DOUBLE => "double",
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => "decimal",
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING if binary => "varbinary",
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => "varchar",
        MYSQL_TYPE_STRING if binary => "binary",
        MYSQL_TYPE_STRING => "char",
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB
            if binary =>
        {
            "blob"
        }
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            "text"
        }
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => "date",
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => "datetime",
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => "timestamp",
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => "time",
        MYSQL_TYPE_YEAR => "year",
        MYSQL_TYPE_BIT => "bit",
        MYSQL_TYPE_JSON => "json",
        MYSQL_TYPE_ENUM => "enum",
        MYSQL_TYPE_SET => "set",
        MYSQL_TYPE_GEOMETRY => "geometry",
        other => {
            return format!("{other:?}")
                .trim_start_matches("MYSQL_TYPE_")
                .to_lowercase();
        }
    };
    if unsigned {
        format!("{name} unsigned")
    } else {
        name.to_owned()
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 + bytes.len() * 2);
    text.push_str("\\x");
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn fraction(text: &mut String, micros: u32) {
    if micros != 0 {
        let digits = format!("{micros:06}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
}

fn render(
    value: &BinlogValue<'_>,
    kind: ColumnType,
    binary: bool,
    labels: &[String],
) -> Result<Value, String> {
    use mysql::Value as My;
    let value: Cow<'_, My> = match value {
        BinlogValue::Value(value) => Cow::Borrowed(value),
        BinlogValue::Jsonb(_) => Cow::Owned(
            My::try_from(value.clone()).map_err(|error| format!("a JSON value: {error}"))?,
        ),
        BinlogValue::JsonDiff(_) => {
            return Err(
                "a partial JSON update (set binlog_row_value_options to '' on the server)"
                    .to_owned(),
            );
        }
    };
    if matches!(
        kind,
        ColumnType::MYSQL_TYPE_TIMESTAMP | ColumnType::MYSQL_TYPE_TIMESTAMP2
    ) && !matches!(value.as_ref(), My::NULL | My::Date(..))
    {
        // The log holds seconds since the epoch (with a fraction).
        return timestamp(value.as_ref()).map(Value::Text);
    }
    let text = match value.as_ref() {
        My::NULL => return Ok(Value::Null),
        My::Int(number) => match kind {
            ColumnType::MYSQL_TYPE_ENUM => label(labels, *number)?,
            // The decoder reads the zero year as 1900, which YEAR cannot hold.
            ColumnType::MYSQL_TYPE_YEAR if *number == 1900 => "0000".to_owned(),
            ColumnType::MYSQL_TYPE_SET => set_labels(labels, *number as u64)?,
            _ => number.to_string(),
        },
        My::UInt(number) => match kind {
            ColumnType::MYSQL_TYPE_SET => set_labels(labels, *number)?,
            _ => number.to_string(),
        },
        My::Float(number) => number.to_string(),
        My::Double(number) => number.to_string(),
        My::Bytes(bytes) if kind == ColumnType::MYSQL_TYPE_SET && bytes.len() <= 8 => {
            // The bit mask, little-endian.
            let bits = bytes
                .iter()
                .rev()
                .fold(0_u64, |bits, &byte| bits << 8 | u64::from(byte));
            set_labels(labels, bits)?
        }
        My::Bytes(bytes) => {
            let is_text = !binary || matches!(kind, ColumnType::MYSQL_TYPE_NEWDECIMAL);
            match std::str::from_utf8(bytes) {
                Ok(text) if is_text && kind != ColumnType::MYSQL_TYPE_BIT => text.to_owned(),
                _ => hex(bytes),
            }
        }
        My::Date(year, month, day, hour, minute, second, micros) => {
            let mut text = format!("{year:04}-{month:02}-{day:02}");
            if !matches!(
                kind,
                ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE
            ) {
                let _ = write!(text, " {hour:02}:{minute:02}:{second:02}");
                fraction(&mut text, *micros);
            }
            text
        }
        My::Time(negative, days, hours, minutes, seconds, micros) => {
            let hours = u64::from(*days) * 24 + u64::from(*hours);
            let mut text = format!(
                "{}{hours:02}:{minutes:02}:{seconds:02}",
                if *negative { "-" } else { "" }
            );
            fraction(&mut text, *micros);
            text
        }
    };
    Ok(Value::Text(text))
}

/// A `TIMESTAMP` from the log (`1767322245`, `1767322245.678000`) as UTC
/// text (`2026-01-02 03:04:05.678`); 0 is MariaDB's zero timestamp.
fn timestamp(value: &mysql::Value) -> Result<String, String> {
    let (seconds, micros) = match value {
        mysql::Value::Int(seconds) => (*seconds, 0),
        mysql::Value::UInt(seconds) => (
            i64::try_from(*seconds).map_err(|_| format!("timestamp {seconds} out of range"))?,
            0,
        ),
        mysql::Value::Bytes(bytes) => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| "a timestamp that is not text".to_owned())?;
            let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
            let seconds: i64 = whole
                .parse()
                .map_err(|_| format!("timestamp {text:?} is not a number of seconds"))?;
            let digits: String = fraction.chars().chain("000000".chars()).take(6).collect();
            let micros: u32 = digits
                .parse()
                .map_err(|_| format!("timestamp {text:?} has a bad fraction"))?;
            (seconds, micros)
        }
        other => return Err(format!("a timestamp as {other:?}")),
    };
    if seconds == 0 && micros == 0 {
        return Ok("0000-00-00 00:00:00".to_owned());
    }
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    );
    fraction(&mut text, micros);
    Ok(text)
}

fn label(labels: &[String], index: i64) -> Result<String, String> {
    if index == 0 {
        // The empty string MariaDB stores for an invalid ENUM value.
        return Ok(String::new());
    }
    usize::try_from(index - 1)
        .ok()
        .and_then(|index| labels.get(index))
        .cloned()
        .ok_or_else(|| format!("ENUM index {index} has no label in the log's metadata"))
}

fn set_labels(labels: &[String], bits: u64) -> Result<String, String> {
    let mut names = Vec::new();
    for bit in 0..64 {
        if bits & (1 << bit) != 0 {
            names.push(
                labels
                    .get(bit)
                    .map(String::as_str)
                    .ok_or_else(|| format!("SET bit {bit} has no label in the log's metadata"))?,
            );
        }
    }
    Ok(names.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_recognised() {
        assert_eq!(statement("BEGIN"), Statement::Begin);
        assert_eq!(statement(" commit "), Statement::Commit);
        assert_eq!(statement("ROLLBACK"), Statement::Rollback);
        assert_eq!(
            statement("TRUNCATE TABLE users"),
            Statement::Truncate(None, "users".to_owned())
        );
        assert_eq!(
            statement("truncate `shop`.`order``s`"),
            Statement::Truncate(Some("shop".to_owned()), "order`s".to_owned())
        );
        assert_eq!(
            statement("# Dummy event replacing event type 160"),
            Statement::Other
        );
        assert_eq!(statement("CREATE TABLE t (id INT)"), Statement::Other);
        assert_eq!(statement("insert into t values (1)"), Statement::Dml);
        assert_eq!(
            statement("/* app */ TRUNCATE TABLE `my t`;"),
            Statement::Truncate(None, "my t".to_owned())
        );
        assert_eq!(
            statement("CREATE TABLE t2 START TRANSACTION"),
            Statement::Begin
        );
        assert_eq!(statement("XA START 'x'"), Statement::Xa);
        assert_eq!(statement("COMMIT;"), Statement::Commit);
        assert_eq!(statement("UPDATE t SET a = 1"), Statement::Dml);
    }

    #[test]
    fn file_numbers_and_labels() {
        assert_eq!(file_number("mariadb-bin.000042"), Some(42));
        assert_eq!(file_number("a.b.1234567"), Some(1_234_567));
        assert_eq!(file_number("mariadb-bin"), None);
        assert_eq!(file_number("x.00a1"), None);
        let labels = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(label(&labels, 2).as_deref(), Ok("b"));
        assert_eq!(label(&labels, 0).as_deref(), Ok(""));
        assert!(label(&labels, 4).is_err());
        assert_eq!(set_labels(&labels, 0b101).as_deref(), Ok("a,c"));
        assert!(set_labels(&labels, 0b1000).is_err());
        assert_eq!(hex(&[0, 255]), "\\x00ff");
        let at = |text: &str| timestamp(&mysql::Value::Bytes(text.as_bytes().to_vec()));
        assert_eq!(
            at("1767323045.678000").as_deref(),
            Ok("2026-01-02 03:04:05.678")
        );
        assert_eq!(at("951782400").as_deref(), Ok("2000-02-29 00:00:00"));
        assert_eq!(at("0").as_deref(), Ok("0000-00-00 00:00:00"));
        assert_eq!(
            timestamp(&mysql::Value::Int(4_102_444_799)).as_deref(),
            Ok("2099-12-31 23:59:59")
        );
        assert!(at("soon").is_err());
    }
}

//! Change data capture from MariaDB through a generated adapter: the
//! adapter writes a MariaDB table only, the follower reads the server's
//! binary log (row format, through the replication protocol) into a SQLite
//! outbox journal, and the appliers apply it to a SQLite secondary. Per-key
//! order, a phase change that catches the follower up, a restart that
//! replays nothing, the server ending the reader's connection mid-stream,
//! kill -9 of a child process mid-stream, the decoding of every common
//! column type, and the errors of a missing position.
//!
//! Needs `DUALWRITE_MARIADB_URL` and a server with the binary log on
//! (`.ci/run` starts it with `--log-bin --binlog-format=ROW
//! --binlog-row-metadata=FULL`); each test says it skipped otherwise.

mod cdc_support;
mod outbox_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use cdc_support::{CdcServer, WAIT, on_runtime, outbox_config, unique};
use dualwrite_runtime::cdc::mariadb::MariadbSource;
use dualwrite_runtime::cdc::{Cdc, CdcError, ChangeKind, ChangeSource, RowChange, Value};
use dualwrite_runtime::outbox::Durability;
use dualwrite_runtime::outbox::sqlite::SqliteJournal;
use dualwrite_runtime::{Migration, Phase};
use outbox_support::{DbError, Ledger, LedgerDualWrite, SqlStore, temp_dir};
use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection};

/// Set in the child of the kill test: `<directory> <url> <table> <position>`.
const CHILD: &str = "DUALWRITE_CDC_MARIADB_CHILD";

/// The server's URL if it can run these tests: set, and its binary log is
/// on in row format; otherwise a `skipped:` line.
fn binlog_server(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("DUALWRITE_MARIADB_URL") else {
        eprintln!(
            "skipped: {test}: set DUALWRITE_MARIADB_URL to run against a MariaDB server with the binary log on"
        );
        return None;
    };
    let (log_bin, format) = query(&url, |conn| {
        Box::pin(async move {
            let row: (i64, String) =
                sqlx::query_as("SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format")
                    .fetch_one(conn)
                    .await
                    .expect("settings");
            row
        })
    });
    if log_bin != 1 || format != "ROW" {
        eprintln!(
            "skipped: {test}: the server's binary log is {} in {format} format (`.ci/run` starts it on, in ROW format)",
            if log_bin == 1 { "on" } else { "off" }
        );
        return None;
    }
    Some(url)
}

/// Runs `work` on a new connection to `url`.
fn query<T: Send + 'static>(
    url: &str,
    work: impl for<'c> FnOnce(
        &'c mut MySqlConnection,
    ) -> std::pin::Pin<Box<dyn Future<Output = T> + Send + 'c>>
    + Send
    + 'static,
) -> T {
    let url = url.to_owned();
    on_runtime(async move {
        let mut conn = MySqlConnection::connect(&url).await.expect("connect");
        work(&mut conn).await
    })
}

fn execute(url: &str, sql: String) {
    query(url, move |conn| {
        Box::pin(async move {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .execute(conn)
                .await
                .unwrap_or_else(|error| panic!("{sql}: {error}"));
        })
    });
}

/// A table and a position for one test; both dropped at the end.
struct Fixture {
    url: String,
    table: String,
    position: String,
    dir: PathBuf,
}

impl Fixture {
    fn new(url: String, test: &str) -> Self {
        let name = unique(test);
        let fixture = Fixture {
            url,
            table: name.clone(),
            position: name,
            dir: temp_dir(&format!("cdc-mariadb-{test}")),
        };
        execute(
            &fixture.url,
            format!(
                "CREATE TABLE {} (id BIGINT PRIMARY KEY, value BIGINT) ENGINE = InnoDB",
                fixture.table
            ),
        );
        // The position before any write: every change from now on.
        assert!(
            MariadbSource::create_position(&fixture.url, &fixture.position)
                .expect("create the position")
        );
        fixture
    }

    /// The child's fixture: `<directory> <url> <table> <position>`.
    fn from_spec(spec: &str) -> Self {
        let mut parts = spec.split(' ');
        let (Some(dir), Some(url), Some(table), Some(position)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("`<dir> <url> <table> <position>`");
        };
        Fixture {
            url: url.to_owned(),
            table: table.to_owned(),
            position: position.to_owned(),
            dir: PathBuf::from(dir),
        }
    }
}

impl Fixture {
    /// What the child of a kill test is given (see `Fixture::from_spec`).
    fn child_spec(&self) -> String {
        format!(
            "{} {} {} {}",
            self.dir.display(),
            self.url,
            self.table,
            self.position
        )
    }
}

impl CdcServer for Fixture {
    type Primary = MyLedger;
    type Source = MariadbSource;

    fn primary(&self) -> MyLedger {
        MyLedger::connect(&self.url, &self.table)
    }

    fn source(&self) -> MariadbSource {
        MariadbSource::new(&self.url, &self.position)
    }

    fn table(&self) -> &str {
        &self.table
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every binary log stream of the server (other tests' followers
    /// recover the same way; the follower locks are on other connections).
    fn kill_reader_connections(&self) -> usize {
        kill_dump_threads(&self.url)
    }

    /// The follower's control connection, by the lock it holds.
    fn kill_lock_holder(&self) -> usize {
        let lock = format!("dualwrite_cdc:{}", self.position);
        query(&self.url, move |conn| {
            Box::pin(async move {
                let (id,): (Option<i64>,) = sqlx::query_as("SELECT IS_USED_LOCK(?)")
                    .bind(lock)
                    .fetch_one(&mut *conn)
                    .await
                    .expect("IS_USED_LOCK");
                let Some(id) = id else { return 0 };
                sqlx::query(AssertSqlSafe(format!("KILL {id}")))
                    .execute(&mut *conn)
                    .await
                    .expect("KILL");
                1
            })
        })
    }

    fn primary_rows(&self) -> BTreeMap<i64, Option<i64>> {
        let sql = format!("SELECT id, value FROM {}", self.table);
        query(&self.url, move |conn| {
            Box::pin(async move {
                let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(AssertSqlSafe(sql))
                    .fetch_all(conn)
                    .await
                    .expect("select");
                rows.into_iter().collect()
            })
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = MariadbSource::drop_position(&self.url, &self.position);
        let (url, table) = (self.url.clone(), self.table.clone());
        on_runtime(async move {
            if let Ok(mut conn) = MySqlConnection::connect(&url).await {
                let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                    .execute(&mut conn)
                    .await;
            }
        });
    }
}

/// The primary: a MariaDB table written through sqlx.
pub struct MyLedger {
    table: String,
    runtime: tokio::runtime::Runtime,
    conn: Mutex<MySqlConnection>,
}

impl MyLedger {
    fn connect(url: &str, table: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let conn = runtime
            .block_on(MySqlConnection::connect(url))
            .expect("connect");
        MyLedger {
            table: table.to_owned(),
            runtime,
            conn: Mutex::new(conn),
        }
    }

    fn execute(&self, sql: String, id: i64, value: i64) -> Result<(), DbError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        self.runtime
            .block_on(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .bind(value)
                    .execute(&mut *conn),
            )
            .map(drop)
            .map_err(|error| DbError(error.to_string()))
    }
}

impl Ledger for MyLedger {
    fn put(&self, id: i64, value: i64) -> Result<(), DbError> {
        self.execute(
            format!(
                "INSERT INTO {} (id, value) VALUES (?, ?) ON DUPLICATE KEY UPDATE value = VALUES(value)",
                self.table
            ),
            id,
            value,
        )
    }

    fn add(&self, id: i64, by: i64) -> Result<(), DbError> {
        self.execute(
            format!(
                "INSERT INTO {} (id, value) VALUES (?, ?) ON DUPLICATE KEY UPDATE value = value + VALUES(value)",
                self.table
            ),
            id,
            by,
        )
    }

    fn get(&self, id: i64) -> Result<Option<i64>, DbError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let row: Option<(Option<i64>,)> = self
            .runtime
            .block_on(
                sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT value FROM {} WHERE id = ?",
                    self.table
                )))
                .bind(id)
                .fetch_optional(&mut *conn),
            )
            .map_err(|error| DbError(error.to_string()))?;
        Ok(row.and_then(|(value,)| value))
    }
}

/// Ends every binary log connection of the server (`KILL` of the dump
/// threads), as a server restart or a network fault would.
fn kill_dump_threads(url: &str) -> usize {
    query(url, |conn| {
        Box::pin(async move {
            let ids: Vec<(i64,)> = sqlx::query_as(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Binlog Dump'",
            )
            .fetch_all(&mut *conn)
            .await
            .expect("processlist");
            for (id,) in &ids {
                let _ = sqlx::query(AssertSqlSafe(format!("KILL {id}")))
                    .execute(&mut *conn)
                    .await;
            }
            ids.len()
        })
    })
}

/// Reads `source` until it returned `count` changes of `table` (or the
/// deadline); other tests' changes are in the same log.
fn read_changes(source: &mut MariadbSource, table: &str, count: usize) -> Vec<RowChange> {
    let deadline = Instant::now() + WAIT;
    let mut changes = Vec::new();
    while changes.len() < count {
        assert!(
            Instant::now() < deadline,
            "{} of {count} changes read: {changes:#?}",
            changes.len()
        );
        let batch = source.read(10_000).expect("read");
        changes.extend(batch.changes.into_iter().filter(|c| c.table == table));
        source.confirm(batch.through).expect("confirm");
    }
    changes
}

#[test]
fn changes_reach_the_sqlite_secondary_in_key_order() {
    if let Some(url) = binlog_server("changes_reach_the_sqlite_secondary_in_key_order") {
        cdc_support::changes_reach_the_sqlite_secondary_in_key_order(&Fixture::new(url, "order"));
    }
}

#[test]
fn a_phase_change_catches_the_follower_up() {
    if let Some(url) = binlog_server("a_phase_change_catches_the_follower_up") {
        cdc_support::a_phase_change_catches_the_follower_up(&Fixture::new(url, "fence"));
    }
}

#[test]
fn a_restart_reads_nothing_twice() {
    if let Some(url) = binlog_server("a_restart_reads_nothing_twice") {
        cdc_support::a_restart_reads_nothing_twice(&Fixture::new(url, "restart"));
    }
}

#[test]
fn a_killed_reader_connection_resumes_without_loss() {
    if let Some(url) = binlog_server("a_killed_reader_connection_resumes_without_loss") {
        cdc_support::a_killed_reader_connection_resumes_without_loss(&Fixture::new(
            url, "killconn",
        ));
    }
}

/// Every common column type decodes to MariaDB's text form, with the column
/// names and the key from the log's metadata; an update of the key carries
/// the old key; a delete the old row; `TRUNCATE` is a change of its own;
/// the confirmed position is kept in the positions table across sources.
#[test]
fn row_changes_carry_names_types_and_values() {
    let Some(url) = binlog_server("row_changes_carry_names_types_and_values") else {
        return;
    };
    let fixture = Fixture::new(url, "types");
    let table = format!("{}_t", fixture.table);
    execute(
        &fixture.url,
        format!(
            "CREATE TABLE {table} (
                id BIGINT UNSIGNED PRIMARY KEY, small TINYINT, name VARCHAR(20),
                bin VARBINARY(4), amount DECIMAL(10,2), at DATETIME(3), day DATE,
                took TIME, ratio DOUBLE, doc JSON, kind ENUM('a','b','c'),
                tags SET('x','y','z'), note TEXT, big BIGINT UNSIGNED,
                stamp TIMESTAMP(3) NULL, yr YEAR
            ) ENGINE = InnoDB"
        ),
    );
    let mut source = fixture.source();
    source.open().expect("open");
    execute(
        &fixture.url,
        format!(
            "INSERT INTO {table} VALUES (1, -3, 'Ada ✓', 0x00ff, 12.50,
                '2026-01-02 03:04:05.678', '2026-01-02', '-26:00:01', 1.5,
                '{{\"a\": 1}}', 'b', 'x,z', NULL, 18446744073709551615,
                FROM_UNIXTIME(1767323045.678), 2026)"
        ),
    );
    execute(
        &fixture.url,
        format!("UPDATE {table} SET id = 2, name = 'Bob' WHERE id = 1"),
    );
    execute(
        &fixture.url,
        format!("UPDATE {table} SET small = 4 WHERE id = 2"),
    );
    execute(&fixture.url, format!("DELETE FROM {table} WHERE id = 2"));
    execute(&fixture.url, format!("TRUNCATE TABLE {table}"));
    let changes = read_changes(&mut source, &table, 5);
    execute(&fixture.url, format!("DROP TABLE {table}"));
    assert_eq!(changes.len(), 5, "{changes:#?}");
    let kinds: Vec<ChangeKind> = changes.iter().map(|change| change.kind).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::Insert,
            ChangeKind::Update,
            ChangeKind::Update,
            ChangeKind::Delete,
            ChangeKind::Truncate
        ]
    );
    let insert = &changes[0];
    assert!(insert.is_table("test", &table), "{insert}");
    let text = |name: &str| insert.text(name).map(str::to_owned);
    assert_eq!(insert.parse::<u64>("id"), Ok(1));
    assert_eq!(insert.parse::<i64>("small"), Ok(-3));
    assert_eq!(text("name").as_deref(), Some("Ada ✓"));
    assert_eq!(text("bin").as_deref(), Some("\\x00ff"));
    assert_eq!(text("amount").as_deref(), Some("12.50"));
    assert_eq!(text("at").as_deref(), Some("2026-01-02 03:04:05.678"));
    assert_eq!(text("day").as_deref(), Some("2026-01-02"));
    assert_eq!(text("took").as_deref(), Some("-26:00:01"));
    assert_eq!(insert.parse::<f64>("ratio"), Ok(1.5));
    assert_eq!(text("doc").as_deref(), Some("{\"a\": 1}"));
    assert_eq!(text("kind").as_deref(), Some("b"));
    assert_eq!(text("tags").as_deref(), Some("x,z"));
    assert_eq!(insert.value("note"), Some(&Value::Null));
    assert_eq!(insert.parse::<u64>("big"), Ok(u64::MAX));
    // TIMESTAMP in UTC, whatever the session's time zone was.
    assert_eq!(text("stamp").as_deref(), Some("2026-01-02 03:04:05.678"));
    assert_eq!(text("yr").as_deref(), Some("2026"));
    let types: BTreeMap<&str, &str> = insert
        .columns
        .iter()
        .map(|column| (column.name.as_str(), column.type_name.as_str()))
        .collect();
    assert_eq!(types["id"], "bigint unsigned");
    assert_eq!(types["bin"], "varbinary");
    assert_eq!(types["kind"], "enum");
    // The key changed: the old key rides along; then an update that keeps
    // the key carries none.
    let moved = &changes[1];
    assert_eq!(moved.parse::<u64>("id"), Ok(2));
    assert_eq!(moved.old_key.len(), 1, "{moved}");
    assert_eq!(moved.old_key[0].name, "id");
    assert_eq!(moved.old_key[0].value, Value::Text("1".to_owned()));
    assert!(changes[2].old_key.is_empty(), "{}", changes[2]);
    assert_eq!(changes[3].parse::<i64>("small"), Ok(4));
    assert!(changes[4].columns.is_empty());
    assert_eq!(changes[4].table, table);
    // Ids are distinct, and the next source starts after what was confirmed.
    let ids: std::collections::HashSet<_> = changes.iter().map(|c| c.idempotency_id("s")).collect();
    assert_eq!(ids.len(), changes.len());
    let confirmed = changes.last().expect("changes").position;
    drop(source);
    let mut again = fixture.source();
    assert!(again.open().expect("reopen") > confirmed);
    execute(
        &fixture.url,
        format!("INSERT INTO {} (id, value) VALUES (1, 1)", fixture.table),
    );
    let next = read_changes(&mut again, &fixture.table, 1);
    assert_eq!(next.len(), 1, "{next:#?}");
    assert_eq!(next[0].table, fixture.table);
}

#[test]
fn a_missing_position_is_a_clear_error() {
    let Some(url) = binlog_server("a_missing_position_is_a_clear_error") else {
        return;
    };
    let dir = temp_dir("cdc-mariadb-missing");
    let name = unique("missing");
    let journal = Arc::new(
        SqliteJournal::open(dir.join("journal.db"), Durability::PerWrite).expect("journal"),
    );
    let result = LedgerDualWrite::new(
        SqlStore::open(&dir.join("old.db")),
        SqlStore::open(&dir.join("new.db")),
        Migration::new(Phase::DualWrite),
    )
    .with_cdc(
        journal,
        Cdc::new(MariadbSource::new(&url, &name), |_: &RowChange| None),
        outbox_config(),
    );
    let error = result.err().expect("a missing position fails");
    assert!(matches!(error, CdcError::Setup { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&name) && message.contains("create it before the backfill"),
        "{message}"
    );
    // A source that failed to open does not keep the follower lock: a
    // second one gets the same error, not `Busy`.
    let mut failed = MariadbSource::new(&url, &name);
    assert!(matches!(failed.open(), Err(CdcError::Setup { .. })));
    let again = MariadbSource::new(&url, &name).open();
    assert!(matches!(again, Err(CdcError::Setup { .. })), "{again:?}");
    drop(failed);
    // `creating_position()` creates it; dropping it twice says so.
    let mut source = MariadbSource::new(&url, &name).creating_position();
    source.open().expect("created at the log's end");
    drop(source);
    assert!(MariadbSource::drop_position(&url, &name).expect("drop"));
    assert!(!MariadbSource::drop_position(&url, &name).expect("drop again"));
    // A URL that is not one, and one without a database.
    let error = MariadbSource::create_position("not a url", &name).expect_err("bad URL");
    assert!(error.to_string().contains("reading the URL"), "{error}");
    let server = url
        .rsplit_once('/')
        .map_or(url.as_str(), |(server, _)| server);
    let error = MariadbSource::create_position(server, &name).expect_err("no database");
    assert!(error.to_string().contains("names no database"), "{error}");
    // A position in a file the server no longer has (purged): the changes
    // after it are gone, which open says rather than reading from elsewhere.
    assert!(MariadbSource::create_position(&url, &name).expect("create"));
    let (file,): (String,) = query(&url, |conn| {
        Box::pin(async move {
            sqlx::query_as("SELECT file FROM dualwrite_cdc_positions LIMIT 1")
                .fetch_one(conn)
                .await
                .expect("a position")
        })
    });
    let base = file
        .rsplit_once('.')
        .map_or(file.as_str(), |(base, _)| base);
    execute(
        &url,
        format!(
            "UPDATE dualwrite_cdc_positions SET file = '{base}.000000', pos = 4 WHERE name = '{name}'"
        ),
    );
    let error = MariadbSource::new(&url, &name)
        .open()
        .expect_err("a purged position");
    assert!(matches!(error, CdcError::Setup { .. }), "{error:?}");
    assert!(
        error.to_string().contains("no longer has (purged)"),
        "{error}"
    );
    assert!(MariadbSource::drop_position(&url, &name).expect("drop"));
}

#[test]
fn shadow_reads_wait_for_the_follower_not_count_a_mismatch() {
    if let Some(url) = binlog_server("shadow_reads_wait_for_the_follower_not_count_a_mismatch") {
        cdc_support::shadow_reads_wait_for_the_follower_not_count_a_mismatch(&Fixture::new(
            url,
            "shadowlag",
        ));
    }
}

#[test]
fn a_mapping_error_is_a_dead_letter_not_a_panic() {
    if let Some(url) = binlog_server("a_mapping_error_is_a_dead_letter_not_a_panic") {
        cdc_support::a_mapping_error_is_a_dead_letter_not_a_panic(&Fixture::new(url, "deadletter"));
    }
}

/// The child of the kill test: writes until killed.
#[test]
fn a_second_follower_is_refused() {
    if let Some(url) = binlog_server("a_second_follower_is_refused") {
        cdc_support::a_second_follower_is_refused(&Fixture::new(url, "second"));
    }
}

#[test]
fn child_role() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let fixture = Fixture::from_spec(&spec);
    cdc_support::write_until_killed(&fixture);
    // The fixture's table and position belong to the parent.
    std::mem::forget(fixture);
}

#[test]
fn kill_9_mid_stream_loses_nothing_and_keeps_key_order() {
    if let Some(url) = binlog_server("kill_9_mid_stream_loses_nothing_and_keeps_key_order") {
        let fixture = Fixture::new(url, "kill");
        let spec = fixture.child_spec();
        cdc_support::kill_9_mid_stream_loses_nothing_and_keeps_key_order(&fixture, CHILD, spec);
    }
}

#[test]
fn a_standby_takes_over_from_a_killed_leader() {
    let Some((fixture, journal)) =
        with_shared_journal("a_standby_takes_over_from_a_killed_leader", "standby")
    else {
        return;
    };
    let spec = fixture.child_spec();
    cdc_support::a_standby_takes_over_from_a_killed_leader(&fixture, CHILD, spec, &journal);
}

#[test]
fn a_leader_that_loses_its_lock_stands_by() {
    let Some((fixture, journal)) =
        with_shared_journal("a_leader_that_loses_its_lock_stands_by", "lostlock")
    else {
        return;
    };
    cdc_support::a_leader_that_loses_its_lock_stands_by(&fixture, &journal);
}

/// A fixture and a journal on PostgreSQL that two instances share; `None`
/// (a `skipped:` line) without either server.
fn with_shared_journal(test: &str, tag: &str) -> Option<(Fixture, cdc_support::SharedJournal)> {
    let url = binlog_server(test)?;
    let journal = cdc_support::SharedJournal::new(test, tag)?;
    Some((Fixture::new(url, tag), journal))
}

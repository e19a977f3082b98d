//! Change data capture from PostgreSQL through a generated adapter: the
//! adapter writes a PostgreSQL table only, the follower reads a logical
//! replication slot (`test_decoding`) into a SQLite outbox journal, and the
//! appliers apply it to a SQLite secondary. Per-key order, a phase change
//! that catches the follower up, kill -9 of a child process mid-stream, a
//! restart that replays nothing, mapping errors as dead letters, and the
//! errors of a missing slot or a server without logical decoding.
//!
//! Needs `DUALWRITE_POSTGRES_URL` (`.ci/run` sets it and makes the server's
//! `wal_level` logical); each test says it skipped without it, or when the
//! server's `wal_level` is not `logical` (except the test of that error).

mod cdc_support;
mod outbox_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cdc_support::{CdcServer, on_runtime, outbox_config, unique};
use dualwrite_runtime::cdc::postgres::PostgresSource;
use dualwrite_runtime::cdc::{Cdc, CdcError, RowChange};
use dualwrite_runtime::outbox::Durability;
use dualwrite_runtime::outbox::sqlite::SqliteJournal;
use dualwrite_runtime::{Migration, Phase};
use outbox_support::{DbError, Ledger, LedgerDualWrite, SqlStore, temp_dir};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

/// Set in the child of the kill test: `<directory> <table> <slot>`.
const CHILD: &str = "DUALWRITE_CDC_CHILD";

/// The server's URL if it can run these tests: set, and `wal_level` is
/// `logical`; otherwise a `skipped:` line.
fn logical_server(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("DUALWRITE_POSTGRES_URL") else {
        eprintln!(
            "skipped: {test}: set DUALWRITE_POSTGRES_URL to run against a PostgreSQL server with wal_level = logical"
        );
        return None;
    };
    let level = wal_level(&url);
    if level != "logical" {
        eprintln!(
            "skipped: {test}: the server's wal_level is `{level}`, not `logical` (`.ci/run` sets it)"
        );
        return None;
    }
    Some(url)
}

fn wal_level(url: &str) -> String {
    let url = url.to_owned();
    on_runtime(async move {
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        let (level,): (String,) = sqlx::query_as("SHOW wal_level")
            .fetch_one(&mut conn)
            .await
            .expect("SHOW wal_level");
        level
    })
}

/// A table and a slot for one test; both dropped at the end.
struct Fixture {
    url: String,
    table: String,
    slot: String,
    dir: PathBuf,
}

impl Fixture {
    fn new(url: String, test: &str) -> Self {
        let name = unique(test);
        let fixture = Fixture {
            url,
            table: name.clone(),
            slot: name.clone(),
            dir: temp_dir(&format!("cdc-{test}")),
        };
        let (url, table) = (fixture.url.clone(), fixture.table.clone());
        on_runtime(async move {
            let mut conn = PgConnection::connect(&url).await.expect("connect");
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {table} (id BIGINT PRIMARY KEY, value BIGINT)"
            )))
            .execute(&mut conn)
            .await
            .expect("create table");
        });
        // The slot before any write: it holds every change from now on.
        assert!(PostgresSource::create_slot(&fixture.url, &fixture.slot).expect("create slot"));
        fixture
    }

    /// The child's fixture: `<directory> <url> <table> <slot>`.
    fn from_spec(spec: &str) -> Self {
        let mut parts = spec.split(' ');
        let (Some(dir), Some(url), Some(table), Some(slot)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("`<dir> <url> <table> <slot>`");
        };
        Fixture {
            url: url.to_owned(),
            table: table.to_owned(),
            slot: slot.to_owned(),
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
            self.slot
        )
    }
}

impl CdcServer for Fixture {
    type Primary = PgLedger;
    type Source = PostgresSource;

    fn primary(&self) -> PgLedger {
        PgLedger::connect(&self.url, &self.table)
    }

    fn source(&self) -> PostgresSource {
        PostgresSource::new(&self.url, &self.slot)
    }

    fn table(&self) -> &str {
        &self.table
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backend that holds this slot's follower lock (the follower's
    /// connection), by the lock's key.
    fn kill_reader_connections(&self) -> usize {
        let (url, key) = (self.url.clone(), format!("dualwrite_cdc:{}", self.slot));
        on_runtime(async move {
            let mut conn = PgConnection::connect(&url).await.expect("connect");
            let killed: Vec<(bool,)> = sqlx::query_as(
                "SELECT pg_terminate_backend(pid) FROM pg_locks
                 WHERE locktype = 'advisory' AND granted AND objsubid = 1
                   AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0)",
            )
            .bind(key)
            .fetch_all(&mut conn)
            .await
            .expect("terminate the follower's backend");
            killed.len()
        })
    }

    /// The follower reads on the connection that holds its lock.
    fn kill_lock_holder(&self) -> usize {
        self.kill_reader_connections()
    }

    /// Every row of the primary table.
    fn primary_rows(&self) -> BTreeMap<i64, Option<i64>> {
        let (url, table) = (self.url.clone(), self.table.clone());
        on_runtime(async move {
            let mut conn = PgConnection::connect(&url).await.expect("connect");
            let rows: Vec<(i64, Option<i64>)> =
                sqlx::query_as(AssertSqlSafe(format!("SELECT id, value FROM {table}")))
                    .fetch_all(&mut conn)
                    .await
                    .expect("select");
            rows.into_iter().collect()
        })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = PostgresSource::drop_slot(&self.url, &self.slot);
        let (url, table) = (self.url.clone(), self.table.clone());
        on_runtime(async move {
            if let Ok(mut conn) = PgConnection::connect(&url).await {
                let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                    .execute(&mut conn)
                    .await;
            }
        });
    }
}

/// The primary: a PostgreSQL table written through sqlx.
pub struct PgLedger {
    table: String,
    runtime: tokio::runtime::Runtime,
    conn: Mutex<PgConnection>,
}

impl PgLedger {
    fn connect(url: &str, table: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let conn = runtime
            .block_on(PgConnection::connect(url))
            .expect("connect");
        PgLedger {
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

impl Ledger for PgLedger {
    fn put(&self, id: i64, value: i64) -> Result<(), DbError> {
        self.execute(
            format!(
                "INSERT INTO {} (id, value) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET value = excluded.value",
                self.table
            ),
            id,
            value,
        )
    }

    fn add(&self, id: i64, by: i64) -> Result<(), DbError> {
        self.execute(
            format!(
                "INSERT INTO {t} (id, value) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET value = {t}.value + excluded.value",
                t = self.table
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
                    "SELECT value FROM {} WHERE id = $1",
                    self.table
                )))
                .bind(id)
                .fetch_optional(&mut *conn),
            )
            .map_err(|error| DbError(error.to_string()))?;
        Ok(row.and_then(|(value,)| value))
    }
}

#[test]
fn changes_reach_the_sqlite_secondary_in_key_order() {
    if let Some(url) = logical_server("changes_reach_the_sqlite_secondary_in_key_order") {
        cdc_support::changes_reach_the_sqlite_secondary_in_key_order(&Fixture::new(url, "order"));
    }
}

#[test]
fn a_phase_change_catches_the_follower_up() {
    if let Some(url) = logical_server("a_phase_change_catches_the_follower_up") {
        cdc_support::a_phase_change_catches_the_follower_up(&Fixture::new(url, "fence"));
    }
}

#[test]
fn shadow_reads_wait_for_the_follower_not_count_a_mismatch() {
    if let Some(url) = logical_server("shadow_reads_wait_for_the_follower_not_count_a_mismatch") {
        cdc_support::shadow_reads_wait_for_the_follower_not_count_a_mismatch(&Fixture::new(
            url,
            "shadowlag",
        ));
    }
}

#[test]
fn a_restart_reads_nothing_twice() {
    if let Some(url) = logical_server("a_restart_reads_nothing_twice") {
        cdc_support::a_restart_reads_nothing_twice(&Fixture::new(url, "restart"));
    }
}

#[test]
fn a_mapping_error_is_a_dead_letter_not_a_panic() {
    if let Some(url) = logical_server("a_mapping_error_is_a_dead_letter_not_a_panic") {
        cdc_support::a_mapping_error_is_a_dead_letter_not_a_panic(&Fixture::new(url, "deadletter"));
    }
}

/// The slot's restart point follows the confirmed position: PostgreSQL
/// moves it only past a record of the running transactions, so without the
/// follower's marks every read re-decodes the WAL since the slot was
/// created (or the last such record, every 15 s).
#[test]
fn the_restart_point_follows_what_the_follower_confirmed() {
    use dualwrite_runtime::cdc::ChangeSource;

    let Some(url) = logical_server("the_restart_point_follows_what_the_follower_confirmed") else {
        return;
    };
    let fixture = Fixture::new(url, "restart");
    let restart_lsn = || {
        let (url, slot) = (fixture.url.clone(), fixture.slot.clone());
        on_runtime(async move {
            let mut conn = PgConnection::connect(&url).await.expect("connect");
            let (at,): (String,) = sqlx::query_as(
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            )
            .bind(slot)
            .fetch_one(&mut conn)
            .await
            .expect("restart_lsn");
            at.parse::<dualwrite_runtime::cdc::Position>()
                .expect("an LSN")
        })
    };
    let insert = |from: i64| {
        let (url, table) = (fixture.url.clone(), fixture.table.clone());
        on_runtime(async move {
            let mut conn = PgConnection::connect(&url).await.expect("connect");
            for id in from..from + 50 {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {table} (id, value) VALUES ({id}, 1)"
                )))
                .execute(&mut conn)
                .await
                .expect("insert");
            }
        });
    };
    let created = restart_lsn();
    let mut source = fixture.source().with_restart_marks(Some(Duration::ZERO));
    source.open().expect("open");
    // Read and confirm twice: the first confirm has the server write a
    // mark, the second advances past it.
    // The slot decodes every table of the database: tests running beside
    // this one write theirs.
    let ours = |batch: &dualwrite_runtime::cdc::ChangeBatch| {
        batch
            .changes
            .iter()
            .filter(|change| change.table == fixture.table)
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut confirmed = Vec::new();
    for round in 0..2 {
        insert(round * 100);
        // A read cut at its limit (of the slot's rows, BEGIN and COMMIT
        // among them; whole transactions, so tests running beside this
        // one may add more) says more is waiting.
        let cut = source.read(10).expect("read");
        assert!(cut.more, "{} changes, not cut", cut.changes.len());
        let batch = source.read(100_000).expect("read");
        assert_eq!(ours(&batch).len(), 50, "round {round}");
        source.confirm(batch.through).expect("confirm");
        confirmed.push(batch.through);
    }
    let moved = restart_lsn();
    assert!(
        moved > created,
        "the restart point stayed at {created} after confirming {confirmed:?}"
    );
    // Nothing confirmed is read again, and nothing is lost.
    insert(1_000);
    let batch = source.read(100_000).expect("read");
    assert_eq!(ours(&batch).len(), 50);
    assert!(ours(&batch).iter().all(|c| c.position > confirmed[1]));
}

#[test]
fn a_missing_slot_is_a_clear_error() {
    let Some(url) = logical_server("a_missing_slot_is_a_clear_error") else {
        return;
    };
    let dir = temp_dir("cdc-missing");
    let slot = unique("missing");
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
        Cdc::new(PostgresSource::new(&url, &slot), |_: &RowChange| None),
        outbox_config(),
    );
    let error = result.err().expect("a missing slot fails");
    assert!(
        matches!(&error, CdcError::MissingSlot { slot: s, .. } if *s == slot),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&slot) && message.contains("does not exist"),
        "{message}"
    );
    // A source that failed to open does not keep the follower lock: a
    // second one gets the same error, not `Busy`.
    use dualwrite_runtime::cdc::ChangeSource;
    let mut failed = PostgresSource::new(&url, &slot);
    assert!(matches!(failed.open(), Err(CdcError::MissingSlot { .. })));
    let again = PostgresSource::new(&url, &slot).open();
    assert!(
        matches!(again, Err(CdcError::MissingSlot { .. })),
        "{again:?}"
    );
    drop(failed);
}

#[test]
fn a_server_without_logical_decoding_is_a_clear_error() {
    let Ok(url) = std::env::var("DUALWRITE_POSTGRES_URL") else {
        eprintln!(
            "skipped: a_server_without_logical_decoding_is_a_clear_error: set DUALWRITE_POSTGRES_URL"
        );
        return;
    };
    let level = wal_level(&url);
    if level == "logical" {
        eprintln!(
            "skipped: a_server_without_logical_decoding_is_a_clear_error: the server's wal_level is logical (the error needs a server without it)"
        );
        return;
    }
    let error = PostgresSource::create_slot(&url, "dw_cdc_never").expect_err("no logical decoding");
    assert!(matches!(error, CdcError::Setup { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("wal_level is `{level}`"))
            && message.contains("ALTER SYSTEM SET wal_level = logical"),
        "{message}"
    );
    let dir = temp_dir("cdc-wal-level");
    let journal = Arc::new(
        SqliteJournal::open(dir.join("journal.db"), Durability::PerWrite).expect("journal"),
    );
    let error = LedgerDualWrite::new(
        SqlStore::open(&dir.join("old.db")),
        SqlStore::open(&dir.join("new.db")),
        Migration::new(Phase::DualWrite),
    )
    .with_cdc(
        journal,
        Cdc::new(
            PostgresSource::new(&url, "dw_cdc_never"),
            |_: &RowChange| None,
        ),
        outbox_config(),
    )
    .err()
    .expect("fails");
    assert!(matches!(error, CdcError::Setup { .. }), "{error:?}");
}

/// The child of the kill test: writes until killed.
#[test]
fn a_killed_reader_connection_resumes_without_loss() {
    if let Some(url) = logical_server("a_killed_reader_connection_resumes_without_loss") {
        cdc_support::a_killed_reader_connection_resumes_without_loss(&Fixture::new(
            url, "killconn",
        ));
    }
}

#[test]
fn a_second_follower_is_refused() {
    if let Some(url) = logical_server("a_second_follower_is_refused") {
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
    // The fixture's table and slot belong to the parent.
    std::mem::forget(fixture);
}

#[test]
fn kill_9_mid_stream_loses_nothing_and_keeps_key_order() {
    if let Some(url) = logical_server("kill_9_mid_stream_loses_nothing_and_keeps_key_order") {
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
    let url = logical_server(test)?;
    let journal = cdc_support::SharedJournal::new(test, tag)?;
    Some((Fixture::new(url, tag), journal))
}

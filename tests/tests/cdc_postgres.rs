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
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cdc_support::{
    CountingStore, check_after_kill, map, on_runtime, outbox_config, secondary_rows, unique,
    write_stream,
};
use dualwrite_runtime::cdc::postgres::PostgresSource;
use dualwrite_runtime::cdc::{Cdc, CdcConfig, CdcError, RowChange};
use dualwrite_runtime::outbox::Durability;
use dualwrite_runtime::outbox::sqlite::SqliteJournal;
use dualwrite_runtime::{Migration, Phase, WriteStrategy};
use outbox_support::{
    DbError, Ledger, LedgerDualWrite, LedgerWrite, SqlStore, assert_per_key_order, kill_after_acks,
    temp_dir,
};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

/// Set in the child of the kill test: `<directory> <table> <slot>`.
const CHILD: &str = "DUALWRITE_CDC_CHILD";

const WAIT: Duration = Duration::from_secs(60);

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

    fn source(&self) -> PostgresSource {
        PostgresSource::new(&self.url, &self.slot)
    }

    fn journal(&self) -> Arc<SqliteJournal> {
        Arc::new(
            SqliteJournal::open(self.dir.join("journal.db"), Durability::PerWrite)
                .expect("journal"),
        )
    }

    fn primary(&self) -> PgLedger {
        PgLedger::connect(&self.url, &self.table)
    }

    fn secondary(&self) -> CountingStore {
        CountingStore::open(&self.dir)
    }

    fn cdc(&self) -> Cdc<LedgerWrite> {
        let table = self.table.clone();
        Cdc::new(self.source(), move |change: &RowChange| map(&table, change))
            .with_config(CdcConfig::default().with_poll_interval(Duration::from_millis(5)))
    }

    fn adapter(&self, phase: Phase) -> LedgerDualWrite<PgLedger, CountingStore> {
        LedgerDualWrite::new(self.primary(), self.secondary(), Migration::new(phase))
            .with_cdc(self.journal(), self.cdc(), outbox_config())
            .expect("start change data capture")
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
    let Some(url) = logical_server("changes_reach_the_sqlite_secondary_in_key_order") else {
        return;
    };
    let fixture = Fixture::new(url, "order");
    let adapter = Arc::new(fixture.adapter(Phase::DualWrite));
    assert!(matches!(adapter.core().strategy(), WriteStrategy::Cdc(_)));
    write_stream(&adapter, 4, 16, 25, 0);
    adapter
        .flush(WAIT)
        .expect("the follower catches up and the appliers drain");
    assert_eq!(secondary_rows(adapter.new_store()), fixture.primary_rows());
    assert_per_key_order(&adapter.new_store().inner.history());
    let status = adapter.core().cdc_status().expect("cdc status");
    assert_eq!(status.journaled, 16 * 25, "{status:?}");
    assert_eq!(status.rejected, 0);
    // Every record applied once.
    let applies = adapter.new_store().applies();
    assert_eq!(applies.len(), 16 * 25);
    assert!(applies.values().all(|&n| n == 1), "{applies:?}");
    assert!(adapter.shutdown(WAIT).complete);
}

#[test]
fn a_phase_change_catches_the_follower_up() {
    let Some(url) = logical_server("a_phase_change_catches_the_follower_up") else {
        return;
    };
    let fixture = Fixture::new(url, "fence");
    let adapter = Arc::new(fixture.adapter(Phase::ShadowRead));
    // A secondary slower than the primary: the follower and the appliers
    // are behind when the phase changes.
    adapter
        .new_store()
        .inner
        .delay_micros
        .store(2_000, std::sync::atomic::Ordering::SeqCst);
    write_stream(&adapter, 2, 8, 20, 0);
    // Moving to Cutover moves the write route: the fence waits for the
    // follower to journal every change up to the WAL's head, and for the
    // appliers to apply them.
    adapter
        .core()
        .migration()
        .set_phase(Phase::Cutover)
        .expect("the phase change");
    assert_eq!(secondary_rows(adapter.new_store()), fixture.primary_rows());
    // From Cutover on, the new store is primary; the old store's copy goes
    // through the journal, and the follower does not carry it back.
    adapter.put(100, 7).expect("put");
    adapter.flush(WAIT).expect("flush");
    assert_eq!(adapter.new_store().get(100).expect("get"), Some(7));
    assert_eq!(fixture.primary_rows().get(&100), Some(&Some(7)));
    // The old store's copy is applied after the flush's catch-up: the
    // follower reads (and skips) its change at a later round.
    let deadline = Instant::now() + WAIT;
    while adapter.core().cdc_status().expect("status").skipped == 0 {
        assert!(Instant::now() < deadline, "the follower skipped nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(adapter.shutdown(WAIT).complete);
}

/// Under change data capture a write reaches the secondary's pending count
/// only once the follower has read it from the WAL: a shadow read of its key
/// before then is not a mismatch (the stores cannot agree yet), and once
/// the follower caught up and the appliers applied it, reads compare again.
#[test]
fn shadow_reads_wait_for_the_follower_not_count_a_mismatch() {
    let Some(url) = logical_server("shadow_reads_wait_for_the_follower_not_count_a_mismatch")
    else {
        return;
    };
    let fixture = Fixture::new(url, "shadowlag");
    // A follower that polls rarely: its lag is long and sure.
    let table = fixture.table.clone();
    let cdc = Cdc::new(fixture.source(), move |change: &RowChange| {
        map(&table, change)
    })
    .with_config(CdcConfig::default().with_poll_interval(Duration::from_millis(400)));
    let adapter = LedgerDualWrite::new(
        fixture.primary(),
        fixture.secondary(),
        Migration::new(Phase::ShadowRead),
    )
    .with_cdc(fixture.journal(), cdc, outbox_config())
    .expect("start change data capture");
    for key in 0..20 {
        adapter.put(key, key * 10).expect("put");
        assert_eq!(adapter.get(key).expect("get"), Some(key * 10));
    }
    let stats = adapter.stats();
    assert_eq!(
        stats.reads_mismatched, 0,
        "reads made before the follower journaled the write are not mismatches"
    );
    assert!(stats.reads_skipped_pending > 0);
    adapter.flush(WAIT).expect("flush");
    for key in 0..20 {
        assert_eq!(adapter.get(key).expect("get"), Some(key * 10));
    }
    let after = adapter.stats();
    assert_eq!(after.reads_mismatched, 0);
    assert_eq!(
        after.reads_matched - stats.reads_matched,
        20,
        "compared once caught up"
    );
    assert!(adapter.shutdown(WAIT).complete);
}

#[test]
fn a_restart_reads_nothing_twice() {
    let Some(url) = logical_server("a_restart_reads_nothing_twice") else {
        return;
    };
    let fixture = Fixture::new(url, "restart");
    {
        let adapter = Arc::new(fixture.adapter(Phase::DualWrite));
        write_stream(&adapter, 2, 8, 10, 0);
        adapter.flush(WAIT).expect("flush");
        assert!(adapter.shutdown(WAIT).complete);
    }
    let adapter = Arc::new(fixture.adapter(Phase::DualWrite));
    write_stream(&adapter, 2, 8, 5, 100);
    adapter.flush(WAIT).expect("flush");
    let status = adapter.core().cdc_status().expect("status");
    assert_eq!(
        status.journaled,
        8 * 5,
        "only the new changes are journaled: {status:?}"
    );
    assert_eq!(status.duplicates, 0);
    let applies = adapter.new_store().applies();
    assert_eq!(applies.len(), 8 * 15);
    assert!(applies.values().all(|&n| n == 1), "{applies:?}");
    assert_eq!(secondary_rows(adapter.new_store()), fixture.primary_rows());
    assert!(adapter.shutdown(WAIT).complete);
}

#[test]
fn a_mapping_error_is_a_dead_letter_not_a_panic() {
    let Some(url) = logical_server("a_mapping_error_is_a_dead_letter_not_a_panic") else {
        return;
    };
    let fixture = Fixture::new(url, "deadletter");
    let journal = fixture.journal();
    let adapter = LedgerDualWrite::new(
        fixture.primary(),
        fixture.secondary(),
        Migration::new(Phase::DualWrite),
    )
    .with_cdc(journal.clone(), fixture.cdc(), outbox_config())
    .expect("start");
    adapter.put(1, 10).expect("put");
    adapter.put(2, -5).expect("the primary takes it");
    adapter.put(3, 666).expect("the primary takes it");
    adapter.put(1, 11).expect("put");
    adapter.flush(WAIT).expect("flush");
    let dead = journal.dead_letters().expect("dead letters");
    assert_eq!(dead.len(), 2, "{dead:?}");
    let errors: Vec<&str> = dead
        .iter()
        .filter_map(|d| d.last_error.as_deref())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("negative value -5 for account 2")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("the mapping function panicked")),
        "{errors:?}"
    );
    assert!(
        errors.iter().all(|e| e.contains("the change: INSERT")),
        "{errors:?}"
    );
    // The follower went on: later changes are applied.
    assert_eq!(adapter.new_store().get(1).expect("get"), Some(11));
    let status = adapter.core().cdc_status().expect("status");
    assert_eq!(status.rejected, 2);
    assert!(adapter.shutdown(WAIT).complete);
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
    let mut confirmed = Vec::new();
    for round in 0..2 {
        insert(round * 100);
        let batch = source.read(10_000).expect("read");
        assert_eq!(batch.changes.len(), 50, "round {round}");
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
    let batch = source.read(10_000).expect("read");
    assert_eq!(batch.changes.len(), 50);
    assert!(batch.changes.iter().all(|c| c.position > confirmed[1]));
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

/// The child of the kill test: writes until killed, printing each
/// acknowledged `key value`.
#[test]
fn child_role() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.split(' ');
    let (Some(dir), Some(url), Some(table), Some(slot)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("`<dir> <url> <table> <slot>`");
    };
    let fixture = Fixture {
        url: url.to_owned(),
        table: table.to_owned(),
        slot: slot.to_owned(),
        dir: PathBuf::from(dir),
    };
    let adapter = Arc::new(fixture.adapter(Phase::DualWrite));
    // A secondary slower than the primary, so records wait in the journal
    // when the process dies.
    adapter
        .new_store()
        .inner
        .delay_micros
        .store(1_000, std::sync::atomic::Ordering::SeqCst);
    let writers: Vec<_> = (0..2_i64)
        .map(|writer| {
            let adapter = Arc::clone(&adapter);
            std::thread::spawn(move || {
                let mut value = 0;
                loop {
                    value += 1;
                    for key in (writer..16).step_by(2) {
                        adapter.put(key, value).expect("put");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {key} {value}").expect("stdout");
                        out.flush().expect("stdout");
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        let _ = writer.join();
    }
    // The fixture's table and slot belong to the parent.
    std::mem::forget(fixture);
    unreachable!("the writers loop until the process is killed")
}

#[test]
fn kill_9_mid_stream_loses_nothing_and_keeps_key_order() {
    let Some(url) = logical_server("kill_9_mid_stream_loses_nothing_and_keeps_key_order") else {
        return;
    };
    let fixture = Fixture::new(url, "kill");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_role",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(
            CHILD,
            format!(
                "{} {} {} {}",
                fixture.dir.display(),
                fixture.url,
                fixture.table,
                fixture.slot
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let acked = kill_after_acks(&mut child, 600);

    // The restart: a new adapter over the same journal, slot and stores.
    let journal = fixture.journal();
    let pending_at_restart = journal.counts().expect("counts").pending;
    let adapter = LedgerDualWrite::new(
        fixture.primary(),
        fixture.secondary(),
        Migration::new(Phase::DualWrite),
    )
    .with_cdc(journal.clone(), fixture.cdc(), outbox_config())
    .expect("restart");
    adapter
        .flush(WAIT)
        .expect("the follower catches up and the appliers drain");
    check_after_kill(
        &acked,
        &journal,
        pending_at_restart,
        adapter.new_store(),
        &adapter.core().cdc_status().expect("status"),
        &fixture.primary_rows(),
    );
    assert!(adapter.shutdown(WAIT).complete);
}

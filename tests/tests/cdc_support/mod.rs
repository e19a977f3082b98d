//! What the change-data-capture tests share: the SQLite secondary that
//! counts applies per idempotency id, the mapping function, the outbox's
//! settings, a stream of writes from several threads, and the tests every
//! source must pass, over a [`CdcServer`] (a table, its change source and
//! the primary store that writes it).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dualwrite_runtime::cdc::{
    Cdc, CdcConfig, CdcError, CdcStatus, ChangeKind, ChangeSource, RowChange,
};
use dualwrite_runtime::outbox::postgres::{PgJournal, PgJournalOptions};
use dualwrite_runtime::outbox::sqlite::{self, SqliteJournal};
use dualwrite_runtime::outbox::{
    Durability, Journal, JournalRecord, OutboxConfig, Side, WriteContext,
};
use dualwrite_runtime::{Migration, Phase, WriteStrategy};

use crate::outbox_support::{
    Acks, DbError, Ledger, LedgerDualWrite, LedgerWrite, SqlStore, assert_per_key_order, dead_puts,
    kill_after_acks, spawn_child_role,
};

/// How long the tests wait for a flush or a catch-up.
pub const WAIT: Duration = Duration::from_secs(60);

/// One server's side of the tests: a table written by the primary store,
/// the change source that reads it, and a directory for the journal and
/// the SQLite secondary.
pub trait CdcServer {
    type Primary: Ledger + Send + Sync + 'static;
    type Source: ChangeSource;

    /// A new connection to the table.
    fn primary(&self) -> Self::Primary;
    /// A new source, at the test's slot or position.
    fn source(&self) -> Self::Source;
    fn table(&self) -> &str;
    fn dir(&self) -> &Path;
    /// Every row of the table.
    fn primary_rows(&self) -> BTreeMap<i64, Option<i64>>;
    /// Has the server end the connection the test's follower reads the
    /// stream on (as a restart or a network fault would); how many it
    /// ended.
    fn kill_reader_connections(&self) -> usize;
    /// Has the server end the connection that holds the follower lock;
    /// how many it ended.
    fn kill_lock_holder(&self) -> usize;

    fn journal(&self) -> Arc<SqliteJournal> {
        Arc::new(
            SqliteJournal::open(self.dir().join("journal.db"), Durability::PerWrite)
                .expect("journal"),
        )
    }

    /// The source with the mapping function, polling every 5 ms.
    fn cdc(&self) -> Cdc<LedgerWrite> {
        self.cdc_with(cdc_config())
    }

    fn cdc_with(&self, config: CdcConfig) -> Cdc<LedgerWrite> {
        let table = self.table().to_owned();
        Cdc::new(self.source(), move |change: &RowChange| map(&table, change)).with_config(config)
    }

    fn adapter(&self, phase: Phase) -> LedgerDualWrite<Self::Primary, CountingStore> {
        self.adapter_over(self.journal(), phase, outbox_config(), cdc_config())
            .expect("start change data capture")
    }

    /// An adapter over `journal` (shared by the instances of a test).
    fn adapter_over(
        &self,
        journal: Arc<dyn Journal>,
        phase: Phase,
        config: OutboxConfig,
        cdc: CdcConfig,
    ) -> Result<LedgerDualWrite<Self::Primary, CountingStore>, CdcError> {
        LedgerDualWrite::new(
            self.primary(),
            CountingStore::open(self.dir()),
            Migration::new(phase),
        )
        .with_cdc(journal, self.cdc_with(cdc), config)
    }
}

/// Set in the child of the standby test: `<url> <schema>` of the shared
/// journal it journals into.
pub const SHARED_JOURNAL: &str = "DUALWRITE_CDC_SHARED_JOURNAL";

/// A journal every instance drains: a PostgreSQL journal in a schema of
/// the test's own (dropped at the end), on the server at
/// `DUALWRITE_POSTGRES_URL`.
pub struct SharedJournal {
    pub url: String,
    pub schema: String,
    owned: bool,
}

impl SharedJournal {
    /// `None`, with a `skipped:` line naming `test`, without
    /// `DUALWRITE_POSTGRES_URL`; the schema's name starts with `tag`.
    pub fn new(test: &str, tag: &str) -> Option<Self> {
        let Ok(url) = std::env::var("DUALWRITE_POSTGRES_URL") else {
            eprintln!(
                "skipped: {test}: set DUALWRITE_POSTGRES_URL for the journal the instances share"
            );
            return None;
        };
        let schema = unique(tag);
        Self::execute(&url, format!("CREATE SCHEMA {schema}"));
        Some(SharedJournal {
            url,
            schema,
            owned: true,
        })
    }

    /// The parent's journal, in a child (`<url> <schema>`).
    pub fn from_spec(spec: &str) -> Self {
        let (url, schema) = spec.split_once(' ').expect("`<url> <schema>`");
        SharedJournal {
            url: url.to_owned(),
            schema: schema.to_owned(),
            owned: false,
        }
    }

    pub fn spec(&self) -> String {
        format!("{} {}", self.url, self.schema)
    }

    pub fn open(&self) -> Arc<PgJournal> {
        self.open_as(&format!("instance-{}", std::process::id()))
    }

    /// A handle of its own (an instance's name in the journal's leases).
    pub fn open_as(&self, owner: &str) -> Arc<PgJournal> {
        let options = PgJournalOptions::new(Durability::PerWrite)
            .with_owner(owner)
            .with_schema(&self.schema)
            .with_partitions(8)
            .with_lease_ttl(Duration::from_secs(1));
        Arc::new(PgJournal::open_with(&self.url, options).expect("shared journal"))
    }

    fn execute(url: &str, sql: String) {
        let url = url.to_owned();
        on_runtime(async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .expect("schema");
        });
    }
}

impl Drop for SharedJournal {
    fn drop(&mut self) {
        if self.owned {
            Self::execute(
                &self.url,
                format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
            );
        }
    }
}

/// The outbox settings of the instances sharing a journal: the secondary's
/// SQLite file is written by two processes, so a busy file is retried
/// rather than dead-lettered.
pub fn shared_outbox_config() -> OutboxConfig {
    outbox_config().with_max_attempts(10_000)
}

pub fn on_runtime<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// Names unique to one test run.
pub fn unique(test: &str) -> String {
    format!(
        "dw_cdc_{test}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_micros())
    )
}

/// The follower's settings: polls every 5 ms.
pub fn cdc_config() -> CdcConfig {
    CdcConfig::default().with_poll_interval(Duration::from_millis(5))
}

pub fn outbox_config() -> OutboxConfig {
    OutboxConfig::default()
        .with_appliers(2)
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(5))
        .with_poll_interval(Duration::from_millis(10))
}

/// The mapping function: a row of the table to `put`; a NULL or negative
/// value is rejected (a dead letter); a value of 666 panics; deletes and
/// other tables are skipped.
pub fn map(table: &str, change: &RowChange) -> Option<Result<LedgerWrite, String>> {
    if change.table != table || !matches!(change.kind, ChangeKind::Insert | ChangeKind::Update) {
        return None;
    }
    Some((|| {
        let id = change.parse::<i64>("id")?;
        let value = change.parse::<i64>("value")?;
        assert_ne!(value, 666, "the mapping function's own bug");
        if value < 0 {
            return Err(format!("negative value {value} for account {id}"));
        }
        Ok(LedgerWrite::Put { id, value })
    })())
}

/// The secondary: the outbox tests' SQLite store (version-guarded upserts,
/// a history of applied changes), and a count of applies per idempotency
/// id in a file of its own (it survives a kill).
pub struct CountingStore {
    pub inner: SqlStore,
    applies: Mutex<rusqlite::Connection>,
}

impl CountingStore {
    pub fn open(dir: &Path) -> Self {
        let mut applies = rusqlite::Connection::open(dir.join("applies.db")).expect("applies");
        // Written by two processes in the standby test.
        sqlite::short_busy_handler(&mut applies).expect("busy handler");
        applies
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS applies (idempotency_id TEXT NOT NULL)",
            )
            .expect("applies table");
        CountingStore {
            inner: SqlStore::open(&dir.join("new.db")),
            applies: Mutex::new(applies),
        }
    }

    /// Applies per idempotency id.
    pub fn applies(&self) -> HashMap<String, u64> {
        let conn = self.applies.lock().unwrap_or_else(PoisonError::into_inner);
        let mut statement = conn
            .prepare("SELECT idempotency_id, count(*) FROM applies GROUP BY idempotency_id")
            .expect("select");
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))
            .expect("applies")
            .collect::<Result<_, _>>()
            .expect("applies")
    }
}

impl Ledger for CountingStore {
    fn put(&self, id: i64, value: i64) -> Result<(), DbError> {
        self.inner.put(id, value)?;
        if let Some(ctx) = WriteContext::current().filter(|ctx| ctx.side() == Side::Apply) {
            self.applies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .execute(
                    "INSERT INTO applies (idempotency_id) VALUES (?1)",
                    [ctx.idempotency_id().to_string()],
                )?;
        }
        Ok(())
    }

    fn add(&self, id: i64, by: i64) -> Result<(), DbError> {
        self.inner.add(id, by)
    }

    fn get(&self, id: i64) -> Result<Option<i64>, DbError> {
        self.inner.get(id)
    }
}

pub fn secondary_rows(store: &CountingStore) -> BTreeMap<i64, Option<i64>> {
    store
        .inner
        .rows()
        .into_iter()
        .map(|(id, value)| (id, Some(value)))
        .collect()
}

/// Writes `rounds` growing values to each of `keys` keys from `writers`
/// threads (a key always from the same writer).
pub fn write_stream<P: Ledger + Send + Sync + 'static>(
    adapter: &Arc<LedgerDualWrite<P, CountingStore>>,
    writers: i64,
    keys: i64,
    rounds: i64,
    base: i64,
) {
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let adapter = Arc::clone(adapter);
            std::thread::spawn(move || {
                for round in 1..=rounds {
                    for key in (writer..keys).step_by(writers as usize) {
                        adapter.put(key, base + round).expect("put");
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("writer");
    }
}

/// The checks after a child process was killed mid-stream and an adapter
/// restarted over its journal and flushed: every acknowledged write is on
/// the secondary (or a later write of its key is, or it is a dead letter),
/// per-key order held, the stores agree, no change was journaled twice,
/// no record applied more than twice, and (one instance, not `shared`)
/// only records in flight at the kill applied twice.
pub fn check_after_kill(
    acked: &[(i64, i64)],
    (dead_letters, records): (&[JournalRecord], &[JournalRecord]),
    pending_at_restart: u64,
    shared: bool,
    store: &CountingStore,
    status: &CdcStatus,
    primary_rows: &BTreeMap<i64, Option<i64>>,
) {
    let history = store.inner.history();
    let applied: HashSet<(i64, i64)> = history.iter().map(|&(k, v, _)| (k, v)).collect();
    let dead = dead_puts(dead_letters);
    // The secondary's version guard skips an older value once a newer one
    // is applied, so an acknowledged write is there, or a later one of
    // its key is.
    let latest_applied: HashMap<i64, i64> =
        history.iter().fold(HashMap::new(), |mut m, &(k, v, _)| {
            m.insert(k, v);
            m
        });
    let missing: Vec<_> = acked
        .iter()
        .filter(|w| {
            !applied.contains(w)
                && !dead.contains(w)
                && latest_applied.get(&w.0).is_none_or(|&v| v < w.1)
        })
        .collect();
    let applies = store.applies();
    let twice = applies.values().filter(|&&n| n > 1).count();
    println!(
        "cdc: {} writes acknowledged before SIGKILL, {} records pending in the journal at restart, {} changes read again and found journaled, {} records applied twice (in flight at the kill), {} acknowledged writes missing, {} dead letters",
        acked.len(),
        pending_at_restart,
        status.duplicates,
        twice,
        missing.len(),
        dead.len()
    );
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    assert_per_key_order(&history);
    // Every committed primary write: the stores agree.
    assert_eq!(&secondary_rows(store), primary_rows);
    // Nothing journaled twice, nothing applied more than once beyond the
    // records in flight at the kill.
    assert_journaled_once(records);
    assert!(applies.values().all(|&n| n <= 2), "{applies:?}");
    // With one instance, only a record not marked done at the kill can be
    // applied again. Instances sharing a journal also apply twice the
    // records whose partition moved from one to the other while claimed
    // (the new holder claims every pending record of it again).
    if !shared {
        assert!(
            twice as u64 <= pending_at_restart,
            "{twice} records applied twice, {pending_at_restart} pending at the restart"
        );
    }
}

pub fn changes_reach_the_sqlite_secondary_in_key_order<S: CdcServer>(server: &S) {
    let adapter = Arc::new(server.adapter(Phase::DualWrite));
    assert!(matches!(adapter.core().strategy(), WriteStrategy::Cdc(_)));
    write_stream(&adapter, 4, 16, 25, 0);
    adapter
        .flush(WAIT)
        .expect("the follower catches up and the appliers drain");
    assert_eq!(secondary_rows(adapter.new_store()), server.primary_rows());
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

pub fn a_phase_change_catches_the_follower_up<S: CdcServer>(server: &S) {
    let adapter = Arc::new(server.adapter(Phase::ShadowRead));
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
    assert_eq!(secondary_rows(adapter.new_store()), server.primary_rows());
    // From Cutover on, the new store is primary; the old store's copy goes
    // through the journal, and the follower does not carry it back.
    adapter.put(100, 7).expect("put");
    adapter.flush(WAIT).expect("flush");
    assert_eq!(adapter.new_store().get(100).expect("get"), Some(7));
    assert_eq!(server.primary_rows().get(&100), Some(&Some(7)));
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
pub fn shadow_reads_wait_for_the_follower_not_count_a_mismatch<S: CdcServer>(server: &S) {
    // A follower that polls rarely: its lag is long and sure.
    let table = server.table().to_owned();
    let cdc = Cdc::new(server.source(), move |change: &RowChange| {
        map(&table, change)
    })
    .with_config(CdcConfig::default().with_poll_interval(Duration::from_millis(400)));
    let adapter = LedgerDualWrite::new(
        server.primary(),
        CountingStore::open(server.dir()),
        Migration::new(Phase::ShadowRead),
    )
    .with_cdc(server.journal(), cdc, outbox_config())
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

pub fn a_restart_reads_nothing_twice<S: CdcServer>(server: &S) {
    {
        let adapter = Arc::new(server.adapter(Phase::DualWrite));
        write_stream(&adapter, 2, 8, 10, 0);
        adapter.flush(WAIT).expect("flush");
        assert!(adapter.shutdown(WAIT).complete);
    }
    let adapter = Arc::new(server.adapter(Phase::DualWrite));
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
    assert_eq!(secondary_rows(adapter.new_store()), server.primary_rows());
    assert!(adapter.shutdown(WAIT).complete);
}

pub fn a_mapping_error_is_a_dead_letter_not_a_panic<S: CdcServer>(server: &S) {
    let journal = server.journal();
    let adapter = LedgerDualWrite::new(
        server.primary(),
        CountingStore::open(server.dir()),
        Migration::new(Phase::DualWrite),
    )
    .with_cdc(journal.clone(), server.cdc(), outbox_config())
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

/// The server ends the follower's reading connection again and again while
/// writes go on: the follower reconnects and goes on from what it had
/// confirmed; nothing is lost, journaled twice or applied twice.
pub fn a_killed_reader_connection_resumes_without_loss<S: CdcServer>(server: &S) {
    let table = server.table().to_owned();
    let cdc = Cdc::new(server.source(), move |change: &RowChange| {
        map(&table, change)
    })
    .with_config(
        CdcConfig::default()
            .with_poll_interval(Duration::from_millis(5))
            .with_retry_interval(Duration::from_millis(50)),
    );
    let adapter = Arc::new(
        LedgerDualWrite::new(
            server.primary(),
            CountingStore::open(server.dir()),
            Migration::new(Phase::DualWrite),
        )
        .with_cdc(server.journal(), cdc, outbox_config())
        .expect("start"),
    );
    for round in 0..5 {
        write_stream(&adapter, 2, 8, 10, round * 100);
        // Once the follower is connected again.
        let deadline = Instant::now() + WAIT;
        while server.kill_reader_connections() == 0 {
            assert!(
                Instant::now() < deadline,
                "the follower did not reconnect (round {round})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if let Err(error) = adapter.flush(WAIT) {
        panic!(
            "flush after the faults: {error:?}; {:?}",
            adapter.core().cdc_status()
        );
    }
    assert_eq!(secondary_rows(adapter.new_store()), server.primary_rows());
    assert_per_key_order(&adapter.new_store().inner.history());
    let status = adapter.core().cdc_status().expect("status");
    assert_eq!(status.journaled, 5 * 8 * 10, "{status:?}");
    let applies = adapter.new_store().applies();
    assert_eq!(applies.len(), 5 * 8 * 10);
    assert!(applies.values().all(|&n| n == 1), "{applies:?}");
    assert!(adapter.shutdown(WAIT).complete);
}

/// One follower per slot or position: a second source opened on it while
/// the first reads is refused with a clear error (two followers would split
/// or fight over the stream), and opens once the first is gone. An adapter
/// over a journal only its instance drains (SQLite) cannot stand by: its
/// `with_cdc` fails.
pub fn a_second_follower_is_refused<S: CdcServer>(server: &S) {
    let mut first = server.source();
    first.open().expect("the first follower");
    let mut second = server.source();
    let error = second
        .open()
        .expect_err("a second follower of the same slot or position");
    assert!(matches!(error, CdcError::Busy { .. }), "{error:?}");
    assert!(error.to_string().contains("another follower"), "{error}");
    // Tried again (a standby's retry), it does not wait.
    let started = Instant::now();
    let again = second.open().expect_err("still taken");
    assert!(matches!(again, CdcError::Busy { .. }), "{again:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the retry waited {:?}",
        started.elapsed()
    );
    let Err(error) = server.adapter_over(
        server.journal(),
        Phase::DualWrite,
        outbox_config(),
        cdc_config(),
    ) else {
        panic!("an adapter over a local journal stood by");
    };
    assert!(matches!(error, CdcError::Busy { .. }), "{error:?}");
    assert!(error.to_string().contains("shared journal"), "{error}");
    drop(first);
    // A source found taken tries again without waiting (a standby's
    // retry); a new one waits for the first's lock to be released.
    server
        .source()
        .open()
        .expect("a follower opens once the first is gone");
}

/// The child of a kill test (run as the test binary's `child_role` test):
/// writes growing values to 16 keys from two threads until the process is
/// killed, printing each acknowledged `ack key value`.
pub fn write_until_killed<S: CdcServer>(server: &S) {
    let adapter = Arc::new(match std::env::var(SHARED_JOURNAL) {
        Ok(spec) => server
            .adapter_over(
                SharedJournal::from_spec(&spec).open(),
                Phase::DualWrite,
                shared_outbox_config(),
                cdc_config(),
            )
            .expect("the leading instance"),
        Err(_) => server.adapter(Phase::DualWrite),
    });
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
                    // 666 is the value the mapping function panics on.
                    value += if value == 665 { 2 } else { 1 };
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
    unreachable!("the writers loop until the process is killed")
}

/// Runs this test binary's `child_role` test with `child_env` set to
/// `spec`, kills it (SIGKILL) after 600 acknowledged writes, restarts an
/// adapter over its journal, source and stores, and checks that nothing
/// acknowledged was lost and per-key order held.
pub fn kill_9_mid_stream_loses_nothing_and_keeps_key_order<S: CdcServer>(
    server: &S,
    child_env: &str,
    spec: String,
) {
    let mut child = spawn_child_role(&[(child_env, spec)]);
    let acked = kill_after_acks(&mut child, 600);
    // The restart: a new adapter over the same journal, source and stores.
    let journal = server.journal();
    let pending_at_restart = journal.counts().expect("counts").pending;
    let adapter = LedgerDualWrite::new(
        server.primary(),
        CountingStore::open(server.dir()),
        Migration::new(Phase::DualWrite),
    )
    .with_cdc(journal.clone(), server.cdc(), outbox_config())
    .expect("restart");
    adapter
        .flush(WAIT)
        .expect("the follower catches up and the appliers drain");
    check_after_kill(
        &acked,
        (
            &journal.dead_letters().expect("dead letters"),
            &journal.records("LedgerWrite").expect("records"),
        ),
        pending_at_restart,
        false,
        adapter.new_store(),
        &adapter.core().cdc_status().expect("status"),
        &server.primary_rows(),
    );
    assert!(adapter.shutdown(WAIT).complete);
}

/// Two instances over one journal (PostgreSQL): a child process leads
/// (its follower holds the source) and writes until it is killed; the
/// test's adapter stands by. A flush on the standby waits for the leading
/// follower (every write acknowledged before it is then applied); after
/// SIGKILL of the leader the standby takes the source over, reads again
/// from the position the leader confirmed (finding what it journaled and
/// did not confirm), and its appliers finish the leader's claimed records
/// once their leases expire: nothing acknowledged is lost, per-key order
/// held, nothing journaled twice.
pub fn a_standby_takes_over_from_a_killed_leader<S: CdcServer>(
    server: &S,
    child_env: &str,
    spec: String,
    journal: &SharedJournal,
) {
    let mut child = spawn_child_role(&[(child_env, spec), (SHARED_JOURNAL, journal.spec())]);
    let acks = Acks::new(&mut child);
    // Writing: the child's follower holds the source.
    assert!(acks.until(100), "the leader wrote {}", acks.acked().len());
    let shared = journal.open();
    let standby = server
        .adapter_over(
            shared.clone(),
            Phase::DualWrite,
            shared_outbox_config(),
            cdc_config(),
        )
        .expect("a second instance over a shared journal stands by");
    let status = standby.core().cdc_status().expect("status");
    assert!(status.standby, "{status:?}");
    assert_eq!(status.takeovers, 0);

    // A standby's flush waits for the leader's follower, then the journal.
    assert!(acks.until(300));
    let before_flush = acks.acked();
    standby
        .flush(WAIT)
        .expect("a standby's flush: the leading follower catches up");
    let rows: HashMap<i64, i64> = standby.new_store().inner.rows().into_iter().collect();
    let behind: Vec<_> = before_flush
        .iter()
        .filter(|(key, value)| rows.get(key).is_none_or(|v| v < value))
        .collect();
    assert!(
        behind.is_empty(),
        "acknowledged before the standby's flush and not applied after it: {behind:?}"
    );
    assert!(standby.core().cdc_status().expect("status").standby);

    // Killed while it writes, with records in flight.
    let count = acks.acked().len() + 600;
    let acked = acks.kill_after(&mut child, count);
    let pending_at_kill = shared.counts().expect("counts").pending;
    let started = Instant::now();
    while standby.core().cdc_status().expect("status").standby {
        assert!(started.elapsed() < WAIT, "no takeover");
        std::thread::sleep(Duration::from_millis(5));
    }
    let took_over = started.elapsed();
    standby
        .flush(WAIT)
        .expect("the standby takes over, catches up and drains");
    let status = standby.core().cdc_status().expect("status");
    println!(
        "cdc standby: took over {took_over:?} after the kill, caught up and drained {:?} later ({pending_at_kill} records pending at the kill)",
        started.elapsed() - took_over,
    );
    assert!(!status.standby, "{status:?}");
    assert_eq!(status.takeovers, 1, "{status:?}");
    // Nothing pending in the shared journal, whoever journaled it.
    assert_eq!(shared.counts().expect("counts").pending, 0);
    check_after_kill(
        &acked,
        (
            &shared.dead_letters().expect("dead letters"),
            &shared.records("LedgerWrite").expect("records"),
        ),
        pending_at_kill,
        true,
        standby.new_store(),
        &status,
        &server.primary_rows(),
    );
    assert!(standby.shutdown(WAIT).complete);
}

/// Two instances in one process over one journal (PostgreSQL): the server
/// ends the leading follower's lock connection while both write. The
/// leader does not take its lock again on a new connection (another
/// follower may have read the source meanwhile): it stands by, and on
/// MariaDB starts no stream of its own (a second stream with the
/// position's server id would end its successor's). The standby takes the
/// source over. After flushes on both every write is on the secondary,
/// per-key order held, nothing journaled twice.
pub fn a_leader_that_loses_its_lock_stands_by<S: CdcServer>(server: &S, journal: &SharedJournal) {
    // The first instance, once it stands by, does not try to lead again
    // within the test; the second tries every 50 ms.
    let instance = |name: &str, standby_interval: Duration| {
        Arc::new(
            server
                .adapter_over(
                    journal.open_as(name),
                    Phase::DualWrite,
                    shared_outbox_config(),
                    cdc_config().with_standby_interval(standby_interval),
                )
                .expect("an instance"),
        )
    };
    let a = instance("a", Duration::from_secs(3600));
    let b = instance("b", Duration::from_millis(50));
    let status = |adapter: &LedgerDualWrite<S::Primary, CountingStore>| {
        adapter.core().cdc_status().expect("status")
    };
    assert!(!status(&a).standby && status(&b).standby);
    write_stream(&a, 2, 16, 20, 0);
    let (a_writes, b_writes) = (Arc::clone(&a), Arc::clone(&b));
    let writers = [
        std::thread::spawn(move || write_stream(&a_writes, 2, 8, 40, 100)),
        std::thread::spawn(move || {
            // Keys 8..16 from the second instance.
            for round in 1..=40 {
                for key in 8..16 {
                    b_writes.put(key, 100 + round).expect("put");
                }
            }
        }),
    ];
    assert_eq!(server.kill_lock_holder(), 1, "the lock's connection");
    for writer in writers {
        writer.join().expect("writer");
    }
    a.flush(WAIT).expect("flush the first");
    b.flush(WAIT).expect("flush the second");
    let (a_status, b_status) = (status(&a), status(&b));
    assert!(
        a_status.standby && a_status.takeovers == 0,
        "the first stands by: {a_status:?}"
    );
    assert!(
        !b_status.standby && b_status.takeovers == 1,
        "the second took over: {b_status:?}"
    );
    let shared = journal.open_as("check");
    assert_eq!(shared.counts().expect("counts").pending, 0);
    assert_journaled_once(&shared.records("LedgerWrite").expect("records"));
    assert!(shared.dead_letters().expect("dead letters").is_empty());
    let store = a.new_store();
    assert_per_key_order(&store.inner.history());
    assert_eq!(secondary_rows(store), server.primary_rows());
    assert!(
        (0..16).all(|key| store.inner.rows().contains(&(key, 140))),
        "{:?}",
        store.inner.rows()
    );
    for adapter in [a, b] {
        let adapter = Arc::into_inner(adapter).expect("writers joined");
        assert!(adapter.shutdown(WAIT).complete);
    }
}

/// No write is in two records: every test writes a value to a key once,
/// so a `(key, value)` journaled twice is a change journaled twice (under
/// two idempotency ids; one id twice the journal's unique index refuses).
pub fn assert_journaled_once(records: &[JournalRecord]) {
    let mut seen = HashSet::new();
    let twice: Vec<_> = records
        .iter()
        .filter_map(|record| match record.command::<LedgerWrite>() {
            Ok(LedgerWrite::Put { id, value }) => Some((id, value)),
            _ => None,
        })
        .filter(|put| !seen.insert(*put))
        .collect();
    assert!(twice.is_empty(), "journaled twice: {twice:?}");
}

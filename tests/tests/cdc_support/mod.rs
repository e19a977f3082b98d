//! What the change-data-capture tests share: the SQLite secondary that
//! counts applies per idempotency id, the mapping function, the outbox's
//! settings and a stream of writes from several threads.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dualwrite_runtime::cdc::{CdcStatus, ChangeKind, RowChange};
use dualwrite_runtime::outbox::sqlite::SqliteJournal;
use dualwrite_runtime::outbox::{OutboxConfig, Side, WriteContext};

use crate::outbox_support::{
    DbError, Ledger, LedgerDualWrite, LedgerWrite, SqlStore, assert_per_key_order, dead_puts,
};

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
        let applies = rusqlite::Connection::open(dir.join("applies.db")).expect("applies");
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
/// and only records in flight at the kill were applied twice.
pub fn check_after_kill(
    acked: &[(i64, i64)],
    journal: &SqliteJournal,
    pending_at_restart: u64,
    store: &CountingStore,
    status: &CdcStatus,
    primary_rows: &BTreeMap<i64, Option<i64>>,
) {
    let history = store.inner.history();
    let applied: HashSet<(i64, i64)> = history.iter().map(|&(k, v, _)| (k, v)).collect();
    let dead = dead_puts(&journal.dead_letters().expect("dead letters"));
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
    let records = journal.records("LedgerWrite").expect("records");
    let ids: HashSet<_> = records.iter().map(|r| r.record.idempotency_id).collect();
    assert_eq!(ids.len(), records.len(), "a change journaled twice");
    assert!(applies.values().all(|&n| n <= 2), "{applies:?}");
    assert!(twice <= 64, "{twice} records applied twice");
}

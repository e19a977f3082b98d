//! Backfill on SQLite files racing live writes through the generated
//! adapter: live writes win (no row the adapter wrote is overwritten by the
//! copy), and with the adapter's key guard no row deleted meanwhile comes
//! back, so the stores end identical.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use dualwrite_runtime::backfill::sqlite::{SqliteCheckpoint, SqliteSink, SqliteSource};
use dualwrite_runtime::backfill::{Backfill, BackfillControl, BackfillError, BackfillSink};
use dualwrite_runtime::{Migration, Phase, dual_write};
use rusqlite::Connection;

#[dual_write]
trait Items {
    #[dual_write(key = id)]
    fn put(&self, id: i64, value: i64) -> Result<(), String>;
    #[dual_write(key = id)]
    fn delete(&self, id: i64) -> Result<bool, String>;
}

struct Db(Mutex<Connection>);

fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 10000;
         CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, value INTEGER NOT NULL);",
    )
    .expect("schema");
    conn
}

impl Db {
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn rows(&self) -> BTreeMap<i64, i64> {
        let conn = self.conn();
        let mut statement = conn.prepare("SELECT id, value FROM items").expect("select");
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }
}

impl Items for Db {
    fn put(&self, id: i64, value: i64) -> Result<(), String> {
        self.conn()
            .execute(
                "INSERT INTO items (id, value) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET value = excluded.value",
                (id, value),
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn delete(&self, id: i64) -> Result<bool, String> {
        self.conn()
            .execute("DELETE FROM items WHERE id = ?1", [id])
            .map(|n| n > 0)
            .map_err(|e| e.to_string())
    }
}

/// A fresh directory for one test's database files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dualwrite-backfill-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

const ROWS: i64 = 20_000;

/// Old holds `ROWS` rows of history; New is empty.
fn history(dir: &Path) -> (PathBuf, PathBuf) {
    let (old, new) = (dir.join("old.db"), dir.join("new.db"));
    let mut conn = open(&old);
    let tx = conn.transaction().expect("tx");
    for id in 0..ROWS {
        // dualwrite-lint: allow(DW002) the history the backfill copies: Old only, on purpose
        tx.execute("INSERT INTO items (id, value) VALUES (?1, ?2)", (id, id))
            .expect("insert");
    }
    tx.commit().expect("commit");
    drop(open(&new));
    (old, new)
}

/// Live traffic while the backfill runs: each writer updates and deletes
/// random keys (values above `ROWS`, so a value from history is recognised).
fn live_writers(
    kv: &Arc<ItemsDualWrite<Db, Db>>,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<u64>> {
    (0..2_u64)
        .map(|writer| {
            let (kv, stop) = (Arc::clone(kv), Arc::clone(stop));
            thread::spawn(move || {
                let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ writer;
                let mut writes = 0;
                while !stop.load(Ordering::SeqCst) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let id = (state % ROWS as u64) as i64;
                    if state.is_multiple_of(5) {
                        kv.delete(id).expect("delete");
                    } else {
                        kv.put(id, ROWS + writes as i64).expect("put");
                    }
                    writes += 1;
                }
                writes
            })
        })
        .collect()
}

/// A sink that takes 2 ms before each batch, so live writes have time to
/// land between a batch's scan and its write.
struct Slow<S>(S);

impl<S: BackfillSink> BackfillSink for Slow<S> {
    type Key = S::Key;
    type Row = S::Row;

    fn write_if_absent(&mut self, rows: &[(S::Key, S::Row)]) -> Result<u64, BackfillError> {
        thread::sleep(Duration::from_millis(2));
        self.0.write_if_absent(rows)
    }
}

fn race(guarded: bool, read_ahead: bool) -> (BTreeMap<i64, i64>, BTreeMap<i64, i64>, u64) {
    let dir = scratch(match (guarded, read_ahead) {
        (true, false) => "guarded",
        (true, true) => "guarded-ahead",
        (false, _) => "plain",
    });
    let (old_path, new_path) = history(&dir);
    let old = Db(Mutex::new(open(&old_path)));
    let new = Db(Mutex::new(open(&new_path)));
    let kv = Arc::new(ItemsDualWrite::new(
        old,
        new,
        Migration::new(Phase::Backfill),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = live_writers(&kv, &stop);
    let source = SqliteSource::<i64>::new(open(&old_path), "items", "id", &["value"]);
    let sink = Slow(SqliteSink::<i64>::new(
        open(&new_path),
        "items",
        "id",
        &["value"],
    ));
    let checkpoint = SqliteCheckpoint::new(open(&new_path), "items").expect("checkpoint");
    let job = Backfill::new(source, sink)
        .with_batch(250)
        .with_checkpoint(checkpoint);
    let mut job = if guarded {
        job.guarded_by(kv.core().key_guard())
    } else {
        job
    };
    // Slow enough that the writers touch every region of the key space
    // while it is copied.
    job.control().set_rate(100_000);
    let report = if read_ahead {
        job.run_read_ahead()
    } else {
        job.run()
    }
    .expect("backfill");
    stop.store(true, Ordering::SeqCst);
    let writes: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    assert!(report.finished && report.rows > 0, "{report:?}");
    assert!(writes > 100, "the live writers ran ({writes} writes)");
    let (old, new) = (kv.old_store().rows(), kv.new_store().rows());
    let _ = std::fs::remove_dir_all(&dir);
    (old, new, writes)
}

/// With the adapter's key guard the copy and the live writes never
/// interleave on a key: the stores end identical, deletes included.
#[test]
fn a_guarded_backfill_racing_live_writes_ends_identical() {
    assert_identical(race(true, false));
}

/// The same with the job reading ahead: the read-ahead thread and the
/// guarded re-read take turns on the source, and the stores end identical.
#[test]
fn a_guarded_backfill_reading_ahead_ends_identical() {
    assert_identical(race(true, true));
}

fn assert_identical((old, new, _): (BTreeMap<i64, i64>, BTreeMap<i64, i64>, u64)) {
    let differ: Vec<_> = old
        .iter()
        .filter(|(id, value)| new.get(id) != Some(value))
        .map(|(id, value)| (id, value, new.get(id)))
        .take(10)
        .collect();
    let extra: Vec<_> = new
        .keys()
        .filter(|id| !old.contains_key(id))
        .take(10)
        .collect();
    assert!(
        differ.is_empty() && extra.is_empty(),
        "differ {differ:?}, extra in new {extra:?}"
    );
}

/// Without the guard (a job in another process), live writes still win: no
/// row the adapter wrote is overwritten by history. Rows deleted between
/// the scan and the copy may come back in New; reconciliation finds those.
#[test]
fn an_unguarded_backfill_never_overwrites_a_live_write() {
    let (old, new, _) = race(false, false);
    // A key in both stores holds the live value in both; a key only in
    // New is a row deleted by a live write after the scan read it.
    for (id, value) in &new {
        if let Some(current) = old.get(id) {
            assert_eq!(value, current, "key {id}: New {value}, Old {current}");
        }
    }
    for id in old.keys() {
        assert!(new.contains_key(id), "key {id} missing in New");
    }
    let extra = new.keys().filter(|id| !old.contains_key(id)).count();
    eprintln!("unguarded backfill: {extra} deleted row(s) copied back into New");
}

/// A job stopped halfway resumes from the SQLite checkpoint in the new
/// database and copies the rest exactly once.
#[test]
fn a_stopped_backfill_resumes_from_its_sqlite_checkpoint() {
    let dir = scratch("resume");
    let (old_path, new_path) = history(&dir);
    let control = BackfillControl::default();
    let job = |control: BackfillControl| {
        Backfill::new(
            SqliteSource::<i64>::new(open(&old_path), "items", "id", &["value"]),
            SqliteSink::<i64>::new(open(&new_path), "items", "id", &["value"]),
        )
        .with_batch(1_000)
        .with_control(control)
        .with_checkpoint(SqliteCheckpoint::new(open(&new_path), "items").expect("checkpoint"))
    };
    let mut first = job(control.clone());
    let progress = first.progress();
    let stopper = {
        let control = control.clone();
        thread::spawn(move || {
            while progress.snapshot().done < 5_000 {
                thread::sleep(Duration::from_millis(1));
            }
            control.stop();
        })
    };
    control.set_rate(100_000);
    let stopped = first.run().expect("first run");
    stopper.join().expect("stopper");
    assert!(!stopped.finished, "{stopped:?}");
    let resumed = job(BackfillControl::default()).run().expect("second run");
    assert!(resumed.finished);
    assert_eq!(
        stopped.rows + resumed.rows,
        ROWS as u64,
        "{stopped:?} {resumed:?}"
    );
    assert_eq!(resumed.written, resumed.rows, "nothing was written twice");
    let old = Db(Mutex::new(open(&old_path))).rows();
    let new = Db(Mutex::new(open(&new_path))).rows();
    assert_eq!(old, new);
    let _ = std::fs::remove_dir_all(&dir);
}

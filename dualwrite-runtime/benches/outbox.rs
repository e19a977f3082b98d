//! Cost of the outbox strategy on SQLite files (plain timing, a table per
//! part).
//!
//! ```text
//! cargo bench -p dualwrite-runtime --features outbox-sqlite --bench outbox
//! ```
//!
//! 1. **Caller latency** (p50, p99, p99.9 of one caller's `put` calls, and
//!    the ratio of each to primary-only) for: primary only (`Prepare`); the
//!    outbox with the record inserted in the primary's transaction; the
//!    outbox appending after the primary (per-write durability, and group
//!    commit); async lanes. Every mode has its own files; modes run
//!    interleaved in blocks of 250 calls, each cycle starting one mode
//!    later, so drift on the machine hits them alike. Run twice: with the
//!    primary's connection at `synchronous=FULL` (every commit flushed, as
//!    durable as the journal) and at `NORMAL` (WAL: commits not flushed).
//! 2. **Journal append throughput** per durability policy, from 1 and 4
//!    threads appending directly (records per commit for group commit).
//! 3. **Drain throughput**: 20 000 pending records applied by 1, 2 and 4
//!    appliers into a SQLite secondary and into an in-memory one.
//!
//! 4. **The caller latency of part 1 at a steady rate** (part `paced`):
//!    `DW_OUTBOX_RATE` calls a second (default 500), `DW_OUTBOX_PACED_CALLS`
//!    calls per mode (default 1 000): the comfortable case beside the
//!    saturated one.
//!
//! Environment: `DW_OUTBOX_CALLS` (calls per mode, default 5 000),
//! `DW_OUTBOX_ROUNDS` (rounds of part 1, default 3; a summary gives the
//! median and range of the ratios),
//! `DW_OUTBOX_PARTS` (e.g. `latency,paced,append,drain`; default all),
//! `DW_OUTBOX_DRAIN` (records to drain, default 20 000).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dualwrite_runtime::outbox::sqlite::{self, SqliteJournal};
use dualwrite_runtime::outbox::{
    Durability, IdempotencyId, Journal, NewRecord, OutboxConfig, Side, WriteContext,
};
use dualwrite_runtime::{LaneConfig, Migration, Phase, RoutingKey, Store, dual_write};
use rusqlite::{Connection, params};

#[derive(Debug, Clone)]
pub struct BenchError(String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<rusqlite::Error> for BenchError {
    fn from(error: rusqlite::Error) -> Self {
        BenchError(error.to_string())
    }
}

#[dual_write(serde)]
pub trait Kv {
    #[dual_write(key = id)]
    fn put(&self, id: i64, value: i64) -> Result<(), BenchError>;
}

/// A SQLite file with one table; optionally journals in its transaction.
pub struct SqlKv {
    conn: Mutex<Connection>,
    journal_in_tx: bool,
}

impl SqlKv {
    fn open(path: &Path, synchronous: &str, journal_in_tx: bool) -> Self {
        let mut conn = Connection::open(path).expect("open");
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};
             CREATE TABLE IF NOT EXISTS kv (id INTEGER PRIMARY KEY, value INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 0);"
        ))
        .expect("schema");
        sqlite::short_busy_handler(&mut conn).expect("busy handler");
        SqlKv {
            conn: Mutex::new(conn),
            journal_in_tx,
        }
    }
}

impl Kv for SqlKv {
    fn put(&self, id: i64, value: i64) -> Result<(), BenchError> {
        let ctx = WriteContext::current();
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        match ctx.as_ref().filter(|ctx| ctx.side() == Side::Apply) {
            Some(ctx) => tx.execute(
                "INSERT INTO kv (id, value, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET value = excluded.value, version = excluded.version
                 WHERE kv.version < excluded.version",
                params![id, value, ctx.version()],
            )?,
            None => tx.execute(
                "INSERT INTO kv (id, value) VALUES (?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET value = excluded.value",
                params![id, value],
            )?,
        };
        if self.journal_in_tx
            && let Some(ctx) = ctx.filter(|ctx| ctx.side() == Side::Primary)
        {
            sqlite::append_in(&tx, &ctx)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// An in-memory secondary (the journal's own cost when draining).
#[derive(Default)]
pub struct MemKv(Mutex<HashMap<i64, i64>>);

impl Kv for MemKv {
    fn put(&self, id: i64, value: i64) -> Result<(), BenchError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, value);
        Ok(())
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dualwrite-bench-outbox-{name}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn outbox_config(appliers: usize) -> OutboxConfig {
    OutboxConfig::default()
        .with_appliers(appliers)
        .with_poll_interval(Duration::from_millis(5))
}

/// One strategy under test: a name and a call.
struct Mode {
    name: &'static str,
    call: Box<dyn Fn(i64, i64)>,
    samples: Vec<u64>,
    /// Drains the mode's secondary writes (untimed).
    drain: Box<dyn Fn()>,
}

fn mode<O, N>(name: &'static str, adapter: KvDualWrite<O, N>) -> Mode
where
    O: Kv + Send + Sync + 'static,
    N: Kv + Send + Sync + 'static,
{
    let adapter = Arc::new(adapter);
    let drain = Arc::clone(&adapter);
    Mode {
        name,
        call: Box::new(move |id, value| adapter.put(id, value).expect("put")),
        samples: Vec::new(),
        drain: Box::new(move || {
            let _ = drain.flush(Duration::from_secs(120));
        }),
    }
}

fn latency_modes(dir: &Path, synchronous: &str) -> Vec<Mode> {
    let files = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("dir");
        d
    };
    let mut modes = Vec::new();

    let d = files("primary");
    modes.push(mode(
        "primary only (Prepare)",
        KvDualWrite::new(
            SqlKv::open(&d.join("old.db"), synchronous, false),
            SqlKv::open(&d.join("new.db"), "NORMAL", false),
            Migration::new(Phase::Prepare),
        ),
    ));

    let d = files("transactional");
    let old = SqlKv::open(&d.join("old.db"), synchronous, true);
    let journal = Arc::new(SqliteJournal::open(d.join("old.db"), Durability::PerWrite).unwrap());
    modes.push(mode(
        "outbox, in the primary's transaction",
        KvDualWrite::new(
            old,
            SqlKv::open(&d.join("new.db"), "NORMAL", false),
            Migration::new(Phase::DualWrite),
        )
        .with_outbox(journal, outbox_config(1))
        .unwrap(),
    ));

    for (name, durability, dir_name) in [
        (
            "outbox, appended after, per write (FULL)",
            Durability::PerWrite,
            "after-per-write",
        ),
        (
            "outbox, appended after, grouped (FULL)",
            Durability::Grouped,
            "after-grouped",
        ),
        (
            "outbox, appended after, no flush (OFF)",
            Durability::None,
            "after-unflushed",
        ),
    ] {
        let d = files(dir_name);
        let journal = Arc::new(SqliteJournal::open(d.join("journal.db"), durability).unwrap());
        modes.push(mode(
            name,
            KvDualWrite::new(
                SqlKv::open(&d.join("old.db"), synchronous, false),
                SqlKv::open(&d.join("new.db"), "NORMAL", false),
                Migration::new(Phase::DualWrite),
            )
            .with_outbox(journal, outbox_config(1))
            .unwrap(),
        ));
    }

    let d = files("lanes");
    modes.push(mode(
        "async lanes (1 lane)",
        KvDualWrite::new(
            SqlKv::open(&d.join("old.db"), synchronous, false),
            SqlKv::open(&d.join("new.db"), "NORMAL", false),
            Migration::new(Phase::DualWrite),
        )
        .with_async_secondary(LaneConfig::default().with_lanes(1)),
    ));
    modes
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn micros(nanos: u64) -> String {
    format!("{:.1} µs", nanos as f64 / 1_000.0)
}

/// One mode's percentiles in one round: (p50, p99, p99.9), nanoseconds.
type Percentiles = (u64, u64, u64);

fn latency(
    synchronous: &str,
    rate: Option<usize>,
    round: usize,
    rounds: usize,
) -> Vec<(&'static str, Percentiles)> {
    let calls = match rate {
        None => env_usize("DW_OUTBOX_CALLS", 5_000),
        Some(_) => env_usize("DW_OUTBOX_PACED_CALLS", 1_000),
    };
    let interval = rate.map(|rate| Duration::from_nanos(1_000_000_000 / rate.max(1) as u64));
    let mut due = Instant::now();
    let block = 250;
    let dir = temp_dir(&format!("latency-{synchronous}"));
    let mut modes = latency_modes(&dir, synchronous);
    let keys = 1_000_i64;
    let value = AtomicU64::new(0);
    let next = || i64::try_from(value.fetch_add(1, Ordering::Relaxed)).unwrap_or(0);
    // Warm-up: each mode's files and caches.
    for mode in &modes {
        for _ in 0..500 {
            let v = next();
            (mode.call)(v % keys, v);
        }
        (mode.drain)();
    }
    let cycles = calls.div_ceil(block);
    for cycle in 0..cycles {
        for offset in 0..modes.len() {
            let index = (cycle + offset) % modes.len();
            let mode = &mut modes[index];
            for _ in 0..block {
                let v = next();
                let started = Instant::now();
                (mode.call)(v % keys, v);
                mode.samples
                    .push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
                if let Some(interval) = interval {
                    due = due.max(started) + interval;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        }
    }
    for mode in &modes {
        (mode.drain)();
    }
    println!();
    let pace = rate.map_or_else(
        || "back to back".to_owned(),
        |rate| format!("{rate} calls/s"),
    );
    println!(
        "(1) caller latency, SQLite files, primary at synchronous={synchronous}, {calls} calls per mode ({pace}), 1 caller, round {round}/{rounds}"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "mode", "p50", "p99", "p99.9", "p50 ×", "p99 ×"
    );
    let mut base = (0, 0);
    let mut results = Vec::new();
    for (index, mode) in modes.iter_mut().enumerate() {
        mode.samples.sort_unstable();
        let (p50, p99, p999) = (
            percentile(&mode.samples, 50.0),
            percentile(&mode.samples, 99.0),
            percentile(&mode.samples, 99.9),
        );
        if index == 0 {
            base = (p50.max(1), p99.max(1));
        }
        println!(
            "{:<44} {:>10} {:>10} {:>10} {:>9.3} {:>9.3}",
            mode.name,
            micros(p50),
            micros(p99),
            micros(p999),
            p50 as f64 / base.0 as f64,
            p99 as f64 / base.1 as f64
        );
        results.push((mode.name, (p50, p99, p999)));
    }
    drop(modes);
    let _ = std::fs::remove_dir_all(&dir);
    results
}

/// The median and range of each mode's p50 and p99 ratios to the first
/// mode's, over the rounds.
fn summary(synchronous: &str, pace: &str, rounds: &[Vec<(&'static str, Percentiles)>]) {
    let Some(first) = rounds.first() else {
        return;
    };
    println!();
    println!(
        "(1) summary, primary at synchronous={synchronous}, {pace}: median (range) over {} rounds",
        rounds.len()
    );
    println!(
        "{:<44} {:>10} {:>10} {:>22} {:>22}",
        "mode", "p50", "p99", "p50 ×", "p99 ×"
    );
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        (
            values[values.len() / 2],
            values[0],
            values[values.len() - 1],
        )
    };
    for (index, (name, _)) in first.iter().enumerate() {
        let ratio = |pick: fn(&Percentiles) -> u64| {
            median(
                rounds
                    .iter()
                    .map(|round| pick(&round[index].1) as f64 / pick(&round[0].1).max(1) as f64)
                    .collect(),
            )
        };
        let absolute = |pick: fn(&Percentiles) -> u64| {
            median(
                rounds
                    .iter()
                    .map(|round| pick(&round[index].1) as f64)
                    .collect(),
            )
            .0 as u64
        };
        let (p50, p50_low, p50_high) = ratio(|p| p.0);
        let (p99, p99_low, p99_high) = ratio(|p| p.1);
        println!(
            "{:<44} {:>10} {:>10} {:>22} {:>22}",
            name,
            micros(absolute(|p| p.0)),
            micros(absolute(|p| p.1)),
            format!("{p50:.3} ({p50_low:.3}–{p50_high:.3})"),
            format!("{p99:.3} ({p99_low:.3}–{p99_high:.3})"),
        );
    }
}

fn record(journal: &SqliteJournal, key: i64, value: i64) -> NewRecord {
    NewRecord {
        stream: "KvWrite".to_owned(),
        idempotency_id: IdempotencyId::generate(),
        sequence: journal.next_sequence(),
        key_text: Some(key.to_string()),
        key_hash: Some(key.route_hash()),
        method: "put".to_owned(),
        target: Store::New,
        payload: format!("{{\"Put\":{{\"id\":{key},\"value\":{value}}}}}"),
    }
}

fn append_throughput() {
    println!();
    println!("(2) journal append throughput (direct appends, ~2 s per case)");
    println!(
        "{:<26} {:>8} {:>14} {:>16} {:>12}",
        "durability", "threads", "appends/s", "records/commit", "mean µs"
    );
    for durability in [Durability::PerWrite, Durability::Grouped, Durability::None] {
        for threads in [1_usize, 4] {
            let dir = temp_dir("append");
            let journal =
                Arc::new(SqliteJournal::open(dir.join("journal.db"), durability).unwrap());
            let stop = Instant::now() + Duration::from_secs(2);
            let started = Instant::now();
            let handles: Vec<_> = (0..threads)
                .map(|thread| {
                    let journal = Arc::clone(&journal);
                    std::thread::spawn(move || {
                        let mut n = 0_i64;
                        while Instant::now() < stop {
                            let r = record(&journal, thread as i64 * 1_000_000 + n % 1_000, n);
                            journal.append(&r).expect("append");
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            let total: i64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            let elapsed = started.elapsed().as_secs_f64();
            let stats = journal.commit_stats();
            println!(
                "{:<26} {:>8} {:>14.0} {:>16.2} {:>12.1}",
                format!("{durability:?}"),
                threads,
                total as f64 / elapsed,
                stats.records as f64 / stats.commits.max(1) as f64,
                elapsed * 1e6 * threads as f64 / total.max(1) as f64
            );
            drop(journal);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn drain_throughput() {
    let records = env_usize("DW_OUTBOX_DRAIN", 20_000);
    println!();
    println!("(3) drain throughput: {records} pending records, 1 000 keys");
    println!(
        "{:<26} {:>9} {:>12} {:>14}",
        "secondary", "appliers", "seconds", "records/s"
    );
    for secondary in ["SQLite file (NORMAL)", "in memory"] {
        for appliers in [1_usize, 2, 4] {
            let dir = temp_dir("drain");
            let journal =
                Arc::new(SqliteJournal::open(dir.join("journal.db"), Durability::None).unwrap());
            // Appended directly (no durability, to fill fast), as a crash
            // would leave them.
            for n in 0..records as i64 {
                journal.append(&record(&journal, n % 1_000, n)).unwrap();
            }
            let old = SqlKv::open(&dir.join("old.db"), "NORMAL", false);
            let started = Instant::now();
            let flushed = if secondary == "in memory" {
                let adapter =
                    KvDualWrite::new(old, MemKv::default(), Migration::new(Phase::DualWrite))
                        .with_outbox(journal.clone(), outbox_config(appliers))
                        .unwrap();
                adapter.flush(Duration::from_secs(600)).is_ok()
            } else {
                let adapter = KvDualWrite::new(
                    old,
                    SqlKv::open(&dir.join("new.db"), "NORMAL", false),
                    Migration::new(Phase::DualWrite),
                )
                .with_outbox(journal.clone(), outbox_config(appliers))
                .unwrap();
                adapter.flush(Duration::from_secs(600)).is_ok()
            };
            let elapsed = started.elapsed().as_secs_f64();
            assert!(flushed, "drained");
            println!(
                "{:<26} {:>9} {:>12.2} {:>14.0}",
                secondary,
                appliers,
                elapsed,
                records as f64 / elapsed
            );
            drop(journal);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the line.
    let parts =
        std::env::var("DW_OUTBOX_PARTS").unwrap_or_else(|_| "latency,paced,append,drain".into());
    println!(
        "outbox benchmark (release build; {} CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let rounds = env_usize("DW_OUTBOX_ROUNDS", 3).max(1);
    // Back to back (the machine saturated by one caller and the appliers),
    // and at a steady rate (the comfortable case), side by side.
    let mut paces = Vec::new();
    if parts.contains("latency") {
        paces.push(None);
    }
    if parts.contains("paced") {
        paces.push(Some(env_usize("DW_OUTBOX_RATE", 500)));
    }
    for rate in paces {
        let pace = rate.map_or_else(
            || "back to back".to_owned(),
            |rate| format!("{rate} calls/s"),
        );
        for synchronous in ["FULL", "NORMAL"] {
            let results: Vec<_> = (1..=rounds)
                .map(|round| latency(synchronous, rate, round, rounds))
                .collect();
            summary(synchronous, &pace, &results);
        }
    }
    if parts.contains("append") {
        append_throughput();
    }
    if parts.contains("drain") {
        drain_throughput();
    }
}

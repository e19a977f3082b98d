//! End-to-end lag of the outbox relayed through NATS JetStream, against
//! the outbox's local appliers, and the caller's latency against
//! primary-only, under a steady paced load (plain timing, one table).
//!
//! ```text
//! DUALWRITE_NATS_URL=nats://127.0.0.1:4222 \
//!   cargo bench -p dualwrite-runtime --features outbox-sqlite,outbox-nats --bench outbox_nats
//! ```
//!
//! One caller writes `put(key, value)` at a fixed rate (`DW_NATS_RATE`
//! calls per second, default 1 000) for `DW_NATS_SECONDS` (default 10) per
//! mode, over 1 000 keys, into SQLite files (primary and secondary at
//! `synchronous=NORMAL`, journal with per-write durability). The lag of a
//! write is the time from its primary commit (taken in the primary store,
//! after the commit) to the end of its secondary apply (taken in the
//! secondary store). Modes: primary only (`Prepare`), outbox with local
//! appliers, outbox relayed through JetStream (4 partitions).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dualwrite_runtime::outbox::nats::NatsConfig;
use dualwrite_runtime::outbox::sqlite::{self, SqliteJournal};
use dualwrite_runtime::outbox::{Durability, OutboxConfig, Side, WriteContext};
use dualwrite_runtime::{Migration, Phase, dual_write};
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

/// Commit instants of primary writes and the lags measured at apply.
#[derive(Default)]
struct Clock {
    committed: Mutex<HashMap<i64, Instant>>,
    lags: Mutex<Vec<u64>>,
}

/// A SQLite file with one table; as the primary it notes each commit's
/// instant, as the secondary (an apply) the lag since it.
pub struct TimedKv {
    conn: Mutex<Connection>,
    clock: Arc<Clock>,
}

impl TimedKv {
    fn open(path: &Path, clock: Arc<Clock>) -> Self {
        let mut conn = Connection::open(path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS kv (id INTEGER PRIMARY KEY, value INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 0);",
        )
        .expect("schema");
        sqlite::short_busy_handler(&mut conn).expect("busy handler");
        TimedKv {
            conn: Mutex::new(conn),
            clock,
        }
    }
}

impl Kv for TimedKv {
    fn put(&self, id: i64, value: i64) -> Result<(), BenchError> {
        let apply = WriteContext::current().filter(|ctx| ctx.side() == Side::Apply);
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        match &apply {
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
        tx.commit()?;
        drop(conn);
        let now = Instant::now();
        if apply.is_some() {
            let committed = self
                .clock
                .committed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&value);
            if let Some(at) = committed {
                let lag = u64::try_from(now.duration_since(at).as_nanos()).unwrap_or(u64::MAX);
                self.clock
                    .lags
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(lag);
            }
        } else {
            self.clock
                .committed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(value, now);
        }
        Ok(())
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dualwrite-bench-nats-{name}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

#[derive(Clone, Copy)]
enum Mode {
    PrimaryOnly,
    LocalAppliers,
    Nats,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PrimaryOnly => "primary only",
            Mode::LocalAppliers => "outbox, local appliers",
            Mode::Nats => "outbox, NATS JetStream relay",
        }
    }
}

struct Result_ {
    caller: Vec<u64>,
    lags: Vec<u64>,
    writes: usize,
}

fn run(mode: Mode, url: &str, rate: u64, seconds: u64) -> Result_ {
    let dir = temp_dir(mode.name().split(',').next().unwrap_or("mode").trim());
    let clock = Arc::new(Clock::default());
    let old = TimedKv::open(&dir.join("old.db"), Arc::clone(&clock));
    let new = TimedKv::open(&dir.join("new.db"), Arc::clone(&clock));
    let phase = match mode {
        Mode::PrimaryOnly => Phase::Prepare,
        _ => Phase::DualWrite,
    };
    let adapter = KvDualWrite::new(old, new, Migration::new(phase));
    let stream = format!("bench_{}", std::process::id());
    let config = OutboxConfig::default()
        .with_stream(stream.clone())
        .with_poll_interval(Duration::from_millis(5));
    let journal = || {
        Arc::new(
            SqliteJournal::open(dir.join("journal.db"), Durability::PerWrite).expect("journal"),
        )
    };
    let adapter = match mode {
        Mode::PrimaryOnly => adapter,
        Mode::LocalAppliers => adapter.with_outbox(journal(), config).expect("outbox"),
        Mode::Nats => adapter
            .with_outbox_relay(journal(), config, NatsConfig::new(url))
            .expect("relay"),
    };
    let keys = 1_000_i64;
    // Warm-up (not measured).
    for v in 0..500 {
        adapter.put(v % keys, -1 - v).expect("put");
    }
    adapter
        .flush(Duration::from_secs(60))
        .expect("warm-up drained");
    clock.lags.lock().unwrap().clear();
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let total = rate * seconds;
    let mut caller = Vec::with_capacity(total as usize);
    let start = Instant::now();
    for n in 0..total {
        let slot = start + interval * u32::try_from(n).unwrap_or(u32::MAX);
        let now = Instant::now();
        if slot > now {
            std::thread::sleep(slot - now);
        }
        let value = i64::try_from(n).unwrap_or(i64::MAX);
        let began = Instant::now();
        adapter.put(value % keys, value).expect("put");
        caller.push(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    adapter.flush(Duration::from_secs(120)).expect("drained");
    let lags = std::mem::take(&mut *clock.lags.lock().unwrap());
    drop(adapter);
    if matches!(mode, Mode::Nats) {
        delete_stream(url, &stream);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Result_ {
        caller,
        lags,
        writes: total as usize,
    }
}

fn delete_stream(url: &str, stream: &str) {
    let name = NatsConfig::default().stream_name_for(stream);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        if let Ok(client) = async_nats::connect(url).await {
            let _ = async_nats::jetstream::new(client)
                .delete_stream(&name)
                .await;
        }
    });
}

fn main() {
    let url =
        std::env::var("DUALWRITE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let reachable = url
        .trim_start_matches("nats://")
        .parse::<std::net::SocketAddr>()
        .ok()
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        });
    if !reachable {
        println!("skipped: no NATS server at {url} (set DUALWRITE_NATS_URL)");
        return;
    }
    let rate = env_u64("DW_NATS_RATE", 1_000);
    let seconds = env_u64("DW_NATS_SECONDS", 10);
    println!(
        "outbox through NATS JetStream (release build; {} CPUs): 1 caller at {rate} calls/s for {seconds} s per mode, 1 000 keys",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<30} {:>7} {:>11} {:>11} {:>7} {:>11} {:>11} {:>11}",
        "mode", "writes", "caller p50", "caller p99", "p99 ×", "lag p50", "lag p99", "lag max"
    );
    let mut base = None;
    for mode in [Mode::PrimaryOnly, Mode::LocalAppliers, Mode::Nats] {
        let mut result = run(mode, &url, rate, seconds);
        result.caller.sort_unstable();
        result.lags.sort_unstable();
        let p99 = percentile(&result.caller, 99.0);
        let base = *base.get_or_insert(p99.max(1));
        let lag = |p: f64| {
            if result.lags.is_empty() {
                "-".to_owned()
            } else {
                micros(percentile(&result.lags, p))
            }
        };
        println!(
            "{:<30} {:>7} {:>11} {:>11} {:>7.2} {:>11} {:>11} {:>11}",
            mode.name(),
            result.writes,
            micros(percentile(&result.caller, 50.0)),
            micros(p99),
            p99 as f64 / base as f64,
            lag(50.0),
            lag(99.0),
            lag(100.0)
        );
    }
}

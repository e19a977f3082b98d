//! Cost of change data capture with a PostgreSQL (or MariaDB) primary and
//! a SQLite-file secondary (plain timing, a table per part).
//!
//! ```text
//! DUALWRITE_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench -p dualwrite-runtime --features cdc-postgres,cdc-mariadb --bench cdc
//! DW_CDC_SOURCE=mariadb DUALWRITE_MARIADB_URL=mysql://root@127.0.0.1:3306/test \
//!     cargo bench -p dualwrite-runtime --features cdc-postgres,cdc-mariadb --bench cdc
//! ```
//!
//! With `DW_CDC_SOURCE=mariadb` the primary is a MariaDB table and the
//! follower reads the server's binary log (pushed by the server, no polls).
//!
//! 1. **Caller latency** (p50, p99, p99.9 of one caller's `put` calls, and
//!    the ratio to primary-only): primary only (`Prepare`, no follower
//!    running) against CDC (`DualWrite`, the follower polling the slot and
//!    the appliers writing the SQLite secondary). The modes alternate in
//!    blocks (each block starts its own adapter; the CDC block's follower
//!    and appliers run only during it, so its load on the server is in its
//!    figures), the first mode alternating between rounds; the summary
//!    gives the median and range of the per-round ratios. A CDC block is
//!    timed once its follower has caught up with the slot (which holds the
//!    other block's writes); `DW_CDC_CATCH_UP=0` times it from the start.
//! 2. **The same at a steady load** of `DW_CDC_RATE` writes a second
//!    (blocks of three seconds): the comfortable case beside the saturated
//!    one.
//! 3. **End-to-end lag** (the primary's commit, as the caller's `put`
//!    returns, to the secondary's apply, as the applier's store call
//!    returns), p50 / p99 / max, at `DW_CDC_RATE` writes a second for
//!    `DW_CDC_SECONDS` seconds.
//!
//! Environment: `DUALWRITE_POSTGRES_URL` (skipped without it, or when its
//! `wal_level` is not `logical`), `DW_CDC_CALLS` (calls per block, default
//! 2 000), `DW_CDC_ROUNDS` (default 4), `DW_CDC_RATE` (default 500),
//! `DW_CDC_SECONDS` (default 10), `DW_CDC_POLL_MS` (the follower's poll
//! interval, default 10), `DW_CDC_SOURCE` (`postgres` or `mariadb`; the
//! latter needs `DUALWRITE_MARIADB_URL`), `DW_CDC_MARK_MS` (how often the
//! PostgreSQL follower moves its slot's restart point, default 1 000),
//! `DW_CDC_JOURNAL` (`perwrite`, the default, `grouped` or `none`: the
//! journal's durability), `DW_CDC_RENICE` (a diagnostic:
//! the follower's and appliers' threads at this nice level), `DW_CDC_PIN=1`
//! (a diagnostic, with the server on this machine and `taskset`: the
//! caller's thread and the server task serving its connection on CPU 0,
//! everything else of the server's and the bench's on the other CPUs, in
//! both modes: the caller's latency without the CPU the CDC pipeline takes
//! from it, as on a machine with cores to spare).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dualwrite_runtime::cdc::mariadb::MariadbSource;
use dualwrite_runtime::cdc::postgres::PostgresSource;
use dualwrite_runtime::cdc::{Cdc, CdcConfig, ChangeKind, ChangeSource, RowChange};
use dualwrite_runtime::outbox::sqlite::SqliteJournal;
use dualwrite_runtime::outbox::{Durability, OutboxConfig, Side, WriteContext};
use dualwrite_runtime::{Migration, Phase, dual_write};
use mysql::prelude::Queryable;
use rusqlite::{Connection, params};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection as _};

#[derive(Debug, Clone)]
pub struct BenchError(String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[dual_write(serde)]
pub trait Kv {
    #[dual_write(key = id)]
    fn put(&self, id: i64, value: i64) -> Result<(), BenchError>;
}

/// The primary: a PostgreSQL or MariaDB table, one connection.
pub enum PrimaryKv {
    Postgres {
        runtime: tokio::runtime::Runtime,
        conn: Mutex<PgConnection>,
        upsert: String,
    },
    Mariadb {
        conn: Mutex<mysql::Conn>,
        upsert: String,
    },
}

impl PrimaryKv {
    fn connect(server: Server, url: &str, table: &str) -> Self {
        match server {
            Server::Postgres => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let conn = runtime
                    .block_on(PgConnection::connect(url))
                    .expect("connect");
                PrimaryKv::Postgres {
                    runtime,
                    conn: Mutex::new(conn),
                    upsert: format!(
                        "INSERT INTO {table} (id, value) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET value = excluded.value"
                    ),
                }
            }
            Server::Mariadb => PrimaryKv::Mariadb {
                conn: Mutex::new(mysql_conn(url)),
                upsert: format!(
                    "INSERT INTO {table} (id, value) VALUES (?, ?) ON DUPLICATE KEY UPDATE value = VALUES(value)"
                ),
            },
        }
    }
}

impl Kv for PrimaryKv {
    fn put(&self, id: i64, value: i64) -> Result<(), BenchError> {
        match self {
            PrimaryKv::Postgres {
                runtime,
                conn,
                upsert,
            } => {
                let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
                runtime
                    .block_on(
                        sqlx::query(AssertSqlSafe(upsert.clone()))
                            .bind(id)
                            .bind(value)
                            .execute(&mut *conn),
                    )
                    .map(drop)
                    .map_err(|error| BenchError(error.to_string()))
            }
            PrimaryKv::Mariadb { conn, upsert } => conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .exec_drop(upsert.as_str(), (id, value))
                .map_err(|error| BenchError(error.to_string())),
        }
    }
}

impl PrimaryKv {
    /// The OS task of the server serving this connection: PostgreSQL's
    /// backend process, MariaDB's connection thread.
    fn server_task(&self) -> u32 {
        match self {
            PrimaryKv::Postgres { runtime, conn, .. } => {
                let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
                let (pid,): (i32,) = runtime
                    .block_on(sqlx::query_as("SELECT pg_backend_pid()").fetch_one(&mut *conn))
                    .expect("pg_backend_pid");
                pid.unsigned_abs()
            }
            PrimaryKv::Mariadb { conn, .. } => conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .query_first(
                    "SELECT TID FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()",
                )
                .expect("the connection's thread")
                .expect("a thread id"),
        }
    }
}

/// Sets the CPU affinity of OS tasks with `taskset` (`-a`: every thread
/// of the process).
fn taskset(all_threads: bool, cpus: &str, tasks: &[String]) {
    for task in tasks {
        let mut command = std::process::Command::new("taskset");
        if all_threads {
            command.arg("-a");
        }
        let status = command
            .args(["-p", "-c", cpus, task])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !status.is_ok_and(|status| status.success()) {
            eprintln!("taskset -p -c {cpus} {task} failed");
        }
    }
}

/// The server's processes on this machine.
fn server_processes(server: Server) -> Vec<String> {
    let name = match server {
        Server::Postgres => "postgres",
        Server::Mariadb => "mariadbd",
    };
    std::process::Command::new("pgrep")
        .args(["-x", name])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn mysql_conn(url: &str) -> mysql::Conn {
    mysql::Conn::new(mysql::Opts::from_url(url).expect("a mysql:// URL")).expect("connect")
}

/// The server the primary and the change stream are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Mariadb,
}

/// The secondary: a SQLite file (version-guarded upserts), noting when
/// each `(id, value)` was applied.
pub struct SqlKv {
    conn: Mutex<Connection>,
    applied: Mutex<HashMap<(i64, i64), Instant>>,
}

impl SqlKv {
    fn open(path: &Path) -> Self {
        let conn = Connection::open(path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS kv (id INTEGER PRIMARY KEY, value INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 0);",
        )
        .expect("schema");
        SqlKv {
            conn: Mutex::new(conn),
            applied: Mutex::new(HashMap::new()),
        }
    }
}

impl Kv for SqlKv {
    fn put(&self, id: i64, value: i64) -> Result<(), BenchError> {
        let version = WriteContext::current()
            .filter(|ctx| ctx.side() == Side::Apply)
            .map_or(0, |ctx| ctx.version());
        {
            let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
            conn.execute(
                "INSERT INTO kv (id, value, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET value = excluded.value, version = excluded.version
                 WHERE kv.version < excluded.version",
                params![id, value, version],
            )
            .map_err(|error| BenchError(error.to_string()))?;
        }
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((id, value), Instant::now());
        Ok(())
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn on_runtime<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

fn sql(server: Server, url: &str, statement: String) {
    if server == Server::Mariadb {
        mysql_conn(url).query_drop(statement).expect("statement");
        return;
    }
    let url = url.to_owned();
    on_runtime(async move {
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        sqlx::query(AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .expect("statement");
    });
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

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dualwrite-bench-cdc-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn micros(nanos: u64) -> String {
    format!("{:.0} µs", nanos as f64 / 1_000.0)
}

/// The bench's tables and slot (or binary log position); dropped at the end.
struct Setup {
    server: Server,
    url: String,
    plain: String,
    cdc: String,
    slot: String,
    dir: PathBuf,
    /// CPUs on the machine, when `DW_CDC_PIN` is set.
    pin: Option<usize>,
}

impl Setup {
    fn new(server: Server, url: String) -> Self {
        let tag = format!("{}", std::process::id());
        let setup = Setup {
            server,
            plain: format!("dw_bench_plain_{tag}"),
            cdc: format!("dw_bench_cdc_{tag}"),
            slot: format!("dw_bench_cdc_{tag}"),
            dir: temp_dir(),
            url,
            pin: (env("DW_CDC_PIN", 0) == 1)
                .then(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .filter(|&cpus| cpus > 1),
        };
        for table in [&setup.plain, &setup.cdc] {
            sql(
                server,
                &setup.url,
                format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, value BIGINT)"),
            );
        }
        match server {
            Server::Postgres => {
                PostgresSource::create_slot(&setup.url, &setup.slot).expect("create the slot");
            }
            Server::Mariadb => {
                MariadbSource::create_position(&setup.url, &setup.slot)
                    .expect("create the position");
            }
        }
        setup
    }

    fn source(&self) -> Box<dyn ChangeSource> {
        match self.server {
            Server::Postgres => Box::new(
                PostgresSource::new(&self.url, &self.slot)
                    .with_restart_marks(Some(Duration::from_millis(env("DW_CDC_MARK_MS", 1_000)))),
            ),
            Server::Mariadb => Box::new(MariadbSource::new(&self.url, &self.slot)),
        }
    }

    fn primary_only(&self) -> KvDualWrite<PrimaryKv, SqlKv> {
        let primary = PrimaryKv::connect(self.server, &self.url, &self.plain);
        self.pin(&primary);
        KvDualWrite::new(
            primary,
            SqlKv::open(&self.dir.join("plain.db")),
            Migration::new(Phase::Prepare),
        )
    }

    /// `DW_CDC_PIN`: the caller (this thread) and `primary`'s server task
    /// on CPU 0, the rest of the server and of this process (the follower,
    /// the appliers) on the other CPUs.
    fn pin(&self, primary: &PrimaryKv) {
        if self.pin.is_some() {
            self.pin_tasks(primary.server_task());
        }
    }

    /// The same, with the server task given.
    fn pin_tasks(&self, server_task: u32) {
        let Some(cpus) = self.pin else { return };
        let rest = format!("1-{}", cpus - 1);
        taskset(true, &rest, &server_processes(self.server));
        let own = std::process::id().to_string();
        taskset(true, &rest, std::slice::from_ref(&own));
        // The bench calls from its main thread, whose id is the process's.
        taskset(false, "0", &[own, server_task.to_string()]);
    }

    fn with_cdc(&self) -> KvDualWrite<PrimaryKv, SqlKv> {
        let table = self.cdc.clone();
        let source = self.source();
        let cdc = Cdc::new(source, move |change: &RowChange| {
            if change.table != table || change.kind == ChangeKind::Delete {
                return None;
            }
            Some((|| {
                Ok(KvWrite::Put {
                    id: change.parse("id")?,
                    value: change.parse("value")?,
                })
            })())
        })
        .with_config(
            CdcConfig::default()
                .with_poll_interval(Duration::from_millis(env("DW_CDC_POLL_MS", 10))),
        );
        let journal = Arc::new(
            SqliteJournal::open(
                self.dir.join("journal.db"),
                match std::env::var("DW_CDC_JOURNAL").as_deref() {
                    Ok("none") => Durability::None,
                    Ok("grouped") => Durability::Grouped,
                    _ => Durability::PerWrite,
                },
            )
            .expect("journal"),
        );
        let primary = PrimaryKv::connect(self.server, &self.url, &self.cdc);
        let server_task = primary.server_task();
        let adapter = KvDualWrite::new(
            primary,
            SqlKv::open(&self.dir.join("cdc.db")),
            Migration::new(Phase::DualWrite),
        )
        .with_cdc(journal, cdc, OutboxConfig::default())
        .expect("start change data capture");
        // After the follower's and appliers' threads started.
        self.pin_tasks(server_task);
        if let Ok(nice) = std::env::var("DW_CDC_RENICE") {
            renice_background(&nice);
        }
        adapter
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(cpus) = self.pin {
            let all = format!("0-{}", cpus - 1);
            taskset(true, &all, &server_processes(self.server));
        }
        let _ = match self.server {
            Server::Postgres => PostgresSource::drop_slot(&self.url, &self.slot),
            Server::Mariadb => MariadbSource::drop_position(&self.url, &self.slot),
        };
        for table in [&self.plain, &self.cdc] {
            sql(
                self.server,
                &self.url,
                format!("DROP TABLE IF EXISTS {table}"),
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Diagnostic (`DW_CDC_RENICE=19`): lowers the CPU priority of the
/// follower's and the appliers' threads (named `dualwrite-*`).
fn renice_background(nice: &str) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("dualwrite-") {
            let _ = std::process::Command::new("renice")
                .args(["-n", nice, "-p"])
                .arg(task.file_name())
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
}

/// Times `calls` puts, back to back or `rate` a second; the latencies in
/// nanoseconds.
fn block(
    adapter: &KvDualWrite<PrimaryKv, SqlKv>,
    calls: u64,
    rate: Option<u64>,
    next: &mut i64,
) -> Vec<u64> {
    let interval = rate.map(|rate| Duration::from_nanos(1_000_000_000 / rate.max(1)));
    let mut due = Instant::now();
    (0..calls)
        .map(|_| {
            *next += 1;
            let started = Instant::now();
            adapter.put(*next % 1_000, *next).expect("put");
            let took = started.elapsed().as_nanos() as u64;
            if let Some(interval) = interval {
                due += interval;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            took
        })
        .collect()
}

/// Caller latency, primary only against CDC in alternating blocks:
/// back to back (`rate` `None`, the machine saturated) or at a steady
/// `rate` a second (the comfortable case).
fn caller_latency(setup: &Setup, rate: Option<u64>) {
    let calls = match rate {
        None => env("DW_CDC_CALLS", 2_000),
        // Three seconds a block.
        Some(rate) => rate * 3,
    };
    let rounds = env("DW_CDC_ROUNDS", 4);
    if rounds == 0 {
        return;
    }
    let pace = match rate {
        None => "back to back".to_owned(),
        Some(rate) => format!("at {rate} writes/s"),
    };
    println!(
        "## Caller latency, {:?} primary, SQLite-file secondary ({calls} calls a block, {pace})",
        setup.server
    );
    println!();
    println!("| round | mode | p50 | p99 | p99.9 | p99 ratio |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    let (mut all_plain, mut all_cdc) = (Vec::new(), Vec::new());
    let mut next = 0_i64;
    // Warm-up: connections, the slot's first decoding.
    {
        let adapter = setup.primary_only();
        block(&adapter, 200, None, &mut next);
    }
    for round in 0..rounds {
        let mut plain = Vec::new();
        let mut cdc = Vec::new();
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_cdc in order {
            if with_cdc {
                let adapter = setup.with_cdc();
                if env("DW_CDC_CATCH_UP", 1) == 1 {
                    // The follower starts behind: the other block's writes
                    // are in the slot. Timed from its steady state, as a
                    // follower that runs all along would be.
                    adapter.flush(Duration::from_secs(120)).expect("catch up");
                }
                cdc = block(&adapter, calls, rate, &mut next);
                adapter.flush(Duration::from_secs(120)).expect("flush");
                let _ = adapter.shutdown(Duration::from_secs(60));
            } else {
                let adapter = setup.primary_only();
                plain = block(&adapter, calls, rate, &mut next);
            }
        }
        plain.sort_unstable();
        cdc.sort_unstable();
        all_plain.extend_from_slice(&plain);
        all_cdc.extend_from_slice(&cdc);
        let base = percentile(&plain, 99.0).max(1);
        let ratio = percentile(&cdc, 99.0) as f64 / base as f64;
        ratios.push(ratio);
        for (name, samples) in [("primary only", &plain), ("cdc", &cdc)] {
            println!(
                "| {round} | {name} | {} | {} | {} | {:.3} |",
                micros(percentile(samples, 50.0)),
                micros(percentile(samples, 99.0)),
                micros(percentile(samples, 99.9)),
                percentile(samples, 99.0) as f64 / base as f64
            );
        }
    }
    ratios.sort_by(f64::total_cmp);
    all_plain.sort_unstable();
    all_cdc.sort_unstable();
    println!();
    println!(
        "CDC p99 / primary-only p99 ({pace}): median {:.3}, range {:.3} to {:.3} over {rounds} rounds; all rounds' calls pooled: {:.3} ({} against {})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        percentile(&all_cdc, 99.0) as f64 / percentile(&all_plain, 99.0).max(1) as f64,
        micros(percentile(&all_cdc, 99.0)),
        micros(percentile(&all_plain, 99.0)),
    );
    println!();
}

/// Writes at `rate` a second for `seconds`: each write's key and value
/// with the moment its `put` returned.
fn paced(
    adapter: &KvDualWrite<PrimaryKv, SqlKv>,
    rate: u64,
    seconds: u64,
    value: &mut i64,
) -> Vec<((i64, i64), Instant)> {
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let mut committed: Vec<((i64, i64), Instant)> = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut due = start;
    while Instant::now() < end {
        *value += 1;
        let key = (*value % 1_000, *value);
        adapter.put(key.0, key.1).expect("put");
        committed.push((key, Instant::now()));
        due += interval;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    committed
}

fn lag(setup: &Setup) {
    let rate = env("DW_CDC_RATE", 500).max(1);
    let seconds = env("DW_CDC_SECONDS", 10);
    let mut value = 1_000_000_000_i64;
    let adapter = setup.with_cdc();
    adapter.flush(Duration::from_secs(120)).expect("catch up");
    let committed = paced(&adapter, rate, seconds, &mut value);
    adapter.flush(Duration::from_secs(120)).expect("flush");
    let applied = adapter
        .new_store()
        .applied
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut lags: Vec<u64> = committed
        .iter()
        .filter_map(|(key, at)| {
            applied
                .get(key)
                .map(|applied| applied.saturating_duration_since(*at).as_nanos() as u64)
        })
        .collect();
    let missing = committed.len() - lags.len();
    lags.sort_unstable();
    println!(
        "## End-to-end lag (primary commit -> secondary apply), {rate} writes/s for {seconds} s"
    );
    println!();
    println!("| writes | p50 | p99 | max | not applied |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {missing} |",
        committed.len(),
        micros(percentile(&lags, 50.0)),
        micros(percentile(&lags, 99.0)),
        micros(lags.last().copied().unwrap_or(0))
    );
    let _ = adapter.shutdown(Duration::from_secs(60));
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let server = match std::env::var("DW_CDC_SOURCE").as_deref() {
        Ok("mariadb") => Server::Mariadb,
        _ => Server::Postgres,
    };
    let setup = match server {
        Server::Postgres => {
            let Ok(url) = std::env::var("DUALWRITE_POSTGRES_URL") else {
                println!(
                    "skipped: cdc bench: set DUALWRITE_POSTGRES_URL to a PostgreSQL server with wal_level = logical"
                );
                return;
            };
            let level = wal_level(&url);
            if level != "logical" {
                println!("skipped: cdc bench: the server's wal_level is `{level}`, not `logical`");
                return;
            }
            Setup::new(server, url)
        }
        Server::Mariadb => {
            let Ok(url) = std::env::var("DUALWRITE_MARIADB_URL") else {
                println!(
                    "skipped: cdc bench: set DUALWRITE_MARIADB_URL to a MariaDB server with the binary log on"
                );
                return;
            };
            Setup::new(server, url)
        }
    };
    caller_latency(&setup, None);
    caller_latency(&setup, Some(env("DW_CDC_RATE", 500).max(1)));
    lag(&setup);
}

//! Cost of the generated dual-write adapter.
//!
//! ```text
//! cargo bench -p dualwrite-runtime --bench adapter -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Part 1 (criterion, means): per-call overhead of the adapter on in-memory
//! stores, against calling the store directly:
//!
//! * `prepare/*`: `Phase::Prepare` (primary only) vs one direct call;
//! * `dual_write_sync/*`: `Phase::DualWrite`, synchronous tolerant secondary,
//!   vs two direct calls; `adapter_bounded` with the blocking secondary call bounded
//!   (`with_blocking_secondary_timeout`: a hop to a helper thread);
//! * `handoff/*`: `Phase::DualWrite` with async secondary lanes on an instant
//!   store vs one direct call (back-to-back calls: the lane stays awake).
//!
//! Part 2 (custom, printed after criterion): the caller's latency
//! distribution, p50/p90/p99/p99.9 of 20 000 calls after a warm-up, for the
//! adapter in async-secondary mode vs primary only, on stores with realistic
//! latency: an in-memory store with a simulated 200 µs delay (busy-spin and
//! `thread::sleep` variants) and SQLite files. Modes run interleaved in blocks
//! of 500 calls, so drift on the machine hits them alike, and each cycle of
//! blocks starts one mode later, so every mode follows every other one
//! equally often. The SQLite case also has a
//! reference mode without any hand-off (primary-only while a plain thread,
//! with no adapter or queue, upserts into another file): what any concurrent
//! secondary write costs the caller on the machine. It runs
//! `DW_LATENCY_ROUNDS` rounds (default 5) and prints the spread of its p99
//! ratios. Set `DW_LATENCY=0` to skip part 2,
//! `DW_LATENCY=sqlite` to run only its SQLite case, `DW_LATENCY=shadow` only
//! the shadow-read case (caller p99 of reads with shadow comparison off,
//! inline and in the background), `DW_LATENCY_CALLS=N` to
//! change the number of calls.

use std::collections::HashMap;
use std::fmt;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group};
use dualwrite_runtime::{
    LaneConfig, LaneQueue, Migration, Phase, PhaseChange, Role, RoutingKey, ShadowConfig, Stats,
    Store, SyncMode, dual_write,
};
use rusqlite::{Connection, params};

// ---------------------------------------------------------------------------
// The repository and the stores
// ---------------------------------------------------------------------------

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

#[dual_write]
pub trait Kv {
    #[dual_write(key = key)]
    fn put(&self, key: u64, value: u64) -> Result<(), BenchError>;
    #[dual_write(key = key)]
    fn get(&self, key: u64) -> Result<Option<u64>, BenchError>;
}

const SLOTS: usize = 1024;

/// The longest a flush outside the timed sections may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The cheapest possible store: one relaxed atomic store.
pub struct AtomicStore(Box<[AtomicU64]>);

impl AtomicStore {
    fn new() -> Self {
        AtomicStore((0..SLOTS).map(|_| AtomicU64::new(0)).collect())
    }
}

impl Kv for AtomicStore {
    fn put(&self, key: u64, value: u64) -> Result<(), BenchError> {
        self.0[key as usize % SLOTS].store(value, Ordering::Relaxed);
        Ok(())
    }

    fn get(&self, key: u64) -> Result<Option<u64>, BenchError> {
        Ok(Some(self.0[key as usize % SLOTS].load(Ordering::Relaxed)))
    }
}

/// A small but realistic in-memory store: a mutex-guarded hash map
/// (bounded to `SLOTS` keys so it does not grow during the run).
#[derive(Default)]
pub struct MapStore(Mutex<HashMap<u64, u64>>);

impl Kv for MapStore {
    fn put(&self, key: u64, value: u64) -> Result<(), BenchError> {
        self.0
            .lock()
            .map_err(|_| BenchError("poisoned".into()))?
            .insert(key % SLOTS as u64, value);
        Ok(())
    }

    fn get(&self, key: u64) -> Result<Option<u64>, BenchError> {
        Ok(self
            .0
            .lock()
            .map_err(|_| BenchError("poisoned".into()))?
            .get(&(key % SLOTS as u64))
            .copied())
    }
}

/// How [`DelayStore`] spends its simulated latency.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Delay {
    /// No delay at all.
    None,
    /// Busy-wait (models CPU-bound work; occupies a core).
    Spin(Duration),
    /// `thread::sleep` (models blocking I/O; frees the core, but the kernel
    /// timer adds its own slack, ~50-60 µs on Linux).
    Sleep(Duration),
}

pub struct DelayStore {
    delay: Delay,
    slots: AtomicStore,
}

impl DelayStore {
    fn new(delay: Delay) -> Self {
        DelayStore {
            delay,
            slots: AtomicStore::new(),
        }
    }
}

fn spin_for(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

impl DelayStore {
    fn wait(&self) {
        match self.delay {
            Delay::None => {}
            Delay::Spin(duration) => spin_for(duration),
            Delay::Sleep(duration) => std::thread::sleep(duration),
        }
    }
}

impl Kv for DelayStore {
    fn put(&self, key: u64, value: u64) -> Result<(), BenchError> {
        self.wait();
        self.slots.put(key, value)
    }

    fn get(&self, key: u64) -> Result<Option<u64>, BenchError> {
        self.wait();
        self.slots.get(key)
    }
}

/// A SQLite file (WAL, `synchronous = NORMAL`: no fsync per commit). Clones
/// share the connection.
#[derive(Clone)]
pub struct SqliteStore(std::sync::Arc<Mutex<Connection>>);

impl SqliteStore {
    fn open(path: &Path) -> Result<Self, BenchError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v INTEGER NOT NULL);",
        )?;
        Ok(SqliteStore(std::sync::Arc::new(Mutex::new(conn))))
    }
}

impl Kv for SqliteStore {
    fn put(&self, key: u64, value: u64) -> Result<(), BenchError> {
        let conn = self.0.lock().map_err(|_| BenchError("poisoned".into()))?;
        let mut statement = conn.prepare_cached(
            "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        )?;
        // Keys and values stay far below i64::MAX.
        statement.execute(params![key as i64, value as i64])?;
        Ok(())
    }

    fn get(&self, key: u64) -> Result<Option<u64>, BenchError> {
        let conn = self.0.lock().map_err(|_| BenchError("poisoned".into()))?;
        let mut statement = conn.prepare_cached("SELECT v FROM kv WHERE k = ?1")?;
        let mut rows = statement.query(params![key as i64])?;
        match rows.next()? {
            Some(row) => Ok(Some(row.get::<_, i64>(0)? as u64)),
            None => Ok(None),
        }
    }
}

fn lanes(count: usize) -> LaneConfig {
    let config = LaneConfig::default().with_lanes(count);
    // `DW_IDLE_POLL_US` overrides how long idle lanes poll before sleeping.
    match std::env::var("DW_IDLE_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(us) => config.with_idle_poll(Duration::from_micros(us)),
        None => config,
    }
}

// ---------------------------------------------------------------------------
// Part 1: criterion
// ---------------------------------------------------------------------------

fn bench_pair<S: Kv + Send + Sync + 'static>(c: &mut Criterion, name: &str, make: impl Fn() -> S) {
    // -- Phase::Prepare vs one direct call ----------------------------------
    let mut group = c.benchmark_group(format!("prepare/{name}"));
    let direct = make();
    let mut i = 0_u64;
    group.bench_function("direct", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&direct).put(black_box(i), i)
        })
    });
    let adapter = KvDualWrite::new(make(), make(), Migration::new(Phase::Prepare));
    group.bench_function("adapter", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&adapter).put(black_box(i), i)
        })
    });
    // Any per-key override switches `Migration::phase_for` to its slow path
    // for every keyed call (renders the key, looks it up).
    let migration = Migration::new(Phase::Prepare);
    migration
        .set_phase_for(&u64::MAX, Phase::Prepare)
        .expect("an override is allowed");
    let adapter_override = KvDualWrite::new(make(), make(), migration);
    group.bench_function("adapter_with_an_override", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&adapter_override).put(black_box(i), i)
        })
    });
    // A percentage rollout takes the same slow path, plus the key's bucket
    // (its text hash modulo 10 000) against the rollouts. A rollout of the
    // global phase keeps every call in Prepare.
    let migration = Migration::new(Phase::Prepare);
    migration
        .change(PhaseChange::to(Phase::Prepare).for_percent(10))
        .expect("a rollout is allowed");
    let adapter_rollout = KvDualWrite::new(make(), make(), migration);
    group.bench_function("adapter_with_a_rollout", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&adapter_rollout).put(black_box(i), i)
        })
    });
    group.finish();

    // -- Phase::DualWrite sync tolerant vs two direct calls -----------------
    let mut group = c.benchmark_group(format!("dual_write_sync/{name}"));
    let (first, second) = (make(), make());
    group.bench_function("two_direct", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let ret = black_box(&first).put(black_box(i), i);
            if ret.is_ok() {
                black_box(&second).put(black_box(i), i)
            } else {
                ret
            }
        })
    });
    let adapter = KvDualWrite::new(make(), make(), Migration::new(Phase::DualWrite))
        .with_sync_mode(SyncMode::Tolerant);
    group.bench_function("adapter", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&adapter).put(black_box(i), i)
        })
    });
    // The secondary call bounded: made on a helper thread, waited for.
    let bounded = KvDualWrite::new(make(), make(), Migration::new(Phase::DualWrite))
        .with_sync_mode(SyncMode::Tolerant)
        .with_blocking_secondary_timeout(Some(Duration::from_secs(5)));
    group.bench_function("adapter_bounded", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&bounded).put(black_box(i), i)
        })
    });
    group.finish();
}

fn bench_handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff/instant");
    let direct = AtomicStore::new();
    let mut i = 0_u64;
    group.bench_function("direct", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&direct).put(black_box(i), i)
        })
    });
    for (count, queue) in [
        (1, LaneQueue::Ring),
        (2, LaneQueue::Ring),
        (1, LaneQueue::Channel),
        (2, LaneQueue::Channel),
    ] {
        let adapter = KvDualWrite::new(
            AtomicStore::new(),
            AtomicStore::new(),
            Migration::new(Phase::DualWrite),
        )
        .with_async_secondary(lanes(count).with_queue(queue));
        let name = match queue {
            LaneQueue::Ring => format!("adapter_async_{count}_lanes"),
            LaneQueue::Channel => format!("adapter_async_{count}_lanes_channel"),
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    i = i.wrapping_add(1);
                    let _ = black_box(black_box(&adapter).put(black_box(i), i));
                }
                let elapsed = start.elapsed();
                // Drain the queue outside the timed section.
                adapter.flush(FLUSH_TIMEOUT).expect("flushed");
                elapsed
            })
        });
    }
    group.finish();
}

/// The hand-off while the lanes keep up (an instant secondary) and while
/// they do not (a secondary that takes 1 µs a write, so a backlog builds up
/// through the ring into the overflow). Each sample is a batch of 4 096
/// calls; the queue drains, untimed, between batches, below the bound.
fn bench_handoff_saturation(c: &mut Criterion) {
    const BATCH: u64 = 4_096;
    let mut group = c.benchmark_group("handoff/batch_4096");
    let mut i = 0_u64;
    for (name, delay, queue) in [
        ("unsaturated", Delay::None, LaneQueue::Ring),
        (
            "saturated",
            Delay::Spin(Duration::from_micros(1)),
            LaneQueue::Ring,
        ),
        ("unsaturated_channel", Delay::None, LaneQueue::Channel),
        (
            "saturated_channel",
            Delay::Spin(Duration::from_micros(1)),
            LaneQueue::Channel,
        ),
    ] {
        let adapter = KvDualWrite::new(
            AtomicStore::new(),
            DelayStore::new(delay),
            Migration::new(Phase::DualWrite),
        )
        .with_async_secondary(lanes(1).with_queue(queue));
        group.bench_function(format!("adapter_async_1_lane_{name}"), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let batch = left.min(BATCH);
                    let start = Instant::now();
                    for _ in 0..batch {
                        i = i.wrapping_add(1);
                        let _ = black_box(black_box(&adapter).put(black_box(i), i));
                    }
                    elapsed += start.elapsed();
                    left -= batch;
                    adapter.flush(FLUSH_TIMEOUT).expect("flushed");
                }
                elapsed
            })
        });
    }
    group.finish();
}

/// Per-key sequencing: the stripe held from routing to the hand-off. Alone
/// (one caller), then with a second thread writing all the time, to the same
/// key (every call waits for the other's) or to other keys (stripes rarely
/// shared), in the synchronous strategy over instant stores.
fn bench_sequencing(c: &mut Criterion) {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let mut group = c.benchmark_group("sequencing");
    let mut i = 0_u64;
    let adapter = Arc::new(
        KvDualWrite::new(
            AtomicStore::new(),
            AtomicStore::new(),
            Migration::new(Phase::DualWrite),
        )
        .with_sync_mode(SyncMode::Tolerant),
    );
    group.bench_function("one_caller", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&adapter).put(black_box(i), i)
        })
    });
    for (name, same_key) in [("other_keys_busy", false), ("same_key_busy", true)] {
        let stop = Arc::new(AtomicBool::new(false));
        let rival = {
            let (adapter, stop) = (Arc::clone(&adapter), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut k = 1_u64 << 40;
                while !stop.load(Ordering::Relaxed) {
                    k = k.wrapping_add(1);
                    let key = if same_key { 7 } else { k };
                    let _ = black_box(adapter.put(key, k));
                }
            })
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let key = if same_key { 7 } else { i };
                black_box(&adapter).put(black_box(key), i)
            })
        });
        stop.store(true, Ordering::Relaxed);
        rival.join().expect("rival thread");
    }
    group.finish();
}

/// The pieces of the hot path, alone (public runtime API).
fn bench_hot_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_path");
    let migration = Migration::new(Phase::Prepare);
    let mut i = 0_u64;
    group.bench_function("write_route_no_override", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let key = black_box(i);
            black_box(&migration).write_route(Some(&key as &dyn RoutingKey))
        })
    });
    let with_override = Migration::new(Phase::Prepare);
    with_override
        .set_phase_for(&u64::MAX, Phase::Prepare)
        .expect("an override is allowed");
    group.bench_function("write_route_with_an_override", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let key = black_box(i);
            black_box(&with_override).write_route(Some(&key as &dyn RoutingKey))
        })
    });
    let stats = Stats::new();
    let core: dualwrite_runtime::DualWriteCore<()> =
        dualwrite_runtime::DualWriteCore::new(Migration::new(Phase::Prepare));
    group.bench_function("begin_write_prepare", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let key = black_box(i);
            let ticket = core.begin_write(
                "put",
                Some(&key as &dyn RoutingKey),
                Some(&key as &dyn RoutingKey),
                false,
            );
            black_box(ticket.refused().is_none())
        })
    });
    group.bench_function("record_write", |b| {
        b.iter(|| black_box(&stats).record_write(Store::Old, Role::Primary, true))
    });
    group.bench_function("key_route_hash_u64", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(i).route_hash()
        })
    });
    group.bench_function("key_render_u64", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(i).render()
        })
    });
    group.finish();
}

fn bench_overhead(c: &mut Criterion) {
    bench_pair(c, "atomic", AtomicStore::new);
    bench_pair(c, "hashmap", MapStore::default);
}

criterion_group!(
    overhead,
    bench_hot_path,
    bench_overhead,
    bench_handoff,
    bench_handoff_saturation,
    bench_sequencing
);

// ---------------------------------------------------------------------------
// Part 2: per-call latency distribution
// ---------------------------------------------------------------------------

/// One way of calling the store, with the latencies it recorded.
struct Mode {
    name: &'static str,
    call: Box<dyn Fn(u64) -> Result<(), BenchError>>,
    /// Runs, untimed, before each block of calls.
    begin: Box<dyn Fn()>,
    /// Runs, untimed, after each block of calls.
    flush: Box<dyn Fn()>,
    samples: Vec<u64>,
}

impl Mode {
    fn new<F, G>(name: &'static str, call: F, flush: G) -> Self
    where
        F: Fn(u64) -> Result<(), BenchError> + 'static,
        G: Fn() + 'static,
    {
        Mode {
            name,
            call: Box::new(call),
            begin: Box::new(|| {}),
            flush: Box::new(flush),
            samples: Vec::new(),
        }
    }
}

#[derive(Clone, Copy)]
struct Summary {
    mean: f64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

fn summarize(samples: &[u64]) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    Summary {
        mean: sorted.iter().sum::<u64>() as f64 / sorted.len() as f64,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: sorted[sorted.len() - 1],
    }
}

/// Runs `calls` timed calls per mode after `warmup` untimed ones, in
/// interleaved blocks; `gap` idles between calls (spin) so lanes go idle as
/// they would under a moderate request rate.
/// Returns the p99 ratio of each async mode against primary-only.
fn measure(title: &str, modes: &mut [Mode], warmup: u64, calls: u64, gap: Duration) -> Vec<f64> {
    const BLOCK: u64 = 500;
    let mut key = 0_u64;
    for mode in modes.iter_mut() {
        (mode.begin)();
        for _ in 0..warmup {
            key += 1;
            (mode.call)(key % 1000).expect("warm-up call");
        }
        (mode.flush)();
        mode.samples.reserve(calls as usize);
    }
    let mut done = 0;
    let mut cycle = 0;
    while done < calls {
        let n = BLOCK.min(calls - done);
        // Each cycle starts one mode later, so every mode follows every
        // other one equally often (a mode's block can still feel what the
        // one before it left behind: a lane finishing, a checkpoint).
        let count = modes.len();
        for index in (0..count).map(|i| (i + cycle) % count) {
            let mode = &mut modes[index];
            (mode.begin)();
            for _ in 0..n {
                key += 1;
                let start = Instant::now();
                let ret = (mode.call)(black_box(key % 1000));
                let elapsed = start.elapsed();
                black_box(ret).expect("timed call");
                mode.samples.push(elapsed.as_nanos() as u64);
                if !gap.is_zero() {
                    spin_for(gap);
                }
            }
            // Lanes drain between blocks, untimed, so modes do not overlap.
            (mode.flush)();
        }
        done += n;
        cycle += 1;
    }
    println!("\n{title}  ({calls} calls per mode, {warmup} warm-up, gap {gap:?})");
    println!(
        "  {:<34} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "mode (ns)", "mean", "p50", "p90", "p99", "p99.9", "max"
    );
    let summaries: Vec<Summary> = modes.iter().map(|m| summarize(&m.samples)).collect();
    for (mode, s) in modes.iter().zip(&summaries) {
        println!(
            "  {:<34} {:>10.0} {:>10} {:>10} {:>10} {:>10} {:>10}",
            mode.name, s.mean, s.p50, s.p90, s.p99, s.p999, s.max
        );
    }
    // Mode 1 is the baseline (primary-only through the adapter, or shadow
    // comparison off); the modes measured against it follow.
    let base = summaries[1];
    for (mode, s) in modes.iter().zip(&summaries).skip(2) {
        println!(
            "  {:<34} p50 {:+} ns, p99 ratio {:.3}, p99.9 ratio {:.3} (vs {})",
            mode.name,
            s.p50 as i64 - base.p50 as i64,
            s.p99 as f64 / base.p99 as f64,
            s.p999 as f64 / base.p999 as f64,
            modes[1].name,
        );
    }
    for mode in modes.iter_mut() {
        mode.samples.clear();
    }
    summaries[2..]
        .iter()
        .map(|s| s.p99 as f64 / base.p99 as f64)
        .collect()
}

/// The async modes every case measures: (name, lanes).
const ASYNC_MODES: [(&str, usize); 2] = [
    ("adapter async secondary, 1 lane", 1),
    ("adapter async secondary, 2 lanes", 2),
];

/// The adapter in `Prepare`: the primary only.
fn prepare_mode<O, N>(old: O, new: N) -> Mode
where
    O: Kv + Send + Sync + 'static,
    N: Kv + Send + Sync + 'static,
{
    let adapter = KvDualWrite::new(old, new, Migration::new(Phase::Prepare));
    Mode::new(
        "adapter primary-only (Prepare)",
        move |k| adapter.put(k, k),
        || {},
    )
}

/// The adapter in `DualWrite` with the async secondary on `count` lanes;
/// its flush waits for the lanes.
fn async_mode<O, N>(name: &'static str, old: O, new: N, count: usize) -> Mode
where
    O: Kv + Send + Sync + 'static,
    N: Kv + Send + Sync + 'static,
{
    async_mode_with(name, old, new, lanes(count))
}

/// Like [`async_mode`], with the lanes' configuration given.
fn async_mode_with<O, N>(name: &'static str, old: O, new: N, config: LaneConfig) -> Mode
where
    O: Kv + Send + Sync + 'static,
    N: Kv + Send + Sync + 'static,
{
    let adapter = std::sync::Arc::new(
        KvDualWrite::new(old, new, Migration::new(Phase::DualWrite)).with_async_secondary(config),
    );
    let flusher = std::sync::Arc::clone(&adapter);
    Mode::new(
        name,
        move |k| adapter.put(k, k),
        move || flusher.flush(FLUSH_TIMEOUT).expect("flushed"),
    )
}

/// direct, adapter primary-only, adapter async secondary with 1 and 2 lanes.
fn delay_modes(delay: Delay) -> Vec<Mode> {
    let direct = DelayStore::new(delay);
    let mut modes = vec![
        // dualwrite-lint: allow(DW001) the baseline the adapter is measured against calls the store directly
        Mode::new("direct", move |k| direct.put(k, k), || {}),
        prepare_mode(DelayStore::new(delay), DelayStore::new(delay)),
    ];
    for (name, count) in ASYNC_MODES {
        modes.push(async_mode(
            name,
            DelayStore::new(delay),
            DelayStore::new(delay),
            count,
        ));
    }
    if delay == Delay::None {
        // Reference: a bare std mpsc send to a consumer thread, no adapter.
        let (sender, receiver) = std::sync::mpsc::channel::<u64>();
        std::thread::spawn(move || {
            for value in receiver {
                black_box(value);
            }
        });
        modes.push(Mode::new(
            "reference: bare std mpsc send",
            move |k| {
                sender
                    .send(k)
                    .map_err(|_| BenchError("consumer gone".into()))
            },
            || {},
        ));
    }
    modes
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every mode writes its primary copy to the same SQLite file, so WAL
/// checkpoints and file growth hit all modes alike (they would otherwise
/// make the tail of each mode depend on its own file's history); the async
/// modes write their secondary copy to a file of their own.
fn sqlite_modes(dir: &Path) -> Vec<Mode> {
    let open = |name: &str| SqliteStore::open(&dir.join(name)).expect("open a SQLite file");
    let primary = open("primary.db");
    let direct = primary.clone();
    let mut modes = vec![
        Mode::new("direct", move |k| direct.put(k, k), || {}),
        prepare_mode(primary.clone(), open("prepare-new.db")),
    ];
    for (name, count) in ASYNC_MODES {
        modes.push(async_mode(
            name,
            primary.clone(),
            open(&format!("async{count}-new.db")),
            count,
        ));
    }
    // The other lane queue, a crossbeam channel.
    modes.push(async_mode_with(
        "adapter async secondary, 1 lane, channel queue",
        primary.clone(),
        open("async1-channel-new.db"),
        lanes(1).with_queue(LaneQueue::Channel),
    ));
    // The same hand-off with an in-memory secondary: separates the cost of
    // the hand-off from two SQLite databases working at once in one process.
    modes.push(async_mode(
        "adapter async secondary, 1 lane, in-memory New",
        primary.clone(),
        DelayStore::new(Delay::None),
        1,
    ));
    // Reference, no hand-off: primary-only while a plain thread (no adapter,
    // no queue) upserts into another SQLite file without pause. What the
    // machine charges the caller for any concurrent secondary write.
    // The writer parks between the reference's blocks: a thread polling in
    // the background wakes up on whichever core is free, so it would land
    // on the caller's core only while the other core is busy, that is
    // during the async modes' blocks, and tax those alone.
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_busy = std::sync::Arc::clone(&busy);
    let other = open("reference-other.db");
    let writer = std::thread::spawn(move || {
        let mut k = 0_u64;
        // Runs until the process exits (the bench ends with `latency`).
        loop {
            if writer_busy.load(Ordering::Acquire) {
                k += 1;
                // A raw write on purpose: the load that competes with the caller.
                let _ = other.put(k % 1000, k);
            } else {
                std::thread::park();
            }
        }
    });
    let reference = KvDualWrite::new(
        primary,
        open("reference-new.db"),
        Migration::new(Phase::Prepare),
    );
    let (start, stop) = (std::sync::Arc::clone(&busy), busy);
    let mut mode = Mode::new(
        "reference: primary-only + SQLite writer thread",
        move |k| reference.put(k, k),
        move || stop.store(false, Ordering::Release),
    );
    mode.begin = Box::new(move || {
        start.store(true, Ordering::Release);
        writer.thread().unpark();
    });
    modes.push(mode);
    modes
}

/// Reads in `ShadowRead`: shadow comparison off (sample rate 0), inline (both
/// reads on the caller's path) and in the background.
fn shadow_modes(delay: Delay) -> Vec<Mode> {
    let off = KvDualWrite::new(
        DelayStore::new(delay),
        DelayStore::new(delay),
        Migration::new(Phase::ShadowRead),
    );
    off.core().set_shadow_sample_rate(0.0);
    let inline = KvDualWrite::new(
        DelayStore::new(delay),
        DelayStore::new(delay),
        Migration::new(Phase::ShadowRead),
    );
    let background = std::sync::Arc::new(
        KvDualWrite::new(
            DelayStore::new(delay),
            DelayStore::new(delay),
            Migration::new(Phase::ShadowRead),
        )
        .with_background_shadow(ShadowConfig::default()),
    );
    let flusher = std::sync::Arc::clone(&background);
    let direct = DelayStore::new(delay);
    vec![
        Mode::new("get, direct", move |k| direct.get(k).map(drop), || {}),
        Mode::new(
            "get, shadow comparison off",
            move |k| off.get(k).map(drop),
            || {},
        ),
        Mode::new(
            "get, shadow comparison inline",
            move |k| inline.get(k).map(drop),
            || {},
        ),
        Mode::new(
            "get, shadow comparison in the background",
            move |k| background.get(k).map(drop),
            move || {
                flusher.flush_shadow(FLUSH_TIMEOUT);
            },
        ),
    ]
}

fn in_memory_cases(warmup: u64, calls: u64, delay: Duration) {
    measure(
        "(s) shadow reads, in-memory store, 200 us thread::sleep delay",
        &mut shadow_modes(Delay::Sleep(delay)),
        warmup,
        calls,
        Duration::ZERO,
    );
    measure(
        "(hand-off) instant store, idle lanes between calls",
        &mut delay_modes(Delay::None),
        warmup,
        calls,
        Duration::from_micros(50),
    );
    measure(
        "(hand-off) instant store, back-to-back calls",
        &mut delay_modes(Delay::None),
        warmup,
        calls,
        Duration::ZERO,
    );
    measure(
        "(a1) in-memory store, 200 us busy-spin delay",
        &mut delay_modes(Delay::Spin(delay)),
        warmup,
        calls,
        Duration::ZERO,
    );
    measure(
        "(a2) in-memory store, 200 us thread::sleep delay",
        &mut delay_modes(Delay::Sleep(delay)),
        warmup,
        calls,
        Duration::ZERO,
    );
}

fn latency() {
    let calls: u64 = std::env::var("DW_LATENCY_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let warmup = (calls / 10).max(100);
    let delay = Duration::from_micros(200);

    println!("\n==== caller latency: async secondary vs primary only ====");
    println!(
        "(direct = the store called directly; ratios are against the second mode: the adapter in Prepare, or reads with shadow comparison off)"
    );
    let only_sqlite = std::env::var("DW_LATENCY").as_deref() == Ok("sqlite");
    if std::env::var("DW_LATENCY").as_deref() == Ok("shadow") {
        measure(
            "(s) shadow reads, in-memory store, 200 us thread::sleep delay",
            &mut shadow_modes(Delay::Sleep(delay)),
            warmup,
            calls,
            Duration::ZERO,
        );
        return;
    }

    if !only_sqlite {
        in_memory_cases(warmup, calls, delay);
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = TempDir(
        std::env::temp_dir().join(format!("dualwrite-bench-{}-{nanos}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).expect("create the bench directory");
    // One p99 from one run is itself a noisy estimate on a shared machine:
    // the SQLite case runs several rounds and reports the spread of ratios.
    let rounds: usize = std::env::var("DW_LATENCY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let mut modes = sqlite_modes(&dir.0);
    let mut ratios: Vec<Vec<f64>> = Vec::new();
    for round in 1..=rounds {
        ratios.push(measure(
            &format!("(b) SQLite files (WAL, synchronous=NORMAL), upsert, round {round}/{rounds}"),
            &mut modes,
            warmup,
            calls,
            Duration::ZERO,
        ));
    }
    println!("\n(b) SQLite p99 ratio vs adapter primary-only over {rounds} rounds");
    for (index, mode) in modes.iter().enumerate().skip(2) {
        let mut column: Vec<f64> = ratios.iter().map(|round| round[index - 2]).collect();
        column.sort_by(f64::total_cmp);
        println!(
            "  {:<48} median {:.3}, min {:.3}, max {:.3}",
            mode.name,
            column[column.len() / 2],
            column[0],
            column[column.len() - 1],
        );
    }
}

fn main() {
    overhead();
    Criterion::default().configure_from_args().final_summary();
    if std::env::var("DW_LATENCY").as_deref() != Ok("0") {
        latency();
    }
}

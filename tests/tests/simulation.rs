//! Deterministic-seed simulation of the dual-write path.
//!
//! Each run ("seed") builds a `KvDualWrite` (or, for a share of the seeds,
//! an `AsyncKvDualWrite`) over two in-memory stores that log every call and
//! inject faults, then lets 1-4 caller threads (tasks) write and read 1-8
//! keys while a controller thread moves the migration's phases (globally and
//! per key, fenced, sometimes with a fence too short to succeed). At the end
//! it flushes and shuts the adapter down, and checks what the stores, the
//! callers, the dead letters and the counters saw (see [`analyse`]).
//!
//! Everything the harness decides is a pure function of the seed: the
//! scenario (strategy, lane configuration, callers, keys, operations, fault
//! rates, phase plan), each caller's operations, and each store call's fault
//! (keyed by the written value and its attempt number on that store, not by
//! timing). `DUALWRITE_SIM_SEED=<n>` therefore replays the same operations
//! and faults; thread interleavings still vary from run to run.
//!
//! Environment:
//! - `DUALWRITE_SIM_SEEDS=<n>`: run seeds `0..n` (default 1 000);
//! - `DUALWRITE_SIM_SEED=<n>`: run seed `n` only;
//! - `DUALWRITE_SIM_LOG=1`: print the runtime's log lines.
//!
//! The seeds are split over three tests by their family (sync secondary
//! writes, async-secondary lanes, async trait), so the three run in parallel.
//!
//! Checks, numbered as in the failure messages: 1 no secondary write after a
//! failed primary; 2 per-key order on both stores; 3 no lost write (applied
//! on both stores or dead-lettered), and what the caller saw agrees with the
//! stores; 4 the stores agree at the end; 5 no false shadow-read mismatch;
//! 6 reads answer values of their key; 7 phase changes (a fence timeout
//! leaves the phase); 8 flush and shutdown finish; 9 the write counters.
//!
//! A lane attempt that overruns the attempt timeout is abandoned on a
//! helper thread and may still land after newer writes of its key; the
//! runtime then does not retry it and keeps its dead letter, so such a key
//! must carry a dead letter when the stores differ (check 4; this harness
//! first found the silent form of it).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, mpsc};
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

use dualwrite_runtime::{
    FlushError, LaneConfig, Migration, Phase, PhaseChange, PhaseError, RouteOptions, RoutingKey,
    ShadowConfig, StatsSnapshot, Store, SyncMode, WhenFull, dual_write,
};

/// Seeds run by default (split over the three tests).
const DEFAULT_SEEDS: u64 = 1_000;

/// The longest one seed may run before the harness reports it as hung.
const SEED_WATCHDOG: Duration = Duration::from_secs(120);

/// The marker of every panic the stores inject (kept out of the test output).
const INJECTED_PANIC: &str = "sim: injected panic";

/// The marker of every failure the stores inject.
const INJECTED_FAILURE: &str = "sim: injected failure";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// A small seeded generator of our own (splitmix64).
// ---------------------------------------------------------------------------

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash of several values, for seeding a decision from its coordinates.
fn mix(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x243F_6A88_85A3_08D3, |acc, &part| splitmix(acc ^ part))
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p / 1000`.
    fn per_mille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }
}

// ---------------------------------------------------------------------------
// The scenario of one seed.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Sync trait, synchronous secondary writes (Tolerant or Strong).
    SyncPath,
    /// Sync trait, async-secondary lanes.
    Lanes,
    /// Async trait, any strategy, with cancelled calls.
    AsyncTrait,
}

fn family_of(seed: u64) -> Family {
    match Rng::new(mix(&[seed, 0xFA_u64])).below(100) {
        0..35 => Family::SyncPath,
        35..75 => Family::Lanes,
        _ => Family::AsyncTrait,
    }
}

#[derive(Debug, Clone)]
enum Mode {
    Sync(SyncMode),
    Lanes(LaneConfig),
}

/// Fault rates of one store, per mille of its calls.
#[derive(Debug, Clone, Copy, Default)]
struct Rates {
    err: u64,
    panic: u64,
    /// A lane attempt that sleeps past the attempt timeout, then applies.
    hang: u64,
    delay: u64,
    max_delay_us: u64,
    get_err: u64,
}

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    family: Family,
    async_trait: bool,
    mode: Mode,
    callers: usize,
    keys: u64,
    ops: Vec<usize>,
    read_share: u64,
    pause_share: u64,
    /// Old, New.
    rates: [Rates; 2],
    /// How long a hung lane attempt sleeps (past the attempt timeout).
    hang: Duration,
    start: Phase,
    shadow_after_cutover: bool,
    phase_steps: usize,
    cancel_share: u64,
    cancel_after_us: (u64, u64),
    /// Shadow reads compared by background workers instead of inline.
    background_shadow: Option<ShadowConfig>,
    /// Synchronous strategy, blocking trait: the secondary call's bound
    /// (`with_blocking_secondary_timeout`); its calls may hang past it.
    bound: Option<Duration>,
}

impl Scenario {
    fn new(seed: u64) -> Self {
        let family = family_of(seed);
        let mut rng = Rng::new(mix(&[seed, 0x5CE7]));
        let async_trait = family == Family::AsyncTrait;
        let mode = match family {
            Family::SyncPath => Mode::Sync(if rng.below(2) == 0 {
                SyncMode::Tolerant
            } else {
                SyncMode::Strong
            }),
            Family::Lanes => Mode::Lanes(lane_config(&mut rng)),
            Family::AsyncTrait => match rng.below(3) {
                0 => Mode::Sync(SyncMode::Tolerant),
                1 => Mode::Sync(SyncMode::Strong),
                _ => Mode::Lanes(lane_config(&mut rng)),
            },
        };
        let bound = (family == Family::SyncPath && rng.per_mille(400))
            .then(|| Duration::from_millis(rng.between(4, 8)));
        let callers = rng.between(1, 4) as usize;
        let keys = rng.between(1, 8);
        let ops = (0..callers).map(|_| rng.between(20, 60) as usize).collect();
        // A quarter of the seeds inject no failure at all (latency only): in
        // those the stores must agree and no shadow read may mismatch.
        let faulty = rng.per_mille(750);
        let lanes = matches!(mode, Mode::Lanes(_));
        let rates = [0, 1].map(|_| {
            let mut rates = Rates {
                delay: rng.between(50, 400),
                max_delay_us: if async_trait {
                    rng.between(500, 2_500)
                } else {
                    rng.between(20, 1_200)
                },
                ..Rates::default()
            };
            if faulty {
                rates.err = rng.between(0, 60);
                rates.panic = rng.between(0, 25);
                rates.hang = if lanes || bound.is_some() {
                    rng.between(0, 25)
                } else {
                    0
                };
                rates.get_err = rng.between(0, 30);
            }
            rates
        });
        let hang = match &mode {
            Mode::Lanes(config) => {
                config.attempt_timeout.unwrap_or(Duration::ZERO) + Duration::from_millis(3)
            }
            Mode::Sync(_) => bound.unwrap_or(Duration::ZERO) + Duration::from_millis(3),
        };
        let start = [
            Phase::DualWrite,
            Phase::Backfill,
            Phase::ShadowRead,
            Phase::Cutover,
        ][rng.below(4) as usize];
        let shadow_after_cutover = rng.per_mille(300);
        let phase_steps = if rng.per_mille(200) {
            0
        } else {
            rng.between(1, 8) as usize
        };
        let (cancel_share, cancel_after_us) = if async_trait {
            (rng.between(50, 250), (200, rng.between(500, 3_000)))
        } else {
            (0, (0, 0))
        };
        let background_shadow = rng.per_mille(300).then(|| {
            ShadowConfig::default()
                .with_workers(rng.between(1, 2) as usize)
                .with_queue(rng.between(1, 64) as usize)
        });
        Scenario {
            seed,
            family,
            async_trait,
            mode,
            callers,
            keys,
            ops,
            read_share: rng.between(100, 400),
            pause_share: rng.between(0, 300),
            rates,
            hang,
            start,
            shadow_after_cutover,
            phase_steps,
            cancel_share,
            cancel_after_us,
            background_shadow,
            bound,
        }
    }

    /// Whether secondary attempts run off the caller's thread under a
    /// deadline (lanes, or a bounded blocking secondary): they may hang and
    /// be abandoned.
    fn off_path(&self) -> bool {
        self.lanes().is_some() || self.bound.is_some()
    }

    fn lanes(&self) -> Option<&LaneConfig> {
        match &self.mode {
            Mode::Lanes(config) => Some(config),
            Mode::Sync(_) => None,
        }
    }

    fn migration(&self) -> Migration {
        let options = RouteOptions::default().with_shadow_after_cutover(self.shadow_after_cutover);
        let migration = Migration::with_options(self.start, options);
        migration.set_fence_timeout(Duration::from_secs(2));
        migration
    }

    fn describe(&self) -> String {
        let mode = match &self.mode {
            Mode::Sync(mode) => format!("sync {mode:?}, blocking bound {:?}", self.bound),
            Mode::Lanes(c) => format!(
                "lanes(lanes {}, attempts {}, backoff {:?}..{:?}, attempt timeout {:?}, ring {}, \
                 max_queued {}, full_wait {:?}, {:?}, idle_poll {:?}, idle_park {:?})",
                c.lanes,
                c.max_attempts,
                c.initial_backoff,
                c.max_backoff,
                c.attempt_timeout,
                c.queue_capacity,
                c.max_queued,
                c.full_wait,
                c.when_full,
                c.idle_poll,
                c.idle_park
            ),
        };
        let rates = |r: &Rates| {
            format!(
                "err {} panic {} hang {} delay {}/{}us get_err {} (per mille)",
                r.err, r.panic, r.hang, r.delay, r.max_delay_us, r.get_err
            )
        };
        format!(
            "{:?}: {} trait, {mode}; {} caller(s) x {:?} ops over {} key(s), reads {}/1000; \
             start {}, shadow_after_cutover {}, {} phase step(s); cancel {}/1000; \
             background shadow {:?}; Old: {}; New: {}",
            self.family,
            if self.async_trait { "async" } else { "sync" },
            self.callers,
            self.ops,
            self.keys,
            self.read_share,
            self.start,
            self.shadow_after_cutover,
            self.phase_steps,
            self.cancel_share,
            self.background_shadow,
            rates(&self.rates[0]),
            rates(&self.rates[1]),
        )
    }
}

fn lane_config(rng: &mut Rng) -> LaneConfig {
    let mut config = lane_config_drawn(rng);
    // Blocking stores are bounded by the same deadline as async ones.
    config.blocking_attempt_timeout = config.attempt_timeout;
    // Both lane queues.
    if rng.below(2) == 1 {
        config.queue = dualwrite_runtime::LaneQueue::Channel;
    }
    config
}

fn lane_config_drawn(rng: &mut Rng) -> LaneConfig {
    let mut config = LaneConfig::default()
        .with_lanes(rng.between(1, 3) as usize)
        .with_max_attempts(rng.between(1, 3) as u32)
        .with_initial_backoff(Duration::from_micros(rng.between(5, 100)))
        .with_max_backoff(Duration::from_micros(300))
        .with_attempt_timeout(Some(Duration::from_millis(rng.between(4, 8))))
        .with_queue_capacity(rng.between(1, 8) as usize)
        .with_idle_poll(Duration::from_micros(rng.between(0, 50)))
        .with_idle_sleep(Duration::from_micros(rng.between(100, 400)))
        .with_idle_park(if rng.below(2) == 0 {
            Some(Duration::from_millis(2))
        } else {
            None
        })
        .with_full_wait(Duration::from_micros(rng.between(0, 500)));
    if rng.per_mille(250) {
        config = config.with_max_queued(rng.between(2, 32) as usize);
    }
    if rng.per_mille(300) {
        config = config.with_when_full(WhenFull::FailCall);
    }
    config
}

/// The value a caller writes at one operation: unique over the run and
/// increasing per caller (caller index in the low bits).
fn value_of(caller: usize, op: usize) -> u64 {
    ((op as u64 + 1) << 3) | caller as u64
}

/// The tag of a caller's read, so the stores can group the calls one read
/// made (0: no read in progress).
fn tag_of(caller: usize, op: usize) -> u64 {
    ((caller as u64 + 1) << 32) | (op as u64 + 1)
}

// ---------------------------------------------------------------------------
// The stores: in-memory maps with per-key append logs, a shared record of
// every call, and seeded faults.
// ---------------------------------------------------------------------------

#[dual_write]
trait Kv {
    #[dual_write(key = key)]
    fn put(&self, key: u64, value: u64) -> Result<(), String>;
    #[dual_write(key = key)]
    fn get(&self, key: u64) -> Result<Option<u64>, String>;
}

#[dual_write]
trait AsyncKv {
    #[dual_write(key = key)]
    async fn put(&self, key: u64, value: u64) -> Result<(), String>;
    #[dual_write(key = key)]
    async fn get(&self, key: u64) -> Result<Option<u64>, String>;
}

thread_local! {
    /// The tag of the read the calling thread makes (sync trait).
    static OP_TAG: Cell<u64> = const { Cell::new(0) };
}

tokio::task_local! {
    /// The tag of the read the calling task makes (async trait).
    static ASYNC_TAG: u64;
}

fn current_tag() -> u64 {
    ASYNC_TAG
        .try_with(|tag| *tag)
        .unwrap_or_else(|_| OP_TAG.with(Cell::get))
}

/// Whether the calling thread is a secondary lane (or a lane's helper).
/// Whether this store call runs off the caller's path: on a lane, or on the
/// helper thread of a bounded blocking secondary call.
fn on_lane_thread() -> bool {
    thread::current().name().is_some_and(|name| {
        name.starts_with("dualwrite-lane") || name.starts_with("dualwrite-secondary")
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallEnd {
    Running,
    Applied,
    Failed,
    Panicked,
    /// The call's future was dropped before it finished (cancelled).
    Dropped,
}

/// One `put` call made on a store.
#[derive(Debug, Clone)]
struct PutCall {
    store: Store,
    key: u64,
    value: u64,
    on_lane: bool,
    /// A lane attempt that slept past the attempt timeout before applying:
    /// it lands after the lane gave up on it.
    hung: bool,
    end: CallEnd,
}

/// One `get` call made on a store.
#[derive(Debug, Clone)]
struct GetCall {
    tag: u64,
    /// Made by a background shadow worker.
    on_worker: bool,
    store: Store,
    key: u64,
    result: Result<Option<u64>, String>,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Delay(Duration),
    Err,
    Panic,
    Hang(Duration),
}

#[derive(Default)]
struct PutLog {
    /// Every put call, in the order the calls started.
    calls: Vec<PutCall>,
    /// Put calls so far per (store, value): the attempt number of the next.
    attempts: HashMap<(Store, u64), u64>,
}

/// What both stores of one run share: the record of every call and the
/// fault plan.
struct Recorder {
    seed: u64,
    rates: [Rates; 2],
    /// `Some` when lanes run under an attempt timeout: lane calls may hang.
    hang: Option<Duration>,
    async_trait: bool,
    puts: Mutex<PutLog>,
    gets: Mutex<Vec<GetCall>>,
    get_counts: Mutex<HashMap<(Store, u64), u64>>,
    in_flight: AtomicUsize,
}

impl Recorder {
    fn new(scenario: &Scenario) -> Self {
        Recorder {
            seed: scenario.seed,
            rates: scenario.rates,
            hang: scenario.off_path().then_some(scenario.hang),
            async_trait: scenario.async_trait,
            puts: Mutex::new(PutLog::default()),
            gets: Mutex::new(Vec::new()),
            get_counts: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn rates(&self, store: Store) -> &Rates {
        match store {
            Store::Old => &self.rates[0],
            Store::New => &self.rates[1],
        }
    }

    /// The fault of one put attempt: a function of the seed, the store, the
    /// value and the attempt number only.
    fn put_fault(&self, store: Store, value: u64, attempt: u64, on_lane: bool) -> Fault {
        let rates = self.rates(store);
        let mut rng = Rng::new(mix(&[self.seed, store_salt(store), value, attempt]));
        let roll = rng.below(1000);
        if roll < rates.err {
            return Fault::Err;
        }
        if roll < rates.err + rates.panic {
            return Fault::Panic;
        }
        if roll < rates.err + rates.panic + rates.hang
            && on_lane
            && let Some(hang) = self.hang
        {
            return Fault::Hang(hang);
        }
        if rng.per_mille(rates.delay) {
            return Fault::Delay(Duration::from_micros(rng.between(1, rates.max_delay_us)));
        }
        Fault::None
    }

    fn begin_put(self: &Arc<Self>, store: Store, key: u64, value: u64) -> (CallGuard, Fault) {
        let on_lane = on_lane_thread();
        let mut log = lock(&self.puts);
        let attempt = log.attempts.entry((store, value)).or_insert(0);
        *attempt += 1;
        let fault = self.put_fault(store, value, *attempt, on_lane);
        let index = log.calls.len();
        log.calls.push(PutCall {
            store,
            key,
            value,
            on_lane,
            hung: matches!(fault, Fault::Hang(_)),
            end: CallEnd::Running,
        });
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = CallGuard {
            recorder: Arc::clone(self),
            index,
            done: false,
        };
        (guard, fault)
    }

    fn get_fault(&self, store: Store, key: u64) -> Fault {
        let count = {
            let mut counts = lock(&self.get_counts);
            let count = counts.entry((store, key)).or_insert(0);
            *count += 1;
            *count
        };
        let rates = self.rates(store);
        let mut rng = Rng::new(mix(&[self.seed, store_salt(store), 0x6E7, key, count]));
        if rng.per_mille(rates.get_err) {
            return Fault::Err;
        }
        // Reads get shorter delays: they are not what is under test.
        if rng.per_mille(rates.delay / 2) {
            return Fault::Delay(Duration::from_micros(
                rng.between(1, rates.max_delay_us / 2 + 1),
            ));
        }
        Fault::None
    }

    fn record_get(&self, store: Store, key: u64, result: &Result<Option<u64>, String>) {
        let on_worker = thread::current()
            .name()
            .is_some_and(|name| name.starts_with("dualwrite-shadow"));
        lock(&self.gets).push(GetCall {
            tag: if on_worker { 0 } else { current_tag() },
            on_worker,
            store,
            key,
            result: result.clone(),
        });
    }

    /// Waits until no store call runs and `settled` holds; false at the
    /// deadline.
    fn wait_settled(&self, timeout: Duration, settled: impl Fn(&[PutCall]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.in_flight.load(Ordering::SeqCst) == 0 && settled(&lock(&self.puts).calls) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_micros(200));
        }
    }
}

fn store_salt(store: Store) -> u64 {
    match store {
        Store::Old => 0x01D,
        Store::New => 0x4E3,
    }
}

/// Marks how a put call ended; a call dropped unfinished is `Panicked`
/// (unwinding) or `Dropped` (its future was cancelled).
struct CallGuard {
    recorder: Arc<Recorder>,
    index: usize,
    done: bool,
}

impl CallGuard {
    fn finish(mut self, end: CallEnd) {
        self.set(end);
    }

    fn set(&mut self, end: CallEnd) {
        lock(&self.recorder.puts).calls[self.index].end = end;
        self.done = true;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.done {
            let end = if thread::panicking() {
                CallEnd::Panicked
            } else {
                CallEnd::Dropped
            };
            self.set(end);
        }
        self.recorder.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct MemState {
    map: BTreeMap<u64, u64>,
    /// Every applied write, in the order applied: (key, value, hung).
    log: Vec<(u64, u64, bool)>,
}

/// One in-memory store.
struct Mem {
    store: Store,
    recorder: Arc<Recorder>,
    state: Mutex<MemState>,
}

impl Mem {
    fn new(store: Store, recorder: &Arc<Recorder>) -> Self {
        Mem {
            store,
            recorder: Arc::clone(recorder),
            state: Mutex::new(MemState::default()),
        }
    }

    fn apply(&self, key: u64, value: u64, hung: bool) {
        let mut state = lock(&self.state);
        state.map.insert(key, value);
        state.log.push((key, value, hung));
    }

    fn failure(&self, what: &str, key: u64) -> String {
        format!("{INJECTED_FAILURE} in {} {what} of key {key}", self.store)
    }

    fn read(&self, key: u64) -> Result<Option<u64>, String> {
        Ok(lock(&self.state).map.get(&key).copied())
    }

    fn snapshot(&self) -> MemState {
        let state = lock(&self.state);
        MemState {
            map: state.map.clone(),
            log: state.log.clone(),
        }
    }
}

impl Kv for Mem {
    fn put(&self, key: u64, value: u64) -> Result<(), String> {
        let (guard, fault) = self.recorder.begin_put(self.store, key, value);
        let mut hung = false;
        match fault {
            Fault::None => {}
            Fault::Delay(delay) => thread::sleep(delay),
            Fault::Hang(delay) => {
                // The lane stops waiting at its attempt timeout; this call
                // still applies the write, later.
                hung = true;
                thread::sleep(delay);
            }
            Fault::Err => {
                guard.finish(CallEnd::Failed);
                return Err(self.failure("put", key));
            }
            Fault::Panic => panic!("{INJECTED_PANIC} in {} put({key}, {value})", self.store),
        }
        self.apply(key, value, hung);
        guard.finish(CallEnd::Applied);
        Ok(())
    }

    fn get(&self, key: u64) -> Result<Option<u64>, String> {
        let result = match self.recorder.get_fault(self.store, key) {
            Fault::Err => Err(self.failure("get", key)),
            Fault::Delay(delay) => {
                thread::sleep(delay);
                self.read(key)
            }
            _ => self.read(key),
        };
        self.recorder.record_get(self.store, key, &result);
        result
    }
}

impl AsyncKv for Mem {
    async fn put(&self, key: u64, value: u64) -> Result<(), String> {
        debug_assert!(self.recorder.async_trait);
        let (guard, fault) = self.recorder.begin_put(self.store, key, value);
        match fault {
            // A point where the call can be cancelled, without a timer.
            Fault::None => tokio::task::yield_now().await,
            // Tokio timers: a cancelled or timed-out attempt stops here and
            // never applies.
            Fault::Delay(delay) | Fault::Hang(delay) => tokio::time::sleep(delay).await,
            Fault::Err => {
                guard.finish(CallEnd::Failed);
                return Err(self.failure("put", key));
            }
            Fault::Panic => panic!("{INJECTED_PANIC} in {} put({key}, {value})", self.store),
        }
        self.apply(key, value, false);
        guard.finish(CallEnd::Applied);
        Ok(())
    }

    async fn get(&self, key: u64) -> Result<Option<u64>, String> {
        let result = match self.recorder.get_fault(self.store, key) {
            Fault::Err => Err(self.failure("get", key)),
            Fault::Delay(delay) => {
                tokio::time::sleep(delay).await;
                self.read(key)
            }
            _ => {
                tokio::task::yield_now().await;
                self.read(key)
            }
        };
        self.recorder.record_get(self.store, key, &result);
        result
    }
}

// ---------------------------------------------------------------------------
// Callers and the phase controller.
// ---------------------------------------------------------------------------

/// What a caller saw of one put.
#[derive(Debug, Clone)]
enum Seen {
    Ok,
    Err(String),
    Panicked,
    Cancelled,
}

#[derive(Debug, Clone)]
struct PutSeen {
    key: u64,
    value: u64,
    seen: Seen,
}

#[derive(Debug, Clone)]
struct GetSeen {
    tag: u64,
    key: u64,
    /// `None`: the call panicked.
    result: Option<Result<Option<u64>, String>>,
}

#[derive(Debug, Default)]
struct CallerLog {
    puts: Vec<PutSeen>,
    gets: Vec<GetSeen>,
}

fn seen_of<T>(outcome: std::thread::Result<Result<T, String>>) -> Seen {
    match outcome {
        Ok(Ok(_)) => Seen::Ok,
        Ok(Err(error)) => Seen::Err(error),
        Err(_) => Seen::Panicked,
    }
}

fn caller_rng(scenario: &Scenario, caller: usize) -> Rng {
    Rng::new(mix(&[scenario.seed, 0xCA11, caller as u64]))
}

fn sync_caller(kv: &KvDualWrite<Mem, Mem>, scenario: &Scenario, caller: usize) -> CallerLog {
    let mut rng = caller_rng(scenario, caller);
    let mut log = CallerLog::default();
    for op in 0..scenario.ops[caller] {
        let key = rng.below(scenario.keys);
        if rng.per_mille(scenario.read_share) {
            let tag = tag_of(caller, op);
            OP_TAG.with(|cell| cell.set(tag));
            let result = catch_unwind(AssertUnwindSafe(|| kv.get(key))).ok();
            OP_TAG.with(|cell| cell.set(0));
            log.gets.push(GetSeen { tag, key, result });
        } else {
            let value = value_of(caller, op);
            let seen = seen_of(catch_unwind(AssertUnwindSafe(|| kv.put(key, value))));
            log.puts.push(PutSeen { key, value, seen });
        }
        if rng.per_mille(scenario.pause_share) {
            thread::sleep(Duration::from_micros(rng.between(1, 200)));
        } else {
            thread::yield_now();
        }
    }
    log
}

/// Polls a future inside `catch_unwind`.
async fn caught<F: Future>(future: F) -> std::thread::Result<F::Output> {
    let mut future = pin!(future);
    std::future::poll_fn(move |cx| {
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    })
    .await
}

async fn async_caller(
    kv: Arc<AsyncKvDualWrite<Mem, Mem>>,
    scenario: Arc<Scenario>,
    caller: usize,
) -> CallerLog {
    let mut rng = caller_rng(&scenario, caller);
    let mut log = CallerLog::default();
    for op in 0..scenario.ops[caller] {
        let key = rng.below(scenario.keys);
        if rng.per_mille(scenario.read_share) {
            let tag = tag_of(caller, op);
            let result = ASYNC_TAG.scope(tag, caught(kv.get(key))).await.ok();
            log.gets.push(GetSeen { tag, key, result });
        } else {
            let value = value_of(caller, op);
            let seen = if rng.per_mille(scenario.cancel_share) {
                let (lo, hi) = scenario.cancel_after_us;
                let limit = Duration::from_micros(rng.between(lo, hi));
                match tokio::time::timeout(limit, caught(kv.put(key, value))).await {
                    Ok(outcome) => seen_of(outcome),
                    Err(_) => Seen::Cancelled,
                }
            } else {
                seen_of(caught(kv.put(key, value)).await)
            };
            log.puts.push(PutSeen { key, value, seen });
        }
        if rng.per_mille(scenario.pause_share) {
            tokio::time::sleep(Duration::from_micros(rng.between(1, 200))).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    log
}

#[derive(Debug, Default)]
struct ControllerLog {
    violations: Vec<String>,
    changes: usize,
    fence_timeouts: usize,
    history: Vec<String>,
}

/// The next phase of a scope: forward through the migration, or one of
/// the rollbacks the spec allows.
fn next_phase(from: Phase, rng: &mut Rng) -> Phase {
    match from {
        Phase::Backfill if rng.per_mille(700) => Phase::ShadowRead,
        Phase::Backfill => Phase::DualWrite,
        Phase::ShadowRead if rng.per_mille(700) => Phase::Cutover,
        Phase::ShadowRead => Phase::Backfill,
        Phase::Cutover => Phase::ShadowRead,
        _ => Phase::Backfill,
    }
}

fn key_phase(migration: &Migration, key: u64) -> Phase {
    migration.phase_for(Some(&key as &dyn RoutingKey))
}

/// Checks a phase change's outcome: applied as asked, or refused by the
/// fence with the phase unchanged.
fn check_change(
    log: &mut ControllerLog,
    scope: &str,
    (from, to): (Phase, Phase),
    result: Result<(Phase, Phase), PhaseError>,
    now: Phase,
) {
    match result {
        Ok((was, became)) => {
            log.changes += 1;
            log.history.push(format!("{scope}: {from} -> {to}"));
            if (was, became) != (from, to) || now != to {
                log.violations.push(format!(
                    "[7 phase] {scope}: change {from} -> {to} reported {was} -> {became}, phase now {now}"
                ));
            }
        }
        Err(PhaseError::FenceTimedOut { .. }) => {
            log.fence_timeouts += 1;
            log.history
                .push(format!("{scope}: {from} -> {to} fence timed out"));
            if now != from {
                log.violations.push(format!(
                    "[7 phase] {scope}: change {from} -> {to} failed its fence but the phase moved to {now}"
                ));
            }
        }
        Err(error) => log.violations.push(format!(
            "[7 phase] {scope}: allowed change {from} -> {to} refused: {error}"
        )),
    }
}

fn controller(migration: &Migration, scenario: &Scenario, done: &AtomicBool) -> ControllerLog {
    let mut log = ControllerLog::default();
    let mut rng = Rng::new(mix(&[scenario.seed, 0xC0_47_20_11]));
    for _ in 0..scenario.phase_steps {
        let pause = Instant::now() + Duration::from_micros(rng.between(200, 3_000));
        while Instant::now() < pause && !done.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_micros(100));
        }
        if done.load(Ordering::SeqCst) {
            break;
        }
        // Mostly the migration's default fence timeout (2 s, see
        // `Scenario::migration`) through the plain setters; sometimes a
        // fence too short to wait for the writes in flight, which must
        // fail and leave the phase as it was.
        let tiny_fence = rng
            .per_mille(150)
            .then(|| Duration::from_micros(rng.below(100)));
        let roll = rng.below(100);
        if roll < 55 {
            let from = migration.phase();
            let to = next_phase(from, &mut rng);
            let result = match tiny_fence {
                Some(fence) => {
                    let change = PhaseChange::to(to)
                        .fence_timeout(fence)
                        .reason("simulation");
                    migration.change(change).map(|t| (t.from, t.to))
                }
                None => migration.set_phase(to).map(|was| (was, to)),
            };
            check_change(&mut log, "global", (from, to), result, migration.phase());
        } else if roll < 88 {
            let key = rng.below(scenario.keys);
            let from = key_phase(migration, key);
            let to = next_phase(from, &mut rng);
            let result = match tiny_fence {
                Some(fence) => {
                    let change = PhaseChange::to(to).for_key(&key).fence_timeout(fence);
                    migration.change(change).map(|t| (t.from, t.to))
                }
                None => migration.set_phase_for(&key, to).map(|_| (from, to)),
            };
            let scope = format!("key {key}");
            check_change(
                &mut log,
                &scope,
                (from, to),
                result,
                key_phase(migration, key),
            );
        } else {
            let key = rng.below(scenario.keys);
            let before = key_phase(migration, key);
            let result = migration.try_clear_phase_for(&key);
            let now = key_phase(migration, key);
            match result {
                Ok(removed) => {
                    log.changes += usize::from(removed.is_some());
                    log.history
                        .push(format!("key {key}: override {removed:?} lifted"));
                    if now != migration.phase() {
                        log.violations.push(format!(
                            "[7 phase] key {key}: override lifted but the key is at {now}, global {}",
                            migration.phase()
                        ));
                    }
                }
                Err(PhaseError::FenceTimedOut { .. }) => {
                    log.fence_timeouts += 1;
                    if now != before {
                        log.violations.push(format!(
                            "[7 phase] key {key}: lifting the override failed its fence but the key moved {before} -> {now}"
                        ));
                    }
                }
                Err(error) => log.violations.push(format!(
                    "[7 phase] key {key}: lifting the override refused: {error}"
                )),
            }
        }
    }
    log
}

// ---------------------------------------------------------------------------
// One run.
// ---------------------------------------------------------------------------

/// A dead letter, without the adapter's command type.
#[derive(Debug, Clone)]
struct Letter {
    key: u64,
    value: u64,
    rendered_key: Option<String>,
    target: Store,
    error: String,
    attempts: u32,
}

/// Everything a run leaves for the checks.
struct Observed {
    callers: Vec<CallerLog>,
    calls: Vec<PutCall>,
    get_calls: Vec<GetCall>,
    old: MemState,
    new: MemState,
    letters: Vec<Letter>,
    stats: StatsSnapshot,
    flush: Result<(), FlushError>,
    shadow_flushed: bool,
    shutdown_complete: bool,
    still_pending: u64,
    settled: bool,
    controller: ControllerLog,
    harness: Vec<String>,
}

/// Waits for abandoned lane calls (a hung attempt applies after its lane
/// gave up) so the stores are final: every attempt the stats counted has
/// made its store call and returned.
fn settle(recorder: &Recorder, stats: &StatsSnapshot, lanes: bool) -> bool {
    let attempts = stats.secondary_writes_ok + stats.secondary_writes_failed;
    recorder.wait_settled(Duration::from_secs(5), |calls| {
        !lanes || calls.iter().filter(|call| call.on_lane).count() as u64 >= attempts
    })
}

fn run_sync_trait(scenario: &Scenario) -> Observed {
    let recorder = Arc::new(Recorder::new(scenario));
    let old = Arc::new(Mem::new(Store::Old, &recorder));
    let new = Arc::new(Mem::new(Store::New, &recorder));
    let migration = scenario.migration();
    let kv = KvDualWrite::from_shared(Arc::clone(&old), Arc::clone(&new), migration.clone());
    let kv = match &scenario.mode {
        Mode::Sync(mode) => kv
            .with_sync_mode(*mode)
            .with_blocking_secondary_timeout(scenario.bound),
        Mode::Lanes(config) => kv.with_async_secondary(config.clone()),
    };
    let kv = match &scenario.background_shadow {
        Some(config) => kv.with_background_shadow(config.clone()),
        None => kv,
    };
    let done = AtomicBool::new(false);
    let mut harness = Vec::new();
    let (callers, controller) = thread::scope(|scope| {
        let control = scope.spawn(|| controller(&migration, scenario, &done));
        let threads: Vec<_> = (0..scenario.callers)
            .map(|caller| {
                let kv = &kv;
                scope.spawn(move || sync_caller(kv, scenario, caller))
            })
            .collect();
        let callers: Vec<CallerLog> = threads
            .into_iter()
            .map(|thread| {
                thread.join().unwrap_or_else(|_| {
                    harness.push("[harness] a caller thread panicked".to_owned());
                    CallerLog::default()
                })
            })
            .collect();
        done.store(true, Ordering::SeqCst);
        let controller = control.join().unwrap_or_else(|_| ControllerLog {
            violations: vec!["[harness] the controller panicked".to_owned()],
            ..ControllerLog::default()
        });
        (callers, controller)
    });
    let shadow_flushed = kv.flush_shadow(Duration::from_secs(10));
    let flush = kv.flush(Duration::from_secs(10));
    let report = kv.shutdown(Duration::from_secs(10));
    let settled = settle(&recorder, &kv.stats(), scenario.lanes().is_some());
    let letters = report
        .dead_letters
        .into_iter()
        .chain(kv.take_dead_letters())
        .map(|letter| {
            let KvWrite::Put { key, value } = letter.command;
            Letter {
                key,
                value,
                rendered_key: letter.key,
                target: letter.target,
                error: letter.error,
                attempts: letter.attempts,
            }
        })
        .collect();
    let stats = kv.stats();
    Observed {
        callers,
        calls: lock(&recorder.puts).calls.clone(),
        get_calls: lock(&recorder.gets).clone(),
        old: old.snapshot(),
        new: new.snapshot(),
        letters,
        stats,
        flush,
        shadow_flushed,
        shutdown_complete: report.complete,
        still_pending: report.still_pending,
        settled,
        controller,
        harness,
    }
}

fn run_async_trait(scenario: &Scenario) -> Observed {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let recorder = Arc::new(Recorder::new(scenario));
    let old = Arc::new(Mem::new(Store::Old, &recorder));
    let new = Arc::new(Mem::new(Store::New, &recorder));
    let migration = scenario.migration();
    let kv = {
        // Lanes started inside the runtime drive the store's futures on it.
        let _inside = runtime.enter();
        let kv =
            AsyncKvDualWrite::from_shared(Arc::clone(&old), Arc::clone(&new), migration.clone());
        let kv = match &scenario.mode {
            Mode::Sync(mode) => kv.with_sync_mode(*mode),
            Mode::Lanes(config) => kv.with_async_secondary(config.clone()),
        };
        Arc::new(match &scenario.background_shadow {
            Some(config) => kv.with_background_shadow(config.clone()),
            None => kv,
        })
    };
    let shared = Arc::new(scenario.clone());
    let done = AtomicBool::new(false);
    let mut harness = Vec::new();
    let (callers, controller) = thread::scope(|scope| {
        let control = scope.spawn(|| controller(&migration, scenario, &done));
        let callers = runtime.block_on(async {
            let tasks: Vec<_> = (0..scenario.callers)
                .map(|caller| {
                    tokio::spawn(async_caller(Arc::clone(&kv), Arc::clone(&shared), caller))
                })
                .collect();
            let mut callers = Vec::new();
            for task in tasks {
                callers.push(task.await.unwrap_or_else(|_| {
                    harness.push("[harness] a caller task panicked".to_owned());
                    CallerLog::default()
                }));
            }
            callers
        });
        done.store(true, Ordering::SeqCst);
        let controller = control.join().unwrap_or_else(|_| ControllerLog {
            violations: vec!["[harness] the controller panicked".to_owned()],
            ..ControllerLog::default()
        });
        (callers, controller)
    });
    // Outside the runtime: the blocking flush and shutdown wait while the
    // runtime's workers keep driving the lanes' store futures.
    let shadow_flushed = kv.flush_shadow(Duration::from_secs(10));
    let flush = kv.flush(Duration::from_secs(10));
    let report = kv.shutdown(Duration::from_secs(10));
    let settled = settle(&recorder, &kv.stats(), scenario.lanes().is_some());
    let letters = report
        .dead_letters
        .into_iter()
        .chain(kv.take_dead_letters())
        .map(|letter| {
            let AsyncKvWrite::Put { key, value } = letter.command;
            Letter {
                key,
                value,
                rendered_key: letter.key,
                target: letter.target,
                error: letter.error,
                attempts: letter.attempts,
            }
        })
        .collect();
    let stats = kv.stats();
    drop(kv);
    drop(runtime);
    Observed {
        callers,
        calls: lock(&recorder.puts).calls.clone(),
        get_calls: lock(&recorder.gets).clone(),
        old: old.snapshot(),
        new: new.snapshot(),
        letters,
        stats,
        flush,
        shadow_flushed,
        shutdown_complete: report.complete,
        still_pending: report.still_pending,
        settled,
        controller,
        harness,
    }
}

// ---------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------

/// What the checks found in one run.
#[derive(Debug, Default)]
struct Verdict {
    violations: Vec<String>,
    /// A lane attempt timed out without an injected hang (the machine was
    /// slow): such a call may land late anywhere, so checks 2, 4 and 5 are
    /// skipped for the run.
    noisy: bool,
    /// Keys whose stores disagree at the end with no dead letter, because
    /// a hung attempt landed after the lane had given up and moved on.
    late_divergences: usize,
    /// Observations that are not failures (printed for a single seed).
    notes: Vec<String>,
    /// The run qualified for the strict shadow-read check (no dead letter,
    /// no late landing, no failed read): `reads_mismatched` must be 0.
    clean_shadow: bool,
    letters: usize,
    cancelled: usize,
    puts: usize,
    shadow_reads: u64,
    fence_timeouts: usize,
    phase_changes: usize,
}

/// Runs every check on one run; see the module docs and each numbered
/// block below.
fn analyse(scenario: &Scenario, obs: &Observed) -> Verdict {
    let mut verdict = Verdict {
        letters: obs.letters.len(),
        fence_timeouts: obs.controller.fence_timeouts,
        phase_changes: obs.controller.changes,
        ..Verdict::default()
    };
    let mut violations = Vec::new();
    let v = &mut violations;
    v.extend(obs.harness.iter().cloned());
    v.extend(obs.controller.violations.iter().cloned());
    let strong = matches!(scenario.mode, Mode::Sync(SyncMode::Strong));
    let lanes = scenario.lanes();
    let max_attempts = lanes.map_or(1, |config| config.max_attempts.max(1) as usize);
    let fail_call = lanes.is_some_and(|config| config.when_full == WhenFull::FailCall);

    let mut by_value: BTreeMap<u64, Vec<&PutCall>> = BTreeMap::new();
    for call in &obs.calls {
        by_value.entry(call.value).or_default().push(call);
    }
    let mut letters: HashMap<u64, Vec<&Letter>> = HashMap::new();
    for letter in &obs.letters {
        letters.entry(letter.value).or_default().push(letter);
    }
    let puts: HashMap<u64, &PutSeen> = obs
        .callers
        .iter()
        .flat_map(|caller| &caller.puts)
        .map(|put| (put.value, put))
        .collect();
    verdict.puts = puts.len();
    verdict.cancelled = puts
        .values()
        .filter(|put| matches!(put.seen, Seen::Cancelled))
        .count();

    // Counts of secondary attempts by how they ended (every call after a
    // value's first is a secondary attempt; see check 1).
    let secondary = || by_value.values().flat_map(|calls| calls.iter().skip(1));
    let count = |pred: &dyn Fn(&PutCall) -> bool| secondary().filter(|c| pred(c)).count() as u64;
    let sec_applied = count(&|c| c.end == CallEnd::Applied);
    let sec_applied_in_time = count(&|c| c.end == CallEnd::Applied && !c.hung);
    let sec_failed = count(&|c| matches!(c.end, CallEnd::Failed | CallEnd::Panicked));
    let sec_dropped = count(&|c| c.end == CallEnd::Dropped);
    let sec_hung = count(&|c| c.hung);
    let stats = &obs.stats;

    // Noise: with a sync trait, the lanes run each attempt on a helper
    // thread and stop waiting at the attempt timeout. An attempt counted as
    // failed beyond the injected failures and hangs timed out because the
    // machine was slow, and its call may land late, unmarked.
    verdict.noisy = scenario.off_path()
        && !scenario.async_trait
        && stats.secondary_writes_failed > sec_failed + sec_hung;
    let noisy = verdict.noisy;

    // Keys the stores may legitimately disagree on: a dead letter (the
    // write is left to reconciliation) or a hung attempt that landed late.
    let mut excused: BTreeSet<u64> = obs.letters.iter().map(|letter| letter.key).collect();
    let late_keys: BTreeSet<u64> = obs
        .old
        .log
        .iter()
        .chain(&obs.new.log)
        .filter(|(_, _, hung)| *hung)
        .map(|(key, _, _)| *key)
        .collect();
    excused.extend(&late_keys);

    for (&value, calls) in &by_value {
        let primary = calls[0];
        let secondaries = &calls[1..];
        let key = primary.key;
        let seen = puts.get(&value).map(|put| &put.seen);
        let letters = letters.get(&value).map_or(&[][..], Vec::as_slice);
        let what = format!(
            "put({key}, {value}) [primary {} {:?}, secondary attempts {:?}, caller saw {seen:?}, \
             dead letters {:?}]",
            primary.store,
            primary.end,
            secondaries
                .iter()
                .map(|c| (c.store, c.end, c.hung))
                .collect::<Vec<_>>(),
            letters
                .iter()
                .map(|l| (&l.error, l.attempts))
                .collect::<Vec<_>>()
        );
        if calls.iter().any(|call| call.end == CallEnd::Running) {
            v.push(format!("[8 lifecycle] a store call never finished: {what}"));
        }

        // 1. No secondary write after a failed primary. Each value is
        // written by exactly one put, so the first store call made for it
        // is that put's primary write (the secondary is only started once
        // the primary returned, on the caller's path or by a lane); every
        // later call is a secondary attempt, and must go to the other
        // store. A primary that failed, panicked or was cancelled must be
        // the value's only call: no secondary write, in any phase.
        if primary.on_lane {
            v.push(format!(
                "[1 failed primary] the first call was made by a lane: {what}"
            ));
        }
        if primary.end != CallEnd::Applied && !secondaries.is_empty() {
            v.push(format!(
                "[1 failed primary] a secondary write followed a failed primary: {what}"
            ));
        }
        if secondaries.iter().any(|call| call.store == primary.store) {
            v.push(format!(
                "[1 failed primary] the copy went to the primary's store: {what}"
            ));
        }
        if secondaries.len() > max_attempts {
            v.push(format!(
                "[1 failed primary] {} secondary attempts, at most {max_attempts} allowed: {what}",
                secondaries.len()
            ));
        }

        // 3. No lost write: a primary that applied is followed by a
        // secondary write that applied, or by a dead letter (every phase
        // used here has a secondary store), and dead letters are only for
        // such writes.
        let applied = primary.end == CallEnd::Applied;
        let sec_ok = secondaries.iter().any(|c| c.end == CallEnd::Applied);
        let sec_ok_in_time = secondaries
            .iter()
            .any(|c| c.end == CallEnd::Applied && !c.hung);
        if applied && !sec_ok && letters.is_empty() {
            v.push(format!(
                "[3 lost write] applied on {} only, never on {}, no dead letter: {what}",
                primary.store,
                primary.store.other()
            ));
        }
        if letters.len() > 1 {
            v.push(format!(
                "[3 lost write] dead-lettered {} times: {what}",
                letters.len()
            ));
        }
        for letter in letters {
            if !applied {
                v.push(format!(
                    "[3 lost write] dead letter for a failed primary: {what}"
                ));
            }
            if letter.target != primary.store.other() || letter.key != key {
                v.push(format!(
                    "[3 lost write] dead letter for key {} / {} (expected key {key} / {}): {what}",
                    letter.key,
                    letter.target,
                    primary.store.other()
                ));
            }
            if letter.rendered_key.as_deref() != Some(key.to_string().as_str()) {
                v.push(format!(
                    "[3 lost write] dead letter names key {:?}: {what}",
                    letter.rendered_key
                ));
            }
            if lanes.is_some() && letter.attempts as usize != secondaries.len() {
                v.push(format!(
                    "[3 lost write] dead letter counts {} attempts, the store saw {}: {what}",
                    letter.attempts,
                    secondaries.len()
                ));
            }
            // A timed-out attempt's outcome is unknown: it may have applied
            // (the machine was slow) and still be kept as a dead letter.
            let unknown = letter.error.contains("outcome is unknown");
            if !noisy && sec_ok_in_time && !unknown {
                v.push(format!(
                    "[3 lost write] dead-lettered although applied: {what}"
                ));
            }
        }

        // 3b. What the caller saw agrees with the stores: an acknowledged
        // put was applied by its primary (and, in the Strong mode, by the
        // secondary); an error or a panic comes from the primary, or in
        // the Strong mode from a secondary that failed and was
        // dead-lettered.
        let last = secondaries.last().map(|call| call.end);
        let strong_failure =
            |end: CallEnd| strong && applied && last == Some(end) && !letters.is_empty();
        match seen {
            None => v.push(format!(
                "[harness] a store call for a value never put: {what}"
            )),
            Some(Seen::Ok) => {
                if !applied {
                    v.push(format!(
                        "[3 lost write] acknowledged, primary not applied: {what}"
                    ));
                } else if strong && !sec_ok {
                    v.push(format!(
                        "[3 lost write] Strong mode acknowledged without the secondary: {what}"
                    ));
                }
            }
            Some(Seen::Err(error)) => {
                let from_primary =
                    primary.end == CallEnd::Failed && error.contains(INJECTED_FAILURE);
                // A bounded blocking secondary fails a Strong call with an
                // error whatever became of it (failed, panicked, timed out,
                // or not made behind an abandoned call), and keeps it as a
                // dead letter.
                let bounded_failure = strong
                    && scenario.bound.is_some()
                    && applied
                    && !letters.is_empty()
                    && error.contains("primary store was written");
                if !from_primary && !strong_failure(CallEnd::Failed) && !bounded_failure {
                    v.push(format!(
                        "[3 lost write] error {error:?} not explained: {what}"
                    ));
                }
            }
            Some(Seen::Panicked) => {
                if primary.end != CallEnd::Panicked && !strong_failure(CallEnd::Panicked) {
                    v.push(format!("[3 lost write] panic not explained: {what}"));
                }
            }
            Some(Seen::Cancelled) => {}
        }
    }
    for put in puts.values() {
        if by_value.contains_key(&put.value) {
            continue;
        }
        match &put.seen {
            Seen::Ok => v.push(format!(
                "[3 lost write] put({}, {}) acknowledged without any store call",
                put.key, put.value
            )),
            Seen::Err(error) if fail_call && error.contains("refused") => {}
            Seen::Cancelled => {}
            other => v.push(format!(
                "[3 lost write] put({}, {}) saw {other:?} without any store call",
                put.key, put.value
            )),
        }
    }

    // 2. Per-key order: for each key, the values both stores applied
    // (attempts that landed after their lane gave up excluded) were applied
    // in the same relative order, so the secondary followed the primary's
    // order across phase changes (the primary of a key changes at cutover
    // and rollback). No store applies a value twice.
    if !noisy {
        for key in 0..scenario.keys {
            let sequence = |state: &MemState| -> Vec<u64> {
                state
                    .log
                    .iter()
                    .filter(|(k, _, hung)| *k == key && !*hung)
                    .map(|(_, value, _)| *value)
                    .collect()
            };
            let (old, new) = (sequence(&obs.old), sequence(&obs.new));
            for (store, values) in [(Store::Old, &old), (Store::New, &new)] {
                let distinct: BTreeSet<_> = values.iter().collect();
                if distinct.len() != values.len() {
                    v.push(format!(
                        "[2 order] key {key}: {store} applied a value twice: {values:?}"
                    ));
                }
            }
            let in_old: BTreeSet<u64> = old.iter().copied().collect();
            let in_new: BTreeSet<u64> = new.iter().copied().collect();
            let old_common: Vec<u64> = old.iter().copied().filter(|x| in_new.contains(x)).collect();
            let new_common: Vec<u64> = new.iter().copied().filter(|x| in_old.contains(x)).collect();
            if old_common != new_common {
                let at = old_common
                    .iter()
                    .zip(&new_common)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                let from = at.saturating_sub(2);
                let window = |s: &[u64]| s[from..s.len().min(at + 3)].to_vec();
                v.push(format!(
                    "[2 order] key {key}: the stores applied their common values in different \
                     orders, first difference at position {at}: Old {:?} vs New {:?} \
                     (Old log {old:?}, New log {new:?})",
                    window(&old_common),
                    window(&new_common)
                ));
            }
        }
    }

    // 4. The stores agree key by key at the end, except on keys with a
    // dead letter or a late-landing attempt.
    for key in 0..scenario.keys {
        let (old, new) = (obs.old.map.get(&key), obs.new.map.get(&key));
        if old == new {
            continue;
        }
        let lettered = obs.letters.iter().any(|letter| letter.key == key);
        if late_keys.contains(&key) && !lettered {
            // A timed-out call may complete later, but never silently: its
            // write is not retried and its dead letter names the key.
            verdict.late_divergences += 1;
            let log = |state: &MemState| -> Vec<String> {
                state
                    .log
                    .iter()
                    .filter(|(k, _, _)| *k == key)
                    .map(|(_, value, hung)| format!("{value}{}", if *hung { "(late)" } else { "" }))
                    .collect()
            };
            v.push(format!(
                "[4 agreement] key {key}: Old ends with {old:?}, New with {new:?}, no dead letter: \
                 a hung lane attempt landed after its lane had given up on it and moved on (Old \
                 log {:?}, New log {:?})",
                log(&obs.old),
                log(&obs.new)
            ));
        }
        if !noisy && !excused.contains(&key) {
            v.push(format!(
                "[4 agreement] key {key}: Old ends with {old:?}, New with {new:?}, and no dead \
                 letter or late write explains it"
            ));
        }
    }

    // 5. No false mismatch. Each read's store calls are grouped by its tag:
    // two calls make a shadow read. Of those whose primary answered, each
    // is counted exactly once as matched, mismatched or skipped (a write of
    // the key was in flight or pending). A mismatch needs the two answers
    // to differ, and (when no attempt landed late unmarked) the key to be
    // one the stores may really disagree on, or the shadow read to fail:
    // a difference only a pending write explains must be skipped. In a run
    // with no dead letter, no late landing and no failed read, that means
    // `reads_mismatched == 0`. With background shadow workers the caller
    // makes the primary read only, and each worker read of the other store
    // is one comparison (counted once as matched, mismatched or skipped);
    // the answer it is compared with is not known here, so a worker read
    // may explain a mismatch only if it failed or its key is excused.
    let mut by_tag: HashMap<u64, Vec<&GetCall>> = HashMap::new();
    for call in &obs.get_calls {
        by_tag.entry(call.tag).or_default().push(call);
    }
    let (mut same, mut differ, mut differ_excused, mut shadow_failed, mut primary_failed) =
        (0_u64, 0_u64, 0_u64, 0_u64, 0_u64);
    let value_keys: HashMap<u64, u64> = puts.values().map(|p| (p.value, p.key)).collect();
    for get in obs.callers.iter().flat_map(|caller| &caller.gets) {
        let calls = by_tag.get(&get.tag).map_or(&[][..], Vec::as_slice);
        let Some(result) = &get.result else {
            v.push(format!("[5 shadow] get({}) panicked", get.key));
            continue;
        };
        if calls.iter().any(|call| call.key != get.key) || calls.is_empty() || calls.len() > 2 {
            v.push(format!(
                "[5 shadow] get({}) made the store calls {calls:?}",
                get.key
            ));
            continue;
        }
        // 6. A read answers a value written to that key.
        if let Ok(Some(value)) = result
            && value_keys.get(value) != Some(&get.key)
        {
            v.push(format!(
                "[6 read] get({}) answered {value}, not a value of that key",
                get.key
            ));
        }
        if calls.len() == 2 {
            if calls[0].store == calls[1].store {
                v.push(format!("[5 shadow] get({}) read one store twice", get.key));
            }
            match (&calls[0].result, &calls[1].result, result) {
                (Ok(a), Ok(b), _) if a == b => same += 1,
                (Ok(_), Ok(_), _) => {
                    differ += 1;
                    differ_excused += u64::from(excused.contains(&get.key));
                }
                (Ok(_), Err(_), Ok(_)) | (Err(_), Ok(_), Ok(_)) => shadow_failed += 1,
                _ => primary_failed += 1,
            }
        }
    }
    let workers: Vec<&GetCall> = obs.get_calls.iter().filter(|c| c.on_worker).collect();
    let worker_reads = workers.len() as u64;
    let worker_failed = workers.iter().filter(|c| c.result.is_err()).count() as u64;
    let worker_excused = workers
        .iter()
        .filter(|c| c.result.is_ok() && excused.contains(&c.key))
        .count() as u64;
    if scenario.background_shadow.is_none() && worker_reads > 0 {
        v.push(format!(
            "[5 shadow] {worker_reads} background shadow reads without background shadow"
        ));
    }
    let answered = same + differ + shadow_failed + worker_reads;
    verdict.shadow_reads = answered + primary_failed;
    let recorded = stats.reads_matched + stats.reads_mismatched + stats.reads_skipped_pending;
    if recorded < answered || recorded > answered + primary_failed {
        v.push(format!(
            "[5 shadow] {recorded} shadow reads recorded (matched {}, mismatched {}, skipped {}), \
             expected {answered}..={} ({worker_reads} by background workers)",
            stats.reads_matched,
            stats.reads_mismatched,
            stats.reads_skipped_pending,
            answered + primary_failed
        ));
    }
    if stats.reads_matched > same + worker_reads - worker_failed
        || stats.reads_mismatched > differ + shadow_failed + worker_reads
    {
        v.push(format!(
            "[5 shadow] matched {} / mismatched {} but the stores answered alike {same} times, \
             differently {differ} times, shadow failed {shadow_failed} times, and background \
             workers read {worker_reads} times ({worker_failed} failed)",
            stats.reads_matched, stats.reads_mismatched
        ));
    }
    let get_faults = obs.get_calls.iter().any(|call| call.result.is_err());
    verdict.clean_shadow = !noisy && obs.letters.is_empty() && late_keys.is_empty() && !get_faults;
    let explained = differ_excused + shadow_failed + worker_failed + worker_excused;
    if !noisy && stats.reads_mismatched > explained {
        v.push(format!(
            "[5 shadow] {} false mismatch(es): reads_mismatched {}, but only {differ_excused} \
             differing answer(s) on keys with a dead letter or a late write, {shadow_failed} \
             failed shadow read(s) and {} background read(s) failed or on such keys \
             (differing answers in all: {differ}, skipped as pending: {}, background reads: \
             {worker_reads})",
            stats.reads_mismatched - explained,
            stats.reads_mismatched,
            worker_failed + worker_excused,
            stats.reads_skipped_pending
        ));
    }

    // 8. Lifecycle: the flush and the shutdown finish, nothing is left
    // pending, every dead letter is handed out.
    if let Err(error) = &obs.flush {
        v.push(format!("[8 lifecycle] flush(10 s) failed: {error}"));
    }
    if !obs.shadow_flushed {
        v.push("[8 lifecycle] flush_shadow(10 s) did not finish".to_owned());
    }
    if !obs.shutdown_complete || obs.still_pending != 0 {
        v.push(format!(
            "[8 lifecycle] shutdown(10 s) incomplete, {} still pending",
            obs.still_pending
        ));
    }
    if !obs.settled {
        v.push("[8 lifecycle] store calls still running 5 s after shutdown".to_owned());
    }
    if stats.dead_letters != obs.letters.len() as u64 || stats.dead_letters_evicted != 0 {
        v.push(format!(
            "[8 lifecycle] stats count {} dead letters ({} evicted), {} handed out",
            stats.dead_letters,
            stats.dead_letters_evicted,
            obs.letters.len()
        ));
    }
    if stats.secondary_pending != 0 {
        v.push(format!(
            "[8 lifecycle] {} secondary writes pending after shutdown",
            stats.secondary_pending
        ));
    }

    // 9. The write counters match the store calls.
    let primaries = || by_value.values().map(|calls| calls[0]);
    let primary_ok = primaries().filter(|c| c.end == CallEnd::Applied).count() as u64;
    let primary_failed_calls = primaries().filter(|c| c.end == CallEnd::Failed).count() as u64;
    if stats.primary_writes_ok != primary_ok || stats.primary_writes_failed != primary_failed_calls
    {
        v.push(format!(
            "[9 stats] primary writes ok {} / failed {}, the stores saw {primary_ok} / \
             {primary_failed_calls}",
            stats.primary_writes_ok, stats.primary_writes_failed
        ));
    }
    let retries: u64 = by_value
        .values()
        .map(|calls| calls.len().saturating_sub(2) as u64)
        .sum();
    let (ok_range, failed_range) = match (scenario.off_path(), scenario.async_trait) {
        // Sync strategy: one attempt, counted as it ended (a cancelled one
        // is dead-lettered, not counted).
        (false, _) => ((sec_applied, sec_applied), (sec_failed, sec_failed)),
        // Lanes over async stores: a timed-out attempt is dropped.
        (true, true) => (
            (sec_applied, sec_applied),
            (sec_failed + sec_dropped, sec_failed + sec_dropped),
        ),
        // Lanes over blocking stores, or a bounded blocking secondary: a
        // hung attempt may or may not be seen in time, a slow one may time
        // out (noise), and a write behind an abandoned call is counted
        // failed without a store call.
        (true, false) => (
            (if noisy { 0 } else { sec_applied_in_time }, sec_applied),
            (sec_failed, u64::MAX),
        ),
    };
    let within = |x: u64, (lo, hi): (u64, u64)| lo <= x && x <= hi;
    if !within(stats.secondary_writes_ok, ok_range)
        || !within(stats.secondary_writes_failed, failed_range)
        || stats.secondary_retries != if lanes.is_some() { retries } else { 0 }
    {
        v.push(format!(
            "[9 stats] secondary writes ok {} / failed {} / retries {}, expected ok in {ok_range:?}, \
             failed in {failed_range:?}, retries {retries}",
            stats.secondary_writes_ok, stats.secondary_writes_failed, stats.secondary_retries
        ));
    }
    verdict.violations = violations;
    verdict
}

// ---------------------------------------------------------------------------
// The driver.
// ---------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Injected panics are expected by the thousand: keep them quiet.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !message.contains(INJECTED_PANIC) {
                previous(info);
            }
        }));
        if std::env::var_os("DUALWRITE_SIM_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
    });
}

/// Runs one seed under a watchdog.
fn run_seed(seed: u64) -> Result<(Scenario, Verdict), String> {
    let scenario = Scenario::new(seed);
    let (done, outcome) = mpsc::channel();
    let runner = scenario.clone();
    thread::Builder::new()
        .name(format!("sim-seed-{seed}"))
        .spawn(move || {
            let observed = if runner.async_trait {
                run_async_trait(&runner)
            } else {
                run_sync_trait(&runner)
            };
            let _ = done.send(analyse(&runner, &observed));
        })
        .map_err(|error| format!("cannot start the run: {error}"))?;
    match outcome.recv_timeout(SEED_WATCHDOG) {
        Ok(verdict) => Ok((scenario, verdict)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "the run did not finish within {SEED_WATCHDOG:?} (deadlock?); {}",
            scenario.describe()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(format!(
            "the run panicked (harness bug or unexpected panic); {}",
            scenario.describe()
        )),
    }
}

#[derive(Debug, Default)]
struct Totals {
    runs: usize,
    noisy: usize,
    clean_shadow: usize,
    late_divergences: usize,
    /// The first seeds with a late divergence.
    late_seeds: Vec<u64>,
    puts: usize,
    letters: usize,
    cancelled: usize,
    shadow_reads: u64,
    phase_changes: usize,
    fence_timeouts: usize,
}

fn simulate(family: Family) {
    setup();
    let single = env_u64("DUALWRITE_SIM_SEED");
    let seeds: Vec<u64> = match single {
        Some(seed) => vec![seed],
        None => (0..env_u64("DUALWRITE_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for seed in seeds.into_iter().filter(|&seed| family_of(seed) == family) {
        match run_seed(seed) {
            Ok((scenario, verdict)) => {
                totals.runs += 1;
                totals.noisy += usize::from(verdict.noisy);
                totals.clean_shadow += usize::from(verdict.clean_shadow);
                totals.late_divergences += verdict.late_divergences;
                if verdict.late_divergences > 0 && totals.late_seeds.len() < 10 {
                    totals.late_seeds.push(seed);
                }
                if single.is_some() {
                    eprintln!("seed {seed}: {}", scenario.describe());
                    for note in &verdict.notes {
                        eprintln!("  note: {note}");
                    }
                }
                totals.puts += verdict.puts;
                totals.letters += verdict.letters;
                totals.cancelled += verdict.cancelled;
                totals.shadow_reads += verdict.shadow_reads;
                totals.phase_changes += verdict.phase_changes;
                totals.fence_timeouts += verdict.fence_timeouts;
                if !verdict.violations.is_empty() {
                    let shown: Vec<&String> = verdict.violations.iter().take(6).collect();
                    failures.push((
                        seed,
                        format!(
                            "{} violation(s); {}\n      {}",
                            verdict.violations.len(),
                            scenario.describe(),
                            shown
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join("\n      ")
                        ),
                    ));
                }
            }
            Err(error) => {
                failures.push((seed, error));
                // A hung run leaves its threads behind: stop here.
                if failures
                    .last()
                    .is_some_and(|(_, e)| e.contains("did not finish"))
                {
                    break;
                }
            }
        }
    }
    eprintln!(
        "simulation {family:?}: {} seed(s) in {:.1?}; {} failed; {totals:?}",
        totals.runs,
        started.elapsed(),
        failures.len()
    );
    if !failures.is_empty() {
        let seeds: Vec<u64> = failures.iter().map(|(seed, _)| *seed).collect();
        let report: Vec<String> = failures
            .iter()
            .map(|(seed, text)| format!("  seed {seed}: {text}"))
            .collect();
        panic!(
            "{} of {} {family:?} seed(s) failed: {seeds:?}\n{}\nreplay one with DUALWRITE_SIM_SEED=<seed>",
            failures.len(),
            totals.runs
                + failures
                    .iter()
                    .filter(|(_, e)| e.contains("the run"))
                    .count(),
            report.join("\n")
        );
    }
}

#[test]
fn simulate_sync_secondary_writes() {
    simulate(Family::SyncPath);
}

#[test]
fn simulate_async_secondary_lanes() {
    simulate(Family::Lanes);
}

#[test]
fn simulate_async_trait() {
    simulate(Family::AsyncTrait);
}

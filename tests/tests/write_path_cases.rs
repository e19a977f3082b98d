//! Reproductions of write-path defects of the generated adapter and its
//! runtime. Every test here asserts the behaviour the spec asks for and FAILS
//! on the code as it is today; each test's doc comment names the defect.
//!
//! The stores are in-memory maps with hooks (a gate that holds calls until the
//! test releases it, a per-call delay, a panic switch, an append-only log
//! file), so every ordering is forced by the test rather than by timing.
//! Every test is bounded: a held call is released after at most
//! [`MAX_HOLD`], and calls that may hang on today's code run on a watchdog
//! thread.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use dualwrite_runtime::{LaneConfig, Migration, Phase, Store, SyncMode, dual_write};

/// The longest a gate holds a call, so no test can hang for good.
const MAX_HOLD: Duration = Duration::from_secs(10);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// A gate: holds store calls until the test opens it.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct GateState {
    /// Every call is held while set.
    closed: bool,
    /// The next `armed` calls are held.
    armed: usize,
    /// Calls held so far.
    entered: usize,
    /// Bumped by `open`; a held call waits for it to change.
    generation: u64,
}

#[derive(Default)]
struct Gate {
    /// Fast path: false while no call is to be held.
    active: AtomicBool,
    state: Mutex<GateState>,
    cv: Condvar,
}

impl Gate {
    /// Holds the next `n` calls (until `open`).
    fn hold_next(&self, n: usize) {
        let mut state = lock(&self.state);
        state.armed += n;
        self.active.store(true, Ordering::SeqCst);
    }

    /// Holds every call until `open`.
    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        self.active.store(true, Ordering::SeqCst);
    }

    /// Releases every held call and stops holding.
    fn open(&self) {
        let mut state = lock(&self.state);
        state.closed = false;
        state.armed = 0;
        state.generation += 1;
        self.active.store(false, Ordering::SeqCst);
        self.cv.notify_all();
    }

    /// Called by the store: blocks if the gate holds this call, at most
    /// [`MAX_HOLD`].
    fn pass(&self) {
        if !self.active.load(Ordering::SeqCst) {
            return;
        }
        let mut state = lock(&self.state);
        if !state.closed && state.armed == 0 {
            return;
        }
        if state.armed > 0 {
            state.armed -= 1;
            if state.armed == 0 && !state.closed {
                self.active.store(false, Ordering::SeqCst);
            }
        }
        state.entered += 1;
        let generation = state.generation;
        self.cv.notify_all();
        let deadline = Instant::now() + MAX_HOLD;
        while state.generation == generation {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .cv
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until `n` calls in all have been held; false on timeout.
    fn wait_entered(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        while state.entered < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .cv
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

// ---------------------------------------------------------------------------
// The sync trait and its in-memory store.
// ---------------------------------------------------------------------------

#[dual_write]
trait Kv {
    #[dual_write(key = key)]
    fn put(&self, key: u64, value: u64) -> Result<(), String>;
    #[dual_write(key = key)]
    fn get(&self, key: u64) -> Result<Option<u64>, String>;
}

/// A `Mutex<HashMap>` store with hooks.
#[derive(Default)]
struct Mem {
    map: Mutex<HashMap<u64, u64>>,
    /// Holds `put` calls on demand.
    gate: Gate,
    /// The gate is passed after the write is applied instead of before.
    gate_after_write: AtomicBool,
    /// Sleep this many microseconds at the start of every `put`.
    delay_us: AtomicU64,
    /// `put` panics.
    panic_on_put: AtomicBool,
    /// Each applied write is appended here as a line `key value`.
    log: Option<Mutex<File>>,
}

impl Mem {
    fn with_log(file: File) -> Self {
        Mem {
            log: Some(Mutex::new(file)),
            ..Mem::default()
        }
    }

    fn value(&self, key: u64) -> Option<u64> {
        lock(&self.map).get(&key).copied()
    }

    fn len(&self) -> usize {
        lock(&self.map).len()
    }

    fn contents(&self) -> BTreeMap<u64, u64> {
        lock(&self.map).iter().map(|(k, v)| (*k, *v)).collect()
    }
}

impl Kv for Mem {
    fn put(&self, key: u64, value: u64) -> Result<(), String> {
        if self.panic_on_put.load(Ordering::SeqCst) {
            panic!("the store panicked in put({key}, {value})");
        }
        let delay = self.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            thread::sleep(Duration::from_micros(delay));
        }
        let after = self.gate_after_write.load(Ordering::SeqCst);
        if !after {
            self.gate.pass();
        }
        lock(&self.map).insert(key, value);
        if let Some(log) = &self.log {
            let mut file = lock(log);
            writeln!(file, "{key} {value}").map_err(|e| e.to_string())?;
            file.flush().map_err(|e| e.to_string())?;
        }
        if after {
            self.gate.pass();
        }
        Ok(())
    }

    fn get(&self, key: u64) -> Result<Option<u64>, String> {
        Ok(self.value(key))
    }
}

/// Opens the store's gate when dropped, so a failing assertion never leaves
/// a call held.
struct OpenOnDrop(Arc<Mem>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.gate.open();
    }
}

fn stores() -> (Arc<Mem>, Arc<Mem>) {
    (Arc::new(Mem::default()), Arc::new(Mem::default()))
}

fn adapter(old: &Arc<Mem>, new: &Arc<Mem>, migration: &Migration) -> KvDualWrite<Mem, Mem> {
    KvDualWrite::from_shared(Arc::clone(old), Arc::clone(new), migration.clone())
}

/// Runs `f` on its own thread: `Err("timed out")` if it did not finish
/// within `limit` (the thread is then left running), `Err("panicked")` if it
/// panicked.
fn with_watchdog<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, &'static str> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).map_err(|error| match error {
        mpsc::RecvTimeoutError::Timeout => "timed out",
        mpsc::RecvTimeoutError::Disconnected => "panicked",
    })
}

// ---------------------------------------------------------------------------
// The async trait and its in-memory store.
// ---------------------------------------------------------------------------

#[dual_write]
trait AsyncKv {
    #[dual_write(key = key)]
    async fn put(&self, key: u64, value: u64) -> Result<(), String>;
    #[dual_write(key = key)]
    async fn get(&self, key: u64) -> Result<Option<u64>, String>;
}

#[derive(Default)]
struct AsyncMem {
    map: Mutex<HashMap<u64, u64>>,
    /// `put` awaits forever before writing.
    hang_on_put: AtomicBool,
    /// `put` awaits a tokio timer of this many milliseconds before writing.
    sleep_ms: AtomicU64,
}

impl AsyncMem {
    fn value(&self, key: u64) -> Option<u64> {
        lock(&self.map).get(&key).copied()
    }
}

impl AsyncKv for AsyncMem {
    async fn put(&self, key: u64, value: u64) -> Result<(), String> {
        if self.hang_on_put.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let sleep = self.sleep_ms.load(Ordering::SeqCst);
        if sleep > 0 {
            tokio::time::sleep(Duration::from_millis(sleep)).await;
        }
        lock(&self.map).insert(key, value);
        Ok(())
    }

    async fn get(&self, key: u64) -> Result<Option<u64>, String> {
        Ok(self.value(key))
    }
}

// ---------------------------------------------------------------------------
// Case 1: a queued secondary write lands after the phase moved.
// ---------------------------------------------------------------------------

/// Runs case 1: the first lane write to the `held` store is held, the phase
/// moves with `change`, a second write to key 1 goes through the new primary,
/// then the held write is released. Returns (Old, New, `get(1)`) for key 1.
///
/// The phase change and the second write run on their own thread: on today's
/// code they finish at once, while the held write is still queued; a fix may
/// make either wait for that write, so the held write is released after at
/// most 500 ms either way.
fn queued_write_across_a_phase_change(
    start: Phase,
    held: Store,
    change: impl FnOnce(&Migration) + Send + 'static,
) -> (Option<u64>, Option<u64>, Result<Option<u64>, String>) {
    let (old, new) = stores();
    let migration = Migration::new(start);
    let kv = Arc::new(
        adapter(&old, &new, &migration).with_async_secondary(LaneConfig::default().with_lanes(1)),
    );
    let held = Arc::clone(match held {
        Store::Old => &old,
        Store::New => &new,
    });
    let _open = OpenOnDrop(Arc::clone(&held));
    held.gate.hold_next(1);
    kv.put(1, 1).expect("first write");
    assert!(
        held.gate.wait_entered(1, Duration::from_secs(5)),
        "the lane never started the secondary write of put(1, 1)"
    );
    let (done, second) = mpsc::channel();
    let writer = {
        let kv = Arc::clone(&kv);
        thread::spawn(move || {
            change(&migration);
            let _ = done.send(kv.put(1, 2));
        })
    };
    let early = second.recv_timeout(Duration::from_millis(500)).ok();
    held.gate.open();
    let second = match early {
        Some(result) => result,
        None => second
            .recv_timeout(Duration::from_secs(5))
            .expect("the second write finished"),
    };
    writer.join().expect("writer thread");
    assert_eq!(second, Ok(()), "second write");
    kv.flush(Duration::from_secs(30)).expect("flushed");
    (old.value(1), new.value(1), kv.get(1))
}

/// Defect 1: a secondary write still queued in a lane is applied after the
/// phase moved DualWrite -> Cutover, on top of the newer write that the new
/// primary (New) already took: New ends with the stale value 1 and `get`
/// (served by New) answers 1.
#[test]
fn case01_queued_secondary_write_lands_after_cutover() {
    let (old, new, read) =
        queued_write_across_a_phase_change(Phase::ShadowRead, Store::New, |migration| {
            migration.set_phase(Phase::Cutover).expect("allowed");
        });
    assert_eq!(
        (old, new, read),
        (Some(2), Some(2), Ok(Some(2))),
        "(Old, New, get(1)) for key 1 after put(1,1), cutover, put(1,2), flush"
    );
}

/// Defect 1, per-key variant: the same stale overwrite when only key 1 is
/// moved to Cutover with `set_phase_for`.
#[test]
fn case01_queued_secondary_write_lands_after_per_key_cutover() {
    let (old, new, read) =
        queued_write_across_a_phase_change(Phase::ShadowRead, Store::New, |migration| {
            migration
                .set_phase_for(&1u64, Phase::Cutover)
                .expect("allowed");
        });
    assert_eq!(
        (old, new, read),
        (Some(2), Some(2), Ok(Some(2))),
        "(Old, New, get(1)) for key 1 after put(1,1), per-key cutover, put(1,2), flush"
    );
}

/// Defect 1, rollback variant: Cutover -> ShadowRead while a write to Old
/// (then the secondary) is queued; it lands on Old after the newer write Old
/// took as the primary again, so Old ends with 1 and `get` answers 1.
#[test]
fn case01_queued_secondary_write_lands_after_rollback() {
    let (old, new, read) =
        queued_write_across_a_phase_change(Phase::Cutover, Store::Old, |migration| {
            migration.set_phase(Phase::ShadowRead).expect("allowed");
        });
    assert_eq!(
        (old, new, read),
        (Some(2), Some(2), Ok(Some(2))),
        "(Old, New, get(1)) for key 1 after put(1,1), rollback to shadow_read, put(1,2), flush"
    );
}

/// A fence that cannot complete within its deadline fails the phase change
/// with a clear error and leaves the phase as it was; once the queued write
/// is applied, the same change goes through.
#[test]
fn case01_a_fence_that_times_out_leaves_the_phase() {
    let (old, new) = stores();
    let migration = Migration::new(Phase::ShadowRead);
    let kv =
        adapter(&old, &new, &migration).with_async_secondary(LaneConfig::default().with_lanes(1));
    let open = OpenOnDrop(Arc::clone(&new));
    new.gate.hold_next(1);
    kv.put(1, 1).expect("first write");
    assert!(new.gate.wait_entered(1, Duration::from_secs(5)));
    let refused = migration.change(
        dualwrite_runtime::PhaseChange::to(Phase::Cutover)
            .reason("cut over tenant batch 1")
            .fence_timeout(Duration::from_millis(50)),
    );
    match refused {
        Err(error @ dualwrite_runtime::PhaseError::FenceTimedOut { pending: 1, .. }) => {
            let message = error.to_string();
            assert!(
                message.contains("the phase stays `shadow_read`"),
                "{message}"
            );
        }
        other => panic!("expected a fence timeout, got {other:?}"),
    }
    assert_eq!(migration.phase(), Phase::ShadowRead);
    assert!(
        migration.history().is_empty(),
        "a refused change is not a transition"
    );
    drop(open);
    let transition = migration
        .change(dualwrite_runtime::PhaseChange::to(Phase::Cutover).reason("retry"))
        .expect("the queued write is applied first");
    assert_eq!(transition.reason.as_deref(), Some("retry"));
    assert!(transition.fenced.is_some());
    assert_eq!(new.value(1), Some(1));
    kv.put(1, 2).expect("write after cutover");
    kv.flush(Duration::from_secs(10)).expect("flushed");
    assert_eq!((old.value(1), new.value(1)), (Some(2), Some(2)));
}

/// `shutdown` with a lane stuck in a store call: the report says it did not
/// finish and how many writes the lane still holds; writes after shutdown
/// reach the primary and leave dead letters, never silently lost.
#[test]
fn case03_shutdown_reports_what_it_could_not_drain() {
    let (old, new) = stores();
    let kv = adapter(&old, &new, &Migration::new(Phase::DualWrite))
        .with_async_secondary(LaneConfig::default().with_lanes(1));
    let open = OpenOnDrop(Arc::clone(&new));
    new.gate.hold_next(1);
    kv.put(1, 1).expect("held write");
    assert!(new.gate.wait_entered(1, Duration::from_secs(5)));
    kv.put(2, 2).expect("queued behind it");
    let report = kv.shutdown(Duration::from_millis(100));
    assert!(!report.complete);
    // Both are held by the lane blocked in the store call.
    assert_eq!(report.still_pending, 2);
    assert!(report.dead_letters.is_empty());
    kv.put(3, 3).expect("the primary is still written");
    // When the call returns, the lane gives up what it still holds.
    drop(open);
    kv.flush(Duration::from_secs(10)).expect("the lane drained");
    let letters = kv.take_dead_letters();
    let seen: Vec<(Option<String>, String)> = letters
        .iter()
        .map(|l| (l.key.clone(), l.error.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some("3".to_owned()), "the adapter is shut down".to_owned()),
            (
                Some("2".to_owned()),
                "not applied: the adapter shut down before this write's turn".to_owned()
            ),
        ]
    );
    assert_eq!((old.value(1), new.value(1)), (Some(1), Some(1)));
    assert_eq!((old.value(3), new.value(3)), (Some(3), None));
}

// ---------------------------------------------------------------------------
// Case 2: two callers writing one key.
// ---------------------------------------------------------------------------

/// Runs case 2: caller A is held inside Old.put(1, 1) after Old applied it,
/// caller B writes put(1, 2) meanwhile, then A is released. Returns Old's and
/// New's value of key 1 after both finished and the lanes flushed.
fn two_callers_one_key(async_secondary: bool) -> (Option<u64>, Option<u64>) {
    let (old, new) = stores();
    let migration = Migration::new(Phase::DualWrite);
    let mut kv = adapter(&old, &new, &migration);
    if async_secondary {
        kv = kv.with_async_secondary(LaneConfig::default().with_lanes(1));
    }
    let kv = Arc::new(kv);
    let _open = OpenOnDrop(Arc::clone(&old));
    old.gate_after_write.store(true, Ordering::SeqCst);
    old.gate.hold_next(1);

    let (a_done, a_rx) = mpsc::channel();
    let a = {
        let kv = Arc::clone(&kv);
        thread::spawn(move || {
            let _ = a_done.send(kv.put(1, 1));
        })
    };
    assert!(
        old.gate.wait_entered(1, Duration::from_secs(5)),
        "caller A never reached Old.put"
    );
    let (b_done, b_rx) = mpsc::channel();
    let b = {
        let kv = Arc::clone(&kv);
        thread::spawn(move || {
            let _ = b_done.send(kv.put(1, 2));
        })
    };
    // On today's code B finishes at once; with per-key ordering it waits
    // for A, so give it a moment (generous, for a loaded machine) and go on
    // either way.
    let b_early = b_rx.recv_timeout(Duration::from_millis(500)).ok();
    old.gate.open();
    let a_result = a_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("caller A finished");
    let b_result = match b_early {
        Some(result) => result,
        None => b_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("caller B finished"),
    };
    a.join().expect("caller A");
    b.join().expect("caller B");
    assert_eq!((a_result, b_result), (Ok(()), Ok(())));
    kv.flush(Duration::from_secs(30)).expect("flushed");
    (old.value(1), new.value(1))
}

/// Defect 2 (sync strategy): the secondary sees two writes to one key in a
/// different order than the primary committed them (Old: A then B; New: B
/// then A), so the stores disagree.
#[test]
fn case02_two_callers_one_key_sync() {
    let (old, new) = two_callers_one_key(false);
    assert_eq!(old, new, "Old vs New for key 1 (sync strategy)");
}

/// Defect 2 (async strategy): the hand-off to the lane happens after the
/// primary call returns, so B's write is queued before A's although A
/// committed first; the stores disagree.
#[test]
fn case02_two_callers_one_key_async() {
    let (old, new) = two_callers_one_key(true);
    assert_eq!(old, new, "Old vs New for key 1 (async strategy)");
}

// ---------------------------------------------------------------------------
// Case 3: acknowledged writes die with the process.
// ---------------------------------------------------------------------------

const CHILD_ENV: &str = "DW_WRITE_PATH_CASE03_LOG";
const CHILD_MODE: &str = "DW_WRITE_PATH_CASE03_MODE";
const CHILD_WRITES: u64 = 2_000;

/// The child side of case 3: acknowledges `CHILD_WRITES` async-secondary
/// writes to a slow New that logs each applied write to a file, then shuts
/// the adapter down (or only drops it) and exits at once.
fn case03_child(path: std::ffi::OsString, shutdown: bool) -> ! {
    tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .init();
    let file = File::create(&path).expect("log file");
    let new = Arc::new(Mem::with_log(file));
    new.delay_us.store(50, Ordering::SeqCst);
    let old = Arc::new(Mem::default());
    let kv = adapter(&old, &new, &Migration::new(Phase::DualWrite))
        .with_async_secondary(LaneConfig::default());
    let acknowledged = (0..CHILD_WRITES)
        .filter(|&key| kv.put(key, key).is_ok())
        .count();
    // libtest may have printed "test … ... " without a newline.
    println!("\nCHILD_ACKNOWLEDGED {acknowledged}");
    if shutdown {
        let report = kv.shutdown(Duration::from_secs(30));
        println!(
            "CHILD_SHUTDOWN complete={} dead_letters={}",
            report.complete,
            report.dead_letters.len()
        );
    }
    drop(kv);
    std::process::exit(0);
}

/// Runs the case-3 child in `mode`; (acknowledged, applied, stdout).
fn run_case03_child(mode: &str) -> (usize, usize, String) {
    let path = std::env::temp_dir().join(format!(
        "dualwrite-case03-{}-{mode}.log",
        std::process::id(),
    ));
    let _ = std::fs::remove_file(&path);
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "case03_acknowledged_writes_die_with_the_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, &path)
        .env(CHILD_MODE, mode)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("child process");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            panic!("the child process did not exit within 60 s");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let output = child.wait_with_output().expect("child output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let applied = std::fs::read_to_string(&path)
        .map(|text| text.lines().count())
        .unwrap_or(0);
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "child failed: {status}\n{stdout}");
    let acknowledged: usize = stdout
        .lines()
        .find_map(|line| Some(line.split_once("CHILD_ACKNOWLEDGED ")?.1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the child did not report its writes:\n{stdout}"));
    (acknowledged, applied, stdout)
}

/// Defect 3: the child process acknowledges 2 000 async-secondary writes and
/// exits; the writes still queued in the lanes were lost silently (no drain
/// at shutdown, no record of what was left). Now `shutdown(deadline)` drains
/// them all, and a drop without it is logged at warn level with the count.
#[test]
fn case03_acknowledged_writes_die_with_the_process() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        let shutdown = std::env::var(CHILD_MODE).as_deref() == Ok("shutdown");
        case03_child(path, shutdown);
    }
    let (acknowledged, applied, stdout) = run_case03_child("shutdown");
    assert_eq!(acknowledged, CHILD_WRITES as usize, "writes acknowledged");
    assert_eq!(
        applied, acknowledged,
        "acknowledged writes that reached New before the process exited"
    );
    assert!(
        stdout.contains("CHILD_SHUTDOWN complete=true dead_letters=0"),
        "{stdout}"
    );

    let (acknowledged, applied, stdout) = run_case03_child("drop");
    assert_eq!(acknowledged, CHILD_WRITES as usize, "writes acknowledged");
    if applied < acknowledged {
        // Lost with the process: never silently.
        let line = stdout
            .lines()
            .find(|line| line.contains("dropped with secondary writes pending"))
            .unwrap_or_else(|| panic!("no warning for the writes left:\n{stdout}"));
        assert!(line.contains("WARN") && line.contains("pending="), "{line}");
    }
}

// ---------------------------------------------------------------------------
// Case 4: a panicking secondary in the sync strategy.
// ---------------------------------------------------------------------------

/// Returns (stats.dead_letters, stats.secondary_writes_failed,
/// dead_letters().len()) after a put whose secondary panicked.
fn panicking_sync_secondary(mode: SyncMode) -> (u64, u64, usize) {
    let (old, new) = stores();
    let kv = adapter(&old, &new, &Migration::new(Phase::DualWrite)).with_sync_mode(mode);
    new.panic_on_put.store(true, Ordering::SeqCst);
    let outcome = catch_unwind(AssertUnwindSafe(|| kv.put(1, 1)));
    assert_eq!(old.value(1), Some(1), "the primary committed");
    // Either the panic propagates or the call returns; both are acceptable,
    // what matters is the record.
    let _ = outcome;
    let stats = kv.stats();
    (
        stats.dead_letters,
        stats.secondary_writes_failed,
        kv.dead_letters().len(),
    )
}

/// Defect 4 (Tolerant): a secondary that panics unwinds through the adapter
/// after the primary committed, and nothing records the lost secondary write.
#[test]
fn case04_panicking_sync_secondary_tolerant() {
    assert_eq!(
        panicking_sync_secondary(SyncMode::Tolerant),
        (1, 1, 1),
        "(stats.dead_letters, stats.secondary_writes_failed, dead_letters().len())"
    );
}

/// Defect 4 (Strong): same as Tolerant.
#[test]
fn case04_panicking_sync_secondary_strong() {
    assert_eq!(
        panicking_sync_secondary(SyncMode::Strong),
        (1, 1, 1),
        "(stats.dead_letters, stats.secondary_writes_failed, dead_letters().len())"
    );
}

// ---------------------------------------------------------------------------
// Case 5: cancelling an async call after the primary committed.
// ---------------------------------------------------------------------------

/// Defect 5: an `async fn` write cancelled (dropped by a timeout) while it
/// awaits the secondary, after the primary committed, leaves New without the
/// write and no dead letter: the drift is invisible.
#[tokio::test]
async fn case05_cancelled_async_call_after_primary_commit() {
    let old = Arc::new(AsyncMem::default());
    let new = Arc::new(AsyncMem::default());
    new.hang_on_put.store(true, Ordering::SeqCst);
    let kv = AsyncKvDualWrite::from_shared(
        Arc::clone(&old),
        Arc::clone(&new),
        Migration::new(Phase::DualWrite),
    );
    let timed_out = tokio::time::timeout(Duration::from_millis(50), kv.put(1, 1))
        .await
        .is_err();
    assert!(timed_out, "the call was cancelled by the timeout");
    assert_eq!(kv.get(1).await, Ok(Some(1)), "the primary committed");
    let dead_letters = kv.dead_letters().len();
    assert!(
        new.value(1) == Some(1) || dead_letters == 1,
        "after cancellation: New has {:?} for key 1 and there are {dead_letters} dead letters \
         (expected New = Some(1) or 1 dead letter)",
        new.value(1)
    );
}

// ---------------------------------------------------------------------------
// Case 6: unbounded memory.
// ---------------------------------------------------------------------------

/// Defect 6: with New stalled, the async secondary queues every write (ring,
/// then an unbounded overflow): 200 000 pending writes, no backpressure and
/// no bound on memory.
#[test]
fn case06_pending_writes_are_unbounded() {
    const WRITES: u64 = 200_000;
    let (old, new) = stores();
    // The default waits 1 s for room before each dead letter; no wait keeps
    // the test short.
    let kv = adapter(&old, &new, &Migration::new(Phase::DualWrite))
        .with_async_secondary(LaneConfig::default().with_full_wait(Duration::ZERO));
    let open = OpenOnDrop(Arc::clone(&new));
    new.gate.close();
    let ok = (0..WRITES)
        .filter(|&i| kv.put(i % 50_000, i).is_ok())
        .count() as u64;
    let stats = kv.stats();
    let applied = new.len() as u64;
    let (pending, dead_letters) = (stats.secondary_pending, stats.dead_letters);
    drop(open);
    kv.flush(Duration::from_secs(30)).expect("flushed");
    assert!(
        pending <= 65_536,
        "secondary_pending = {pending} while New was stalled (ok puts: {ok}, dead letters: \
         {dead_letters}, applied: {applied}); expected <= 65536"
    );
    assert_eq!(
        ok,
        pending + dead_letters + applied,
        "ok puts vs pending + dead letters + applied"
    );
    assert!(dead_letters > 0 && stats.queue_full >= dead_letters);
}

/// Defect 6, the other policy: with `WhenFull::FailCall` the calls beyond
/// the bound fail before either store is written (the error type, `String`,
/// converts from `WriteRefused`), and nothing is dead-lettered.
#[test]
fn case06_a_full_queue_can_fail_the_call_before_any_write() {
    const WRITES: u64 = 5_000;
    let (old, new) = stores();
    let kv = adapter(&old, &new, &Migration::new(Phase::DualWrite)).with_async_secondary(
        LaneConfig::default()
            .with_lanes(2)
            .with_max_queued(1_000)
            .with_full_wait(Duration::from_millis(1))
            .with_when_full(dualwrite_runtime::WhenFull::FailCall),
    );
    let open = OpenOnDrop(Arc::clone(&new));
    new.gate.close();
    let results: Vec<Result<(), String>> = (0..WRITES).map(|i| kv.put(i, i)).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
    let refused: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let stats = kv.stats();
    assert!(stats.secondary_pending <= 1_000, "{stats:?}");
    assert_eq!(
        ok, stats.secondary_pending,
        "every accepted write is queued"
    );
    assert_eq!(refused.len() as u64, WRITES - ok);
    assert_eq!(stats.writes_refused, WRITES - ok);
    assert!(
        refused[0].contains("secondary queue stayed full"),
        "{}",
        refused[0]
    );
    // A refused call wrote neither store, and is not reported as a call
    // that may have written its primary.
    assert_eq!(old.len() as u64, ok);
    assert_eq!(stats.dead_letters, 0);
    assert_eq!(stats.primary_outcome_unknown, 0, "{stats:?}");
    drop(open);
    kv.flush(Duration::from_secs(30)).expect("flushed");
    assert_eq!(old.contents(), new.contents());
}

/// Defect 6, async callers: a full lane is waited for without blocking the
/// thread (a current-thread runtime keeps running other tasks meanwhile),
/// and with `FailCall` the call fails before either store is written.
#[test]
fn case06_async_callers_wait_for_room_without_blocking_the_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let old = Arc::new(AsyncMem::default());
        let new = Arc::new(AsyncMem::default());
        new.sleep_ms.store(50, Ordering::SeqCst);
        let kv = AsyncKvDualWrite::from_shared(
            Arc::clone(&old),
            Arc::clone(&new),
            Migration::new(Phase::DualWrite),
        )
        .with_async_secondary(
            LaneConfig::default()
                .with_lanes(1)
                .with_max_queued(2)
                .with_full_wait(Duration::from_millis(20))
                .with_when_full(dualwrite_runtime::WhenFull::FailCall),
        );
        // A task that must keep running while a caller waits for room.
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = {
            let ticks = Arc::clone(&ticks);
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let mut results = Vec::new();
        for key in 0..5 {
            results.push(kv.put(key, key).await);
        }
        ticker.abort();
        let refused = results.iter().filter(|r| r.is_err()).count();
        assert!(refused >= 1, "{results:?}");
        assert!(
            ticks.load(Ordering::SeqCst) >= 10,
            "the runtime was blocked"
        );
        // A refused call wrote neither store.
        let written = (0..5).filter(|key| old.value(*key).is_some()).count();
        assert_eq!(written, 5 - refused);
        assert_eq!(kv.stats().primary_outcome_unknown, 0);
        kv.flush_async(Duration::from_secs(10))
            .await
            .expect("flushed");
        for key in 0..5 {
            assert_eq!(old.value(key), new.value(key), "key {key}");
        }
    });
}

// ---------------------------------------------------------------------------
// Case 7: no timeouts.
// ---------------------------------------------------------------------------

/// Defect 7: `attempt_timeout` only applies to futures run through
/// `LaneContext::block_on`; a sync trait's secondary call that hangs holds
/// its lane (and `flush`) for as long as it hangs, with no dead letter.
#[test]
fn case07_attempt_timeout_ignored_for_sync_trait() {
    let (old, new) = stores();
    let kv = Arc::new(
        adapter(&old, &new, &Migration::new(Phase::DualWrite)).with_async_secondary(
            LaneConfig::default()
                .with_lanes(1)
                .with_max_attempts(1)
                .with_blocking_attempt_timeout(Some(Duration::from_millis(100))),
        ),
    );
    let open = OpenOnDrop(Arc::clone(&new));
    new.gate.close();
    kv.put(1, 1).expect("primary");
    let flusher = Arc::clone(&kv);
    let started = Instant::now();
    // The hung call may still write, so a flush cannot report it done; it
    // returns at its own deadline instead of waiting for the store.
    let flushed = with_watchdog(Duration::from_secs(3), move || {
        flusher.flush(Duration::from_millis(500))
    });
    let waited = started.elapsed();
    let letters: Vec<String> = kv.dead_letters().into_iter().map(|d| d.error).collect();
    drop(open);
    assert_eq!(
        flushed,
        Ok(Err(dualwrite_runtime::FlushError::TimedOut { pending: 1 })),
        "flush did not return at its deadline (waited {waited:?}) although attempt_timeout is 100 ms; \
         dead letters: {letters:?}"
    );
    assert!(
        letters.len() == 1 && letters[0].contains("timed out"),
        "dead letters: {letters:?}"
    );
}

/// Found by the simulation: a lane attempt abandoned at its timeout that
/// still completes later could land after the lane's successful retry and
/// after newer writes of its key, leaving the secondary stale with no
/// record. Now a timed-out write is not retried: it is kept as a dead letter
/// (outcome unknown), the abandoned call counts as pending until it returns
/// (a flush waits for it, its late return is counted), and later writes of
/// its key are not applied before it returns (they could land before it)
/// but kept as dead letters too.
#[test]
fn case07_a_timed_out_write_landing_late_is_recorded() {
    let (old, new) = stores();
    let kv = Arc::new(
        adapter(&old, &new, &Migration::new(Phase::DualWrite)).with_async_secondary(
            LaneConfig::default()
                .with_lanes(1)
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(1))
                .with_blocking_attempt_timeout(Some(Duration::from_millis(50))),
        ),
    );
    let open = OpenOnDrop(Arc::clone(&new));
    // The first attempt of put(1, 1) is held past its timeout, then lands.
    new.gate.hold_next(1);
    kv.put(1, 1).expect("first write");
    assert!(
        new.gate.wait_entered(1, Duration::from_secs(5)),
        "the lane never started the secondary write of put(1, 1)"
    );
    kv.put(1, 2).expect("second write");
    thread::sleep(Duration::from_millis(300));
    new.gate.open();
    kv.flush(Duration::from_secs(10))
        .expect("the flush waits for the abandoned call");
    drop(open);
    let stats = kv.stats();
    let letters = kv.dead_letters();
    let keys: Vec<Option<String>> = letters.iter().map(|l| l.key.clone()).collect();
    // Either the stores agree, or the drift is recorded against the key.
    assert!(
        old.value(1) == new.value(1) || keys.contains(&Some("1".to_owned())),
        "Old {:?}, New {:?}, dead letters {letters:?}",
        old.value(1),
        new.value(1)
    );
    assert_eq!(stats.late_completions, 1, "{stats:?}");
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters[0].error.contains("outcome is unknown"),
        "{letters:?}"
    );
    assert_eq!(letters[0].attempts, 1, "a timed-out write is not retried");
    // The later write of the key is not applied before the abandoned one
    // returns (it could be overwritten by it): New never sees 2 then 1.
    assert!(
        letters[1]
            .error
            .contains("an earlier write of this key timed out"),
        "{letters:?}"
    );
    assert_eq!(new.value(1), Some(1));
}

/// Timeouts in the synchronous strategy: an async method's secondary call
/// that hangs is dropped at the adapter's secondary timeout, the caller gets
/// the primary's result (tolerant mode) and the write is a dead letter.
#[tokio::test(flavor = "current_thread")]
async fn case07_a_hung_secondary_call_is_bounded_in_the_sync_strategy() {
    let old = Arc::new(AsyncMem::default());
    let new = Arc::new(AsyncMem::default());
    new.hang_on_put.store(true, Ordering::SeqCst);
    let kv = AsyncKvDualWrite::from_shared(
        Arc::clone(&old),
        Arc::clone(&new),
        Migration::new(Phase::DualWrite),
    )
    .with_secondary_timeout(Some(Duration::from_millis(50)));
    let answered = tokio::time::timeout(Duration::from_secs(10), kv.put(1, 1)).await;
    assert_eq!(
        answered,
        Ok(Ok(())),
        "the caller is not held by the hung secondary"
    );
    assert_eq!(old.value(1), Some(1));
    let letters = kv.dead_letters();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].error.contains("timed out"),
        "{}",
        letters[0].error
    );
    assert_eq!(kv.stats().secondary_writes_failed, 1);
}

/// Timeouts in the synchronous strategy, blocking trait: a secondary call
/// that hangs holds the caller only until the bound
/// (`with_blocking_secondary_timeout`); the caller gets the primary's result
/// (tolerant mode) and the write is a dead letter. While the abandoned call
/// is outstanding it counts as pending (flush waits for it), and a later
/// write of the same key is dead-lettered rather than applied before it;
/// its late return is counted.
#[test]
fn case07_a_hung_blocking_secondary_is_bounded_in_the_sync_strategy() {
    let (old, new) = stores();
    let kv = Arc::new(
        adapter(&old, &new, &Migration::new(Phase::DualWrite))
            .with_blocking_secondary_timeout(Some(Duration::from_millis(50))),
    );
    let open = OpenOnDrop(Arc::clone(&new));
    new.gate.hold_next(1);
    let writer = Arc::clone(&kv);
    let answered = with_watchdog(Duration::from_secs(5), move || writer.put(1, 1));
    assert_eq!(
        answered,
        Ok(Ok(())),
        "the caller is not held by the hung secondary"
    );
    assert_eq!(old.value(1), Some(1));
    let stats = kv.stats();
    assert_eq!(
        (stats.secondary_writes_failed, stats.secondary_pending),
        (1, 1),
        "{stats:?}"
    );
    // A later write of key 1 must not land before the abandoned one.
    kv.put(1, 2).expect("primary");
    // Another key is not held back.
    kv.put(2, 2).expect("primary");
    assert_eq!(new.value(2), Some(2));
    assert_eq!(
        kv.flush(Duration::from_millis(50)),
        Err(dualwrite_runtime::FlushError::TimedOut { pending: 1 }),
        "the abandoned call may still write"
    );
    drop(open);
    kv.flush(Duration::from_secs(5))
        .expect("the abandoned call returned");
    assert_eq!(
        new.value(1),
        Some(1),
        "the late call landed; the newer write did not overtake it"
    );
    let letters: Vec<(u64, String)> = kv
        .dead_letters()
        .into_iter()
        .map(|letter| (u64::from(letter.attempts), letter.error))
        .collect();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters[0].1.contains("timed out"), "{letters:?}");
    assert!(letters[1].1.contains("abandoned"), "{letters:?}");
    assert_eq!(letters[1].0, 0, "the later write was not attempted");
    assert_eq!(kv.stats().late_completions, 1);
}

/// The same in the strong mode: the call fails with the refusal converted
/// into the method's error type, and a store error fails the call too.
#[test]
fn case07_a_bounded_blocking_secondary_fails_a_strong_call() {
    let (old, new) = stores();
    let kv = Arc::new(
        adapter(&old, &new, &Migration::new(Phase::DualWrite))
            .with_sync_mode(SyncMode::Strong)
            .with_blocking_secondary_timeout(Some(Duration::from_secs(1))),
    );
    let open = OpenOnDrop(Arc::clone(&new));
    new.gate.hold_next(1);
    let writer = Arc::clone(&kv);
    let answered =
        with_watchdog(Duration::from_secs(5), move || writer.put(1, 1)).expect("bounded");
    let error = answered.expect_err("strong mode fails the call");
    assert!(error.contains("did not answer within"), "{error}");
    drop(open);
    kv.flush(Duration::from_secs(5)).expect("returned");
    // In time, the write goes through the helper and succeeds.
    assert_eq!(kv.put(3, 3), Ok(()));
    assert_eq!(new.value(3), Some(3));
    // A panicking secondary fails the strong call instead of unwinding (the
    // bound is generous: a panic prints its backtrace before it is caught).
    new.panic_on_put.store(true, Ordering::SeqCst);
    let error = kv.put(4, 4).expect_err("strong mode fails the call");
    assert!(error.contains("panicked"), "{error}");
    assert_eq!(kv.dead_letters().len(), 2);
}

/// A phase change made from a current-thread runtime while an async writer
/// of that runtime holds its key's stripe across an await: the blocking
/// `change` holds the only thread, so the writer cannot finish and the fence
/// times out; `change_async` fences on a blocking thread and succeeds once
/// the writer is done, which then reaches both stores.
#[tokio::test(flavor = "current_thread")]
async fn case01_a_phase_change_from_a_current_thread_runtime_waits_for_async_writers() {
    use dualwrite_runtime::{PhaseChange, PhaseError};
    let old = Arc::new(AsyncMem::default());
    let new = Arc::new(AsyncMem::default());
    old.sleep_ms.store(100, Ordering::SeqCst);
    let migration = Migration::new(Phase::ShadowRead);
    let kv = Arc::new(AsyncKvDualWrite::from_shared(
        Arc::clone(&old),
        Arc::clone(&new),
        migration.clone(),
    ));
    let write = |key: u64| {
        let kv = Arc::clone(&kv);
        tokio::spawn(async move { kv.put(key, key).await })
    };
    // Blocking: the writer cannot run while the fence holds the thread.
    let writer = write(1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let blocked =
        migration.change(PhaseChange::to(Phase::Cutover).fence_timeout(Duration::from_millis(200)));
    assert!(
        matches!(blocked, Err(PhaseError::FenceTimedOut { .. })),
        "{blocked:?}"
    );
    assert_eq!(migration.phase(), Phase::ShadowRead);
    assert_eq!(writer.await.expect("writer"), Ok(()));
    // Async: the runtime keeps running the writer while the fence waits.
    old.sleep_ms.store(100, Ordering::SeqCst);
    let writer = write(2);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let moved = migration
        .change_async(PhaseChange::to(Phase::Cutover).fence_timeout(Duration::from_secs(10)))
        .await
        .expect("the fence finished");
    assert_eq!((moved.from, moved.to), (Phase::ShadowRead, Phase::Cutover));
    assert!(writer.is_finished(), "the change waited for the writer");
    assert_eq!(writer.await.expect("writer"), Ok(()));
    for key in [1, 2] {
        assert_eq!((old.value(key), new.value(key)), (Some(key), Some(key)));
    }
}

/// Strong mode: a secondary call that times out fails the call (found in
/// review: it returned the primary's success), with the refusal converted
/// into the method's error type; the write is a dead letter.
#[tokio::test(flavor = "current_thread")]
async fn case07_a_timed_out_secondary_fails_a_strong_call() {
    let old = Arc::new(AsyncMem::default());
    let new = Arc::new(AsyncMem::default());
    new.hang_on_put.store(true, Ordering::SeqCst);
    let kv = AsyncKvDualWrite::from_shared(
        Arc::clone(&old),
        Arc::clone(&new),
        Migration::new(Phase::DualWrite),
    )
    .with_sync_mode(SyncMode::Strong)
    .with_secondary_timeout(Some(Duration::from_millis(50)));
    let answered = tokio::time::timeout(Duration::from_secs(10), kv.put(1, 1))
        .await
        .expect("bounded");
    let error = answered.expect_err("strong mode fails the call");
    assert!(error.contains("did not answer within"), "{error}");
    assert_eq!(old.value(1), Some(1), "the primary was written");
    assert_eq!(kv.dead_letters().len(), 1);
}

/// A caller's future cancelled during its primary write (found in review:
/// no record): the primary may commit with no secondary write, so the call
/// is counted and logged.
#[tokio::test(flavor = "current_thread")]
async fn case05_a_call_cancelled_during_its_primary_write_is_counted() {
    let old = Arc::new(AsyncMem::default());
    let new = Arc::new(AsyncMem::default());
    old.hang_on_put.store(true, Ordering::SeqCst);
    let kv = AsyncKvDualWrite::from_shared(
        Arc::clone(&old),
        Arc::clone(&new),
        Migration::new(Phase::DualWrite),
    );
    let cancelled = tokio::time::timeout(Duration::from_millis(20), kv.put(1, 1)).await;
    assert!(cancelled.is_err());
    assert_eq!(kv.stats().primary_outcome_unknown, 1);
    assert!(kv.dead_letters().is_empty());
}

/// The dead-letter list is bounded: beyond its capacity the oldest letters
/// are evicted and counted, never dropped silently.
#[test]
fn case06_the_dead_letter_list_is_bounded() {
    let (old, new) = stores();
    new.panic_on_put.store(true, Ordering::SeqCst);
    let kv = adapter(&old, &new, &Migration::new(Phase::DualWrite)).with_dead_letter_capacity(2);
    for key in 0..5 {
        kv.put(key, key).expect("tolerant: the primary's result");
    }
    let keys: Vec<Option<String>> = kv.dead_letters().into_iter().map(|l| l.key).collect();
    assert_eq!(keys, vec![Some("3".to_owned()), Some("4".to_owned())]);
    let stats = kv.stats();
    assert_eq!((stats.dead_letters, stats.dead_letters_evicted), (5, 3));
}

// ---------------------------------------------------------------------------
// Case 8: blocking flush inside a tokio runtime.
// ---------------------------------------------------------------------------

/// Defect 8: lanes started inside a multi-thread runtime drive the store's
/// futures with that runtime's `Handle::block_on`; a blocking `flush()` on
/// the runtime's only worker stops its timer driver, so the store's
/// `tokio::time::sleep` never completes and `flush` never returns.
#[test]
fn case08_blocking_flush_inside_runtime_deadlocks() {
    let outcome = with_watchdog(Duration::from_secs(5), || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        let result = runtime.block_on(async {
            tokio::spawn(async {
                let old = Arc::new(AsyncMem::default());
                let new = Arc::new(AsyncMem::default());
                new.sleep_ms.store(1, Ordering::SeqCst);
                let kv = AsyncKvDualWrite::from_shared(
                    Arc::clone(&old),
                    Arc::clone(&new),
                    Migration::new(Phase::DualWrite),
                )
                .with_async_secondary(LaneConfig::default().with_lanes(1));
                kv.put(1, 1).await.expect("primary");
                kv.flush(Duration::from_secs(30)).expect("flushed");
                new.value(1)
            })
            .await
        });
        result.map_err(|e| e.to_string())
    });
    assert_eq!(
        outcome,
        Ok(Ok(Some(1))),
        "blocking flush() inside the runtime (1 worker) did not return within 5 s"
    );
}

// ---------------------------------------------------------------------------
// Case 9: false shadow-read mismatches while lanes lag.
// ---------------------------------------------------------------------------

/// Defect 9: in ShadowRead with an async secondary, a read right after a
/// write compares Old with a New that has not applied the write yet and
/// counts a mismatch, although the stores agree once the lane catches up.
#[test]
fn case09_shadow_reads_count_false_mismatches_while_lanes_lag() {
    let (old, new) = stores();
    new.delay_us.store(2_000, Ordering::SeqCst);
    let kv = adapter(&old, &new, &Migration::new(Phase::ShadowRead))
        .with_async_secondary(LaneConfig::default());
    for key in 0..50 {
        kv.put(key, key).expect("put");
        assert_eq!(kv.get(key), Ok(Some(key)), "Old answers");
    }
    kv.flush(Duration::from_secs(30)).expect("flushed");
    assert_eq!(old.contents(), new.contents(), "Old vs New after flush");
    let stats = kv.stats();
    assert_eq!(
        stats.reads_mismatched, 0,
        "reads_mismatched (reads compared: {}) although the stores agree after flush",
        stats.reads_compared
    );
}

// ---------------------------------------------------------------------------
// Case 10: phase rules weaker than the spec.
// ---------------------------------------------------------------------------

/// Defect 10a: the global phase moves to Cleanup while a key is still held
/// at DualWrite by an override.
#[test]
fn case10a_cleanup_refused_while_a_key_override_is_behind() {
    let migration = Migration::new(Phase::DualWrite);
    migration
        .set_phase_for(&1u64, Phase::DualWrite)
        .expect("override");
    let result = migration.set_phase(Phase::Cleanup);
    assert!(
        result.is_err(),
        "set_phase(Cleanup) with key 1 overridden to dual_write returned {result:?}"
    );
}

/// Defect 10b: Prepare -> Cleanup skips every intermediate phase.
#[test]
fn case10b_prepare_to_cleanup_refused() {
    let result = Migration::new(Phase::Prepare).set_phase(Phase::Cleanup);
    assert!(result.is_err(), "prepare -> cleanup returned {result:?}");
}

/// Defect 10b: Prepare -> Cutover skips DualWrite, Backfill and ShadowRead.
#[test]
fn case10b_prepare_to_cutover_refused() {
    let result = Migration::new(Phase::Prepare).set_phase(Phase::Cutover);
    assert!(result.is_err(), "prepare -> cutover returned {result:?}");
}

/// Defect 10b: DualWrite -> Cutover skips Backfill and ShadowRead.
#[test]
fn case10b_dual_write_to_cutover_refused() {
    let result = Migration::new(Phase::DualWrite).set_phase(Phase::Cutover);
    assert!(result.is_err(), "dual_write -> cutover returned {result:?}");
}

//! The main job: a whole migration of a users/orders service from one SQLite
//! schema to another, under live traffic and injected faults, every phase
//! advanced through the cutover gates.
//!
//! ```text
//! cargo run --release --example migrate                    # 300,000 rows, about a minute
//! cargo run --release --example migrate -- --report run.json
//! cargo run --release --example migrate -- --help
//! ```
//!
//! What it does, in order (the spec's phase table):
//!
//! 1. writes the history into `old.db` (`--users` users, two orders each);
//! 2. starts live traffic (threads reading and writing through the
//!    `#[dual_write]` adapters) that runs until the end;
//! 3. **Prepare -> DualWrite**; injects transient faults, silently dropped
//!    writes and an outage into the new store: the gate refuses to leave
//!    DualWrite while the secondary success rate is below 99.95 %, and
//!    passes on the next clean window;
//! 4. **Backfill**: copies the history in key order under the adapters' key
//!    guards (live writes win), with a progress bar; the gate refuses
//!    ShadowRead half-way (backfill incomplete) and passes at 100 %;
//! 5. **ShadowRead**: reads compare both stores; reconciliation finds the
//!    drift the faults caused (and re-checks the adapters' dead letters),
//!    the cause is fixed, the drift repaired, a second scan shows gap 0;
//! 6. **Cutover** through all five criteria; faults now hit the old store,
//!    the secondary; reconciliation with New authoritative;
//! 7. **Cleanup**, ending with a per-phase table (and `--report FILE`).

mod backend;
mod faults;
mod mapping;
mod model;
mod report;
mod servers;
mod stores;
mod traffic;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use dualwrite_runtime::backfill::{BackfillError, BackfillProgress};
use dualwrite_runtime::gate::Verdict;
use dualwrite_runtime::reconcile::ReconcileReport;
use dualwrite_runtime::{
    AdvanceError, CutoverGate, GateInputs, LaneConfig, Migration, Phase, StatsSnapshot, Store,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{AnyError, Backend, BackfillRun, Mode, NewStore, OldStore, Table};
use crate::faults::{FaultPlan, Faulty};
use crate::model::{OrderRepoDualWrite, UserRepoDualWrite};
use crate::report::{GateRow, Report};
use crate::traffic::Traffic;

type Users = UserRepoDualWrite<Faulty<OldStore>, Faulty<NewStore>>;
type Orders = OrderRepoDualWrite<Faulty<OldStore>, Faulty<NewStore>>;

/// A migration of a users/orders service between two SQLite schemas, under
/// live traffic and injected faults, advanced through the cutover gates.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Users in the history (each with two orders: rows = 3 x users).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(100..=10_000_000))]
    users: i64,
    /// Threads of live traffic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Live calls per second, all threads together.
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    rate: u64,
    /// Backfill throttle, rows per second (0: as fast as it goes); a real
    /// backfill is throttled to spare the old database.
    #[arg(long, default_value_t = 100_000)]
    backfill_rate: u64,
    /// Seconds of traffic each gate judges.
    #[arg(long, default_value_t = 4.0)]
    window: f64,
    /// Writes the per-phase report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Runs against database servers instead: the old store on this
    /// MariaDB / MySQL database (with `--new`), e.g.
    /// `mysql://root@127.0.0.1:3306/test`. Its tables `dw_users` and
    /// `dw_orders` are dropped and created afresh.
    #[arg(long, value_name = "URL", requires = "new", value_parser = mysql_url)]
    old: Option<String>,
    /// The new store on this PostgreSQL database (with `--old`), e.g.
    /// `postgres://postgres@127.0.0.1:5432/test`. Its tables `dw_accounts`
    /// and `dw_purchases` are dropped and created afresh.
    #[arg(long, value_name = "URL", requires = "old", value_parser = postgres_url)]
    new: Option<String>,
    /// Keeps the databases in this directory (default: a temporary one,
    /// removed at the end).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn mysql_url(url: &str) -> Result<String, String> {
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Ok(url.replacen("mariadb://", "mysql://", 1))
    } else {
        Err("the old store must be a MariaDB / MySQL URL (mysql://user@host:port/database)".into())
    }
}

fn postgres_url(url: &str) -> Result<String, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.to_owned())
    } else {
        Err("the new store must be a PostgreSQL URL (postgres://user@host:port/database)".into())
    }
}

fn main() {
    let args = Args::parse();
    if !(0.1..=3600.0).contains(&args.window) {
        eprintln!("error: --window must be between 0.1 and 3600 seconds");
        std::process::exit(2);
    }
    if let Err(error) = run(&args) {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// A directory removed when dropped (unless the user named it).
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn work_dir(args: &Args) -> Result<WorkDir, AnyError> {
    let (path, remove) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("dualwrite-migrate-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&path)?;
    for file in ["old.db", "new.db"] {
        for suffix in ["", "-wal", "-shm"] {
            let stale = path.join(format!("{file}{suffix}"));
            if stale.exists() {
                std::fs::remove_file(&stale)?;
            }
        }
    }
    Ok(WorkDir { path, remove })
}

/// The measurements a gate judges, from a moment on.
struct Window {
    users: StatsSnapshot,
    orders: StatsSnapshot,
}

impl Window {
    fn open(users: &Users, orders: &Orders) -> Window {
        users.core().reset_latency();
        orders.core().reset_latency();
        Window {
            users: users.stats(),
            orders: orders.stats(),
        }
    }

    fn inputs(&self, users: &Users, orders: &Orders) -> GateInputs {
        GateInputs::from_adapter(&users.stats().since(&self.users), users.core().latency()).and(
            GateInputs::from_adapter(&orders.stats().since(&self.orders), orders.core().latency()),
        )
    }
}

/// Everything the phases share.
struct Run {
    migration: Migration,
    gate: CutoverGate,
    users: Arc<Users>,
    orders: Arc<Orders>,
    old_faults: Arc<FaultPlan>,
    new_faults: Arc<FaultPlan>,
    backend: Backend,
    old_rows: u64,
    window: Duration,
    backfill_rate: u64,
    report: Report,
    backfill: Option<f64>,
    gap: Option<u64>,
}

impl Run {
    /// Tries the gate of the next step on `window`'s measurements; moves on
    /// if it passes, and records the attempt either way.
    fn advance(&mut self, window: &Window) -> Result<bool, AnyError> {
        let inputs = self.inputs(window);
        let from = self.migration.phase();
        let to = from.next().ok_or("no phase after Cleanup")?;
        let outcome = self.migration.advance(&self.gate, &inputs);
        let (passed, gate) = match &outcome {
            Ok(_) => (true, "passed".to_owned()),
            Err(AdvanceError::Refused(report)) => (
                false,
                format!(
                    "refused: {}",
                    report
                        .unmet()
                        .map(|c| format!("{c:#}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
            Err(other) => return Err(other.to_string().into()),
        };
        let row = GateRow::new(from, to, &inputs, gate);
        println!("  {row}");
        if let Err(AdvanceError::Refused(report)) = &outcome {
            for line in report.to_string().lines() {
                println!("      {line}");
            }
        }
        self.report.phases.push(row);
        Ok(passed)
    }

    /// Like [`Run::advance`], as an operator would: while the only unmet
    /// criteria lack samples, lets the traffic run on (a gate judges enough
    /// traffic, not a fixed time); after a refusal on a measured value,
    /// judges a fresh window, up to three in all. Every refusal is printed
    /// and kept in the report.
    fn advance_when_sampled(&mut self, window: Window) -> Result<bool, AnyError> {
        let mut window = window;
        for _attempt in 0..3 {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let inputs = self.inputs(&window);
                let from = self.migration.phase();
                let to = from.next().ok_or("no phase after Cleanup")?;
                let report = self.gate.evaluate(from, to, &inputs);
                let waiting =
                    !report.passed() && report.unmet().all(|c| c.verdict == Verdict::TooFewSamples);
                if !waiting || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            if self.advance(&window)? {
                return Ok(true);
            }
            println!("  the operator judges a fresh window");
            window = Window::open(&self.users, &self.orders);
            self.traffic_for(self.window);
        }
        Ok(false)
    }

    fn inputs(&self, window: &Window) -> GateInputs {
        let mut inputs = window.inputs(&self.users, &self.orders);
        if let Some(backfill) = self.backfill {
            inputs = inputs.with_backfill(backfill);
        }
        if let Some(gap) = self.gap {
            inputs = inputs.with_gap(gap);
        }
        inputs
    }

    fn traffic_for(&self, length: Duration) {
        std::thread::sleep(length);
    }

    /// Reconciles both tables; repairs when `repair`, from `authoritative`.
    fn reconcile(&self, authoritative: Store, repair: bool) -> Result<ReconcileReport, AnyError> {
        let mode = || {
            if repair {
                Mode::Repair(authoritative)
            } else {
                Mode::DryRun
            }
        };
        let users = self
            .backend
            .reconcile(Table::Users, self.users.core().key_guard(), mode())?;
        let orders =
            self.backend
                .reconcile(Table::Orders, self.orders.core().key_guard(), mode())?;
        Ok(merge(users, orders))
    }
}

fn merge(mut a: ReconcileReport, b: ReconcileReport) -> ReconcileReport {
    a.old_rows += b.old_rows;
    a.new_rows += b.new_rows;
    a.equal += b.equal;
    a.missing_in_new += b.missing_in_new;
    a.extra_in_new += b.extra_in_new;
    a.different += b.different;
    a.settled += b.settled;
    a.repaired += b.repaired;
    a.differences.extend(b.differences);
    a
}

fn summary(report: &ReconcileReport) -> String {
    format!(
        "{} + {} rows compared: {} missing in new, {} extra in new, {} different, {} settled on re-read, {} repaired; gap {}",
        report.old_rows,
        report.new_rows,
        report.missing_in_new,
        report.extra_in_new,
        report.different,
        report.settled,
        report.repaired,
        report.gap()
    )
}

fn heading(migration: &Migration) {
    println!("\n== {} ==", migration.phase());
}

/// Runs the backfill of both tables in a thread, drawing one progress bar;
/// once past half way, asks the gate once (and expects a refusal).
fn backfill(run: &mut Run, window: &Window) -> Result<(), AnyError> {
    let total = run.old_rows;
    let jobs = [
        run.backend
            .backfill(Table::Users, run.users.core().key_guard())?,
        run.backend
            .backfill(Table::Orders, run.orders.core().key_guard())?,
    ];
    let progress = [jobs[0].progress.clone(), jobs[1].progress.clone()];
    if run.backfill_rate > 0 {
        for job in &jobs {
            job.control.set_rate(run.backfill_rate);
        }
    }
    let worker = std::thread::Builder::new()
        .name("backfill".into())
        .spawn(move || {
            jobs.into_iter()
                .map(BackfillRun::run)
                .collect::<Result<Vec<_>, BackfillError>>()
        })?;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "  backfill [{bar:40}] {pos}/{len} rows, {per_sec}, eta {eta}",
        )?
        .progress_chars("=> "),
    );
    let mut asked = false;
    let fraction = |p: &[BackfillProgress; 2]| {
        let [u, o] = [p[0].snapshot(), p[1].snapshot()];
        let done = u.done + o.done;
        (
            done,
            if u.finished && o.finished {
                1.0
            } else {
                (done as f64 / total as f64).min(0.999_999)
            },
        )
    };
    while !worker.is_finished() {
        let (done, share) = fraction(&progress);
        bar.set_position(done.min(total));
        if !asked && share >= 0.5 {
            asked = true;
            run.backfill = Some(share);
            bar.suspend(|| -> Result<(), AnyError> {
                println!("  half way through the backfill, the operator asks to move on:");
                run.advance(window)?;
                Ok(())
            })?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let reports = worker
        .join()
        .map_err(|_| "the backfill thread panicked")??;
    bar.finish_and_clear();
    let (rows, written): (u64, u64) = reports.iter().fold((0, 0), |(r, w), report| {
        (r + report.rows, w + report.written)
    });
    let seconds: f64 = reports.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    println!(
        "  backfill: {rows} rows in {seconds:.1} s ({:.0} rows/s), {written} written, {} already there (live writes won)",
        rows as f64 / seconds.max(1e-9),
        rows - written
    );
    run.backfill = Some(fraction(&progress).1);
    Ok(())
}

fn run(args: &Args) -> Result<(), AnyError> {
    let started = Instant::now();
    let (backend, _dir) = match (&args.old, &args.new) {
        (Some(old), Some(new)) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            (
                Backend::Servers {
                    old: old.clone(),
                    new: new.clone(),
                    rt,
                },
                None,
            )
        }
        _ => {
            let dir = work_dir(args)?;
            let backend = Backend::Sqlite {
                old: dir.path.join("old.db"),
                new: dir.path.join("new.db"),
            };
            (backend, Some(dir))
        }
    };
    let rows = args.users * 3;
    println!(
        "dualwrite: migrating {} users and {} orders ({rows} rows) from {}",
        args.users,
        args.users * 2,
        backend.describe()
    );
    let (old_store, new_store) = backend.prepare(args.users)?;
    println!(
        "  history written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let old_rows = backend.old_rows(&old_store)?;

    let old_faults = Arc::new(FaultPlan::default());
    let new_faults = Arc::new(FaultPlan::default());
    let old = Arc::new(Faulty {
        inner: old_store,
        plan: old_faults.clone(),
    });
    let new = Arc::new(Faulty {
        inner: new_store,
        plan: new_faults.clone(),
    });
    let migration = Migration::new(Phase::Prepare);
    // The spec's advice: start with the async secondary. Five attempts
    // 10 ms apart, doubling, before a write becomes a dead letter.
    let lanes = LaneConfig::default().with_lanes(2);
    let users = Arc::new(
        Users::from_shared(old.clone(), new.clone(), migration.clone())
            .with_async_secondary(lanes.clone()),
    );
    let orders = Arc::new(
        Orders::from_shared(old.clone(), new.clone(), migration.clone())
            .with_async_secondary(lanes),
    );
    let mut run = Run {
        migration: migration.clone(),
        gate: CutoverGate::new(),
        users: users.clone(),
        orders: orders.clone(),
        old_faults,
        new_faults,
        backend,
        old_rows,
        window: Duration::from_secs_f64(args.window),
        backfill_rate: args.backfill_rate,
        report: Report::new(u64::try_from(rows)?),
        backfill: None,
        gap: None,
    };
    let traffic = Traffic::start(
        users.clone(),
        orders.clone(),
        args.users,
        usize::from(args.threads),
        args.rate,
    );
    println!(
        "  live traffic: {} threads, {} calls/s",
        args.threads, args.rate
    );

    let outcome = phases(&mut run);
    let traffic_stats = traffic.stats.clone();
    traffic.stop();
    let calls = traffic_stats.calls.load(Ordering::Relaxed);
    let errors = traffic_stats.errors.load(Ordering::Relaxed);
    let user_shutdown = users.shutdown(Duration::from_secs(30));
    let order_shutdown = orders.shutdown(Duration::from_secs(30));
    outcome?;

    println!("\n{}", run.report.table());
    println!(
        "  traffic: {calls} calls, {errors} failed; faults injected: new {} transient, {} outage, {} dropped; old {} transient",
        run.new_faults.injected_transient.load(Ordering::Relaxed),
        run.new_faults.injected_outage.load(Ordering::Relaxed),
        run.new_faults.injected_drops.load(Ordering::Relaxed),
        run.old_faults.injected_transient.load(Ordering::Relaxed),
    );
    let pending = user_shutdown.still_pending + order_shutdown.still_pending;
    if !user_shutdown.complete || !order_shutdown.complete {
        return Err(format!("{pending} secondary writes still pending at shutdown").into());
    }
    println!(
        "  final gap {}; finished in {:.1} s",
        run.report
            .final_gap
            .map_or("-".to_owned(), |g| g.to_string()),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.report {
        std::fs::write(path, run.report.to_json())?;
        println!("  report written to {}", path.display());
    }
    if run.report.final_gap != Some(0) {
        return Err("the migration ended with unresolved differences".into());
    }
    Ok(())
}

/// The phases, in order.
fn phases(run: &mut Run) -> Result<(), AnyError> {
    let (users, orders) = (run.users.clone(), run.orders.clone());

    heading(&run.migration);
    println!("  old store only; the gate of this step has no criteria");
    run.traffic_for(Duration::from_millis(500));
    let window = Window::open(&users, &orders);
    if !run.advance(&window)? {
        return Err("Prepare -> DualWrite refused".into());
    }

    heading(&run.migration);
    println!(
        "  new store: 1 write in 10,000 fails (retried), 1 save in 3,000 is silently lost, and a 400 ms outage"
    );
    run.new_faults.transient(10_000);
    run.new_faults.silent_drops(3_000);
    let window = Window::open(&users, &orders);
    run.traffic_for(run.window / 2);
    run.new_faults.outage(Duration::from_millis(400));
    run.traffic_for(run.window / 2 + Duration::from_millis(400));
    let dead = users.core().dead_letter_count() + orders.core().dead_letter_count();
    println!("  the outage left {dead} dead letters so far");
    if run.advance(&window)? {
        return Err("the gate passed a window with an outage in it".into());
    }
    println!("  the operator waits for a clean window");
    let window = Window::open(&users, &orders);
    run.traffic_for(run.window);
    if !run.advance_when_sampled(window)? {
        return Err("DualWrite -> Backfill refused on a clean window".into());
    }

    heading(&run.migration);
    let window = Window::open(&users, &orders);
    backfill(run, &window)?;
    if !run.advance_when_sampled(window)? {
        return Err("Backfill -> ShadowRead refused after the backfill".into());
    }

    heading(&run.migration);
    run.traffic_for(run.window);
    let found = run.reconcile(Store::Old, false)?;
    println!("  reconciliation (dry run): {}", summary(&found));
    for difference in found.differences.iter().take(5) {
        println!("    e.g. {difference:?}");
    }
    let letters_users: Vec<i64> = users
        .take_dead_letters()
        .iter()
        .filter_map(|l| l.key.as_deref()?.parse().ok())
        .collect();
    let letters_orders: Vec<i64> = orders
        .take_dead_letters()
        .iter()
        .filter_map(|l| l.key.as_deref()?.parse().ok())
        .collect();
    let rechecked = merge(
        run.backend.reconcile(
            Table::Users,
            users.core().key_guard(),
            Mode::Recheck(&letters_users),
        )?,
        run.backend.reconcile(
            Table::Orders,
            orders.core().key_guard(),
            Mode::Recheck(&letters_orders),
        )?,
    );
    println!(
        "  dead letters: {} keys re-checked, {} equal by now (the backfill or a later write fixed them), {} repaired",
        letters_users.len() + letters_orders.len(),
        rechecked.equal + rechecked.settled,
        rechecked.repaired
    );
    println!("  the cause of the silent drops is fixed; repairing from Old");
    run.new_faults.silent_drops(0);
    let repaired = run.reconcile(Store::Old, true)?;
    println!("  repair: {}", summary(&repaired));
    let verified = run.reconcile(Store::Old, false)?;
    println!("  verification: {}", summary(&verified));
    run.gap = Some(verified.gap());
    let window = Window::open(&users, &orders);
    run.traffic_for(run.window);
    if !run.advance_when_sampled(window)? {
        return Err("ShadowRead -> Cutover refused".into());
    }

    heading(&run.migration);
    println!(
        "  new store is primary; the old one, now the secondary, gets 1 write in 10,000 failing (retried)"
    );
    run.new_faults.heal();
    run.old_faults.transient(10_000);
    let window = Window::open(&users, &orders);
    run.traffic_for(run.window);
    let verified = run.reconcile(Store::New, false)?;
    println!(
        "  reconciliation (New authoritative): {}",
        summary(&verified)
    );
    run.gap = Some(verified.gap());
    if !run.advance_when_sampled(window)? {
        return Err("Cutover -> Cleanup refused".into());
    }
    run.report.final_gap = run.gap;

    heading(&run.migration);
    run.old_faults.heal();
    let before = users.stats().old_writes_ok + orders.stats().old_writes_ok;
    run.traffic_for(Duration::from_secs(1));
    let after = users.stats().old_writes_ok + orders.stats().old_writes_ok;
    println!(
        "  the old store is no longer written ({} writes in the last second)",
        after - before
    );
    Ok(())
}

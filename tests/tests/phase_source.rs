//! Shared phase control: migrations following an in-memory, SQLite or
//! PostgreSQL phase source see each other's changes, store theirs with
//! compare-and-set and an audit record, apply remote changes through the
//! fence, and route percentage rollouts the same way in every process.
//!
//! The PostgreSQL test needs `DUALWRITE_POSTGRES_URL` (`.ci/run` sets it);
//! without it, it says it skipped, except under CI, where that fails. It
//! runs a second process (this test binary again, in a child role chosen
//! by an environment variable) and prints the propagation time it measures.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dualwrite_runtime::phase_source::{
    AuditRecord, ChangeScope, MemoryPhaseSource, PhaseSource, PhaseState, PhaseSync,
    PostgresPhaseSource, Rollout, SourceError, SqlitePhaseSource, SyncOptions,
};
use dualwrite_runtime::{
    CutoverGate, DualWriteCore, GateInputs, Migration, Phase, PhaseChange, PhaseError,
};

/// A directory of its own under the system's temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dw-phase-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn options(actor: &str) -> SyncOptions {
    SyncOptions::new()
        .actor(actor)
        .wait_timeout(Duration::from_millis(200))
        .retry_after(Duration::from_millis(20))
}

fn follow(migration: &Migration, source: Arc<dyn PhaseSource>, actor: &str) -> PhaseSync {
    PhaseSync::follow_with(migration, source, options(actor)).expect("follow the source")
}

/// Waits until `check` holds, at most `timeout`; whether it did.
fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    check()
}

fn record(actor: &str, scope: ChangeScope, from: Phase, to: Phase) -> AuditRecord {
    AuditRecord {
        version: 0,
        at: SystemTime::now(),
        actor: actor.to_owned(),
        scope,
        from,
        to,
        reason: Some("test".to_owned()),
        forced: false,
        gate: None,
    }
}

/// The source-level contract every implementation keeps: versions start at
/// 0, a compare-and-set on the current version stores the state and its
/// record, a stale one is a conflict that writes nothing, waiters wake.
fn source_contract(source: &dyn PhaseSource) {
    let empty = source.load().expect("load");
    assert_eq!(empty.version, 0);
    assert_eq!(empty.global, Phase::Prepare);
    assert!(source.audit(0, 10).expect("audit").is_empty());

    let mut next = PhaseState::new(Phase::DualWrite);
    next.overrides.insert("tenant-1".into(), Phase::Backfill);
    next.overrides
        .insert("it's \"quoted\"".into(), Phase::ShadowRead);
    next.rollouts = vec![
        Rollout::percent(Phase::ShadowRead, 20),
        Rollout {
            phase: Phase::Cutover,
            basis_points: 50,
        },
    ];
    let v1 = source
        .compare_and_set(
            0,
            &next,
            &record("a", ChangeScope::Global, Phase::Prepare, Phase::DualWrite),
        )
        .expect("first write");
    assert_eq!(v1, 1);
    let loaded = source.load().expect("load");
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.global, Phase::DualWrite);
    assert_eq!(loaded.overrides, next.overrides);
    // Stored in evaluation order: the smaller share first.
    assert_eq!(
        loaded.rollouts,
        vec![
            Rollout {
                phase: Phase::Cutover,
                basis_points: 50
            },
            Rollout::percent(Phase::ShadowRead, 20),
        ]
    );

    // A stale version loses and writes nothing.
    let stale = source.compare_and_set(
        0,
        &PhaseState::new(Phase::Cleanup),
        &record("b", ChangeScope::Global, Phase::Prepare, Phase::Cleanup),
    );
    match stale {
        Err(SourceError::Conflict { current }) => assert_eq!(*current, loaded),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(source.load().expect("load"), loaded);

    let mut gated = record(
        "ops",
        ChangeScope::Key("tenant-1".into()),
        Phase::Backfill,
        Phase::ShadowRead,
    );
    gated.forced = true;
    gated.gate = Some("gate backfill -> shadow_read: refused\n  backfill: 0.5".into());
    let mut next2 = loaded.clone();
    next2.overrides.insert("tenant-1".into(), Phase::ShadowRead);
    next2.rollouts.clear();
    assert_eq!(source.compare_and_set(1, &next2, &gated).expect("v2"), 2);
    let v2 = source.load().expect("load");
    assert_eq!(v2.overrides["tenant-1"], Phase::ShadowRead);
    assert!(v2.rollouts.is_empty());

    let audit = source.audit(0, 10).expect("audit");
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].version, 1);
    assert_eq!(audit[0].actor, "a");
    assert_eq!(audit[1].version, 2);
    assert_eq!(audit[1].scope, ChangeScope::Key("tenant-1".into()));
    assert_eq!(
        (audit[1].from, audit[1].to),
        (Phase::Backfill, Phase::ShadowRead)
    );
    assert!(audit[1].forced);
    assert_eq!(audit[1].gate, gated.gate);
    assert_eq!(audit[1].reason.as_deref(), Some("test"));
    // Stored to the microsecond.
    let drift = gated
        .at
        .duration_since(audit[1].at)
        .unwrap_or_else(|e| e.duration());
    assert!(drift < Duration::from_millis(1), "{drift:?}");
    // The latest `limit`, oldest first; only after a version.
    assert_eq!(source.audit(0, 1).expect("audit")[0].version, 2);
    assert_eq!(source.audit(1, 10).expect("audit").len(), 1);
    assert!(source.audit(2, 10).expect("audit").is_empty());

    // A waiter returns at once on a newer version, `None` after its timeout.
    assert_eq!(
        source
            .wait_for_change(1, Duration::from_secs(1))
            .expect("wait")
            .map(|s| s.version),
        Some(2)
    );
    let started = Instant::now();
    assert_eq!(
        source
            .wait_for_change(2, Duration::from_millis(100))
            .expect("wait"),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(90));
}

#[test]
fn memory_source_keeps_the_contract() {
    source_contract(&MemoryPhaseSource::new());
}

#[test]
fn sqlite_source_keeps_the_contract_and_persists() {
    let dir = TempDir::new("contract");
    let path = dir.file("phase.db");
    source_contract(&SqlitePhaseSource::open(&path).expect("open"));
    // Another handle on the file, as another process would open it.
    let reopened = SqlitePhaseSource::open(&path).expect("reopen");
    assert_eq!(reopened.load().expect("load").version, 2);
    assert_eq!(reopened.audit(0, 100).expect("audit").len(), 2);
    let mode: String = rusqlite::Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

#[test]
fn sqlite_table_names_are_configurable_and_checked() {
    let dir = TempDir::new("tables");
    let path = dir.file("phase.db");
    let orders = SqlitePhaseSource::open_with(
        &path,
        dualwrite_runtime::phase_source::PhaseTables::with_prefix("orders_phase"),
    )
    .expect("open");
    let users = SqlitePhaseSource::open_with(
        &path,
        dualwrite_runtime::phase_source::PhaseTables::with_prefix("users_phase"),
    )
    .expect("open");
    orders
        .compare_and_set(
            0,
            &PhaseState::new(Phase::Cutover),
            &record("a", ChangeScope::Global, Phase::Prepare, Phase::Cutover),
        )
        .expect("store");
    assert_eq!(orders.load().expect("load").global, Phase::Cutover);
    assert_eq!(users.load().expect("load").version, 0);
    let bad = SqlitePhaseSource::open_with(
        &path,
        dualwrite_runtime::phase_source::PhaseTables::with_prefix("x; DROP TABLE y"),
    );
    assert!(matches!(bad, Err(SourceError::InvalidConfig { .. })));
    let unreachable = SqlitePhaseSource::open(dir.file("no/such/dir/phase.db"));
    assert!(
        matches!(unreachable, Err(SourceError::Unreachable { .. })),
        "{unreachable:?}"
    );
}

/// Two migrations on one source: the first stores its phases in the empty
/// source, the second takes them; changes go both ways with their records.
fn two_migrations_follow_each_other(source: Arc<dyn PhaseSource>) {
    let a = Migration::new(Phase::DualWrite);
    a.set_phase_for("tenant-9", Phase::Backfill).expect("local");
    let b = Migration::new(Phase::Prepare);
    let sync_a = follow(&a, Arc::clone(&source), "instance-a");
    assert_eq!(sync_a.version(), 1);
    let sync_b = follow(&b, Arc::clone(&source), "instance-b");
    assert_eq!(b.phase(), Phase::DualWrite);
    assert_eq!(b.phase_for(Some(&"tenant-9")), Phase::Backfill);
    assert_eq!(b.source_version(), 1);

    let t = a
        .change(PhaseChange::to(Phase::Backfill).reason("copy history"))
        .expect("advance a");
    assert_eq!(t.actor.as_deref(), Some("instance-a"));
    assert_eq!(a.source_version(), 2);
    assert!(sync_b.wait_for_version(2, Duration::from_secs(5)));
    assert_eq!(b.phase(), Phase::Backfill);

    b.set_phase_for("tenant-9", Phase::ShadowRead).expect("b");
    assert!(sync_a.wait_for_version(3, Duration::from_secs(5)));
    assert_eq!(a.phase_for(Some(&"tenant-9")), Phase::ShadowRead);
    // The remote change is in a's history, with its author.
    let remote = a.history().pop().expect("a transition");
    assert_eq!(remote.actor.as_deref(), Some("instance-b"));
    assert_eq!(remote.key.as_deref(), Some("tenant-9"));
    assert_eq!(
        (remote.from, remote.to),
        (Phase::Backfill, Phase::ShadowRead)
    );

    // Lifting an override is a change like any other.
    assert_eq!(a.clear_phase_for("tenant-9"), Some(Phase::ShadowRead));
    assert!(sync_b.wait_for_version(4, Duration::from_secs(5)));
    assert!(b.overrides().is_empty());

    // The rules hold for remote-bound changes too: nothing is stored.
    assert!(matches!(
        b.set_phase(Phase::Cleanup),
        Err(PhaseError::SkipsPhases { .. })
    ));
    assert_eq!(source.load().expect("load").version, 4);

    let audit = source.audit(0, 100).expect("audit");
    let lines: Vec<String> = audit.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "v1 *: dual_write -> dual_write by instance-a: phase source initialized from this instance's phases",
            "v2 *: dual_write -> backfill by instance-a: copy history",
            "v3 tenant-9: backfill -> shadow_read by instance-b",
            "v4 tenant-9: shadow_read -> backfill by instance-a: override lifted",
        ]
    );

    // Stopping makes the migration local again: its changes stay local.
    sync_b.stop();
    b.set_phase(Phase::ShadowRead).expect("local change");
    assert_eq!(source.load().expect("load").global, Phase::Backfill);
    drop(sync_a);
}

#[test]
fn migrations_follow_a_memory_source() {
    two_migrations_follow_each_other(Arc::new(MemoryPhaseSource::new()));
}

#[test]
fn migrations_follow_a_sqlite_file() {
    let dir = TempDir::new("follow");
    let path = dir.file("phase.db");
    // Each instance opens the file itself, as separate processes would.
    let a = Migration::new(Phase::DualWrite);
    a.set_phase_for("tenant-9", Phase::Backfill).expect("local");
    let source_a: Arc<dyn PhaseSource> = Arc::new(SqlitePhaseSource::open(&path).expect("open"));
    let source_b: Arc<dyn PhaseSource> = Arc::new(SqlitePhaseSource::open(&path).expect("open"));
    let sync_a = follow(&a, Arc::clone(&source_a), "instance-a");
    let b = Migration::new(Phase::Prepare);
    let sync_b = follow(&b, source_b, "instance-b");
    assert_eq!(b.phase(), Phase::DualWrite);

    let mut delays = Vec::new();
    for i in 0..20 {
        let phase = if i % 2 == 0 {
            Phase::ShadowRead
        } else {
            Phase::Backfill
        };
        let started = Instant::now();
        a.set_phase_for("tenant-1", phase).expect("change");
        assert!(sync_b.wait_for_version(a.source_version(), Duration::from_secs(5)));
        delays.push(started.elapsed());
        assert_eq!(b.phase_for(Some(&"tenant-1")), phase);
    }
    delays.sort();
    println!(
        "sqlite phase source (10 ms poll), change -> other instance applied: p50 {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    assert!(delays[delays.len() - 1] < Duration::from_secs(2));
    drop((sync_a, sync_b));
}

/// A source whose waiters never hear of a change: the follower stays
/// behind, so this instance's next change meets a newer version.
struct Deaf(MemoryPhaseSource);

impl PhaseSource for Deaf {
    fn describe(&self) -> String {
        "deaf".into()
    }
    fn load(&self) -> Result<PhaseState, SourceError> {
        self.0.load()
    }
    fn compare_and_set(
        &self,
        expected: u64,
        next: &PhaseState,
        record: &AuditRecord,
    ) -> Result<u64, SourceError> {
        self.0.compare_and_set(expected, next, record)
    }
    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, SourceError> {
        self.0.audit(after, limit)
    }
    fn wait_for_change(
        &self,
        _: u64,
        timeout: Duration,
    ) -> Result<Option<PhaseState>, SourceError> {
        thread::sleep(timeout.min(Duration::from_millis(20)));
        Ok(None)
    }
}

#[test]
fn a_stale_change_is_refused_and_the_newer_state_applied() {
    let shared = MemoryPhaseSource::new();
    let a = Migration::new(Phase::DualWrite);
    let _sync_a = follow(&a, Arc::new(shared.clone()), "a");
    let b = Migration::new(Phase::Prepare);
    let _sync_b = follow(&b, Arc::new(Deaf(shared.clone())), "b");
    assert_eq!(b.phase(), Phase::DualWrite);

    a.set_phase(Phase::Backfill).expect("a moves on");
    thread::sleep(Duration::from_millis(50));
    assert_eq!(b.phase(), Phase::DualWrite, "b has not heard of it");

    let refused = b.set_phase_for("tenant-3", Phase::Backfill);
    assert_eq!(
        refused,
        Err(PhaseError::SourceChanged {
            key: Some("tenant-3".into()),
            expected_version: 1,
            found_version: 2,
        })
    );
    assert!(
        refused
            .expect_err("refused")
            .to_string()
            .contains("moved from version 1 to 2 meanwhile")
    );
    // Reloaded at once, and nothing of the refused change was kept.
    assert_eq!(b.phase(), Phase::Backfill);
    assert_eq!(b.source_version(), 2);
    assert!(b.overrides().is_empty());
    assert_eq!(shared.load().expect("load").version, 2);
    // Retried on the newer state, it goes through.
    b.set_phase_for("tenant-3", Phase::ShadowRead)
        .expect("retry");
    assert_eq!(
        shared.load().expect("load").overrides["tenant-3"],
        Phase::ShadowRead
    );
}

#[test]
fn advance_stores_the_gate_report_in_the_audit_log() {
    let source = MemoryPhaseSource::new();
    let migration = Migration::new(Phase::DualWrite);
    let _sync = follow(&migration, Arc::new(source.clone()), "ops-alice");
    let gate = CutoverGate::new();
    // No measurements: the gate refuses, nothing is stored.
    let refused = migration.advance(&gate, &GateInputs::default());
    assert!(refused.is_err());
    assert_eq!(source.load().expect("load").version, 1);
    migration
        .advance_forced(&gate, &GateInputs::default(), "window closes tonight")
        .expect("forced");
    let last = source.audit(0, 1).expect("audit").pop().expect("a record");
    assert_eq!((last.from, last.to), (Phase::DualWrite, Phase::Backfill));
    assert!(last.forced);
    assert_eq!(last.actor, "ops-alice");
    assert_eq!(last.reason.as_deref(), Some("window closes tonight"));
    let gate_text = last.gate.expect("the gate's report");
    assert!(
        gate_text.starts_with("gate dual_write -> backfill: refused"),
        "{gate_text}"
    );
}

#[test]
fn a_remote_change_waits_for_the_writes_routed_before_it() {
    let source = MemoryPhaseSource::new();
    let a = Migration::new(Phase::Prepare);
    let _sync_a = follow(&a, Arc::new(source.clone()), "a");
    let b = Migration::new(Phase::Prepare);
    b.set_fence_timeout(Duration::from_secs(10));
    let sync_b = follow(&b, Arc::new(source.clone()), "b");
    let core: DualWriteCore<()> = DualWriteCore::new(b.clone());
    // A write of b in flight (its key's stripe held) when a moves the
    // phase from Prepare (Old only) to DualWrite (Old + New).
    let guard = core.key_guard();
    let hold = guard.hold(&[&"tenant-1"]);
    a.set_phase(Phase::DualWrite).expect("a");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        b.phase(),
        Phase::Prepare,
        "applied before the write finished"
    );
    assert_eq!(sync_b.version(), 1);
    drop(hold);
    assert!(sync_b.wait_for_version(2, Duration::from_secs(5)));
    assert_eq!(b.phase(), Phase::DualWrite);
    let applied = b.history().pop().expect("a transition");
    assert_eq!(
        (applied.from, applied.to),
        (Phase::Prepare, Phase::DualWrite),
        "{applied:?}"
    );
    // Routes moved, so the change took the fence.
    assert!(applied.fenced.is_some(), "{applied:?}");
}

#[test]
fn a_remote_change_retries_a_fence_that_timed_out() {
    let source = MemoryPhaseSource::new();
    let a = Migration::new(Phase::Prepare);
    let _sync_a = follow(&a, Arc::new(source.clone()), "a");
    let b = Migration::new(Phase::Prepare);
    b.set_fence_timeout(Duration::from_millis(50));
    let sync_b = follow(&b, Arc::new(source.clone()), "b");
    let core: DualWriteCore<()> = DualWriteCore::new(b.clone());
    let guard = core.key_guard();
    let hold = guard.hold(&[&"tenant-1"]);
    a.set_phase(Phase::DualWrite).expect("a");
    assert!(eventually(Duration::from_secs(5), || sync_b
        .last_error()
        .is_some()));
    assert!(
        sync_b
            .last_error()
            .expect("an error")
            .contains("did not finish within")
    );
    assert_eq!(b.phase(), Phase::Prepare);
    drop(hold);
    assert!(sync_b.wait_for_version(2, Duration::from_secs(5)));
    assert_eq!(b.phase(), Phase::DualWrite);
    assert!(eventually(Duration::from_secs(5), || sync_b
        .last_error()
        .is_none()));
}

/// A source that answers loads but fails every write, as a database that
/// went away after the instance started would.
struct WriteFails(MemoryPhaseSource);

impl PhaseSource for WriteFails {
    fn describe(&self) -> String {
        "failing".into()
    }
    fn load(&self) -> Result<PhaseState, SourceError> {
        self.0.load()
    }
    fn compare_and_set(&self, _: u64, _: &PhaseState, _: &AuditRecord) -> Result<u64, SourceError> {
        Err(SourceError::Unreachable {
            reason: "connection refused".into(),
        })
    }
    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, SourceError> {
        self.0.audit(after, limit)
    }
    fn wait_for_change(
        &self,
        known: u64,
        timeout: Duration,
    ) -> Result<Option<PhaseState>, SourceError> {
        self.0.wait_for_change(known, timeout)
    }
}

#[test]
fn a_change_the_source_cannot_store_is_not_made() {
    let shared = MemoryPhaseSource::new();
    let a = Migration::new(Phase::DualWrite);
    let _sync_a = follow(&a, Arc::new(shared.clone()), "a");
    let b = Migration::new(Phase::Prepare);
    let _sync_b = follow(&b, Arc::new(WriteFails(shared.clone())), "b");
    assert_eq!(b.phase(), Phase::DualWrite);
    let recorded = b.history().len();
    let refused = b.set_phase(Phase::Backfill);
    assert!(
        matches!(&refused, Err(PhaseError::Source { reason }) if reason.contains("connection refused")),
        "{refused:?}"
    );
    assert_eq!(b.phase(), Phase::DualWrite);
    assert_eq!(b.history().len(), recorded);
    // Following still works.
    a.set_phase(Phase::Backfill).expect("a");
    assert!(eventually(Duration::from_secs(5), || b.phase() == Phase::Backfill));
    // One source at a time.
    let again = PhaseSync::follow(&b, shared.clone());
    assert!(matches!(again, Err(PhaseError::Source { .. })), "{again:?}");
}

#[test]
fn concurrent_changes_on_two_instances_converge() {
    let shared = MemoryPhaseSource::new();
    let a = Migration::new(Phase::DualWrite);
    let b = Migration::new(Phase::DualWrite);
    let sync_a = follow(&a, Arc::new(shared.clone()), "a");
    let sync_b = follow(&b, Arc::new(shared.clone()), "b");
    let writer = |migration: Migration, name: &'static str| {
        thread::spawn(move || {
            let mut made = 0;
            for i in 0..100 {
                let phase = if i % 2 == 0 {
                    Phase::Backfill
                } else {
                    Phase::ShadowRead
                };
                match migration.set_phase_for(&format!("{name}-{}", i % 7), phase) {
                    Ok(_) => made += 1,
                    Err(PhaseError::SourceChanged { .. }) => {}
                    Err(other) => panic!("{other}"),
                }
            }
            made
        })
    };
    let (writer_a, writer_b) = (writer(a.clone(), "a"), writer(b.clone(), "b"));
    let made_a = writer_a.join().expect("a");
    let made_b = writer_b.join().expect("b");
    println!("concurrent changes: {made_a} by a, {made_b} by b, of 200");
    let stored = shared.load().expect("load");
    // Every change made is one version (plus the initial one).
    assert_eq!(stored.version, 1 + made_a + made_b);
    assert!(sync_a.wait_for_version(stored.version, Duration::from_secs(5)));
    assert!(sync_b.wait_for_version(stored.version, Duration::from_secs(5)));
    assert_eq!(a.state(), stored);
    assert_eq!(b.state(), stored);
    let versions: Vec<u64> = shared
        .audit(0, 1_000)
        .expect("audit")
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, (1..=stored.version).collect::<Vec<_>>());
}

#[test]
fn postgres_source_keeps_the_contract() {
    let Some(url) = postgres_url() else {
        eprintln!("skipped: set DUALWRITE_POSTGRES_URL to run against a real PostgreSQL");
        return;
    };
    let prefix = format!("dw_phase_contract_{}", std::process::id());
    let _cleanup = DropTables {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let source = PostgresPhaseSource::connect_with(&url, tables(&prefix)).expect("connect");
    source_contract(&source);
    // Another connection sees the same state.
    let other = PostgresPhaseSource::connect_with(&url, tables(&prefix)).expect("connect");
    assert_eq!(other.load().expect("load").version, 2);
    assert_eq!(other.channel(), format!("{prefix}_state_changed"));
}

/// How many of the keys `0..10_000` route to `phase`.
fn routed_to(migration: &Migration, phase: Phase) -> usize {
    (0..10_000_u64)
        .filter(|id| migration.phase_for(Some(id)) == phase)
        .count()
}

#[test]
fn a_rollout_routes_its_share_of_keys_and_is_stable() {
    let migration = Migration::new(Phase::Backfill);
    for percent in [1_u8, 10, 25, 50, 90] {
        migration
            .change(PhaseChange::to(Phase::ShadowRead).for_percent(percent))
            .expect("rollout");
        let routed = routed_to(&migration, Phase::ShadowRead);
        let expected = usize::from(percent) * 100;
        // Within 1.5 points of the share (a binomial's few standard
        // deviations at 10 000 keys).
        assert!(
            routed.abs_diff(expected) <= 150,
            "{percent}%: {routed} of 10000 keys"
        );
        assert_eq!(routed + routed_to(&migration, Phase::Backfill), 10_000);
    }
    // Growing a rollout only adds keys.
    migration
        .change(PhaseChange::to(Phase::ShadowRead).for_percent(10))
        .expect("shrink");
    let ten: Vec<u64> = (0..10_000_u64)
        .filter(|id| migration.phase_for(Some(id)) == Phase::ShadowRead)
        .collect();
    migration
        .change(PhaseChange::to(Phase::ShadowRead).for_percent(20))
        .expect("grow");
    assert!(
        ten.iter()
            .all(|id| migration.phase_for(Some(id)) == Phase::ShadowRead)
    );

    // Another migration (another process, on the same build) puts every key
    // in the same bucket; so does the state as stored, and the key's text.
    let other = Migration::new(Phase::Backfill);
    other
        .change(PhaseChange::to(Phase::ShadowRead).for_percent(20))
        .expect("rollout");
    let state = migration.state();
    for id in 0..10_000_u64 {
        let phase = migration.phase_for(Some(&id));
        assert_eq!(other.phase_for(Some(&id)), phase);
        assert_eq!(state.phase_for(&id), phase);
        assert_eq!(migration.phase_for(Some(&id.to_string())), phase);
    }
    // An override wins over the rollout.
    let covered = ten[0];
    migration
        .set_phase_for(&covered, Phase::DualWrite)
        .expect("override");
    assert_eq!(migration.phase_for(Some(&covered)), Phase::DualWrite);
    assert_eq!(
        migration.try_clear_phase_for(&covered),
        Ok(Some(Phase::DualWrite))
    );
    assert_eq!(migration.phase_for(Some(&covered)), Phase::ShadowRead);
    // 0 % removes it; moving the global phase to the rollout's removes it too.
    migration
        .change(PhaseChange::to(Phase::ShadowRead).for_percent(0))
        .expect("remove");
    assert!(migration.rollouts().is_empty());
    assert_eq!(routed_to(&migration, Phase::Backfill), 10_000);
    other.set_phase(Phase::ShadowRead).expect("global");
    assert!(other.rollouts().is_empty());
    assert_eq!(routed_to(&other, Phase::ShadowRead), 10_000);
}

#[test]
fn nested_rollouts_stage_a_cutover() {
    let migration = Migration::new(Phase::DualWrite);
    migration
        .change(PhaseChange::to(Phase::ShadowRead).for_percent(30))
        .expect("shadow 30%");
    migration
        .change(PhaseChange::to(Phase::Cutover).for_percent(5))
        .expect("cutover 5% inside the shadow-read 30%");
    let cut = routed_to(&migration, Phase::Cutover);
    let shadow = routed_to(&migration, Phase::ShadowRead);
    assert!(cut.abs_diff(500) <= 150, "{cut}");
    assert!((cut + shadow).abs_diff(3_000) <= 150, "{}", cut + shadow);
    // Cutover for keys still in DualWrite would skip the backfill and the
    // shadow validation.
    let too_far = migration.change(PhaseChange::to(Phase::Cutover).for_percent(50));
    assert_eq!(
        too_far,
        Err(PhaseError::RolloutRefused {
            rollout: Rollout::percent(Phase::Cutover, 50),
            from: Phase::DualWrite,
            to: Phase::Cutover,
        })
    );
    assert!(
        too_far
            .expect_err("refused")
            .to_string()
            .contains("force the change")
    );
    migration
        .change(PhaseChange::to(Phase::Cutover).for_percent(50).forced())
        .expect("forced");
    // Where rollouts overlap the later phase wins: the 30% in shadow_read
    // are inside the 50% in cutover now.
    assert!(routed_to(&migration, Phase::Cutover).abs_diff(5_000) <= 150);
    assert_eq!(routed_to(&migration, Phase::ShadowRead), 0);
    // Moving the global phase to a rollout's phase removes that rollout.
    migration
        .set_phase(Phase::ShadowRead)
        .expect("global shadow read");
    assert_eq!(
        migration.rollouts(),
        vec![Rollout::percent(Phase::Cutover, 50)]
    );
    migration.set_phase(Phase::Cutover).expect("global cutover");
    assert!(migration.rollouts().is_empty());
    // A rollout can roll a share of keys back; it needs reconciliation.
    let rollback = migration
        .change(PhaseChange::to(Phase::ShadowRead).for_percent(10))
        .expect("roll 10% back");
    assert!(rollback.needs_reconciliation);
    // The global phase waits for rollouts behind Cleanup.
    let behind = migration.set_phase(Phase::Cleanup);
    assert_eq!(
        behind,
        Err(PhaseError::RolloutsBehind {
            rollouts: vec![Rollout::percent(Phase::ShadowRead, 10)]
        })
    );
    migration
        .change(PhaseChange::to(Phase::ShadowRead).for_percent(0))
        .expect("remove the rollback");
    migration.set_phase(Phase::Cleanup).expect("cleanup");
    // Keys in Cleanup cannot be taken out by a rollout, even forced.
    let back = migration.change(PhaseChange::to(Phase::Cutover).for_percent(100).forced());
    assert!(
        matches!(
            back,
            Err(PhaseError::RolloutRefused {
                from: Phase::Cleanup,
                ..
            })
        ),
        "{back:?}"
    );
    assert!(
        back.expect_err("refused")
            .to_string()
            .contains("cleanup cannot roll back")
    );
}

#[test]
fn rollouts_travel_through_the_source() {
    let dir = TempDir::new("rollout");
    let path = dir.file("phase.db");
    let a = Migration::new(Phase::Backfill);
    let b = Migration::new(Phase::Prepare);
    let _sync_a = follow(
        &a,
        Arc::new(SqlitePhaseSource::open(&path).expect("open")),
        "a",
    );
    let sync_b = follow(
        &b,
        Arc::new(SqlitePhaseSource::open(&path).expect("open")),
        "b",
    );
    let t = a
        .change(
            PhaseChange::to(Phase::ShadowRead)
                .for_basis_points(1_250)
                .reason("12.5% canary"),
        )
        .expect("rollout");
    assert_eq!(
        t.rollout,
        Some(Rollout {
            phase: Phase::ShadowRead,
            basis_points: 1_250
        })
    );
    assert!(sync_b.wait_for_version(a.source_version(), Duration::from_secs(5)));
    assert_eq!(b.rollouts(), a.rollouts());
    for id in 0..10_000_u64 {
        assert_eq!(a.phase_for(Some(&id)), b.phase_for(Some(&id)));
    }
    let routed = routed_to(&b, Phase::ShadowRead);
    assert!(routed.abs_diff(1_250) <= 150, "{routed}");
    let audit = SqlitePhaseSource::open(&path)
        .expect("open")
        .audit(0, 1)
        .expect("audit");
    assert_eq!(
        audit[0].to_string(),
        format!(
            "v{} rollout shadow_read 12.5%: backfill -> shadow_read by a: 12.5% canary",
            a.source_version()
        )
    );
}

// ---- two processes on one PostgreSQL phase source ----

const CHILD_ROLE: &str = "DUALWRITE_PHASE_SOURCE_CHILD";
const CHANGES: usize = 50;

fn postgres_url() -> Option<String> {
    match std::env::var("DUALWRITE_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI must set DUALWRITE_POSTGRES_URL (.ci/run does)")
        }
        Err(_) => None,
    }
}

fn micros_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn tables(prefix: &str) -> dualwrite_runtime::phase_source::PhaseTables {
    dualwrite_runtime::phase_source::PhaseTables::with_prefix(prefix)
}

/// The child process: follows the source, reports each version it applies
/// (with the time and the phase of `tenant-7`), then makes one change of
/// its own. Lines for the parent start with `@@ `.
fn child(url: &str, prefix: &str) {
    let source = PostgresPhaseSource::connect_with(url, tables(prefix)).expect("child connects");
    let migration = Migration::new(Phase::Prepare);
    let sync = PhaseSync::follow_with(&migration, Arc::new(source), options("child"))
        .expect("child follows");
    let start = sync.version();
    println!("@@ ready {start}");
    for version in start + 1..=start + CHANGES as u64 {
        if !sync.wait_for_version(version, Duration::from_secs(20)) {
            println!("@@ timeout {version}");
            std::process::exit(3);
        }
        let seen = micros_now();
        println!(
            "@@ seen {version} {seen} {}",
            migration.phase_for(Some(&"tenant-7"))
        );
    }
    migration
        .set_phase_for("from-child", Phase::DualWrite)
        .expect("child's change");
    println!("@@ changed {} {}", migration.source_version(), micros_now());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[test]
fn two_processes_share_a_postgres_phase_source() {
    if let Ok(prefix) = std::env::var(CHILD_ROLE) {
        let url = std::env::var("DUALWRITE_POSTGRES_URL").expect("the parent sets the URL");
        child(&url, &prefix);
        return;
    }
    let Some(url) = postgres_url() else {
        eprintln!("skipped: set DUALWRITE_POSTGRES_URL to run against a real PostgreSQL");
        return;
    };
    let prefix = format!("dw_phase_test_{}", std::process::id());
    let _cleanup = DropTables {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let source = PostgresPhaseSource::connect_with(&url, tables(&prefix)).expect("connect");
    let migration = Migration::new(Phase::DualWrite);
    let sync =
        PhaseSync::follow_with(&migration, Arc::new(source), options("parent")).expect("follow");
    assert_eq!(sync.version(), 1);

    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "two_processes_share_a_postgres_phase_source",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROLE, &prefix)
        .env("DUALWRITE_POSTGRES_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness may print "test name ... " before it on the line.
            if let Some(at) = line.find("@@ ") {
                let _ = lines_tx.send(line[at + 3..].to_owned());
            }
        }
    });
    let next_line = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the child did not report {what}"))
    };

    let ready = next_line("ready");
    assert_eq!(ready, "ready 1", "the child took the parent's state");

    let mut propagation = Vec::with_capacity(CHANGES);
    let mut round_trip = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let phase = if i % 2 == 0 {
            Phase::Backfill
        } else {
            Phase::DualWrite
        };
        let started = micros_now();
        let call = Instant::now();
        migration
            .change(
                PhaseChange::to(phase)
                    .for_key("tenant-7")
                    .reason("propagation test"),
            )
            .expect("parent's change");
        round_trip.push(call.elapsed());
        let line = next_line("a version it applied");
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 4, "{line}");
        assert_eq!(parts[0], "seen", "{line}");
        assert_eq!(parts[1], migration.source_version().to_string(), "{line}");
        assert_eq!(
            parts[3],
            phase.as_str(),
            "the child routes tenant-7 by the change"
        );
        let seen: i64 = parts[2].parse().expect("micros");
        propagation.push(Duration::from_micros(
            u64::try_from(seen - started).unwrap_or(0),
        ));
    }
    let changed = next_line("its own change");
    let parts: Vec<&str> = changed.split(' ').collect();
    assert_eq!(parts[0], "changed", "{changed}");
    let version: u64 = parts[1].parse().expect("version");
    assert!(sync.wait_for_version(version, Duration::from_secs(5)));
    assert_eq!(migration.phase_for(Some(&"from-child")), Phase::DualWrite);
    let remote = migration.history().pop().expect("the child's change");
    assert_eq!(remote.actor.as_deref(), Some("child"));

    let status = child.wait().expect("the child exits");
    assert!(status.success(), "child: {status}");
    let _ = reader.join();

    propagation.sort();
    round_trip.sort();
    println!(
        "postgres phase source, 2 processes, {CHANGES} changes: change call -> other process applied p50 {:?}, p90 {:?}, max {:?}; change call (CAS + NOTIFY) p50 {:?}, max {:?}",
        percentile(&propagation, 0.5),
        percentile(&propagation, 0.9),
        propagation[CHANGES - 1],
        percentile(&round_trip, 0.5),
        round_trip[CHANGES - 1],
    );
    assert!(
        propagation[CHANGES - 1] < Duration::from_secs(2),
        "a change took {:?} to reach the other process",
        propagation[CHANGES - 1]
    );
    let audit = sync.source().audit(0, 1_000).expect("audit");
    assert_eq!(audit.len(), CHANGES + 2);
    drop(sync);
}

/// Drops a test's tables when it ends, passed or not.
struct DropTables {
    url: String,
    prefix: String,
}

impl Drop for DropTables {
    fn drop(&mut self) {
        drop_tables(&self.url, &self.prefix);
    }
}

fn drop_tables(url: &str, prefix: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let Ok(pool) = sqlx::PgPool::connect(url).await else {
            eprintln!("could not connect to drop the tables {prefix}_*");
            return;
        };
        for suffix in ["state", "override", "rollout", "audit"] {
            let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {prefix}_{suffix}"
            )))
            .execute(&pool)
            .await;
            if let Err(error) = dropped {
                eprintln!("could not drop {prefix}_{suffix}: {error}");
            }
        }
    });
}

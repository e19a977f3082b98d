//! Cutover gates fed by a generated adapter's own measurements: phases move
//! forward only through `Migration::advance`, which refuses a step whose
//! criteria are not met and records the gate's report in the history.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use dualwrite_runtime::gate::{Criterion, Verdict};
use dualwrite_runtime::{
    AdvanceError, CutoverGate, GateInputs, GateThresholds, LaneConfig, Migration, Phase, dual_write,
};

#[dual_write]
trait Kv {
    #[dual_write(key = key)]
    fn put(&self, key: u64, value: u64) -> Result<(), String>;
    #[dual_write(key = key)]
    fn get(&self, key: u64) -> Result<Option<u64>, String>;
}

/// A store whose calls take a fixed time, with a switch that fails writes.
#[derive(Default)]
struct Slow {
    map: Mutex<HashMap<u64, u64>>,
    delay_us: AtomicU64,
    fail_puts: AtomicBool,
}

impl Slow {
    fn with_delay(us: u64) -> Arc<Self> {
        let store = Slow::default();
        store.delay_us.store(us, Ordering::SeqCst);
        Arc::new(store)
    }

    fn pause(&self) {
        let us = self.delay_us.load(Ordering::SeqCst);
        if us > 0 {
            thread::sleep(Duration::from_micros(us));
        }
    }
}

impl Kv for Slow {
    fn put(&self, key: u64, value: u64) -> Result<(), String> {
        self.pause();
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err("the new store is unavailable".to_owned());
        }
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value);
        Ok(())
    }

    fn get(&self, key: u64) -> Result<Option<u64>, String> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied())
    }
}

fn inputs(kv: &KvDualWrite<Slow, Slow>) -> GateInputs {
    GateInputs::from_adapter(&kv.stats(), kv.core().latency())
}

fn verdict(error: &AdvanceError, criterion: Criterion) -> Verdict {
    match error {
        AdvanceError::Refused(report) => report
            .criteria
            .iter()
            .find(|c| c.criterion == criterion)
            .map(|c| c.verdict)
            .expect("the step checks it"),
        other => panic!("expected a gate refusal, got {other}"),
    }
}

/// The whole forward path through the gates, with one refusal per
/// criterion on the way, each measured from the adapter itself.
#[test]
fn phases_advance_only_through_their_gates() {
    let old = Slow::with_delay(200);
    let new = Slow::with_delay(200);
    let migration = Migration::new(Phase::Prepare);
    let gate = CutoverGate::new();
    let kv = KvDualWrite::from_shared(Arc::clone(&old), Arc::clone(&new), migration.clone())
        .with_async_secondary(LaneConfig::default().with_max_attempts(1));

    // Prepare -> DualWrite has no criteria.
    migration
        .advance(&gate, &inputs(&kv))
        .expect("ungated step");
    assert_eq!(migration.phase(), Phase::DualWrite);

    // DualWrite -> Backfill: the secondary fails 1 write in 100.
    for key in 0..1_000 {
        new.fail_puts.store(key % 100 == 0, Ordering::SeqCst);
        kv.put(key, key).expect("primary");
        kv.flush(Duration::from_secs(30)).expect("flushed");
    }
    new.fail_puts.store(false, Ordering::SeqCst);
    let refused = migration
        .advance(&gate, &inputs(&kv))
        .expect_err("1 % failed");
    assert_eq!(
        verdict(&refused, Criterion::SecondarySuccess),
        Verdict::Unmet
    );
    assert!(
        refused.to_string().contains("secondary write success rate"),
        "{refused}"
    );
    assert_eq!(
        migration.phase(),
        Phase::DualWrite,
        "a refusal leaves the phase"
    );
    // The failed writes are written again, through a fresh adapter whose
    // counters measure the next window.
    drop(kv.shutdown(Duration::from_secs(10)));
    drop(kv);
    let kv = KvDualWrite::from_shared(Arc::clone(&old), Arc::clone(&new), migration.clone())
        .with_async_secondary(LaneConfig::default());
    for key in 0..1_000 {
        kv.put(key, key).expect("primary");
    }
    kv.flush(Duration::from_secs(30)).expect("flushed");
    migration
        .advance(&gate, &inputs(&kv))
        .expect("every secondary write succeeded");
    assert_eq!(migration.phase(), Phase::Backfill);

    // Backfill -> ShadowRead: the backfill has not finished.
    let refused = migration
        .advance(&gate, &inputs(&kv).with_backfill(0.6))
        .expect_err("backfill at 60 %");
    assert_eq!(
        verdict(&refused, Criterion::BackfillCompletion),
        Verdict::Unmet
    );
    migration
        .advance(&gate, &inputs(&kv).with_backfill(1.0))
        .expect("backfill done");
    assert_eq!(migration.phase(), Phase::ShadowRead);

    // ShadowRead -> Cutover: too few reads compared, then a drifted key.
    let refused = migration
        .advance(&gate, &inputs(&kv).with_backfill(1.0).with_gap(0))
        .expect_err("no reads compared yet");
    assert_eq!(
        verdict(&refused, Criterion::MatchRate),
        Verdict::TooFewSamples
    );
    new.map
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(7, 700);
    old.delay_us.store(0, Ordering::SeqCst);
    new.delay_us.store(0, Ordering::SeqCst);
    for round in 0..2 {
        for key in 0..1_000 {
            assert_eq!(kv.get(key), Ok(Some(key)), "round {round}");
        }
    }
    let refused = migration
        .advance(&gate, &inputs(&kv).with_backfill(1.0).with_gap(0))
        .expect_err("key 7 differs");
    assert_eq!(verdict(&refused, Criterion::MatchRate), Verdict::Unmet);
    assert_eq!(kv.stats().reads_mismatched, 2);

    // The reconciliation gap is reported unresolved, then resolved.
    new.map
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(7, 7);
    let healthy = GateInputs {
        reads_compared: 100_000,
        reads_matched: 100_000,
        latency: None,
        ..inputs(&kv)
    }
    .with_backfill(1.0);
    let refused = migration
        .advance(&gate, &healthy.clone().with_gap(1))
        .expect_err("one difference unresolved");
    assert_eq!(
        verdict(&refused, Criterion::ReconciliationGap),
        Verdict::Unmet
    );

    // The p99 impact is measured: the async hand-off adds little to a
    // 200 µs primary.
    old.delay_us.store(200, Ordering::SeqCst);
    new.delay_us.store(200, Ordering::SeqCst);
    kv.core().reset_latency();
    for key in 0..(dualwrite_runtime::SAMPLE_EVERY as u64 * 300) {
        kv.put(key % 1_000, key % 1_000).expect("primary");
    }
    kv.flush(Duration::from_secs(60)).expect("flushed");
    let latency = kv.core().latency();
    assert!(latency.samples >= 300, "{latency:?}");
    let moved = migration
        .advance(&gate, &healthy.clone().with_gap(0).and(inputs(&kv)))
        .unwrap_or_else(|error| panic!("{error}\n{latency}"));
    assert_eq!((moved.from, moved.to), (Phase::ShadowRead, Phase::Cutover));
    let report = moved.gate.expect("recorded");
    assert!(report.passed(), "{report}");
    assert_eq!(report.criteria.len(), 5);
}

/// The synchronous strategy pays the secondary's latency on the caller's
/// path: with a secondary much slower than the primary the measured p99
/// impact is far above 1.2x (every call is at least 3 ms slower than its
/// primary, so this holds on a loaded machine too), and the cutover gate
/// refuses; a forced advance is recorded with the report that refused it.
#[test]
fn a_measured_latency_impact_refuses_cutover_unless_forced() {
    let old = Slow::with_delay(100);
    let new = Slow::with_delay(3_000);
    let migration = Migration::new(Phase::ShadowRead);
    let kv = KvDualWrite::from_shared(Arc::clone(&old), Arc::clone(&new), migration.clone());
    for key in 0..(dualwrite_runtime::SAMPLE_EVERY as u64 * 50) {
        kv.put(key, key).expect("written");
    }
    let latency = kv.core().latency();
    let impact = latency.p99_impact().expect("timed calls");
    assert!(impact > 1.2, "{latency}");
    let inputs = GateInputs {
        reads_compared: 10_000,
        reads_matched: 10_000,
        ..inputs(&kv)
    }
    .with_backfill(1.0)
    .with_gap(0);
    let gate = CutoverGate::with_thresholds(GateThresholds {
        min_latency_samples: 40,
        min_secondary_writes: 500,
        ..GateThresholds::default()
    });
    let refused = migration
        .advance(&gate, &inputs)
        .expect_err("slower at the tail");
    assert_eq!(verdict(&refused, Criterion::P99Impact), Verdict::Unmet);
    let AdvanceError::Refused(report) = &refused else {
        unreachable!()
    };
    assert_eq!(report.unmet().count(), 1, "{report}");

    let forced = migration
        .advance_forced(&gate, &inputs, "latency accepted by the on-call owner")
        .expect("forced");
    assert!(forced.forced);
    assert_eq!(migration.phase(), Phase::Cutover);
    let history = migration.history();
    let last = history.last().expect("recorded");
    assert!(last.forced);
    assert_eq!(
        last.reason.as_deref(),
        Some("latency accepted by the on-call owner")
    );
    assert!(!last.gate.as_ref().expect("report kept").passed());
}

/// Per key: a tenant advances through its own gate; Cleanup is the end.
#[test]
fn a_key_advances_on_its_own_and_cleanup_is_the_last_step() {
    let migration = Migration::new(Phase::Cutover);
    let gate = CutoverGate::new();
    let healthy = GateInputs {
        secondary_ok: 5_000,
        ..GateInputs::default()
    }
    .with_gap(0);
    let moved = migration
        .advance_for(&42_u64, &gate, &healthy)
        .expect("gate passes");
    assert_eq!(moved.key.as_deref(), Some("42"));
    assert_eq!(migration.phase_for(Some(&42_u64)), Phase::Cleanup);
    assert_eq!(migration.phase(), Phase::Cutover);
    assert_eq!(
        migration.advance_for(&42_u64, &gate, &healthy),
        Err(AdvanceError::AtLastPhase {
            phase: Phase::Cleanup
        })
    );
}

//! Stats: snapshot values after a scripted sequence, and the cutover rates.

use dualwrite_runtime::{
    Comparison, DualWriteCore, Migration, Phase, Role, Stats, StatsSnapshot, Store,
};

#[test]
fn a_fresh_snapshot_is_zero_and_has_no_rates() {
    let snapshot = Stats::new().snapshot();
    assert_eq!(snapshot, StatsSnapshot::default());
    assert_eq!(snapshot.match_rate(), None);
    assert_eq!(snapshot.secondary_success_rate(), None);
}

#[test]
fn a_scripted_sequence_gives_exact_counters() {
    let stats = Stats::new();
    // Three primary writes on Old, one of them failed.
    stats.record_write(Store::Old, Role::Primary, true);
    stats.record_write(Store::Old, Role::Primary, true);
    stats.record_write(Store::Old, Role::Primary, false);
    // Secondary on New: one success, then a write failing twice and given up.
    stats.record_write(Store::New, Role::Secondary, true);
    stats.add_pending(1);
    stats.record_write(Store::New, Role::Secondary, false);
    stats.record_secondary_retry();
    stats.record_write(Store::New, Role::Secondary, false);
    stats.record_dead_letter();
    stats.add_pending(-1);
    // After cutover: primary on New, secondary on Old.
    stats.record_write(Store::New, Role::Primary, true);
    stats.record_write(Store::Old, Role::Secondary, true);
    // Two more writes still in the lanes.
    stats.add_pending(2);
    // Four shadow reads, one mismatched.
    for matched in [true, true, false, true] {
        stats.record_comparison(matched);
    }

    let snapshot = stats.snapshot();
    assert_eq!(
        snapshot,
        StatsSnapshot {
            old_writes_ok: 3,
            old_writes_failed: 1,
            new_writes_ok: 2,
            new_writes_failed: 2,
            primary_writes_ok: 3,
            primary_writes_failed: 1,
            secondary_writes_ok: 2,
            secondary_writes_failed: 2,
            secondary_retries: 1,
            dead_letters: 1,
            secondary_pending: 2,
            reads_compared: 4,
            reads_matched: 3,
            reads_mismatched: 1,
            reads_skipped_pending: 0,
            dead_letters_evicted: 0,
            queue_full: 0,
            writes_refused: 0,
            shadow_dropped: 0,
            late_completions: 0,
            primary_outcome_unknown: 0,
        }
    );
    assert_eq!(snapshot.match_rate(), Some(0.75));
    assert_eq!(snapshot.secondary_success_rate(), Some(0.5));
}

#[test]
fn the_core_counts_comparisons_and_shadow_failures_as_mismatches() {
    let core: DualWriteCore<()> = DualWriteCore::new(Migration::new(Phase::ShadowRead));
    core.record_comparison("get", Some(&"tenant-1"), Comparison::Matched);
    core.record_comparison("get", Some(&"tenant-1"), Comparison::Mismatched);
    core.record_comparison("get", None, Comparison::ShadowFailed("timeout".into()));
    core.record_comparison("get", None, Comparison::Matched);
    core.stats().record_write(Store::Old, Role::Primary, true);
    let snapshot = core.stats().snapshot();
    assert_eq!(snapshot.reads_compared, 4);
    assert_eq!(snapshot.reads_matched, 2);
    assert_eq!(snapshot.reads_mismatched, 2);
    assert_eq!(snapshot.match_rate(), Some(0.5));
    assert_eq!(snapshot.primary_writes_ok, 1);
    assert_eq!(snapshot.old_writes_ok, 1);
}

#[test]
fn stats_are_shared_between_clones_and_threads() {
    let stats = Stats::new();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let stats = stats.clone();
            std::thread::spawn(move || {
                for _ in 0..1_000 {
                    stats.record_write(Store::New, Role::Secondary, true);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("counter thread finished");
    }
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.secondary_writes_ok, 4_000);
    assert_eq!(snapshot.new_writes_ok, 4_000);
    assert_eq!(snapshot.secondary_success_rate(), Some(1.0));
}

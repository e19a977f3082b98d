//! The migration handle: phase moves, the Cleanup rule, overrides and
//! concurrent reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use dualwrite_runtime::{Migration, Phase, PhaseChange, PhaseError, RouteOptions, RoutingKey};

/// Moves the global phase past the ordering rules (a test setup step).
fn force(migration: &Migration, phase: Phase) -> Result<Phase, PhaseError> {
    migration
        .change(PhaseChange::to(phase).forced())
        .map(|t| t.from)
}

/// Moves a key's phase past the ordering rules.
fn force_for(migration: &Migration, key: &str, phase: Phase) -> Result<Option<Phase>, PhaseError> {
    migration
        .change(PhaseChange::to(phase).for_key(key).forced())
        .map(|t| t.previous_override)
}

#[test]
fn set_phase_returns_the_previous_phase() {
    let migration = Migration::new(Phase::Prepare);
    assert_eq!(migration.phase(), Phase::Prepare);
    let mut previous = Phase::Prepare;
    for phase in Phase::ALL {
        assert_eq!(migration.set_phase(phase), Ok(previous));
        assert_eq!(migration.phase(), phase);
        previous = phase;
    }
}

#[test]
fn any_forced_move_but_leaving_cleanup_is_allowed() {
    for from in Phase::ALL.into_iter().filter(|p| *p != Phase::Cleanup) {
        for to in Phase::ALL {
            let migration = Migration::new(from);
            assert_eq!(force(&migration, to), Ok(from), "{from} -> {to}");
        }
    }
}

#[test]
fn unforced_moves_follow_the_phase_order() {
    for from in Phase::ALL.into_iter().filter(|p| *p != Phase::Cleanup) {
        for to in Phase::ALL {
            let skips = match to {
                Phase::Cutover => from < Phase::Backfill,
                Phase::Cleanup => from != Phase::Cutover,
                _ => false,
            };
            let migration = Migration::new(from);
            let result = migration.set_phase(to);
            if skips {
                assert_eq!(
                    result,
                    Err(PhaseError::SkipsPhases {
                        key: None,
                        from,
                        to
                    }),
                    "{from} -> {to}"
                );
                assert_eq!(migration.phase(), from);
                assert!(migration.history().is_empty());
            } else {
                assert_eq!(result, Ok(from), "{from} -> {to}");
                let history = migration.history();
                assert_eq!((history[0].from, history[0].to), (from, to));
                // Rolling back from cutover reverses the writes' order.
                assert_eq!(
                    history[0].needs_reconciliation,
                    from == Phase::Cutover && to < Phase::Cutover
                );
            }
        }
    }
}

#[test]
fn leaving_cleanup_is_refused_globally() {
    let migration = Migration::new(Phase::Cleanup);
    for to in Phase::ALL.into_iter().filter(|p| *p != Phase::Cleanup) {
        assert_eq!(
            migration.set_phase(to),
            Err(PhaseError::LeavingCleanup { key: None, to })
        );
        assert_eq!(migration.phase(), Phase::Cleanup);
    }
    assert_eq!(migration.set_phase(Phase::Cleanup), Ok(Phase::Cleanup));
}

#[test]
fn leaving_cleanup_is_refused_per_key_under_a_cleanup_global_phase() {
    let migration = Migration::new(Phase::Cleanup);
    let error = migration
        .set_phase_for("tenant-1", Phase::Cutover)
        .expect_err("refused");
    assert_eq!(
        error,
        PhaseError::LeavingCleanup {
            key: Some("tenant-1".to_owned()),
            to: Phase::Cutover,
        }
    );
    assert!(error.to_string().contains("tenant-1"), "{error}");
    assert!(migration.overrides().is_empty());
    assert_eq!(
        migration.set_phase_for("tenant-1", Phase::Cleanup),
        Ok(None)
    );
}

#[test]
fn leaving_cleanup_is_refused_per_key_under_an_override() {
    let migration = Migration::new(Phase::DualWrite);
    assert_eq!(force_for(&migration, "9", Phase::Cleanup), Ok(None));
    assert_eq!(
        migration.set_phase_for(&9_u32, Phase::DualWrite),
        Err(PhaseError::LeavingCleanup {
            key: Some("9".to_owned()),
            to: Phase::DualWrite,
        })
    );
    // Clearing the override would move the key back to DualWrite: refused too.
    assert_eq!(
        migration.try_clear_phase_for(&9_u32),
        Err(PhaseError::LeavingCleanup {
            key: Some("9".to_owned()),
            to: Phase::DualWrite,
        })
    );
    assert_eq!(migration.clear_phase_for(&9_u32), None);
    assert_eq!(migration.phase_for(Some(&9_u32)), Phase::Cleanup);
    // Once the whole migration is in Cleanup the override is redundant.
    assert_eq!(force(&migration, Phase::Cleanup), Ok(Phase::DualWrite));
    assert_eq!(migration.clear_phase_for(&9_u32), Some(Phase::Cleanup));
    assert!(migration.overrides().is_empty());
}

#[test]
fn set_phase_for_returns_the_previous_override() {
    let migration = Migration::new(Phase::DualWrite);
    assert_eq!(migration.set_phase_for("a", Phase::Backfill), Ok(None));
    assert_eq!(
        migration.set_phase_for("a", Phase::ShadowRead),
        Ok(Some(Phase::Backfill))
    );
    assert_eq!(migration.phase_for(Some(&"a")), Phase::ShadowRead);
    assert_eq!(migration.phase(), Phase::DualWrite);
}

#[test]
fn overrides_are_listed_sorted_by_key_and_cleared() {
    let migration = Migration::new(Phase::DualWrite);
    for (key, phase) in [
        ("tenant-c", Phase::Cutover),
        ("tenant-a", Phase::Backfill),
        ("tenant-b", Phase::Prepare),
    ] {
        force_for(&migration, key, phase).expect("allowed");
    }
    assert_eq!(
        migration.overrides(),
        vec![
            ("tenant-a".to_owned(), Phase::Backfill),
            ("tenant-b".to_owned(), Phase::Prepare),
            ("tenant-c".to_owned(), Phase::Cutover),
        ]
    );
    assert_eq!(migration.clear_phase_for("tenant-b"), Some(Phase::Prepare));
    assert_eq!(migration.clear_phase_for("tenant-b"), None);
    assert_eq!(migration.try_clear_phase_for("nobody"), Ok(None));
    assert_eq!(migration.phase_for(Some(&"tenant-b")), Phase::DualWrite);
    assert_eq!(migration.overrides().len(), 2);
}

#[test]
fn clones_share_state_and_keep_options() {
    let options = RouteOptions::default().with_shadow_after_cutover(true);
    let migration = Migration::with_options(Phase::Prepare, options);
    let clone = migration.clone();
    force(&clone, Phase::Cutover).expect("allowed");
    clone.set_phase_for("t", Phase::Backfill).expect("allowed");
    assert_eq!(migration.phase(), Phase::Cutover);
    assert_eq!(migration.overrides().len(), 1);
    assert_eq!(migration.options(), options);
    let debug = format!("{migration:?}");
    assert!(
        debug.contains("Cutover") && debug.contains("Backfill"),
        "{debug}"
    );
}

#[test]
fn display_and_from_str_round_trip() {
    for phase in Phase::ALL {
        assert_eq!(phase.to_string().parse(), Ok(phase));
        assert_eq!(phase.as_str().to_uppercase().parse(), Ok(phase));
        assert_eq!(phase.as_str().replace('_', "-").parse(), Ok(phase));
        assert_eq!(format!("{phase:?}").parse(), Ok(phase));
    }
    assert!("nope".parse::<Phase>().is_err());
}

#[test]
fn migration_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Migration>();
}

/// Readers never see a phase that was not set, while one thread flips the
/// global phase and an override as fast as it can.
#[test]
fn concurrent_readers_see_only_phases_that_were_set() {
    const GLOBAL: [Phase; 3] = [Phase::DualWrite, Phase::Backfill, Phase::ShadowRead];
    const KEYED: [Phase; 2] = [Phase::Prepare, Phase::Cutover];
    let migration = Migration::new(GLOBAL[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..4)
        .map(|_| {
            let migration = migration.clone();
            let stop = Arc::clone(&stop);
            let reads = Arc::clone(&reads);
            thread::spawn(move || {
                let hot: &dyn RoutingKey = &"hot";
                let cold: &dyn RoutingKey = &"cold";
                while !stop.load(Ordering::Relaxed) {
                    let global = migration.phase_for(None);
                    assert!(GLOBAL.contains(&global), "{global}");
                    let cold = migration.phase_for(Some(cold));
                    assert!(GLOBAL.contains(&cold), "{cold}");
                    // The hot key has an override at times, and follows the
                    // global phase otherwise.
                    let hot = migration.phase_for(Some(hot));
                    assert!(GLOBAL.contains(&hot) || KEYED.contains(&hot), "{hot}");
                    let route = migration.write_route(Some(&"cold"));
                    let options = migration.options();
                    assert!(GLOBAL.iter().any(|p| p.write_route(&options) == route));
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Start writing once the readers run, so reads and writes overlap.
    while reads.load(Ordering::Relaxed) == 0 {
        thread::yield_now();
    }
    for i in 0..5_000 {
        force(&migration, GLOBAL[i % GLOBAL.len()]).expect("allowed");
        if i % 3 == 0 {
            force_for(&migration, "hot", KEYED[i % KEYED.len()]).expect("allowed");
        } else if i % 3 == 1 {
            migration.clear_phase_for("hot");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("no reader saw a torn phase");
    }
}

//! The phase table of the specification, checked route by route: for every
//! phase, every cutover option, globally and as a per-key override under
//! every other global phase.

use dualwrite_runtime::{
    DualWriteCore, Migration, Phase, PhaseChange, PhaseError, ReadRoute, RouteOptions, RoutingKey,
    Store, WriteRoute,
};

use Store::{New, Old};

/// One row of the spec's phase table, written out by hand.
struct Row {
    phase: Phase,
    /// `None`: the row holds for every option combination.
    options: Option<RouteOptions>,
    read: Store,
    shadow: Option<Store>,
    primary: Store,
    secondary: Option<Store>,
}

const fn options(write_old_after_cutover: bool, shadow_after_cutover: bool) -> RouteOptions {
    RouteOptions {
        write_old_after_cutover,
        shadow_after_cutover,
    }
}

const fn row(
    phase: Phase,
    options: Option<RouteOptions>,
    read: Store,
    shadow: Option<Store>,
    primary: Store,
    secondary: Option<Store>,
) -> Row {
    Row {
        phase,
        options,
        read,
        shadow,
        primary,
        secondary,
    }
}

#[rustfmt::skip]
const TABLE: &[Row] = &[
    //   phase               options                        read  shadow     primary secondary
    row(Phase::Prepare,    None,                          Old,  None,      Old,    None),
    row(Phase::DualWrite,  None,                          Old,  None,      Old,    Some(New)),
    row(Phase::Backfill,   None,                          Old,  None,      Old,    Some(New)),
    row(Phase::ShadowRead, None,                          Old,  Some(New), Old,    Some(New)),
    row(Phase::Cutover,    Some(options(true, false)),    New,  None,      New,    Some(Old)),
    row(Phase::Cutover,    Some(options(false, false)),   New,  None,      New,    None),
    row(Phase::Cutover,    Some(options(true, true)),     New,  Some(Old), New,    Some(Old)),
    row(Phase::Cutover,    Some(options(false, true)),    New,  Some(Old), New,    None),
    row(Phase::Cleanup,    None,                          New,  None,      New,    None),
];

const ALL_OPTIONS: [RouteOptions; 4] = [
    options(true, false),
    options(false, false),
    options(true, true),
    options(false, true),
];

/// Every `(phase, options, expected write, expected read)` the table implies.
fn cases() -> Vec<(Phase, RouteOptions, WriteRoute, ReadRoute)> {
    let mut cases = Vec::new();
    for row in TABLE {
        let applicable: Vec<RouteOptions> = match row.options {
            Some(options) => vec![options],
            None => ALL_OPTIONS.to_vec(),
        };
        for options in applicable {
            cases.push((
                row.phase,
                options,
                WriteRoute {
                    primary: row.primary,
                    secondary: row.secondary,
                },
                ReadRoute {
                    primary: row.read,
                    shadow: row.shadow,
                },
            ));
        }
    }
    cases
}

#[test]
fn the_table_covers_every_phase_and_option() {
    let cases = cases();
    for phase in Phase::ALL {
        for options in ALL_OPTIONS {
            let matching = cases
                .iter()
                .filter(|(p, o, _, _)| *p == phase && *o == options)
                .count();
            assert_eq!(matching, 1, "{phase} with {options:?}");
        }
    }
}

#[test]
fn default_options_follow_the_spec() {
    assert_eq!(RouteOptions::default(), options(true, false));
}

#[test]
fn phase_routes_match_the_table() {
    for (phase, options, write, read) in cases() {
        assert_eq!(phase.write_route(&options), write, "{phase} {options:?}");
        assert_eq!(phase.read_route(&options), read, "{phase} {options:?}");
    }
}

#[test]
fn global_phase_routes_match_the_table() {
    for (phase, options, write, read) in cases() {
        let migration = Migration::with_options(phase, options);
        let core: DualWriteCore<()> = DualWriteCore::new(migration.clone());
        for key in [None, Some(&"tenant-1" as &dyn RoutingKey), Some(&42_u64)] {
            assert_eq!(migration.write_route(key), write, "{phase} {options:?}");
            assert_eq!(migration.read_route(key), read, "{phase} {options:?}");
            assert_eq!(core.write_route(key), write, "{phase} {options:?}");
            assert_eq!(core.read_route(key), read, "{phase} {options:?}");
        }
    }
}

/// Moves the global phase past the ordering rules (a test setup step).
fn force(migration: &Migration, phase: Phase) -> Result<Phase, PhaseError> {
    migration
        .change(PhaseChange::to(phase).forced())
        .map(|t| t.from)
}

/// Moves a key's phase past the ordering rules (a test setup step).
fn force_for<K: RoutingKey + ?Sized>(
    migration: &Migration,
    key: &K,
    phase: Phase,
) -> Result<Option<Phase>, PhaseError> {
    migration
        .change(PhaseChange::to(phase).for_key(key).forced())
        .map(|t| t.previous_override)
}

/// A migration whose global phase is `global` and where `key` is in `phase`.
fn with_override(global: Phase, key: &str, phase: Phase, options: RouteOptions) -> Migration {
    // Cleanup cannot be left, per key either: set the override before the
    // global phase reaches Cleanup. Both moves may skip phases (and a global
    // Cleanup may leave the override behind): this is routing setup, so force.
    let migration = Migration::with_options(Phase::Prepare, options);
    force_for(&migration, key, phase).expect("override allowed");
    force(&migration, global).expect("global move allowed");
    migration
}

#[test]
fn per_key_override_routes_match_the_table_under_every_other_global_phase() {
    for (phase, options, write, read) in cases() {
        for global in Phase::ALL.into_iter().filter(|g| *g != phase) {
            let migration = with_override(global, "tenant-1", phase, options);
            let context = format!("key in {phase}, global {global}, {options:?}");
            let key: &dyn RoutingKey = &"tenant-1";
            assert_eq!(migration.phase_for(Some(key)), phase, "{context}");
            assert_eq!(migration.write_route(Some(key)), write, "{context}");
            assert_eq!(migration.read_route(Some(key)), read, "{context}");

            // Keyless calls and other keys follow the global phase.
            let other: &dyn RoutingKey = &"tenant-2";
            for key in [None, Some(other)] {
                assert_eq!(migration.phase_for(key), global, "{context}");
                assert_eq!(migration.write_route(key), global.write_route(&options));
                assert_eq!(migration.read_route(key), global.read_route(&options));
            }
        }
    }
}

#[test]
fn a_key_renders_to_the_same_override_whatever_its_type() {
    let migration = Migration::new(Phase::DualWrite);
    force_for(&migration, &7_u32, Phase::Cutover).expect("allowed");
    assert_eq!(migration.phase_for(Some(&7_u32)), Phase::Cutover);
    assert_eq!(migration.phase_for(Some(&7_i64)), Phase::Cutover);
    assert_eq!(migration.phase_for(Some(&"7")), Phase::Cutover);
    assert_eq!(migration.phase_for(Some(&8_u32)), Phase::DualWrite);
}

//! The spec's phase table, through a generated adapter: for every phase, as
//! the global phase and as a per-key override, which store each read and
//! write reaches.

use dualwrite_runtime::{Migration, Phase, PhaseChange, RouteOptions, RoutingKey, dual_write};
use dualwrite_tests::{MemTable, StoreError, User};

#[dual_write]
pub trait UserStore {
    #[dual_write(key = user.id)]
    fn save(&self, user: &User) -> Result<(), StoreError>;
    #[dual_write(key = id)]
    fn get(&self, id: u64) -> Result<Option<User>, StoreError>;
}

#[derive(Default)]
pub struct Mem {
    table: MemTable,
    reads: std::sync::atomic::AtomicUsize,
}

impl UserStore for Mem {
    fn save(&self, user: &User) -> Result<(), StoreError> {
        let u = user.clone();
        self.table.write(format!("save {}", u.id), |rows| {
            rows.insert(u.id, u);
        })
    }
    fn get(&self, id: u64) -> Result<Option<User>, StoreError> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self.table.get(id))
    }
}

/// One row of the spec's table: (phase, reads Old, reads New, returned
/// answer from, writes Old, writes New).
struct Row {
    phase: Phase,
    reads_old: bool,
    reads_new: bool,
    answer_from_new: bool,
    writes_old: bool,
    writes_new: bool,
}

const fn row(
    phase: Phase,
    reads_old: bool,
    reads_new: bool,
    answer_from_new: bool,
    writes_old: bool,
    writes_new: bool,
) -> Row {
    Row {
        phase,
        reads_old,
        reads_new,
        answer_from_new,
        writes_old,
        writes_new,
    }
}

/// The spec's phase table, with the default options (Old stays written
/// during cutover, no mirrored comparison).
const SPEC: [Row; 6] = [
    row(Phase::Prepare, true, false, false, true, false),
    row(Phase::DualWrite, true, false, false, true, true),
    row(Phase::Backfill, true, false, false, true, true),
    row(Phase::ShadowRead, true, true, false, true, true),
    row(Phase::Cutover, false, true, true, true, true),
    row(Phase::Cleanup, false, true, true, false, true),
];

fn check(row: &Row, migration: Migration, key: u64, label: &str) {
    let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration);
    // Seed different answers so the returned one tells which store answered.
    store.old_store().table.seed(User::new(key, "old"));
    store.new_store().table.seed(User::new(key, "new"));

    store.save(&User::new(100 + key, "w")).ok();
    let answer = store.get(key).unwrap().unwrap();

    let old_reads = store
        .old_store()
        .reads
        .load(std::sync::atomic::Ordering::SeqCst)
        > 0;
    let new_reads = store
        .new_store()
        .reads
        .load(std::sync::atomic::Ordering::SeqCst)
        > 0;
    let old_writes = !store.old_store().table.log().is_empty();
    let new_writes = !store.new_store().table.log().is_empty();
    let phase = row.phase;
    assert_eq!(old_reads, row.reads_old, "{label} {phase:?}: reads Old");
    assert_eq!(new_reads, row.reads_new, "{label} {phase:?}: reads New");
    assert_eq!(
        answer.name == "new",
        row.answer_from_new,
        "{label} {phase:?}: answer"
    );
    assert_eq!(old_writes, row.writes_old, "{label} {phase:?}: writes Old");
    assert_eq!(new_writes, row.writes_new, "{label} {phase:?}: writes New");
}

#[test]
fn global_phase_follows_the_spec_table() {
    for row in &SPEC {
        check(row, Migration::new(row.phase), 1, "global");
    }
}

/// Puts `key` in `phase`, skipping phases if need be: routing setup, not a
/// migration step.
fn force_for<K: RoutingKey + ?Sized>(migration: &Migration, key: &K, phase: Phase) {
    migration
        .change(PhaseChange::to(phase).for_key(key).forced())
        .expect("a forced override is allowed");
}

#[test]
fn per_key_override_follows_the_spec_table() {
    for row in &SPEC {
        // The other keys stay in a different phase; the overridden key (and
        // the write key 101 is overridden too) follows its own row.
        let global = if row.phase == Phase::Prepare {
            Phase::DualWrite
        } else {
            Phase::Prepare
        };
        let migration = Migration::new(global);
        force_for(&migration, &1u64, row.phase);
        force_for(&migration, &101u64, row.phase);
        check(row, migration, 1, "per-key");

        // A key without override follows the global phase.
        let global_row = SPEC.iter().find(|r| r.phase == global).unwrap();
        let migration2 = Migration::new(global);
        force_for(&migration2, &1u64, row.phase);
        force_for(&migration2, &101u64, row.phase);
        check_other(global_row, migration2);
    }
}

fn check_other(row: &Row, migration: Migration) {
    let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration);
    store.old_store().table.seed(User::new(2, "old"));
    store.new_store().table.seed(User::new(2, "new"));
    store.save(&User::new(102, "w")).unwrap();
    let answer = store.get(2).unwrap().unwrap();
    assert_eq!(
        answer.name == "new",
        row.answer_from_new,
        "other key {:?}",
        row.phase
    );
    assert_eq!(
        !store.new_store().table.log().is_empty(),
        row.writes_new,
        "other key {:?}",
        row.phase
    );
}

#[test]
fn cutover_options() {
    let options = RouteOptions {
        write_old_after_cutover: false,
        shadow_after_cutover: true,
    };
    let migration = Migration::with_options(Phase::Cutover, options);
    let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration);
    store.old_store().table.seed(User::new(1, "same"));
    store.new_store().table.seed(User::new(1, "same"));
    store.save(&User::new(5, "w")).unwrap();
    assert!(
        store.old_store().table.log().is_empty(),
        "Old is not written"
    );
    assert_eq!(store.get(1).unwrap().unwrap().name, "same");
    assert_eq!(store.stats().reads_matched, 1, "mirrored comparison");
}

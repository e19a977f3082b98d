//! Invariants of the generated adapter, with stores that fail on demand:
//! a failed primary write is never followed by a secondary write; under the
//! async-secondary strategy every acknowledged write ends applied or
//! dead-lettered; writes to one key reach the secondary in the primary's order.

use std::time::Duration;

use dualwrite_runtime::{LaneConfig, Migration, Phase, Store, SyncMode, dual_write};
use dualwrite_tests::{MemTable, StoreError, User};
use proptest::prelude::*;

#[dual_write]
pub trait UserStore {
    #[dual_write(key = user.id)]
    fn save(&self, user: &User) -> Result<(), StoreError>;
    #[dual_write(key = id)]
    fn delete(&self, id: u64) -> Result<(), StoreError>;
    #[dual_write(key = id)]
    fn get(&self, id: u64) -> Result<Option<User>, StoreError>;
}

#[derive(Default)]
pub struct Mem(pub MemTable);

impl UserStore for Mem {
    fn save(&self, user: &User) -> Result<(), StoreError> {
        let u = user.clone();
        self.0.write(format!("save {} {}", u.id, u.name), |rows| {
            rows.insert(u.id, u);
        })
    }
    fn delete(&self, id: u64) -> Result<(), StoreError> {
        self.0.write(format!("delete {id}"), |rows| {
            rows.remove(&id);
        })
    }
    fn get(&self, id: u64) -> Result<Option<User>, StoreError> {
        Ok(self.0.get(id))
    }
}

fn fast_lanes() -> LaneConfig {
    LaneConfig::default()
        .with_lanes(3)
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_micros(200))
        .with_max_backoff(Duration::from_millis(2))
}

#[test]
fn failed_primary_is_never_followed_by_a_secondary_write() {
    for phase in Phase::ALL {
        for mode in [SyncMode::Strong, SyncMode::Tolerant] {
            let migration = Migration::new(phase);
            let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration.clone())
                .with_sync_mode(mode);
            let route = migration.write_route(None);
            let (primary, secondary) = match route.primary {
                Store::Old => (store.old_store(), store.new_store()),
                Store::New => (store.new_store(), store.old_store()),
            };
            primary.0.fail_all(true);
            assert!(store.save(&User::new(1, "a")).is_err(), "{phase:?}");
            assert!(store.delete(1).is_err(), "{phase:?}");
            assert!(
                secondary.0.log().is_empty(),
                "{phase:?}/{mode:?}: {:?}",
                secondary.0.log()
            );
            assert_eq!(store.stats().primary_writes_failed, 2);
            assert_eq!(
                store.stats().secondary_writes_ok + store.stats().secondary_writes_failed,
                0
            );
        }
    }
}

#[test]
fn failed_primary_is_never_followed_by_a_secondary_write_async() {
    let migration = Migration::new(Phase::DualWrite);
    let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration)
        .with_async_secondary(fast_lanes());
    store.old_store().0.fail_all(true);
    for id in 0..50 {
        assert!(store.save(&User::new(id, "x")).is_err());
    }
    store.flush(Duration::from_secs(60)).expect("flushed");
    assert!(store.new_store().0.log().is_empty());
    assert_eq!(store.stats().secondary_pending, 0);
}

#[test]
fn tolerant_sync_secondary_failure_is_logged_recorded_and_returned_as_success() {
    let migration = Migration::new(Phase::DualWrite);
    let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration);
    store.new_store().0.fail_next(1);
    store.save(&User::new(1, "a")).unwrap();
    let dead = store.take_dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].target, Store::New);
    assert_eq!(dead[0].key.as_deref(), Some("1"));
    assert!(
        dead[0].error.contains("injected failure"),
        "{}",
        dead[0].error
    );
    // Reconciliation: replay the dead letter.
    dead[0].command.apply(store.new_store()).unwrap();
    assert_eq!(store.new_store().0.rows(), store.old_store().0.rows());
}

#[test]
fn cutover_reverses_the_write_order() {
    let migration = Migration::new(Phase::Cutover);
    let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration);
    store.old_store().0.fail_all(true);
    store.save(&User::new(1, "a")).unwrap();
    assert_eq!(store.new_store().0.rows().len(), 1, "New is the primary");
    assert_eq!(store.dead_letters()[0].target, Store::Old);
}

#[derive(Debug, Clone)]
enum Op {
    Save(u64, u8),
    Delete(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..6, any::<u8>()).prop_map(|(id, v)| Op::Save(id, v)),
        (0u64..6).prop_map(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every acknowledged write is applied or dead-lettered, and per key the
    /// secondary sees the primary's order.
    #[test]
    fn acknowledged_writes_are_applied_in_order_or_dead_lettered(
        ops in proptest::collection::vec(op(), 1..60),
        failures in proptest::collection::vec(0usize..4, 1..60),
    ) {
        let migration = Migration::new(Phase::DualWrite);
        let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration)
            .with_async_secondary(fast_lanes());
        let mut acknowledged = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            // Inject a burst of secondary failures now and then.
            store.new_store().0.fail_next(failures[i % failures.len()] * usize::from(i % 5 == 0));
            let (call, ok) = match op {
                Op::Save(id, v) => (format!("save {id} {v}"), store.save(&User::new(*id, &v.to_string())).is_ok()),
                Op::Delete(id) => (format!("delete {id}"), store.delete(*id).is_ok()),
            };
            prop_assert!(ok, "the primary never fails here");
            acknowledged.push(call);
        }
        store.flush(Duration::from_secs(60)).expect("flushed");

        let applied: Vec<String> = store.new_store().0.log().into_iter().filter(|c| !c.starts_with("FAILED")).collect();
        let dead: Vec<String> = store.dead_letters().iter().map(|d| match &d.command {
            UserStoreWrite::Save { user } => format!("save {} {}", user.id, user.name),
            UserStoreWrite::Delete { id } => format!("delete {id}"),
        }).collect();
        // None lost: applied + dead letters = acknowledged (as multisets).
        let mut all = applied.clone();
        all.extend(dead.iter().cloned());
        all.sort();
        let mut expected = acknowledged.clone();
        expected.sort();
        prop_assert_eq!(all, expected);
        // Per-key order: the applied writes of a key are a subsequence of the
        // acknowledged writes of that key, in the same order.
        for key in 0..6u64 {
            let of_key = |c: &String| c.split(' ').nth(1) == Some(&key.to_string());
            let acked: Vec<&String> = acknowledged.iter().filter(|c| of_key(c)).collect();
            let got: Vec<&String> = applied.iter().filter(|c| of_key(c)).collect();
            let mut it = acked.iter();
            for g in &got {
                prop_assert!(it.any(|a| a == g), "key {}: {:?} not in order within {:?}", key, got, acked);
            }
        }
        prop_assert_eq!(store.stats().secondary_pending, 0);
    }
}

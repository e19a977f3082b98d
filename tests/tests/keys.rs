//! Composite routing keys and tenants named apart from the key: a tuple
//! key orders and routes by all its parts; `tenant = ..` picks the phase
//! override while the key orders the writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dualwrite_runtime::{Composite, LaneConfig, Migration, Phase, RoutingKey, Store, dual_write};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Order {
    tenant: String,
    id: u64,
    total: u64,
}

#[dual_write]
trait Orders {
    /// Keyed by `(tenant, id)`: a tuple of argument paths.
    #[dual_write(key = (order.tenant, order.id))]
    fn save(&self, order: &Order) -> Result<(), String>;
    #[dual_write(key = (tenant, id))]
    fn find(&self, tenant: &str, id: u64) -> Result<Option<Order>, String>;
    /// Ordered by the order id, routed by the tenant's phase.
    #[dual_write(write, tenant = tenant, key = id)]
    fn cancel(&self, tenant: &str, id: u64) -> Result<(), String>;
}

#[derive(Default)]
struct Mem {
    rows: Mutex<HashMap<(String, u64), Order>>,
    calls: Mutex<Vec<String>>,
    fail_cancel: AtomicBool,
}

impl Mem {
    fn calls(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Orders for Mem {
    fn save(&self, order: &Order) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!(
                "save {}/{} {}",
                order.tenant, order.id, order.total
            ));
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((order.tenant.clone(), order.id), order.clone());
        Ok(())
    }

    fn find(&self, tenant: &str, id: u64) -> Result<Option<Order>, String> {
        Ok(self
            .rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(tenant.to_owned(), id))
            .cloned())
    }

    fn cancel(&self, tenant: &str, id: u64) -> Result<(), String> {
        if self.fail_cancel.load(Ordering::SeqCst) {
            return Err(format!("cancel {tenant}/{id} refused"));
        }
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("cancel {tenant}/{id}"));
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(tenant.to_owned(), id));
        Ok(())
    }
}

fn order(tenant: &str, id: u64) -> Order {
    Order {
        tenant: tenant.to_owned(),
        id,
        total: id * 10,
    }
}

#[test]
fn a_composite_key_routes_by_all_its_parts() {
    let migration = Migration::new(Phase::ShadowRead);
    // One (tenant, id) pair cuts over; the same id of another tenant does not.
    migration
        .set_phase_for(&Composite(("acme", 1_u64)), Phase::Cutover)
        .expect("allowed");
    assert_eq!(migration.overrides()[0].0, "acme/1");
    assert_eq!(
        migration
            .write_route(Some(&Composite(("acme", 1_u64))))
            .primary,
        Store::New
    );
    let orders = OrdersDualWrite::new(Mem::default(), Mem::default(), migration);
    orders.save(&order("acme", 1)).expect("save");
    orders.save(&order("globex", 1)).expect("save");
    // Old lost acme/1's row on the side: a read of acme/1 is answered by New
    // (its phase, found by the same composite key), globex/1's by Old.
    orders
        .old_store()
        .rows
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    assert_eq!(orders.find("acme", 1), Ok(Some(order("acme", 1))));
    assert_eq!(orders.find("globex", 1), Ok(None));
}

#[test]
fn the_command_renders_and_hashes_the_composite_key() {
    let migration = Migration::new(Phase::DualWrite);
    let orders = OrdersDualWrite::new(Mem::default(), Mem::default(), migration)
        .with_async_secondary(LaneConfig::default().with_lanes(3));
    let command = OrdersWrite::Save {
        order: order("acme", 7),
    };
    assert_eq!(command.key_text().as_deref(), Some("acme/7"));
    assert_eq!(
        command.key_hash(),
        Some(Composite(("acme", 7_u64)).route_hash())
    );
    // Writes of one composite key keep their order through the lanes.
    for total in 0..100 {
        for tenant in ["acme", "globex"] {
            orders
                .save(&Order {
                    tenant: tenant.to_owned(),
                    id: 7,
                    total,
                })
                .expect("save");
        }
    }
    orders.flush(Duration::from_secs(30)).expect("flushed");
    // Per key the order is the primary's; the two keys' lanes interleave.
    for tenant in ["acme/", "globex/"] {
        let of = |calls: Vec<String>| -> Vec<String> {
            calls.into_iter().filter(|c| c.contains(tenant)).collect()
        };
        let old = of(orders.old_store().calls());
        assert_eq!(old.len(), 100);
        assert_eq!(old, of(orders.new_store().calls()), "{tenant}");
    }
}

#[test]
fn a_tenant_picks_the_phase_while_the_key_orders() {
    let migration = Migration::new(Phase::ShadowRead);
    migration
        .set_phase_for("acme", Phase::Cutover)
        .expect("allowed");
    let orders = OrdersDualWrite::new(Mem::default(), Mem::default(), migration);
    // Old refuses every cancel: a call whose primary is Old fails, one whose
    // primary is New succeeds (Old's failure is a tolerated secondary one).
    orders.old_store().fail_cancel.store(true, Ordering::SeqCst);
    assert_eq!(
        orders.cancel("acme", 3),
        Ok(()),
        "acme is in cutover: New first"
    );
    assert_eq!(
        orders.cancel("globex", 3),
        Err("cancel globex/3 refused".to_owned()),
        "globex follows the global shadow_read phase: Old first"
    );
    // The key, not the tenant, ordered the write: its dead letter names it.
    let letters = orders.take_dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].key.as_deref(), Some("3"));
    assert_eq!(letters[0].target, Store::Old);
    assert_eq!(orders.new_store().calls(), vec!["cancel acme/3"]);
}

/// A key type that is `Hash + Debug` only: `routing_key_via_debug!` makes
/// it a routing key, rendered in its `Debug` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SkuId(u32);

dualwrite_runtime::routing_key_via_debug!(SkuId);

#[dual_write]
trait Skus {
    #[dual_write(key = id)]
    fn put_sku(&self, id: SkuId, stock: u32) -> Result<(), String>;
}

#[derive(Default)]
struct SkuMem(Mutex<HashMap<SkuId, u32>>);

impl Skus for SkuMem {
    fn put_sku(&self, id: SkuId, stock: u32) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, stock);
        Ok(())
    }
}

#[test]
fn a_debug_only_key_routes_and_takes_overrides() {
    let migration = Migration::new(Phase::DualWrite);
    migration
        .set_phase_for(&SkuId(7), Phase::Backfill)
        .expect("allowed");
    assert_eq!(migration.phase_for(Some(&SkuId(7))), Phase::Backfill);
    assert_eq!(migration.phase_for(Some(&SkuId(8))), Phase::DualWrite);
    assert_eq!(SkuId(7).render(), "SkuId(7)");
    let skus = SkusDualWrite::new(SkuMem::default(), SkuMem::default(), migration);
    skus.put_sku(SkuId(7), 3).expect("written");
    let old = skus
        .old_store()
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let new = skus
        .new_store()
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(
        (old.get(&SkuId(7)), new.get(&SkuId(7))),
        (Some(&3), Some(&3))
    );
}

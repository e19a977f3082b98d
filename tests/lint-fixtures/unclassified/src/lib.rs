// Several problems in one trait are all reported in one compile.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    fn compute(&self) -> u64;
    #[dual_write(key = missing)]
    fn insert(&self, id: u64) -> bool;
    fn refresh(&self, id: u64);
}

pub mod options;

pub struct PgUserStore;

impl UserStore for PgUserStore {
    fn compute(&self) -> u64 {
        0
    }
    fn insert(&self, _id: u64) -> bool {
        true
    }
    fn refresh(&self, _id: u64) {}
}

/// The macro rejects the trait, but its writes are still known by name,
/// so a bypass is still a bypass.
fn still_checked(store: &PgUserStore) {
    store.insert(1);
    store.refresh(1);
}

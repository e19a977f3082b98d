//! Driver fixture for `report` and `expand`.

use dualwrite_runtime::dual_write;

#[dual_write(key = id)]
pub trait UserStore {
    #[dual_write(key = user.id)]
    fn insert(&self, user: &User) -> Result<(), StoreError>;
    fn get(&self, id: u64) -> Result<Option<User>, StoreError>;
    #[dual_write(compare = same_user)]
    fn find(&self, id: u64) -> Result<Option<User>, StoreError>;
    #[dual_write(passthrough)]
    fn ping(&self) -> bool;
}

pub mod orders {
    #[dual_write(adapter = Orders)]
    pub trait OrderStore {
        fn delete(&self, order_id: u64) -> bool;
        #[dual_write(read, no_compare)]
        fn count(&self) -> u64;
    }
}

#[dual_write]
pub trait Broken {
    fn compute(&self) -> u64;
}

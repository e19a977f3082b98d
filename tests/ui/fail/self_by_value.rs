// A `self` receiver by value cannot be routed between two stores.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    fn insert(self, id: u64) -> bool;
}

fn main() {}

// A method without a `self` receiver and without a default body cannot be routed.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    fn get(id: u64) -> Option<String>;
}

fn main() {}

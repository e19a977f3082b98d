// `compare` only applies to reads.
use dualwrite_runtime::dual_write;

fn same(a: &bool, b: &bool) -> bool {
    a == b
}

#[dual_write]
pub trait UserStore {
    #[dual_write(compare = same)]
    fn insert(&self, id: u64) -> bool;
}

fn main() {}

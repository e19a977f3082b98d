// A write's by-value argument must be Clone to reach both stores.
use dualwrite_runtime::dual_write;

#[derive(Debug)]
pub struct Row {
    pub id: u64,
}

#[dual_write]
pub trait UserStore {
    fn insert(&self, row: Row) -> bool;
}

fn main() {}

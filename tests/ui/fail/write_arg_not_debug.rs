// A write's argument is stored in the `Debug` command enum, so its type must be `Debug`.
use dualwrite_runtime::dual_write;

#[derive(Clone)]
pub struct Row {
    pub id: u64,
}

#[dual_write]
pub trait UserStore {
    fn insert(&self, row: Row) -> bool;
}

fn main() {}

// A write's by-reference argument must be Clone (ToOwned) for the write command to own it.
use dualwrite_runtime::dual_write;

#[derive(Debug)]
pub struct Row {
    pub id: u64,
}

#[dual_write]
pub trait UserStore {
    fn insert(&self, row: &Row) -> bool;
}

fn main() {}

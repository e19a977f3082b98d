// A read's value is compared in the shadow phase, so it must be PartialEq.
use dualwrite_runtime::dual_write;

pub struct Row {
    pub id: u64,
}

#[dual_write]
pub trait UserStore {
    fn get(&self, id: u64) -> Option<Row>;
}

fn main() {}

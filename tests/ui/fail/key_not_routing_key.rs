// A key must be Hash + Display to be a routing key.
use dualwrite_runtime::dual_write;

#[derive(Clone, Debug)]
pub struct Row {
    pub id: u64,
    pub tags: Vec<String>,
}

#[dual_write]
pub trait UserStore {
    #[dual_write(key = row.tags)]
    fn insert(&self, row: &Row) -> bool;
}

fn main() {}

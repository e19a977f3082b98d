// `key` given twice on one method is rejected on the second `key`.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(key = id, key = name)]
    fn insert(&self, id: u64, name: String) -> bool;
}

fn main() {}

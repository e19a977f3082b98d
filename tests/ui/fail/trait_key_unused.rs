// A trait-level `key` that matches no argument of any method is reported on the key.
use dualwrite_runtime::dual_write;

#[dual_write(key = tenant)]
pub trait UserStore {
    fn insert(&self, id: u64, name: String) -> bool;
    fn get(&self, id: u64) -> Option<String>;
}

fn main() {}

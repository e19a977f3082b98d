// `key = 1 + 2` is not an argument name or field path.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(key = 1 + 2)]
    fn insert(&self, id: u64, name: String) -> bool;
}

fn main() {}

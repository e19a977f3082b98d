// `key` naming an argument the method does not have is reported on the key, listing the arguments.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(key = user_id)]
    fn insert(&self, id: u64, name: String) -> bool;
}

fn main() {}

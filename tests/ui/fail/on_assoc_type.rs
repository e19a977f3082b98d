// `#[dual_write(...)]` on an associated type has no meaning.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(key = id)]
    type Id;
    fn get(&self, id: u64) -> Option<String>;
}

fn main() {}

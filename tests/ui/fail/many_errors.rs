// Several problems in one trait are all reported in one compile.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    fn compute(&self) -> u64;
    #[dual_write(key = missing)]
    fn insert(&self, id: u64) -> bool;
    fn refresh(&self, id: u64);
}

fn main() {}

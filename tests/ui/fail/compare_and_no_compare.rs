// `compare` and `no_compare` contradict each other.
use dualwrite_runtime::dual_write;

fn same(a: &Option<String>, b: &Option<String>) -> bool {
    a == b
}

#[dual_write]
pub trait UserStore {
    #[dual_write(compare = same, no_compare)]
    fn get(&self, id: u64) -> Option<String>;
}

fn main() {}

// A method whose name is neither a read nor a write verb must be marked explicitly.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    fn compute(&self) -> u64;
}

fn main() {}

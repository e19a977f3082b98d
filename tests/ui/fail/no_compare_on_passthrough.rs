// `no_compare` only applies to reads, not to a passthrough.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(passthrough, no_compare)]
    fn ping(&self) -> bool;
}

fn main() {}

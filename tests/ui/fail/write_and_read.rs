// A method cannot be both `write` and `read`.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(write, read)]
    fn touch(&self, id: u64) -> bool;
}

fn main() {}

// A trait parameter may not be named like the adapter's store parameters.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait Repo<Old> {
    fn insert(&self, row: Old);
}

fn main() {}

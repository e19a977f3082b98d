// The adapter and the command enum cannot share one name.
use dualwrite_runtime::dual_write;

#[dual_write(adapter = Users, command = Users)]
pub trait UserStore {
    fn insert(&self, id: u64) -> bool;
}

fn main() {}

// An `adapter` name equal to the default command-enum name is reported on the name the user wrote.
use dualwrite_runtime::dual_write;

#[dual_write(adapter = UserStoreWrite)]
pub trait UserStore {
    fn insert(&self, id: u64) -> bool;
}

fn main() {}

// An unknown option on a method is rejected on the option's name, listing the valid ones.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(reads)]
    fn get(&self, id: u64) -> Option<String>;
}

fn main() {}

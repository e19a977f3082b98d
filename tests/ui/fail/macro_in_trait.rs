// A macro invocation inside the trait hides methods from `#[dual_write]`.
use dualwrite_runtime::dual_write;

macro_rules! getter {
    () => {
        fn get(&self, id: u64) -> Option<String>;
    };
}

#[dual_write]
pub trait UserStore {
    fn insert(&self, id: u64) -> bool;
    getter!();
}

fn main() {}

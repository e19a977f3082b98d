// An unknown option on the trait is rejected on the option's name, listing the valid ones.
use dualwrite_runtime::dual_write;

#[dual_write(adaptor = Store)]
pub trait UserStore {
    fn get(&self, id: u64) -> Option<String>;
}

fn main() {}

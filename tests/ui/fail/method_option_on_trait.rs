// `write` is a method option: given on the trait it is rejected with a pointer to the method.
use dualwrite_runtime::dual_write;

#[dual_write(write)]
pub trait UserStore {
    fn get(&self, id: u64) -> Option<String>;
}

fn main() {}

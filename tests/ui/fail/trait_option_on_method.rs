// `adapter` is a trait option: given on a method it is rejected with a pointer to the trait.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(adapter = Store)]
    fn get(&self, id: u64) -> Option<String>;
}

fn main() {}

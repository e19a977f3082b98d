// `key` on a method that keeps its default body (and is not routed) has no effect.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    fn get(&self, id: u64) -> Option<String>;
    #[dual_write(key = id)]
    fn name_of(&self, id: u64) -> String {
        self.get(id).unwrap_or_default()
    }
}

fn main() {}

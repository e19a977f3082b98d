// `#[dual_write]` on a struct is rejected: it goes on a trait.
use dualwrite_runtime::dual_write;

#[dual_write]
pub struct UserStore {
    id: u64,
}

fn main() {
    let _ = UserStore { id: 1 }.id;
}

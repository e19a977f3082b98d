// A composite key has 2 to 4 parts.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait Orders {
    #[dual_write(key = (a, b, c, d, e))]
    fn insert(&self, a: u8, b: u8, c: u8, d: u8, e: u8) -> bool;
}

fn main() {}

// A part of a composite key that names no argument is reported on that part.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait Orders {
    #[dual_write(key = (tenant, order_id))]
    fn insert(&self, tenant: String, id: u64) -> bool;
}

fn main() {}

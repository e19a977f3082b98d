// `tenant` must name an argument of the method, like `key`.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait Orders {
    #[dual_write(tenant = org, key = id)]
    fn insert(&self, tenant: String, id: u64) -> bool;
}

fn main() {}

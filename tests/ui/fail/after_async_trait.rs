// `#[dual_write]` below `#[async_trait]` sees the rewritten signatures and asks for the other order.
use dualwrite_runtime::dual_write;

#[async_trait::async_trait]
#[dual_write]
pub trait UserStore: Send + Sync {
    async fn insert(&self, id: u64) -> bool;
    async fn get(&self, id: u64) -> Option<String>;
}

fn main() {}

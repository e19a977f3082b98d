// Native `async fn`s in the trait, driven by a tokio runtime.
use std::sync::Mutex;

use dualwrite_runtime::{Migration, Phase, dual_write};

#[dual_write]
pub trait UserStore {
    #[dual_write(key = id)]
    async fn insert(&self, id: u64, name: String) -> Result<(), String>;
    #[dual_write(key = id)]
    async fn find(&self, id: u64) -> Result<Option<String>, String>;
}

#[derive(Default)]
pub struct Mem(Mutex<Vec<(u64, String)>>);

impl UserStore for Mem {
    async fn insert(&self, id: u64, name: String) -> Result<(), String> {
        self.0.lock().unwrap().push((id, name));
        Ok(())
    }
    async fn find(&self, id: u64) -> Result<Option<String>, String> {
        let rows = self.0.lock().unwrap();
        Ok(rows.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let migration = Migration::new(Phase::ShadowRead);
    let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration);
    store.insert(1, "ada".to_owned()).await.unwrap();
    assert_eq!(store.find(1).await.unwrap().as_deref(), Some("ada"));
    assert_eq!(store.stats().reads_matched, 1);
}

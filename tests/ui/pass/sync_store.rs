// A plain sync trait: the adapter writes both stores in the dual-write phase and reads Old.
use std::sync::Mutex;

use dualwrite_runtime::{Migration, Phase, dual_write};

#[dual_write]
pub trait UserStore {
    #[dual_write(key = id)]
    fn insert(&self, id: u64, name: &str) -> bool;
    #[dual_write(key = id)]
    fn get(&self, id: u64) -> Option<String>;
}

#[derive(Default)]
pub struct Mem(Mutex<Vec<(u64, String)>>);

impl UserStore for Mem {
    fn insert(&self, id: u64, name: &str) -> bool {
        self.0.lock().unwrap().push((id, name.to_owned()));
        true
    }
    fn get(&self, id: u64) -> Option<String> {
        let rows = self.0.lock().unwrap();
        rows.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone())
    }
}

fn main() {
    let migration = Migration::new(Phase::DualWrite);
    let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration);
    assert!(store.insert(1, "ada"));
    assert_eq!(store.get(1).as_deref(), Some("ada"));
    assert_eq!(store.new_store().get(1).as_deref(), Some("ada"));
}

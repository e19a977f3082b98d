// Trait options (`adapter`, `command`, trait-level `key`) with a `&mut self` write and explicit kinds.
use std::collections::BTreeMap;

use dualwrite_runtime::{Migration, Phase, dual_write};

fn same_len(a: &usize, b: &usize) -> bool {
    a == b
}

#[dual_write(adapter = Counters, command = CounterOp, key = name)]
pub trait Counter {
    fn bump(&mut self, name: &str, by: u32) -> u32;
    #[dual_write(read, compare = same_len)]
    fn size(&self) -> usize;
    #[dual_write(passthrough)]
    fn ping(&self) -> bool;
}

#[derive(Default)]
pub struct Map(BTreeMap<String, u32>);

impl Counter for Map {
    fn bump(&mut self, name: &str, by: u32) -> u32 {
        let v = self.0.entry(name.to_owned()).or_default();
        *v += by;
        *v
    }
    fn size(&self) -> usize {
        self.0.len()
    }
    fn ping(&self) -> bool {
        true
    }
}

fn main() {
    let migration = Migration::new(Phase::ShadowRead);
    let mut store = Counters::new(Map::default(), Map::default(), migration);
    assert_eq!(store.bump("a", 2), 2);
    assert_eq!(store.size(), 1);
    assert!(store.ping());
    let _: Option<CounterOp> = None;
    let (old, new) = store.into_stores();
    assert_eq!(old.0, new.0);
}

// The outbox's appliers share the secondary store, like the lanes: a `&mut self` trait is rejected with the SharedReceivers message.
use std::sync::Arc;

use dualwrite_runtime::outbox::{Journal, OutboxConfig};
use dualwrite_runtime::{Migration, Phase, dual_write};

#[dual_write(serde)]
pub trait Counter {
    fn bump(&mut self, name: &str) -> u32;
}

#[derive(Default)]
pub struct Map(u32);

impl Counter for Map {
    fn bump(&mut self, _name: &str) -> u32 {
        self.0 += 1;
        self.0
    }
}

pub fn start(journal: Arc<dyn Journal>) {
    let migration = Migration::new(Phase::DualWrite);
    let _store = CounterDualWrite::new(Map::default(), Map::default(), migration)
        .with_outbox(journal, OutboxConfig::default());
}

fn main() {}

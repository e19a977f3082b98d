// Async secondary writes need `&self` methods; a `&mut self` trait is rejected with the SharedReceivers message.
use dualwrite_runtime::{LaneConfig, Migration, Phase, dual_write};

#[dual_write]
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

fn main() {
    let migration = Migration::new(Phase::DualWrite);
    let _store = CounterDualWrite::new(Map::default(), Map::default(), migration)
        .with_async_secondary(LaneConfig::default());
}

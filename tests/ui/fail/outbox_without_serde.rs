// The outbox journals write commands as text: a trait without `#[dual_write(serde)]` is rejected where `with_outbox` is called, with a message that says what to add.
use std::sync::Arc;

use dualwrite_runtime::outbox::{Journal, OutboxConfig};
use dualwrite_runtime::{Migration, Phase, dual_write};

#[dual_write]
pub trait Counters {
    #[dual_write(key = id)]
    fn put(&self, id: u64, value: u64) -> Result<(), String>;
}

pub struct Memory;

impl Counters for Memory {
    fn put(&self, _id: u64, _value: u64) -> Result<(), String> {
        Ok(())
    }
}

pub fn start(journal: Arc<dyn Journal>) {
    let migration = Migration::new(Phase::DualWrite);
    let _store = CountersDualWrite::new(Memory, Memory, migration)
        .with_outbox(journal, OutboxConfig::default());
}

fn main() {}

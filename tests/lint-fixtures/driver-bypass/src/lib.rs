//! Driver fixture: one write that bypasses the adapter.
//! Expected: DW001 at line 25 (`pg.insert(..)`), exit code 1.

use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    fn insert(&self, id: u64) -> Result<(), String>;
    fn get(&self, id: u64) -> Result<Option<String>, String>;
}

pub struct PgUserStore;

impl UserStore for PgUserStore {
    fn insert(&self, _id: u64) -> Result<(), String> {
        Ok(())
    }
    fn get(&self, _id: u64) -> Result<Option<String>, String> {
        Ok(None)
    }
}

pub fn register(id: u64) -> Result<(), String> {
    let pg = PgUserStore;
    pg.insert(id)
}

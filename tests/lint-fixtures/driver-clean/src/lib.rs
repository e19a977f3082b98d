//! Driver fixture: a dual-write trait used only through its adapter.
//! Expected: no findings, exit code 0.

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

pub fn register(users: &impl UserStore, id: u64) -> Result<(), String> {
    users.insert(id)
}

//! Shared helpers for the dualwrite test suite: a small user model and an
//! in-memory store that records every call and fails on demand.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A user record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// Primary key.
    pub id: u64,
    /// Display name.
    pub name: String,
}

impl User {
    /// A user with the given id and name.
    pub fn new(id: u64, name: &str) -> Self {
        Self {
            id,
            name: name.to_owned(),
        }
    }
}

/// The error of the in-memory store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// An in-memory table with a call log and failure injection.
#[derive(Debug, Default)]
pub struct MemTable {
    rows: Mutex<BTreeMap<u64, User>>,
    log: Mutex<Vec<String>>,
    fail_next: AtomicUsize,
    fail_all: std::sync::atomic::AtomicBool,
}

impl MemTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` writes fail.
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every write fails until switched off.
    pub fn fail_all(&self, on: bool) {
        self.fail_all.store(on, Ordering::SeqCst);
    }

    fn should_fail(&self) -> bool {
        if self.fail_all.load(Ordering::SeqCst) {
            return true;
        }
        self.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Records a call; fails if failure was injected.
    pub fn write(
        &self,
        call: String,
        f: impl FnOnce(&mut BTreeMap<u64, User>),
    ) -> Result<(), StoreError> {
        if self.should_fail() {
            self.log.lock().unwrap().push(format!("FAILED {call}"));
            return Err(StoreError(format!("injected failure on {call}")));
        }
        self.log.lock().unwrap().push(call);
        f(&mut self.rows.lock().unwrap());
        Ok(())
    }

    /// A row.
    pub fn get(&self, id: u64) -> Option<User> {
        self.rows.lock().unwrap().get(&id).cloned()
    }

    /// Every row, by id.
    pub fn rows(&self) -> Vec<User> {
        self.rows.lock().unwrap().values().cloned().collect()
    }

    /// Puts a row without logging (test setup).
    pub fn seed(&self, user: User) {
        self.rows.lock().unwrap().insert(user.id, user);
    }

    /// The calls made so far, oldest first.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

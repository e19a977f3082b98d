//! A phase source in one process's memory.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{AuditRecord, PhaseSource, PhaseState, SourceError};
use crate::phase::Phase;

/// How many audit records a [`MemoryPhaseSource`] keeps.
const KEPT_RECORDS: usize = 10_000;

/// A [`PhaseSource`] in memory: the migrations of one process (tests, or
/// several migration handles of one service) share it by cloning it.
/// Cloning is cheap and every clone is the same source.
#[derive(Clone, Default)]
pub struct MemoryPhaseSource {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    stored: Mutex<Stored>,
    changed: Condvar,
}

struct Stored {
    state: PhaseState,
    audit: VecDeque<AuditRecord>,
}

impl Default for Stored {
    fn default() -> Self {
        Stored {
            state: PhaseState::new(Phase::Prepare),
            audit: VecDeque::new(),
        }
    }
}

impl MemoryPhaseSource {
    /// An empty source (version 0): the first migration to follow it
    /// stores its own state.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Stored> {
        // Every update replaces whole values, so a panic cannot leave one
        // half-made: poisoning is ignored.
        self.shared
            .stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for MemoryPhaseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPhaseSource")
            .field("state", &self.lock().state)
            .finish()
    }
}

impl PhaseSource for MemoryPhaseSource {
    fn describe(&self) -> String {
        "in-memory phase source".to_owned()
    }

    fn load(&self) -> Result<PhaseState, SourceError> {
        Ok(self.lock().state.clone())
    }

    fn compare_and_set(
        &self,
        expected_version: u64,
        next: &PhaseState,
        record: &AuditRecord,
    ) -> Result<u64, SourceError> {
        let mut stored = self.lock();
        if stored.state.version != expected_version {
            return Err(SourceError::Conflict {
                current: Box::new(stored.state.clone()),
            });
        }
        let version = expected_version + 1;
        stored.state = PhaseState {
            version,
            ..next.clone()
        }
        .normalized();
        if stored.audit.len() >= KEPT_RECORDS {
            stored.audit.pop_front();
        }
        stored.audit.push_back(AuditRecord {
            version,
            ..record.clone()
        });
        drop(stored);
        self.shared.changed.notify_all();
        Ok(version)
    }

    fn audit(&self, after_version: u64, limit: usize) -> Result<Vec<AuditRecord>, SourceError> {
        let stored = self.lock();
        let newer: Vec<&AuditRecord> = stored
            .audit
            .iter()
            .filter(|r| r.version > after_version)
            .collect();
        let skip = newer.len().saturating_sub(limit);
        Ok(newer.into_iter().skip(skip).cloned().collect())
    }

    fn wait_for_change(
        &self,
        known_version: u64,
        timeout: Duration,
    ) -> Result<Option<PhaseState>, SourceError> {
        let deadline = Instant::now() + timeout;
        let mut stored = self.lock();
        loop {
            if stored.state.version > known_version {
                return Ok(Some(stored.state.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            stored = self
                .shared
                .changed
                .wait_timeout(stored, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

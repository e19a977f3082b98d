//! Per-method counts of the events that are off the hot path: failed
//! writes, retries, dead letters and shadow comparisons.
//!
//! Why not every write: a per-method success count would put one more
//! shared counter on every call, which the adapter's per-call budget does
//! not allow (its success counts live in the key stripes, per store and
//! role; see [`crate::Stats`]). Failures, retries and dead letters are rare
//! and already pay for a log line; a shadow comparison already pays for a
//! second read. So those are counted here per method, and metrics can show
//! which method fails, without any cost on the path of a call that
//! succeeds.
//!
//! Rows are found by the method's name: a copy-on-write list read without
//! a lock (one `ArcSwap` load and a scan of a few entries), grown under a
//! mutex the first time a method not listed at construction has an event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::phase::Store;

/// An event counted per method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MethodEvent {
    /// A primary write failed (returned to the caller).
    PrimaryFailed(Store),
    /// A secondary write attempt failed (retries included).
    SecondaryFailed(Store),
    /// A secondary write was tried again.
    Retry(Store),
    /// A secondary write was given up on.
    DeadLetter(Store),
    /// A shadow read agreed with the primary's answer.
    ShadowMatched,
    /// A shadow read disagreed (or failed).
    ShadowMismatched,
    /// A shadow read was not compared: a write of its key was pending.
    ShadowPending,
}

/// Cells per method: four store events times two stores, three shadow
/// outcomes.
pub(crate) const CELLS: usize = 11;

impl MethodEvent {
    /// The event's cell in a [`MethodRow`].
    pub(crate) fn cell(self) -> usize {
        let store = |store: Store| match store {
            Store::Old => 0,
            Store::New => 1,
        };
        match self {
            MethodEvent::PrimaryFailed(s) => store(s),
            MethodEvent::SecondaryFailed(s) => 2 + store(s),
            MethodEvent::Retry(s) => 4 + store(s),
            MethodEvent::DeadLetter(s) => 6 + store(s),
            MethodEvent::ShadowMatched => 8,
            MethodEvent::ShadowMismatched => 9,
            MethodEvent::ShadowPending => 10,
        }
    }

    /// Every event, in cell order.
    #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
    pub(crate) const ALL: [MethodEvent; CELLS] = [
        MethodEvent::PrimaryFailed(Store::Old),
        MethodEvent::PrimaryFailed(Store::New),
        MethodEvent::SecondaryFailed(Store::Old),
        MethodEvent::SecondaryFailed(Store::New),
        MethodEvent::Retry(Store::Old),
        MethodEvent::Retry(Store::New),
        MethodEvent::DeadLetter(Store::Old),
        MethodEvent::DeadLetter(Store::New),
        MethodEvent::ShadowMatched,
        MethodEvent::ShadowMismatched,
        MethodEvent::ShadowPending,
    ];
}

/// The counts of one method.
pub(crate) struct MethodRow {
    pub(crate) method: &'static str,
    counts: [AtomicU64; CELLS],
}

impl MethodRow {
    fn new(method: &'static str) -> Self {
        MethodRow {
            method,
            counts: Default::default(),
        }
    }

    /// The count of `event`.
    #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
    pub(crate) fn get(&self, event: MethodEvent) -> u64 {
        self.counts[event.cell()].load(Ordering::Relaxed)
    }
}

/// The per-method counts of one adapter.
pub(crate) struct ByMethod {
    rows: ArcSwap<Vec<Arc<MethodRow>>>,
    grow: Mutex<()>,
}

impl Default for ByMethod {
    fn default() -> Self {
        ByMethod::new(&[])
    }
}

impl ByMethod {
    /// Rows for `methods` (duplicates kept once), all zero.
    pub(crate) fn new(methods: &[&'static str]) -> Self {
        let mut rows: Vec<Arc<MethodRow>> = Vec::with_capacity(methods.len());
        for &method in methods {
            if !rows.iter().any(|row| row.method == method) {
                rows.push(Arc::new(MethodRow::new(method)));
            }
        }
        ByMethod {
            rows: ArcSwap::from_pointee(rows),
            grow: Mutex::new(()),
        }
    }

    /// Counts one `event` of `method`.
    pub(crate) fn record(&self, method: &'static str, event: MethodEvent) {
        let cell = event.cell();
        if let Some(row) = find(&self.rows.load(), method) {
            row.counts[cell].fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.row_added(method).counts[cell].fetch_add(1, Ordering::Relaxed);
    }

    /// The row of a method seen for the first time, added.
    #[cold]
    fn row_added(&self, method: &'static str) -> Arc<MethodRow> {
        let _grow = self.grow.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.rows.load_full();
        if let Some(row) = find(&current, method) {
            return Arc::clone(row);
        }
        let row = Arc::new(MethodRow::new(method));
        let mut next = Vec::with_capacity(current.len() + 1);
        next.extend(current.iter().cloned());
        next.push(Arc::clone(&row));
        self.rows.store(Arc::new(next));
        row
    }

    /// Every row so far, in the order they were added.
    #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
    pub(crate) fn rows(&self) -> Arc<Vec<Arc<MethodRow>>> {
        self.rows.load_full()
    }

    /// The count of `event` of `method` (0 for a method never seen).
    #[cfg(test)]
    pub(crate) fn get(&self, method: &str, event: MethodEvent) -> u64 {
        self.rows
            .load()
            .iter()
            .find(|row| row.method == method)
            .map_or(0, |row| row.get(event))
    }
}

/// The row of `method`: the same literal is usually the same pointer, so
/// the pointer is compared before the text.
fn find<'a>(rows: &'a [Arc<MethodRow>], method: &'static str) -> Option<&'a Arc<MethodRow>> {
    rows.iter()
        .find(|row| std::ptr::eq(row.method, method))
        .or_else(|| rows.iter().find(|row| row.method == method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_its_own_cell() {
        let cells: std::collections::HashSet<usize> =
            MethodEvent::ALL.iter().map(|event| event.cell()).collect();
        assert_eq!(cells.len(), CELLS);
        assert!(cells.iter().all(|&cell| cell < CELLS));
        for (index, event) in MethodEvent::ALL.iter().enumerate() {
            assert_eq!(event.cell(), index);
        }
    }

    #[test]
    fn listed_and_new_methods_are_counted_apart() {
        let by_method = ByMethod::new(&["put", "get", "put"]);
        assert_eq!(by_method.rows().len(), 2);
        by_method.record("put", MethodEvent::DeadLetter(Store::New));
        by_method.record("put", MethodEvent::DeadLetter(Store::New));
        by_method.record("delete", MethodEvent::PrimaryFailed(Store::Old));
        by_method.record("get", MethodEvent::ShadowMatched);
        assert_eq!(by_method.get("put", MethodEvent::DeadLetter(Store::New)), 2);
        assert_eq!(by_method.get("put", MethodEvent::DeadLetter(Store::Old)), 0);
        assert_eq!(
            by_method.get("delete", MethodEvent::PrimaryFailed(Store::Old)),
            1
        );
        assert_eq!(by_method.get("get", MethodEvent::ShadowMatched), 1);
        assert_eq!(by_method.get("nothing", MethodEvent::ShadowMatched), 0);
        let names: Vec<&str> = by_method.rows().iter().map(|row| row.method).collect();
        assert_eq!(names, ["put", "get", "delete"]);
    }

    #[test]
    fn concurrent_first_events_add_one_row() {
        let by_method = Arc::new(ByMethod::new(&[]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let by_method = Arc::clone(&by_method);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        by_method.record("put", MethodEvent::Retry(Store::New));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        assert_eq!(by_method.rows().len(), 1);
        assert_eq!(by_method.get("put", MethodEvent::Retry(Store::New)), 400);
    }
}

//! Lock-free counters of writes, retries, dead letters and shadow comparisons.
//!
//! The hot path is one relaxed `fetch_add` per event: a write bumps the single
//! counter of its `(store, role, outcome)` cell, and the per-store and per-role
//! totals of a [`StatsSnapshot`] are sums taken when the snapshot is read.
//! Every counter sits on its own cache line so request threads and lane
//! threads do not contend on unrelated counters.
//!
//! The rare events (failures, retries, dead letters) and the shadow
//! comparisons are also counted per method (module `by_method`), for
//! metrics; successful writes are not, to keep the call's path as it is.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::by_method::{ByMethod, MethodEvent};
use crate::phase::Store;
use crate::stripes::KeyStripes;

/// Which part a store plays in one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The authoritative write whose result is returned to the caller.
    Primary,
    /// The copy written to the other store after the primary succeeded.
    Secondary,
}

/// Shared, cheaply cloned counters of one dual-write adapter.
///
/// Clones share the same counters. Read them with [`Stats::snapshot`].
#[derive(Clone, Default)]
pub struct Stats {
    counters: Arc<Counters>,
}

/// A counter alone on a cache line.
#[derive(Default)]
#[repr(align(64))]
struct Padded<T>(T);

#[derive(Default)]
struct Counters {
    /// Indexed by [`write_cell`]: store x role x outcome.
    writes: [Padded<AtomicU64>; 8],
    secondary_retries: Padded<AtomicU64>,
    dead_letters: Padded<AtomicU64>,
    secondary_pending: Padded<AtomicI64>,
    reads_matched: Padded<AtomicU64>,
    reads_mismatched: Padded<AtomicU64>,
    reads_skipped_pending: Padded<AtomicU64>,
    dead_letters_evicted: Padded<AtomicU64>,
    queue_full: Padded<AtomicU64>,
    writes_refused: Padded<AtomicU64>,
    shadow_dropped: Padded<AtomicU64>,
    late_completions: Padded<AtomicU64>,
    primary_outcome_unknown: Padded<AtomicU64>,
    /// The stripes whose own counters hold the writes made on the callers'
    /// path (see `StripeGuard::record_write`).
    stripes: OnceLock<Arc<KeyStripes>>,
    /// Failures, retries, dead letters and comparisons per method.
    by_method: ByMethod,
}

/// The index of the write counter for one `(store, role, ok)` combination.
pub(crate) fn write_cell(store: Store, role: Role, ok: bool) -> usize {
    let store = match store {
        Store::Old => 0,
        Store::New => 4,
    };
    let role = match role {
        Role::Primary => 0,
        Role::Secondary => 2,
    };
    store + role + usize::from(!ok)
}

impl Stats {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fresh counters with a per-method row for each of `methods` (so
    /// metrics show them at zero before their first event).
    pub(crate) fn for_methods(methods: impl IntoIterator<Item = &'static str>) -> Self {
        let methods: Vec<&'static str> = methods.into_iter().collect();
        Stats {
            counters: Arc::new(Counters {
                by_method: ByMethod::new(&methods),
                ..Counters::default()
            }),
        }
    }

    /// The per-method counts.
    #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
    pub(crate) fn by_method(&self) -> &ByMethod {
        &self.counters.by_method
    }

    /// Counts one event of `method` (a failure, a retry, a dead letter, a
    /// comparison): off the hot path only.
    pub(crate) fn record_method(&self, method: &'static str, event: MethodEvent) {
        self.counters.by_method.record(method, event);
    }

    /// Adds the write counts kept in an adapter's stripes to this one's.
    pub(crate) fn attach_stripes(&self, stripes: Arc<KeyStripes>) {
        let _ = self.counters.stripes.set(stripes);
    }

    /// Counts one write attempt on `store` in `role`, successful or not.
    #[inline]
    pub fn record_write(&self, store: Store, role: Role, ok: bool) {
        self.counters.writes[write_cell(store, role, ok)]
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one retry of a secondary write (an attempt after the first).
    pub fn record_secondary_retry(&self) {
        self.counters
            .secondary_retries
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one secondary write given up on and kept as a dead letter.
    pub fn record_dead_letter(&self) {
        self.counters.dead_letters.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one dead letter evicted from a full dead-letter list.
    pub fn record_dead_letter_evicted(&self) {
        self.counters
            .dead_letters_evicted
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one shadow read not compared because a secondary write of its
    /// key was still pending (the stores could not agree yet).
    pub fn record_read_skipped_pending(&self) {
        self.counters
            .reads_skipped_pending
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one write that found its lane's queue full.
    pub fn record_queue_full(&self) {
        self.counters.queue_full.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one call refused before any store was written, because its
    /// lane's queue stayed full (see `QueueFullPolicy::FailCall`).
    pub fn record_write_refused(&self) {
        self.counters
            .writes_refused
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one background shadow comparison dropped because its queue was
    /// full.
    pub fn record_shadow_dropped(&self) {
        self.counters
            .shadow_dropped
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one secondary call that returned after it was abandoned at its
    /// deadline (it may have written).
    pub fn record_late_completion(&self) {
        self.counters
            .late_completions
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one call that ended (cancelled or unwinding) during its
    /// primary write, whose secondary write was due.
    pub fn record_primary_outcome_unknown(&self) {
        self.counters
            .primary_outcome_unknown
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one shadow-read comparison and whether both stores agreed.
    pub fn record_comparison(&self, matched: bool) {
        let counter = if matched {
            &self.counters.reads_matched
        } else {
            &self.counters.reads_mismatched
        };
        counter.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the gauge of secondary writes handed to lanes and not yet
    /// finished (applied or dead-lettered) by `delta`.
    pub fn add_pending(&self, delta: i64) {
        self.counters
            .secondary_pending
            .0
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// The write counts by `write_cell` (store x role x outcome), the
    /// stripes' included.
    pub(crate) fn write_cells(&self) -> [u64; 8] {
        let c = &self.counters;
        let mut cells = c
            .stripes
            .get()
            .map_or([0; 8], |stripes| stripes.write_counts());
        for (cell, counter) in cells.iter_mut().zip(&c.writes) {
            *cell += counter.0.load(Ordering::Relaxed);
        }
        cells
    }

    /// The current values. Each counter is read atomically; the snapshot as a
    /// whole is not a single instant while writes are in flight.
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.counters;
        let cells = self.write_cells();
        let write = |store, role, ok| cells[write_cell(store, role, ok)];
        let cell = |store, ok| write(store, Role::Primary, ok) + write(store, Role::Secondary, ok);
        let role = |role, ok| write(Store::Old, role, ok) + write(Store::New, role, ok);
        let reads_matched = c.reads_matched.0.load(Ordering::Relaxed);
        let reads_mismatched = c.reads_mismatched.0.load(Ordering::Relaxed);
        StatsSnapshot {
            old_writes_ok: cell(Store::Old, true),
            old_writes_failed: cell(Store::Old, false),
            new_writes_ok: cell(Store::New, true),
            new_writes_failed: cell(Store::New, false),
            primary_writes_ok: role(Role::Primary, true),
            primary_writes_failed: role(Role::Primary, false),
            secondary_writes_ok: role(Role::Secondary, true),
            secondary_writes_failed: role(Role::Secondary, false),
            secondary_retries: c.secondary_retries.0.load(Ordering::Relaxed),
            dead_letters: c.dead_letters.0.load(Ordering::Relaxed),
            // A finish can be observed before its submit under relaxed
            // ordering; never report a negative gauge.
            secondary_pending: u64::try_from(c.secondary_pending.0.load(Ordering::Relaxed))
                .unwrap_or(0),
            reads_compared: reads_matched + reads_mismatched,
            reads_matched,
            reads_mismatched,
            reads_skipped_pending: c.reads_skipped_pending.0.load(Ordering::Relaxed),
            dead_letters_evicted: c.dead_letters_evicted.0.load(Ordering::Relaxed),
            queue_full: c.queue_full.0.load(Ordering::Relaxed),
            writes_refused: c.writes_refused.0.load(Ordering::Relaxed),
            shadow_dropped: c.shadow_dropped.0.load(Ordering::Relaxed),
            late_completions: c.late_completions.0.load(Ordering::Relaxed),
            primary_outcome_unknown: c.primary_outcome_unknown.0.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Stats").field(&self.snapshot()).finish()
    }
}

/// The counters of a [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Successful write attempts on Old, in any role.
    pub old_writes_ok: u64,
    /// Failed write attempts on Old, in any role.
    pub old_writes_failed: u64,
    /// Successful write attempts on New, in any role.
    pub new_writes_ok: u64,
    /// Failed write attempts on New, in any role.
    pub new_writes_failed: u64,
    /// Successful primary writes.
    pub primary_writes_ok: u64,
    /// Failed primary writes (returned to the caller).
    pub primary_writes_failed: u64,
    /// Successful secondary write attempts.
    pub secondary_writes_ok: u64,
    /// Failed secondary write attempts, retries included.
    pub secondary_writes_failed: u64,
    /// Secondary write attempts after the first one of a write.
    pub secondary_retries: u64,
    /// Secondary writes given up on and kept as dead letters.
    pub dead_letters: u64,
    /// Secondary writes handed to lanes and not finished yet.
    pub secondary_pending: u64,
    /// Shadow reads compared (`reads_matched + reads_mismatched`).
    pub reads_compared: u64,
    /// Shadow reads where both stores agreed.
    pub reads_matched: u64,
    /// Shadow reads where the stores disagreed or the shadow read failed.
    pub reads_mismatched: u64,
    /// Shadow reads not compared because a secondary write of their key was
    /// in flight or pending: the stores could not agree yet, so comparing
    /// would count a false mismatch.
    pub reads_skipped_pending: u64,
    /// Dead letters evicted from a full dead-letter list (each logged at
    /// error level).
    pub dead_letters_evicted: u64,
    /// Writes that found their lane's queue full (and waited, failed or
    /// were dead-lettered, per the queue-full policy).
    pub queue_full: u64,
    /// Calls refused before any store was written because their lane's queue
    /// stayed full.
    pub writes_refused: u64,
    /// Background shadow comparisons dropped because their queue was full
    /// (the caller never waits for a comparison).
    pub shadow_dropped: u64,
    /// Secondary calls abandoned at their attempt timeout that returned
    /// later (they may have written after newer writes of their key: their
    /// dead letters name the keys to reconcile).
    pub late_completions: u64,
    /// Calls that ended (their future cancelled, or a panic) during their
    /// primary write while a secondary write was due: the primary may have
    /// committed without it. Each is logged at warn level with its method.
    pub primary_outcome_unknown: u64,
}

impl StatsSnapshot {
    /// What was counted since `earlier` (a snapshot of the same adapter):
    /// each counter's difference, so a cutover gate can judge a window of
    /// time (the last minutes, the time since a repair) rather than the
    /// whole run. `secondary_pending`, a level rather than a count, is
    /// kept as it is now.
    #[must_use]
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        StatsSnapshot {
            old_writes_ok: d(self.old_writes_ok, earlier.old_writes_ok),
            old_writes_failed: d(self.old_writes_failed, earlier.old_writes_failed),
            new_writes_ok: d(self.new_writes_ok, earlier.new_writes_ok),
            new_writes_failed: d(self.new_writes_failed, earlier.new_writes_failed),
            primary_writes_ok: d(self.primary_writes_ok, earlier.primary_writes_ok),
            primary_writes_failed: d(self.primary_writes_failed, earlier.primary_writes_failed),
            secondary_writes_ok: d(self.secondary_writes_ok, earlier.secondary_writes_ok),
            secondary_writes_failed: d(
                self.secondary_writes_failed,
                earlier.secondary_writes_failed,
            ),
            secondary_retries: d(self.secondary_retries, earlier.secondary_retries),
            dead_letters: d(self.dead_letters, earlier.dead_letters),
            secondary_pending: self.secondary_pending,
            reads_compared: d(self.reads_compared, earlier.reads_compared),
            reads_matched: d(self.reads_matched, earlier.reads_matched),
            reads_mismatched: d(self.reads_mismatched, earlier.reads_mismatched),
            reads_skipped_pending: d(self.reads_skipped_pending, earlier.reads_skipped_pending),
            dead_letters_evicted: d(self.dead_letters_evicted, earlier.dead_letters_evicted),
            queue_full: d(self.queue_full, earlier.queue_full),
            writes_refused: d(self.writes_refused, earlier.writes_refused),
            shadow_dropped: d(self.shadow_dropped, earlier.shadow_dropped),
            late_completions: d(self.late_completions, earlier.late_completions),
            primary_outcome_unknown: d(
                self.primary_outcome_unknown,
                earlier.primary_outcome_unknown,
            ),
        }
    }

    /// `reads_matched / reads_compared`, or `None` before any comparison.
    /// The spec's cutover criterion is a match rate above 99.9 %.
    pub fn match_rate(&self) -> Option<f64> {
        ratio(self.reads_matched, self.reads_compared)
    }

    /// Successful secondary attempts over all secondary attempts, or `None`
    /// before any. The spec's cutover criterion is above 99.95 %.
    pub fn secondary_success_rate(&self) -> Option<f64> {
        ratio(
            self.secondary_writes_ok,
            self.secondary_writes_ok + self.secondary_writes_failed,
        )
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    // Counts stay far below 2^53, where the conversion is exact.
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_cell_is_distinct() {
        let mut seen = std::collections::HashSet::new();
        for store in [Store::Old, Store::New] {
            for role in [Role::Primary, Role::Secondary] {
                for ok in [true, false] {
                    let cell = write_cell(store, role, ok);
                    assert!(cell < 8);
                    assert!(seen.insert(cell));
                }
            }
        }
    }

    #[test]
    fn negative_pending_reads_as_zero() {
        let stats = Stats::new();
        stats.add_pending(-1);
        assert_eq!(stats.snapshot().secondary_pending, 0);
        stats.add_pending(3);
        assert_eq!(stats.snapshot().secondary_pending, 2);
    }

    #[test]
    fn clones_share_counters() {
        let stats = Stats::new();
        let clone = stats.clone();
        clone.record_dead_letter();
        assert_eq!(stats.snapshot().dead_letters, 1);
    }

    #[test]
    fn a_window_counts_only_what_happened_in_it() {
        let stats = Stats::new();
        stats.record_write(Store::New, Role::Secondary, false);
        stats.record_comparison(false);
        let start = stats.snapshot();
        stats.record_write(Store::New, Role::Secondary, true);
        stats.record_write(Store::New, Role::Secondary, true);
        stats.record_comparison(true);
        let window = stats.snapshot().since(&start);
        assert_eq!(window.secondary_writes_ok, 2);
        assert_eq!(window.secondary_writes_failed, 0);
        assert_eq!(window.secondary_success_rate(), Some(1.0));
        assert_eq!(window.match_rate(), Some(1.0));
        // A snapshot from later (or another adapter) never underflows.
        assert_eq!(start.since(&stats.snapshot()).secondary_writes_ok, 0);
    }
}

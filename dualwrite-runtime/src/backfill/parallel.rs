//! Parallel backfill: the key space cut into ranges, each copied by its own
//! [`Backfill`] with its own checkpoint entry, by a pool of worker threads.
//!
//! ```text
//! source.boundaries(every) -> KeyRange::split -> [(..b1], (b1..b2], .., (bn..]]
//!   worker 1: Backfill(Ranged(source, (..b1]),   sink, checkpoint "job (..b1]")
//!   worker 2: Backfill(Ranged(source, (b1..b2]), sink, checkpoint "job (b1..b2]")   ...
//! ```
//!
//! Each range is an independent job: it scans only its keys
//! ([`BackfillSource::scan_until`]), saves its position under its own
//! checkpoint entry (name it after [`KeyRange::label`]), and holds the same
//! live adapter's [`KeyGuard`] as a single job would. A stopped run resumes
//! each range where it stopped, provided the same ranges are given again:
//! boundaries sampled again from a store that changed meanwhile name other
//! entries, and those ranges start over (harmless, since the sink writes
//! only rows that are absent, but slower). Keep the boundaries of the first
//! run (they are plain keys) to resume exactly.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{
    Backfill, BackfillControl, BackfillError, BackfillKey, BackfillReport, BackfillSink,
    BackfillSource, Batch, Checkpoint,
};
use crate::core::KeyGuard;

/// A range of keys: above `after` (from the start when `None`) and at most
/// `upto` (to the end when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRange<K> {
    /// The range starts after this key.
    pub after: Option<K>,
    /// The range ends with this key.
    pub upto: Option<K>,
}

impl<K: BackfillKey> KeyRange<K> {
    /// Every key.
    pub fn all() -> Self {
        KeyRange {
            after: None,
            upto: None,
        }
    }

    /// The ranges `boundaries` cut the key space into: `(.., b1]`,
    /// `(b1, b2]`, .., `(bn, ..)`; `n + 1` ranges that cover every key,
    /// whatever the boundaries' order or repeats.
    pub fn split(mut boundaries: Vec<K>) -> Vec<KeyRange<K>> {
        boundaries.sort();
        boundaries.dedup();
        let mut ranges = Vec::with_capacity(boundaries.len() + 1);
        let mut after = None;
        for boundary in boundaries {
            ranges.push(KeyRange {
                after: after.replace(boundary.clone()),
                upto: Some(boundary),
            });
        }
        ranges.push(KeyRange { after, upto: None });
        ranges
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &K) -> bool {
        self.after.as_ref().is_none_or(|after| key > after)
            && self.upto.as_ref().is_none_or(|upto| key <= upto)
    }

    /// The range as text, `(10..20]`, `(..10]`, `(20..]`: a name for its
    /// checkpoint entry.
    pub fn label(&self) -> String {
        let show = |key: &Option<K>| key.as_ref().map(ToString::to_string).unwrap_or_default();
        format!("({}..{}]", show(&self.after), show(&self.upto))
    }
}

impl<K: BackfillKey> fmt::Display for KeyRange<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// A source restricted to one key range.
pub struct Ranged<S: BackfillSource> {
    source: S,
    range: KeyRange<S::Key>,
}

impl<S: BackfillSource> Ranged<S> {
    /// The rows of `source` whose keys are in `range`.
    pub fn new(source: S, range: KeyRange<S::Key>) -> Self {
        Ranged { source, range }
    }

    /// The later of `after` and the range's start.
    fn start<'a>(&'a self, after: Option<&'a S::Key>) -> Option<&'a S::Key> {
        match (after, self.range.after.as_ref()) {
            (Some(after), Some(start)) => Some(after.max(start)),
            (after, start) => after.or(start),
        }
    }

    /// The earlier of `upto` and the range's end.
    fn end<'a>(&'a self, upto: Option<&'a S::Key>) -> Option<&'a S::Key> {
        match (upto, self.range.upto.as_ref()) {
            (Some(upto), Some(end)) => Some(upto.min(end)),
            (upto, end) => upto.or(end),
        }
    }
}

impl<S: BackfillSource> BackfillSource for Ranged<S> {
    type Key = S::Key;
    type Row = S::Row;

    fn scan(
        &mut self,
        after: Option<&S::Key>,
        limit: usize,
    ) -> Result<Batch<S::Key, S::Row>, BackfillError> {
        self.scan_until(after, None, limit)
    }

    fn scan_until(
        &mut self,
        after: Option<&S::Key>,
        upto: Option<&S::Key>,
        limit: usize,
    ) -> Result<Batch<S::Key, S::Row>, BackfillError> {
        let start = self.start(after).cloned();
        let end = self.end(upto).cloned();
        if let (Some(start), Some(end)) = (&start, &end)
            && start >= end
        {
            return Ok(Vec::new());
        }
        self.source.scan_until(start.as_ref(), end.as_ref(), limit)
    }

    fn reread(
        &mut self,
        after: Option<&S::Key>,
        keys: &[S::Key],
    ) -> Result<Batch<S::Key, S::Row>, BackfillError> {
        let start = self.start(after).cloned();
        self.source.reread(start.as_ref(), keys)
    }
}

/// What a parallel backfill did, range by range.
#[derive(Debug, Clone, PartialEq)]
pub struct ParallelReport {
    /// Each range's label and the report of its job, in range order (only
    /// the ranges that ran: a stopped run leaves some out).
    pub ranges: Vec<(String, BackfillReport)>,
    /// Rows handled in this run, over all ranges.
    pub rows: u64,
    /// Rows written in this run, over all ranges.
    pub written: u64,
    /// Whether every range reached its end.
    pub finished: bool,
    /// How long the run took.
    pub elapsed: Duration,
}

/// Copies key ranges in parallel; see the module docs.
pub struct ParallelBackfill<K: BackfillKey> {
    ranges: Vec<KeyRange<K>>,
    workers: usize,
    batch: usize,
    guard: Option<KeyGuard>,
    control: BackfillControl,
}

impl<K: BackfillKey> ParallelBackfill<K> {
    /// Copies these ranges (from [`KeyRange::split`], or the user's own,
    /// which should not overlap), with as many workers as the machine has
    /// cores (at most one per range) and batches of 1 000.
    pub fn new(ranges: Vec<KeyRange<K>>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        ParallelBackfill {
            workers: cores.min(ranges.len()).max(1),
            ranges,
            batch: 1_000,
            guard: None,
            control: BackfillControl::default(),
        }
    }

    /// Runs `workers` jobs at a time (at least 1); the ranges wait in a
    /// queue for a free worker.
    #[must_use]
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Rows per batch in each job.
    #[must_use]
    pub fn with_batch(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// Holds each batch's keys in the live adapter (see
    /// [`Backfill::guarded_by`]); every worker shares the guard.
    #[must_use]
    pub fn guarded_by(mut self, guard: KeyGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Uses `control` for every worker: a stop stops them all, a pause
    /// pauses them all, and the rate limit applies to each worker.
    #[must_use]
    pub fn with_control(mut self, control: BackfillControl) -> Self {
        self.control = control;
        self
    }

    /// The control every worker obeys.
    pub fn control(&self) -> BackfillControl {
        self.control.clone()
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[KeyRange<K>] {
        &self.ranges
    }

    /// Runs every range: `open` gives a range its source (restricted to the
    /// range here), sink and checkpoint entry (its own connections; calls
    /// of `open` never overlap, so it may create tables), and `map` turns
    /// an old row into a new one. The first error stops the other workers
    /// after their current batch and is returned; what was copied until
    /// then is checkpointed.
    pub fn run<S, T, C, M, F>(&self, open: F, map: M) -> Result<ParallelReport, BackfillError>
    where
        K: Sync,
        S: BackfillSource<Key = K> + Send,
        T: BackfillSink<Key = K> + Send,
        C: Checkpoint + Send,
        M: Fn(S::Row) -> T::Row + Sync,
        F: FnMut(&KeyRange<K>) -> Result<(S, T, C), BackfillError> + Send,
    {
        let started = Instant::now();
        let queue: Mutex<VecDeque<(usize, KeyRange<K>)>> =
            Mutex::new(self.ranges.iter().cloned().enumerate().collect());
        let open = Mutex::new(open);
        let results: Mutex<Vec<(usize, String, BackfillReport)>> = Mutex::new(Vec::new());
        let failure: Mutex<Option<BackfillError>> = Mutex::new(None);
        let worker = || {
            loop {
                if self.control.stopped() {
                    return;
                }
                let next = queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                let Some((index, range)) = next else { return };
                let label = range.label();
                let outcome = self.run_range(&open, &map, range);
                match outcome {
                    Ok(report) => results
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((index, label, report)),
                    Err(error) => {
                        failure
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(error);
                        self.control.stop();
                        return;
                    }
                }
            }
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.workers.min(self.ranges.len()).max(1))
                .map(|_| scope.spawn(worker))
                .collect();
            for handle in handles {
                if let Err(panic) = handle.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        if let Some(error) = failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
            return Err(error);
        }
        let mut results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
        results.sort_by_key(|(index, _, _)| *index);
        let finished = results.len() == self.ranges.len()
            && results.iter().all(|(_, _, report)| report.finished);
        Ok(ParallelReport {
            rows: results.iter().map(|(_, _, report)| report.rows).sum(),
            written: results.iter().map(|(_, _, report)| report.written).sum(),
            finished,
            ranges: results
                .into_iter()
                .map(|(_, label, report)| (label, report))
                .collect(),
            elapsed: started.elapsed(),
        })
    }

    fn run_range<S, T, C, M, F>(
        &self,
        open: &Mutex<F>,
        map: &M,
        range: KeyRange<K>,
    ) -> Result<BackfillReport, BackfillError>
    where
        S: BackfillSource<Key = K>,
        T: BackfillSink<Key = K>,
        C: Checkpoint,
        M: Fn(S::Row) -> T::Row,
        F: FnMut(&KeyRange<K>) -> Result<(S, T, C), BackfillError>,
    {
        let (source, sink, checkpoint) =
            (open.lock().unwrap_or_else(PoisonError::into_inner))(&range)?;
        let job = Backfill::mapped(Ranged::new(source, range), sink, map)
            .with_checkpoint(checkpoint)
            .with_batch(self.batch)
            .with_control(self.control.clone());
        let mut job = match &self.guard {
            Some(guard) => job.guarded_by(guard.clone()),
            None => job,
        };
        job.run()
    }
}

impl<K: BackfillKey> fmt::Debug for ParallelBackfill<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParallelBackfill")
            .field(
                "ranges",
                &self.ranges.iter().map(KeyRange::label).collect::<Vec<_>>(),
            )
            .field("workers", &self.workers)
            .field("batch", &self.batch)
            .field("guarded", &self.guard.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::backfill::MemoryCheckpoint;

    #[derive(Default, Clone)]
    struct Table(Arc<Mutex<BTreeMap<u64, String>>>);

    impl BackfillSource for Table {
        type Key = u64;
        type Row = String;

        fn scan(
            &mut self,
            after: Option<&u64>,
            limit: usize,
        ) -> Result<Batch<u64, String>, BackfillError> {
            let rows = self.0.lock().unwrap();
            let range = match after {
                Some(after) => rows.range(after + 1..),
                None => rows.range(0..),
            };
            Ok(range.take(limit).map(|(k, v)| (*k, v.clone())).collect())
        }
    }

    impl BackfillSink for Table {
        type Key = u64;
        type Row = String;

        fn write_if_absent(&mut self, rows: &[(u64, String)]) -> Result<u64, BackfillError> {
            let mut table = self.0.lock().unwrap();
            let mut written = 0;
            for (key, row) in rows {
                if !table.contains_key(key) {
                    table.insert(*key, row.clone());
                    written += 1;
                }
            }
            Ok(written)
        }
    }

    fn table(keys: impl IntoIterator<Item = u64>) -> Table {
        let table = Table::default();
        for key in keys {
            table.0.lock().unwrap().insert(key, format!("row {key}"));
        }
        table
    }

    #[test]
    fn split_covers_every_key_once() {
        let ranges = KeyRange::split(vec![20_u64, 10, 20]);
        let labels: Vec<String> = ranges.iter().map(KeyRange::label).collect();
        assert_eq!(labels, ["(..10]", "(10..20]", "(20..]"]);
        for key in 0..40 {
            assert_eq!(ranges.iter().filter(|r| r.contains(&key)).count(), 1);
        }
        assert_eq!(KeyRange::<u64>::split(vec![]), vec![KeyRange::all()]);
    }

    #[test]
    fn a_ranged_source_reads_only_its_range() {
        let range = KeyRange {
            after: Some(10),
            upto: Some(15),
        };
        let mut source = Ranged::new(table(0..100), range);
        let keys: Vec<u64> = source
            .scan(None, 100)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, [11, 12, 13, 14, 15]);
        assert!(source.scan(Some(&15), 100).unwrap().is_empty());
        assert_eq!(source.scan(Some(&13), 1).unwrap()[0].0, 14);
    }

    #[test]
    fn boundaries_cut_the_source_every_n_keys() {
        let mut source = table((0..1_000).map(|k| k * 3));
        let boundaries = source.boundaries(250).unwrap();
        assert_eq!(boundaries, [747, 1_497, 2_247, 2_997]);
    }

    #[test]
    fn every_range_is_copied_with_its_own_checkpoint() {
        let old = table(0..5_000);
        let new = table([42]);
        new.0.lock().unwrap().insert(42, "live".to_owned());
        let ranges = KeyRange::split(old.clone().boundaries(1_000).unwrap());
        assert_eq!(ranges.len(), 6);
        let entries: Arc<Mutex<BTreeMap<String, (String, u64)>>> = Arc::default();
        let report = ParallelBackfill::new(ranges)
            .with_workers(3)
            .with_batch(300)
            .run(
                |range| {
                    let checkpoint = Entry {
                        name: range.label(),
                        all: Arc::clone(&entries),
                    };
                    Ok((old.clone(), new.clone(), checkpoint))
                },
                |row| row,
            )
            .expect("ran");
        assert!(report.finished, "{report:?}");
        assert_eq!((report.rows, report.written), (5_000, 4_999));
        assert_eq!(report.ranges.len(), 6);
        assert_eq!(report.ranges[1].0, "(999..1999]");
        assert_eq!(new.0.lock().unwrap().len(), 5_000);
        assert_eq!(new.0.lock().unwrap()[&42], "live");
        let entries = entries.lock().unwrap();
        assert_eq!(entries.len(), 5, "the empty last range saved nothing");
        assert_eq!(entries["(999..1999]"], ("1999".to_owned(), 1_000));
    }

    /// One checkpoint entry in a map shared by the test.
    struct Entry {
        name: String,
        all: Arc<Mutex<BTreeMap<String, (String, u64)>>>,
    }

    impl Checkpoint for Entry {
        fn load(&mut self) -> Result<Option<(String, u64)>, BackfillError> {
            Ok(self.all.lock().unwrap().get(&self.name).cloned())
        }
        fn save(&mut self, key: &str, rows: u64) -> Result<(), BackfillError> {
            self.all
                .lock()
                .unwrap()
                .insert(self.name.clone(), (key.to_owned(), rows));
            Ok(())
        }
    }

    #[test]
    fn the_first_error_stops_the_run() {
        struct Failing;
        impl BackfillSink for Failing {
            type Key = u64;
            type Row = String;
            fn write_if_absent(&mut self, _: &[(u64, String)]) -> Result<u64, BackfillError> {
                Err(BackfillError::Sink("disk full".to_owned()))
            }
        }
        let old = table(0..1_000);
        let error = ParallelBackfill::new(KeyRange::split(vec![500]))
            .run(
                |_| Ok((old.clone(), Failing, MemoryCheckpoint::default())),
                |row| row,
            )
            .expect_err("failed");
        assert!(error.to_string().contains("disk full"), "{error}");
    }
}

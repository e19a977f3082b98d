//! Reconciliation: finds where the two stores differ, and repairs it.
//!
//! ```text
//! old.scan ─┐                                    ┌─ missing in new
//!           ├─ merge-join by key ─ compare rows ─┼─ extra in new       ─ re-check ─ report (gap) ─ repair (opt-in)
//! new.scan ─┘   (old rows mapped to new's form)  └─ different (fields)
//! ```
//!
//! Both stores are read in key order in batches (the [`BackfillSource`]
//! trait of the backfill), so the scan is one pass over each, in memory
//! proportional to a batch. Old rows go through the same mapping as the
//! backfill, so rows are compared in the new store's form; the comparator
//! names the fields that differ (values are never logged). Two stores of
//! the same form ([`Reconcile::new`]) whose sources encode rows alike
//! ([`BackfillSource::row_encoding`], as [`crate::backfill::sqlite::SqliteSource`]
//! does) are compared on the encoded bytes first: equal rows are never
//! decoded into rows, and the rest are read again as rows and compared
//! with `==`, as any difference is.
//!
//! Live writes keep flowing while a scan runs, so a row can change between
//! the read of one store and the read of the other: every difference found
//! is read again from both stores (under the adapter's [`KeyGuard`] when one
//! is given, so no write of the key is in flight, after the adapter's lanes
//! applied the key's queued secondary writes: [`KeyGuard::hold_drained`])
//! before it is counted; one that went away counts as `settled`, not as a
//! difference.
//!
//! Repair is opt-in (dry run by default): [`Reconcile::repair_into`] copies
//! the authoritative side's row to the other store through a
//! [`RepairSink`] (upsert or delete), in batches. The count of differences
//! left unresolved is the reconciliation gap the cutover gate checks.
//! [`Reconcile::recheck`] does the same for a list of keys, such as the keys
//! of the adapter's dead letters.
//!
//! With range digests ([`Reconcile::run_with_digests`], module [`digest`])
//! the stores first hash key ranges in the database, and only the ranges
//! whose digests differ are read row by row.

pub mod digest;

use std::fmt;
use std::time::Duration;

pub use digest::{DigestKind, DigestSource, RangeDigest};

use crate::backfill::{BackfillError, BackfillSource, Batch, Checkpoint, EncodedBatch, KeyRange};
use crate::core::KeyGuard;
use crate::key::RoutingKey;
use crate::phase::Store;

/// How long a guarded re-check waits for queued secondary writes by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What reconciliation found for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
pub enum Difference {
    /// The old store has the row, the new one does not.
    MissingInNew {
        /// The key, as text.
        key: String,
    },
    /// The new store has a row the old one does not.
    ExtraInNew {
        /// The key, as text.
        key: String,
    },
    /// Both have the row, with different values in these fields (empty
    /// when the comparator cannot name them).
    Different {
        /// The key, as text.
        key: String,
        /// The fields that differ.
        fields: Vec<String>,
    },
}

impl Difference {
    /// The key of the row.
    pub fn key(&self) -> &str {
        match self {
            Difference::MissingInNew { key }
            | Difference::ExtraInNew { key }
            | Difference::Different { key, .. } => key,
        }
    }
}

/// What one reconciliation run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ReconcileReport {
    /// Rows read from the old store (not counting those of ranges whose
    /// digests were equal, which stay in the database).
    pub old_rows: u64,
    /// Rows read from the new store (same).
    pub new_rows: u64,
    /// Rows equal in both stores.
    pub equal: u64,
    /// Differences seen in the scan that were gone when read again (a live
    /// write was in flight).
    pub settled: u64,
    /// Differences found: missing in new, extra in new, different.
    pub missing_in_new: u64,
    /// See [`ReconcileReport::missing_in_new`].
    pub extra_in_new: u64,
    /// See [`ReconcileReport::missing_in_new`].
    pub different: u64,
    /// Differences repaired (0 in a dry run).
    pub repaired: u64,
    /// Digest comparisons made (0 without digests): the whole key space
    /// first, then, when that differs, each range.
    pub ranges: u64,
    /// Ranges whose digests differed, and were compared row by row.
    pub ranges_differing: u64,
    /// Rows of the ranges whose digests were equal: counted as equal
    /// without being read.
    pub rows_in_equal_ranges: u64,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// The key this run resumed after, from its checkpoint
    /// ([`Reconcile::with_checkpoint`]); the counts are this run's.
    pub resumed_after: Option<String>,
    /// The differences, up to [`Reconcile::with_max_listed`] of them.
    pub differences: Vec<Difference>,
}

impl ReconcileReport {
    /// Differences found.
    pub fn found(&self) -> u64 {
        self.missing_in_new + self.extra_in_new + self.different
    }

    /// Differences left unresolved: the gap the cutover gate checks.
    pub fn gap(&self) -> u64 {
        self.found() - self.repaired
    }

    /// The report as JSON (feature `serde`).
    #[cfg(feature = "serde")]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
    }
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reconciliation{}: {} old row(s), {} new row(s)",
            if self.dry_run { " (dry run)" } else { "" },
            self.old_rows,
            self.new_rows
        )?;
        writeln!(f, "  {:<22} {:>10}", "equal", self.equal)?;
        writeln!(f, "  {:<22} {:>10}", "missing in new", self.missing_in_new)?;
        writeln!(f, "  {:<22} {:>10}", "extra in new", self.extra_in_new)?;
        writeln!(f, "  {:<22} {:>10}", "different", self.different)?;
        writeln!(f, "  {:<22} {:>10}", "settled while compared", self.settled)?;
        writeln!(f, "  {:<22} {:>10}", "repaired", self.repaired)?;
        if self.ranges > 0 {
            writeln!(f, "  {:<22} {:>10}", "ranges digested", self.ranges)?;
            writeln!(
                f,
                "  {:<22} {:>10}",
                "ranges row-compared", self.ranges_differing
            )?;
            writeln!(
                f,
                "  {:<22} {:>10}",
                "rows vouched by digest", self.rows_in_equal_ranges
            )?;
        }
        writeln!(f, "  {:<22} {:>10}", "gap (unresolved)", self.gap())?;
        for difference in &self.differences {
            match difference {
                Difference::MissingInNew { key } => writeln!(f, "  - {key}: missing in new")?,
                Difference::ExtraInNew { key } => writeln!(f, "  - {key}: extra in new")?,
                Difference::Different { key, fields } if fields.is_empty() => {
                    writeln!(f, "  - {key}: different")?
                }
                Difference::Different { key, fields } => {
                    writeln!(f, "  - {key}: different in {}", fields.join(", "))?
                }
            }
        }
        Ok(())
    }
}

/// Where a repair writes: the store that is not authoritative.
pub trait RepairSink {
    /// The row key.
    type Key;
    /// One row, in this store's form.
    type Row;

    /// Writes these rows, replacing what is there.
    fn upsert(&mut self, rows: &[(Self::Key, Self::Row)]) -> Result<(), BackfillError>;
    /// Deletes the rows of these keys.
    fn delete(&mut self, keys: &[Self::Key]) -> Result<(), BackfillError>;
}

/// A repair sink made of two closures, called a row at a time: repairs
/// through the repository trait's own write commands (the generated
/// `{Trait}Write` enum's `apply(&store)`), so a repair takes the path a live
/// write takes, versions and all.
///
/// ```ignore
/// let mut sink = RepairWith::new(
///     |id: &i64, row: &Row| UserRepoWrite::SaveUser { user: user_from(*id, row) }.apply(&new_store),
///     |id: &i64| UserRepoWrite::DeleteUser { id: *id }.apply(&new_store),
/// );
/// job.repair_into(&mut sink)?;
/// ```
pub struct RepairWith<K, R, U, D> {
    upsert: U,
    delete: D,
    types: std::marker::PhantomData<fn(&K, &R)>,
}

impl<K, R, U, D> RepairWith<K, R, U, D>
where
    U: FnMut(&K, &R) -> Result<(), String>,
    D: FnMut(&K) -> Result<(), String>,
{
    /// `upsert` writes the authoritative row of a key, `delete` removes a
    /// key's row; each returns the store's error as text.
    pub fn new(upsert: U, delete: D) -> Self {
        RepairWith {
            upsert,
            delete,
            types: std::marker::PhantomData,
        }
    }
}

impl<K, R, U, D> RepairSink for RepairWith<K, R, U, D>
where
    K: fmt::Display,
    U: FnMut(&K, &R) -> Result<(), String>,
    D: FnMut(&K) -> Result<(), String>,
{
    type Key = K;
    type Row = R;

    fn upsert(&mut self, rows: &[(K, R)]) -> Result<(), BackfillError> {
        for (key, row) in rows {
            (self.upsert)(key, row)
                .map_err(|error| BackfillError::Sink(format!("repair of `{key}`: {error}")))?;
        }
        Ok(())
    }

    fn delete(&mut self, keys: &[K]) -> Result<(), BackfillError> {
        for key in keys {
            (self.delete)(key)
                .map_err(|error| BackfillError::Sink(format!("repair of `{key}`: {error}")))?;
        }
        Ok(())
    }
}

/// A reconciliation job over two stores; see the module docs.
pub struct Reconcile<O, N, M, C>
where
    O: BackfillSource,
    N: BackfillSource<Key = O::Key>,
{
    old: O,
    new: N,
    map: M,
    compare: C,
    batch: usize,
    guard: Option<KeyGuard>,
    authoritative: Store,
    max_listed: usize,
    drain_timeout: Duration,
    checkpoint: Option<Box<dyn Checkpoint + Send>>,
    /// Reads a batch of each store at once, on two threads
    /// ([`Reconcile::with_concurrent_reads`]).
    read_both: Option<ReadBoth<O, N>>,
    /// The same for encoded batches.
    read_both_encoded: Option<ReadBothEncoded<O, N>>,
    /// Rows are compared with `==` as read ([`Reconcile::new`]): the
    /// stores' encoded rows can be compared instead, when both sources
    /// have the same encoding ([`BackfillSource::row_encoding`]).
    same_form: bool,
}

/// Reads the next batch of both stores, encoded, into the two batches:
/// `(old, new, old_after, new_after, upto, limit, old_batch, new_batch)`;
/// returns how many rows each got.
type ReadBothEncoded<O, N> = fn(
    &mut O,
    &mut N,
    Option<&<O as BackfillSource>::Key>,
    Option<&<O as BackfillSource>::Key>,
    Option<&<O as BackfillSource>::Key>,
    usize,
    &mut EncodedBatch<<O as BackfillSource>::Key>,
    &mut EncodedBatch<<O as BackfillSource>::Key>,
) -> Result<(usize, usize), BackfillError>;

/// [`ReadBothEncoded`] on two threads, as [`read_both_concurrently`].
#[allow(clippy::too_many_arguments)]
fn read_both_encoded_concurrently<O, N>(
    old: &mut O,
    new: &mut N,
    old_after: Option<&O::Key>,
    new_after: Option<&O::Key>,
    upto: Option<&O::Key>,
    limit: usize,
    old_batch: &mut EncodedBatch<O::Key>,
    new_batch: &mut EncodedBatch<O::Key>,
) -> Result<(usize, usize), BackfillError>
where
    O: BackfillSource + Send,
    N: BackfillSource<Key = O::Key> + Send,
    O::Key: Sync + Send,
{
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| new.scan_encoded_until(new_after, upto, limit, new_batch));
        let old_read = old.scan_encoded_until(old_after, upto, limit, old_batch);
        let new_read = reader.join().unwrap_or_else(|_| {
            Err(BackfillError::Source(
                "the new store's reader panicked".to_owned(),
            ))
        });
        Ok((old_read?, new_read?))
    })
}

/// Reads the next batch of both stores: `(old, new, old_after, new_after,
/// upto, limit)`.
type ReadBoth<O, N> = fn(
    &mut O,
    &mut N,
    Option<&<O as BackfillSource>::Key>,
    Option<&<O as BackfillSource>::Key>,
    Option<&<O as BackfillSource>::Key>,
    usize,
) -> Result<
    (
        Batch<<O as BackfillSource>::Key, <O as BackfillSource>::Row>,
        Batch<<O as BackfillSource>::Key, <N as BackfillSource>::Row>,
    ),
    BackfillError,
>;

/// [`ReadBoth`] on two threads: New's batch on a scoped thread while this
/// one reads Old's.
fn read_both_concurrently<O, N>(
    old: &mut O,
    new: &mut N,
    old_after: Option<&O::Key>,
    new_after: Option<&O::Key>,
    upto: Option<&O::Key>,
    limit: usize,
) -> ReadBothResult<O, N>
where
    O: BackfillSource + Send,
    N: BackfillSource<Key = O::Key> + Send,
    O::Key: Sync,
    N::Row: Send,
{
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| new.scan_until(new_after, upto, limit));
        let old_batch = old.scan_until(old_after, upto, limit);
        let new_batch = reader.join().unwrap_or_else(|_| {
            Err(BackfillError::Source(
                "the new store's reader panicked".to_owned(),
            ))
        });
        Ok((old_batch?, new_batch?))
    })
}

type ReadBothResult<O, N> = Result<
    (
        Batch<<O as BackfillSource>::Key, <O as BackfillSource>::Row>,
        Batch<<O as BackfillSource>::Key, <N as BackfillSource>::Row>,
    ),
    BackfillError,
>;

impl<O, N, M, C> Reconcile<O, N, M, C>
where
    O: BackfillSource + Send,
    N: BackfillSource<Key = O::Key> + Send,
    O::Key: Sync,
    N::Row: Send,
{
    /// Reads each batch of both stores at once, New's on a second thread,
    /// so a scan of two databases takes about as long as the slower one
    /// rather than their sum (on a machine with a core to spare).
    #[must_use]
    pub fn with_concurrent_reads(mut self) -> Self {
        self.read_both = Some(read_both_concurrently::<O, N>);
        self.read_both_encoded = Some(read_both_encoded_concurrently::<O, N>);
        self
    }
}

impl<O, N> Reconcile<O, N, fn(O::Row) -> O::Row, fn(&O::Row, &O::Row) -> Option<Vec<String>>>
where
    O: BackfillSource,
    N: BackfillSource<Key = O::Key, Row = O::Row>,
    O::Row: PartialEq,
{
    /// Compares two stores whose rows have the same form, with `==`.
    pub fn new(old: O, new: N) -> Self {
        Reconcile {
            same_form: true,
            ..Reconcile::mapped(old, new, |row| row, |a, b| (a != b).then(Vec::new))
        }
    }
}

impl<O, N, M, C> Reconcile<O, N, M, C>
where
    O: BackfillSource,
    N: BackfillSource<Key = O::Key>,
    M: FnMut(O::Row) -> N::Row,
    C: FnMut(&N::Row, &N::Row) -> Option<Vec<String>>,
{
    /// Compares `old` rows mapped by `map` (the backfill's mapping) with
    /// `new` rows; `compare` returns `None` for equal rows, else the fields
    /// that differ (may be empty).
    pub fn mapped(old: O, new: N, map: M, compare: C) -> Self {
        Reconcile {
            old,
            new,
            map,
            compare,
            batch: 1_000,
            guard: None,
            authoritative: Store::Old,
            max_listed: 1_000,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            checkpoint: None,
            read_both: None,
            read_both_encoded: None,
            same_form: false,
        }
    }

    /// Makes a row-by-row run ([`Reconcile::run`], [`Reconcile::repair_into`])
    /// resumable: it starts after the key the checkpoint holds, records its
    /// position every batch (once the differences up to it are settled and,
    /// in a repair, repaired), and clears the checkpoint when it reaches the
    /// end, so the next run is a full pass again. A run that failed or was
    /// killed resumes where it stopped. (Digest runs and re-checks do not
    /// use it.)
    #[must_use]
    pub fn with_checkpoint(mut self, checkpoint: impl Checkpoint + Send + 'static) -> Self {
        self.checkpoint = Some(Box::new(checkpoint));
        self
    }

    /// Rows read per batch from each store.
    #[must_use]
    pub fn with_batch(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// Re-checks (and repairs) each difference with its key held in the
    /// live adapter, so no write of it is in flight.
    #[must_use]
    pub fn guarded_by(mut self, guard: KeyGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The store whose rows are right (default Old; New after cutover).
    #[must_use]
    pub fn authoritative(mut self, store: Store) -> Self {
        self.authoritative = store;
        self
    }

    /// How long a guarded re-check waits for the secondary writes of its
    /// keys still queued in the adapter's lanes (default 10 s) before it
    /// compares anyway.
    #[must_use]
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Lists at most this many differences in the report (all are counted).
    #[must_use]
    pub fn with_max_listed(mut self, max: usize) -> Self {
        self.max_listed = max;
        self
    }

    /// Scans both stores and reports the differences; writes nothing.
    pub fn run(&mut self) -> Result<ReconcileReport, BackfillError> {
        self.scan(None::<&mut NoRepair<O::Key, N::Row>>)
    }

    /// Scans both stores and repairs each difference through `sink`, from
    /// the authoritative side: a repair of New upserts the old row (mapped)
    /// or deletes the extra one. A repair of Old needs a sink of Old's form,
    /// so with `authoritative(Store::New)` rows are written as New holds
    /// them: `sink` must accept that form.
    pub fn repair_into<S>(&mut self, sink: &mut S) -> Result<ReconcileReport, BackfillError>
    where
        S: RepairSink<Key = O::Key, Row = N::Row>,
    {
        self.scan(Some(sink))
    }

    /// Re-checks only these keys (e.g. the keys of the adapter's dead
    /// letters) and reports; writes nothing.
    pub fn recheck(&mut self, keys: &[O::Key]) -> Result<ReconcileReport, BackfillError> {
        self.recheck_keys(keys, None::<&mut NoRepair<O::Key, N::Row>>)
    }

    /// Re-checks only these keys and repairs what differs through `sink`.
    pub fn recheck_into<S>(
        &mut self,
        keys: &[O::Key],
        sink: &mut S,
    ) -> Result<ReconcileReport, BackfillError>
    where
        S: RepairSink<Key = O::Key, Row = N::Row>,
    {
        self.recheck_keys(keys, Some(sink))
    }

    fn recheck_keys<S>(
        &mut self,
        keys: &[O::Key],
        sink: Option<&mut S>,
    ) -> Result<ReconcileReport, BackfillError>
    where
        S: RepairSink<Key = O::Key, Row = N::Row>,
    {
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        let mut report = ReconcileReport {
            dry_run: sink.is_none(),
            ..ReconcileReport::default()
        };
        let mut sink = sink;
        for chunk in keys.chunks(self.batch) {
            self.settle(chunk, &mut report, sink.as_deref_mut(), true)?;
        }
        Ok(report)
    }

    fn scan<S>(&mut self, sink: Option<&mut S>) -> Result<ReconcileReport, BackfillError>
    where
        S: RepairSink<Key = O::Key, Row = N::Row>,
    {
        let mut report = ReconcileReport {
            dry_run: sink.is_none(),
            ..ReconcileReport::default()
        };
        let start = match self.checkpoint.as_mut() {
            Some(checkpoint) => checkpoint.load()?.map(|(key, _)| key),
            None => None,
        };
        let start = start
            .map(|text| {
                text.parse::<O::Key>()
                    .map_err(|_| BackfillError::BadCheckpoint {
                        found: text.clone(),
                    })
                    .map(|key| (key, text))
            })
            .transpose()?;
        report.resumed_after = start.as_ref().map(|(_, text)| text.clone());
        let start = start.as_ref().map(|(key, _)| key);
        self.merge_range(start, None, &mut report, sink, true)?;
        if let Some(checkpoint) = self.checkpoint.as_mut() {
            checkpoint.clear()?;
        }
        Ok(report)
    }

    /// Merge-joins the rows of both stores with keys above `start` and at
    /// most `upto`, settling the suspects as it goes; `resumable`: records
    /// its position in the checkpoint, if there is one.
    fn merge_range<S>(
        &mut self,
        start: Option<&O::Key>,
        upto: Option<&O::Key>,
        report: &mut ReconcileReport,
        mut sink: Option<&mut S>,
        resumable: bool,
    ) -> Result<(), BackfillError>
    where
        S: RepairSink<Key = O::Key, Row = N::Row>,
    {
        if self.same_form
            && let Some(encoding) = self.old.row_encoding()
            && self.new.row_encoding() == Some(encoding)
        {
            return self.merge_range_encoded(start, upto, report, sink, resumable);
        }
        let mut old_after: Option<O::Key> = start.cloned();
        let mut new_after: Option<O::Key> = start.cloned();
        let mut old_rows = std::collections::VecDeque::new();
        let mut new_rows = std::collections::VecDeque::new();
        let mut old_buffer: Batch<O::Key, O::Row> = Vec::new();
        let mut new_buffer: Batch<O::Key, N::Row> = Vec::new();
        let (mut old_done, mut new_done) = (false, false);
        let mut suspects: Vec<O::Key> = Vec::new();
        let mut since_save = 0_usize;
        loop {
            if let Some(read_both) = self.read_both
                && old_rows.is_empty()
                && !old_done
                && new_rows.is_empty()
                && !new_done
            {
                let (old_batch, new_batch) = read_both(
                    &mut self.old,
                    &mut self.new,
                    old_after.as_ref(),
                    new_after.as_ref(),
                    upto,
                    self.batch,
                )?;
                old_done = old_batch.len() < self.batch;
                new_done = new_batch.len() < self.batch;
                if let Some((key, _)) = old_batch.last() {
                    old_after = Some(key.clone());
                }
                if let Some((key, _)) = new_batch.last() {
                    new_after = Some(key.clone());
                }
                report.old_rows += old_batch.len() as u64;
                report.new_rows += new_batch.len() as u64;
                old_rows.extend(old_batch);
                new_rows.extend(new_batch);
            }
            // Each store's batch is read into a buffer kept from batch to
            // batch: no allocation of a batch-sized block per batch (which
            // also makes the allocator consolidate the rows just freed).
            if old_rows.is_empty() && !old_done {
                let read = self.old.scan_until_into(
                    old_after.as_ref(),
                    upto,
                    self.batch,
                    &mut old_buffer,
                )?;
                old_done = read < self.batch;
                if let Some((key, _)) = old_buffer.last() {
                    old_after = Some(key.clone());
                }
                report.old_rows += read as u64;
                old_rows.extend(old_buffer.drain(..));
            }
            if new_rows.is_empty() && !new_done {
                let read = self.new.scan_until_into(
                    new_after.as_ref(),
                    upto,
                    self.batch,
                    &mut new_buffer,
                )?;
                new_done = read < self.batch;
                if let Some((key, _)) = new_buffer.last() {
                    new_after = Some(key.clone());
                }
                report.new_rows += read as u64;
                new_rows.extend(new_buffer.drain(..));
            }
            let next = match (old_rows.front(), new_rows.front()) {
                (None, None) => break,
                (Some((key, _)), None) => Some((key.clone(), std::cmp::Ordering::Less)),
                (None, Some((key, _))) => Some((key.clone(), std::cmp::Ordering::Greater)),
                (Some((a, _)), Some((b, _))) => {
                    Some((if a <= b { a.clone() } else { b.clone() }, a.cmp(b)))
                }
            };
            let Some((key, order)) = next else { break };
            let last = (resumable && self.checkpoint.is_some()).then(|| key.clone());
            match order {
                std::cmp::Ordering::Less => {
                    old_rows.pop_front();
                    suspects.push(key);
                }
                std::cmp::Ordering::Greater => {
                    new_rows.pop_front();
                    suspects.push(key);
                }
                std::cmp::Ordering::Equal => {
                    let (_, old) = old_rows.pop_front().expect("peeked");
                    let (_, new) = new_rows.pop_front().expect("peeked");
                    let old = (self.map)(old);
                    if (self.compare)(&old, &new).is_none() {
                        report.equal += 1;
                    } else {
                        suspects.push(key);
                    }
                }
            }
            self.after_key(
                last,
                &mut since_save,
                &mut suspects,
                report,
                sink.as_deref_mut(),
            )?;
        }
        self.settle(&suspects, report, sink, false)
    }

    /// [`Reconcile::merge_range`] over the stores' encoded rows: a pair of
    /// rows whose bytes are equal counts as equal without being decoded;
    /// every other key is a suspect, read again as rows and compared with
    /// `==` in [`Reconcile::settle`], which names what differs. No row is
    /// allocated for equal rows.
    fn merge_range_encoded<S>(
        &mut self,
        start: Option<&O::Key>,
        upto: Option<&O::Key>,
        report: &mut ReconcileReport,
        mut sink: Option<&mut S>,
        resumable: bool,
    ) -> Result<(), BackfillError>
    where
        S: RepairSink<Key = O::Key, Row = N::Row>,
    {
        let mut old_after: Option<O::Key> = start.cloned();
        let mut new_after: Option<O::Key> = start.cloned();
        let mut old_rows = EncodedBatch::new();
        let mut new_rows = EncodedBatch::new();
        // The next row of each batch.
        let (mut old_next, mut new_next) = (0_usize, 0_usize);
        let (mut old_done, mut new_done) = (false, false);
        let mut suspects: Vec<O::Key> = Vec::new();
        let mut since_save = 0_usize;
        let track = resumable && self.checkpoint.is_some();
        loop {
            let old_empty = old_next == old_rows.len() && !old_done;
            let new_empty = new_next == new_rows.len() && !new_done;
            if let Some(read_both) = self.read_both_encoded
                && old_empty
                && new_empty
            {
                old_rows.clear();
                new_rows.clear();
                (old_next, new_next) = (0, 0);
                let (old_read, new_read) = read_both(
                    &mut self.old,
                    &mut self.new,
                    old_after.as_ref(),
                    new_after.as_ref(),
                    upto,
                    self.batch,
                    &mut old_rows,
                    &mut new_rows,
                )?;
                old_done = old_read < self.batch;
                new_done = new_read < self.batch;
                if let Some(key) = old_rows.last_key() {
                    old_after = Some(key.clone());
                }
                if let Some(key) = new_rows.last_key() {
                    new_after = Some(key.clone());
                }
                report.old_rows += old_read as u64;
                report.new_rows += new_read as u64;
            }
            if old_next == old_rows.len() && !old_done {
                old_rows.clear();
                old_next = 0;
                let read = self.old.scan_encoded_until(
                    old_after.as_ref(),
                    upto,
                    self.batch,
                    &mut old_rows,
                )?;
                old_done = read < self.batch;
                if let Some(key) = old_rows.last_key() {
                    old_after = Some(key.clone());
                }
                report.old_rows += read as u64;
            }
            if new_next == new_rows.len() && !new_done {
                new_rows.clear();
                new_next = 0;
                let read = self.new.scan_encoded_until(
                    new_after.as_ref(),
                    upto,
                    self.batch,
                    &mut new_rows,
                )?;
                new_done = read < self.batch;
                if let Some(key) = new_rows.last_key() {
                    new_after = Some(key.clone());
                }
                report.new_rows += read as u64;
            }
            let (old_row, new_row) = (old_rows.row(old_next), new_rows.row(new_next));
            // Which rows this step takes, and whether its key is a suspect.
            let (take_old, take_new, suspect) = match (old_row, new_row) {
                (None, None) => break,
                (Some(_), None) => (true, false, true),
                (None, Some(_)) => (false, true, true),
                (Some((a, old)), Some((b, new))) => match a.cmp(b) {
                    std::cmp::Ordering::Less => (true, false, true),
                    std::cmp::Ordering::Greater => (false, true, true),
                    std::cmp::Ordering::Equal => (true, true, old != new),
                },
            };
            let key = if take_old { old_row } else { new_row }.map(|(key, _)| key);
            let last = if track { key.cloned() } else { None };
            if suspect {
                suspects.extend(key.cloned());
            } else {
                report.equal += 1;
            }
            old_next += usize::from(take_old);
            new_next += usize::from(take_new);
            self.after_key(
                last,
                &mut since_save,
                &mut suspects,
                report,
                sink.as_deref_mut(),
            )?;
        }
        self.settle(&suspects, report, sink, false)
    }

    /// After a merge step's key (`last`: when the scan is resumable):
    /// settles the suspects once a batch of them gathered, and saves the
    /// checkpoint every batch of keys.
    fn after_key<S>(
        &mut self,
        last: Option<O::Key>,
        since_save: &mut usize,
        suspects: &mut Vec<O::Key>,
        report: &mut ReconcileReport,
        sink: Option<&mut S>,
    ) -> Result<(), BackfillError>
    where
        S: RepairSink<Key = O::Key, Row = N::Row>,
    {
        *since_save += 1;
        let save = last.is_some() && *since_save >= self.batch;
        if suspects.len() >= self.batch || save {
            let keys = std::mem::take(suspects);
            self.settle(&keys, report, sink, false)?;
        }
        if save && let (Some(checkpoint), Some(last)) = (self.checkpoint.as_mut(), last) {
            // Every key up to this one is compared, settled and (in a
            // repair) repaired.
            checkpoint.save(&last.to_string(), report.old_rows)?;
            *since_save = 0;
        }
        Ok(())
    }

    /// Reads `keys` again from both stores (under the guard), counts what
    /// still differs, and repairs it if a sink is given. `count_equal`:
    /// rows found equal count as equal (a recheck) rather than settled (a
    /// scan's suspects).
    fn settle<S>(
        &mut self,
        keys: &[O::Key],
        report: &mut ReconcileReport,
        sink: Option<&mut S>,
        count_equal: bool,
    ) -> Result<(), BackfillError>
    where
        S: RepairSink<Key = O::Key, Row = N::Row>,
    {
        if keys.is_empty() {
            return Ok(());
        }
        let guard = self.guard.clone();
        let routing: Vec<&dyn RoutingKey> = keys.iter().map(|key| key as &dyn RoutingKey).collect();
        let _hold = guard.as_ref().map(|guard| {
            // A write the primary acknowledged may still be queued for the
            // secondary: let the lanes apply it before comparing, so the
            // gap counts drift, not lag.
            let (hold, drained) = guard.hold_drained(&routing, self.drain_timeout);
            if !drained {
                tracing::warn!(
                    keys = keys.len(),
                    waited = ?self.drain_timeout,
                    "reconciliation: secondary writes of these keys still pending; comparing anyway"
                );
            }
            hold
        });
        let old: std::collections::BTreeMap<O::Key, O::Row> =
            self.old.reread(None, keys)?.into_iter().collect();
        let mut new: std::collections::BTreeMap<O::Key, N::Row> =
            self.new.reread(None, keys)?.into_iter().collect();
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (key, old_row) in old {
            let old_row = (self.map)(old_row);
            match new.remove(&key) {
                None => {
                    report.missing_in_new += 1;
                    self.list(
                        report,
                        Difference::MissingInNew {
                            key: key.to_string(),
                        },
                    );
                    match self.authoritative {
                        Store::Old => upserts.push((key, old_row)),
                        Store::New => deletes.push(key),
                    }
                }
                Some(new_row) => match (self.compare)(&old_row, &new_row) {
                    None if count_equal => report.equal += 1,
                    None => report.settled += 1,
                    Some(fields) => {
                        report.different += 1;
                        self.list(
                            report,
                            Difference::Different {
                                key: key.to_string(),
                                fields,
                            },
                        );
                        match self.authoritative {
                            Store::Old => upserts.push((key, old_row)),
                            Store::New => upserts.push((key, new_row)),
                        }
                    }
                },
            }
        }
        for (key, new_row) in new {
            report.extra_in_new += 1;
            self.list(
                report,
                Difference::ExtraInNew {
                    key: key.to_string(),
                },
            );
            match self.authoritative {
                Store::Old => deletes.push(key),
                Store::New => upserts.push((key, new_row)),
            }
        }
        if let Some(sink) = sink {
            let repaired = (upserts.len() + deletes.len()) as u64;
            if !upserts.is_empty() {
                sink.upsert(&upserts)?;
            }
            if !deletes.is_empty() {
                sink.delete(&deletes)?;
            }
            report.repaired += repaired;
        }
        Ok(())
    }

    fn list(&self, report: &mut ReconcileReport, difference: Difference) {
        tracing::warn!(
            key = difference.key(),
            kind = match &difference {
                Difference::MissingInNew { .. } => "missing in new",
                Difference::ExtraInNew { .. } => "extra in new",
                Difference::Different { .. } => "different",
            },
            fields = ?match &difference {
                Difference::Different { fields, .. } => fields.as_slice(),
                _ => &[],
            },
            "reconciliation found a difference"
        );
        if report.differences.len() < self.max_listed {
            report.differences.push(difference);
        }
    }
}

impl<O, N, M, C> Reconcile<O, N, M, C>
where
    O: DigestSource + Send,
    N: DigestSource<Key = O::Key>,
    O::Key: Sync,
    M: FnMut(O::Row) -> N::Row,
    C: FnMut(&N::Row, &N::Row) -> Option<Vec<String>>,
{
    /// Like [`Reconcile::run`], but compares digests computed in each
    /// database first: of the whole key space (equal: done, no row read),
    /// then of key ranges of about `every` rows (boundaries sampled from
    /// the old store), and reads row by row only the ranges whose digests
    /// differ. A store without digest expressions
    /// ([`DigestSource::has_digests`]) makes it a plain [`Reconcile::run`].
    /// The two stores compute each range's digest at the same time (the
    /// old store's on a scoped thread).
    pub fn run_with_digests(&mut self, every: usize) -> Result<ReconcileReport, BackfillError> {
        self.digest_scan(every, None::<&mut NoRepair<O::Key, N::Row>>)
    }

    /// Like [`Reconcile::repair_into`], with range digests as
    /// [`Reconcile::run_with_digests`] does.
    pub fn repair_with_digests<S>(
        &mut self,
        every: usize,
        sink: &mut S,
    ) -> Result<ReconcileReport, BackfillError>
    where
        S: RepairSink<Key = O::Key, Row = N::Row>,
    {
        self.digest_scan(every, Some(sink))
    }

    fn digest_scan<S>(
        &mut self,
        every: usize,
        mut sink: Option<&mut S>,
    ) -> Result<ReconcileReport, BackfillError>
    where
        S: RepairSink<Key = O::Key, Row = N::Row>,
    {
        if !(self.old.has_digests() && self.new.has_digests()) {
            return self.scan(sink);
        }
        let mut report = ReconcileReport {
            dry_run: sink.is_none(),
            ..ReconcileReport::default()
        };
        // The whole key space first: stores that agree (the usual case,
        // and every check after a repair) cost one digest each, and no
        // boundary sampling.
        let (old, new) = self.digests(None, None)?;
        report.ranges += 1;
        if old == new {
            report.equal += old.rows;
            report.rows_in_equal_ranges += old.rows;
            return Ok(report);
        }
        for range in KeyRange::split(self.old.boundaries(every)?) {
            let (after, upto) = (range.after.as_ref(), range.upto.as_ref());
            let (old, new) = self.digests(after, upto)?;
            report.ranges += 1;
            if old == new {
                report.equal += old.rows;
                report.rows_in_equal_ranges += old.rows;
                continue;
            }
            report.ranges_differing += 1;
            tracing::debug!(range = %range, old.rows, new.rows, "range digests differ");
            self.merge_range(after, upto, &mut report, sink.as_deref_mut(), false)?;
        }
        Ok(report)
    }

    /// Both stores' digests of a range, computed at once (the old store's
    /// on a scoped thread).
    fn digests(
        &mut self,
        after: Option<&O::Key>,
        upto: Option<&O::Key>,
    ) -> Result<(RangeDigest, RangeDigest), BackfillError> {
        let (old_store, new_store) = (&mut self.old, &mut self.new);
        let (old, new) = std::thread::scope(|scope| {
            let old = scope.spawn(move || old_store.digest(after, upto));
            let new = new_store.digest(after, upto);
            let old = old
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (old, new)
        });
        let (old, new) = (old?, new?);
        if old.kind != new.kind {
            return Err(BackfillError::Source(format!(
                "the stores' digests are of different kinds ({:?} and {:?}): give both the same kind",
                old.kind, new.kind
            )));
        }
        Ok((old, new))
    }
}

/// The sink of a dry run.
struct NoRepair<K, R>(std::marker::PhantomData<(K, R)>);

impl<K, R> RepairSink for NoRepair<K, R> {
    type Key = K;
    type Row = R;

    fn upsert(&mut self, _: &[(K, R)]) -> Result<(), BackfillError> {
        Ok(())
    }

    fn delete(&mut self, _: &[K]) -> Result<(), BackfillError> {
        Ok(())
    }
}

impl<O, N, M, C> fmt::Debug for Reconcile<O, N, M, C>
where
    O: BackfillSource,
    N: BackfillSource<Key = O::Key>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconcile")
            .field("batch", &self.batch)
            .field("guarded", &self.guard.is_some())
            .field("authoritative", &self.authoritative)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::backfill::Batch;

    #[derive(Default, Clone)]
    struct Table(Arc<Mutex<BTreeMap<u64, String>>>);

    impl Table {
        fn of(rows: &[(u64, &str)]) -> Self {
            let table = Table::default();
            for (key, value) in rows {
                table.0.lock().unwrap().insert(*key, (*value).to_owned());
            }
            table
        }
    }

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

    impl RepairSink for Table {
        type Key = u64;
        type Row = String;

        fn upsert(&mut self, rows: &[(u64, String)]) -> Result<(), BackfillError> {
            let mut table = self.0.lock().unwrap();
            for (key, row) in rows {
                table.insert(*key, row.clone());
            }
            Ok(())
        }

        fn delete(&mut self, keys: &[u64]) -> Result<(), BackfillError> {
            let mut table = self.0.lock().unwrap();
            for key in keys {
                table.remove(key);
            }
            Ok(())
        }
    }

    fn drifted() -> (Table, Table) {
        let old = Table::of(&[(1, "a"), (2, "b"), (3, "c"), (5, "e"), (7, "g")]);
        let new = Table::of(&[(1, "a"), (3, "C"), (4, "d"), (5, "e"), (7, "g"), (9, "i")]);
        (old, new)
    }

    #[test]
    fn finds_missing_extra_and_different_rows() {
        let (old, new) = drifted();
        let report = Reconcile::new(old, new).with_batch(2).run().expect("ran");
        assert_eq!(
            (
                report.equal,
                report.missing_in_new,
                report.extra_in_new,
                report.different
            ),
            (3, 1, 2, 1),
            "{report}"
        );
        assert_eq!(report.gap(), 4);
        assert!(report.dry_run);
        let keys: Vec<&str> = report.differences.iter().map(Difference::key).collect();
        assert_eq!(keys, ["2", "3", "4", "9"]);
        assert!(report.to_string().contains("gap (unresolved)"), "{report}");
    }

    #[test]
    fn a_dry_run_writes_nothing_and_a_repair_closes_the_gap() {
        let (old, new) = drifted();
        let before = new.0.lock().unwrap().clone();
        Reconcile::new(old.clone(), new.clone())
            .run()
            .expect("dry run");
        assert_eq!(*new.0.lock().unwrap(), before);
        let mut sink = new.clone();
        let report = Reconcile::new(old.clone(), new.clone())
            .repair_into(&mut sink)
            .expect("repaired");
        assert_eq!((report.found(), report.repaired, report.gap()), (4, 4, 0));
        assert_eq!(*new.0.lock().unwrap(), *old.0.lock().unwrap());
        let again = Reconcile::new(old, new).run().expect("ran");
        assert_eq!((again.found(), again.equal), (0, 5));
    }

    #[test]
    fn new_is_authoritative_after_cutover() {
        let (old, new) = drifted();
        let mut sink = old.clone();
        Reconcile::new(old.clone(), new.clone())
            .authoritative(Store::New)
            .repair_into(&mut sink)
            .expect("repaired");
        assert_eq!(*old.0.lock().unwrap(), *new.0.lock().unwrap());
    }

    /// A row that changes between the scan of one store and the other is
    /// read again: when the change settles it, it is not a difference.
    #[test]
    fn a_row_changed_while_compared_is_not_counted() {
        struct Racing {
            table: Table,
            scans: usize,
        }
        impl BackfillSource for Racing {
            type Key = u64;
            type Row = String;
            fn scan(
                &mut self,
                after: Option<&u64>,
                limit: usize,
            ) -> Result<Batch<u64, String>, BackfillError> {
                self.scans += 1;
                let rows = self.table.scan(after, limit)?;
                // A live write brings key 3 up to date right after the
                // first scan of New.
                if self.scans == 1 {
                    self.table.0.lock().unwrap().insert(3, "c".to_owned());
                }
                Ok(rows)
            }
        }
        let old = Table::of(&[(1, "a"), (3, "c")]);
        let new = Racing {
            table: Table::of(&[(1, "a"), (3, "stale")]),
            scans: 0,
        };
        let report = Reconcile::new(old, new).run().expect("ran");
        assert_eq!(
            (report.found(), report.settled, report.equal),
            (0, 1, 1),
            "{report}"
        );
    }

    #[test]
    fn a_recheck_of_dead_letter_keys_repairs_them() {
        let (old, new) = drifted();
        let mut sink = new.clone();
        let report = Reconcile::new(old.clone(), new.clone())
            .recheck_into(&[3, 2, 1, 3], &mut sink)
            .expect("rechecked");
        assert_eq!(
            (
                report.equal,
                report.missing_in_new,
                report.different,
                report.repaired
            ),
            (1, 1, 1, 2)
        );
        assert_eq!(new.0.lock().unwrap().get(&3).map(String::as_str), Some("c"));
        assert_eq!(new.0.lock().unwrap().get(&2).map(String::as_str), Some("b"));
    }
}

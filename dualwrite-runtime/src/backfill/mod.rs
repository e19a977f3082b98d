//! Backfill: copies the history of the old store into the new one, in key
//! order and in batches, while live writes keep flowing.
//!
//! ```text
//! source.scan(after, batch)  ->  [guard.hold(keys); source.reread(keys)]  ->  map  ->  sink.write_if_absent  ->  checkpoint.save(last key)
//! ```
//!
//! - **Key order and checkpoints.** Rows come from a [`BackfillSource`] in
//!   key order; after each batch is written the last key is saved to a
//!   [`Checkpoint`], so a job that stops or crashes resumes after the last
//!   committed batch (a batch is written again at most once: the sink's
//!   writes are conditional, so that is harmless).
//! - **Live writes win.** The sink writes a row only if the new store does
//!   not have it yet ([`BackfillSink::write_if_absent`]): a row a live dual
//!   write already put there is newer and stays. With a [`KeyGuard`] from
//!   the adapter ([`Backfill::guarded_by`]) the job also holds the batch's
//!   keys while it reads them again from the old store and writes them, so a
//!   live write of one of them lands either before that read (and is copied
//!   as it is) or after the write (and overwrites it); a row deleted by a
//!   live write meanwhile is not brought back. Without a guard (the job runs
//!   in another process) a row deleted between the scan and the write can
//!   come back: reconciliation finds it as "extra in new".
//! - **Throttle, pause, stop.** [`BackfillControl`] limits rows per second,
//!   pauses and stops the job from another thread; [`BackfillProgress`]
//!   gives done/total, rows per second and an ETA (and the fraction the
//!   cutover gate checks).

mod parallel;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod sqlx;

pub use parallel::{KeyRange, ParallelBackfill, ParallelReport, Ranged};

use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::core::KeyGuard;
use crate::key::RoutingKey;

/// Why a backfill stopped with an error. The checkpoint holds the last
/// batch written, so running the job again resumes there.
#[derive(Debug)]
pub enum BackfillError {
    /// The source failed to read.
    Source(String),
    /// The sink failed to write.
    Sink(String),
    /// The checkpoint could not be read or saved.
    Checkpoint(String),
    /// The checkpoint holds a key the source's key type cannot parse (a
    /// checkpoint of another job?).
    BadCheckpoint {
        /// The text found.
        found: String,
    },
    /// The source returned keys out of order, which would skip rows on
    /// resume.
    OutOfOrder {
        /// The key before.
        previous: String,
        /// The key that came after it.
        next: String,
    },
}

impl fmt::Display for BackfillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackfillError::Source(error) => write!(f, "the backfill source failed: {error}"),
            BackfillError::Sink(error) => write!(f, "the backfill sink failed: {error}"),
            BackfillError::Checkpoint(error) => {
                write!(f, "the backfill checkpoint failed: {error}")
            }
            BackfillError::BadCheckpoint { found } => write!(
                f,
                "the backfill checkpoint holds `{found}`, which is not a key of this source; is it another job's checkpoint?"
            ),
            BackfillError::OutOfOrder { previous, next } => write!(
                f,
                "the backfill source returned key `{next}` after `{previous}`: rows must come in ascending key order"
            ),
        }
    }
}

impl std::error::Error for BackfillError {}

/// The keys a backfill orders and resumes by: comparable, hashable (they
/// route like the adapter's keys), and text for the checkpoint.
pub trait BackfillKey: Clone + Ord + Hash + fmt::Display + FromStr + Send + 'static {}

impl<T: Clone + Ord + Hash + fmt::Display + FromStr + Send + 'static> BackfillKey for T {}

/// Rows with their keys, in key order.
pub type Batch<K, R> = Vec<(K, R)>;

/// A batch of rows in a source's encoded form
/// ([`BackfillSource::row_encoding`]): the keys, and the bytes of each
/// row's values one after the other in one buffer, so that reading a batch
/// allocates nothing per row once the buffers have grown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch<K> {
    keys: Vec<K>,
    /// Where each row's bytes end in `bytes`.
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

impl<K> Default for EncodedBatch<K> {
    fn default() -> Self {
        EncodedBatch {
            keys: Vec::new(),
            ends: Vec::new(),
            bytes: Vec::new(),
        }
    }
}

impl<K> EncodedBatch<K> {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.ends.clear();
        self.bytes.clear();
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the batch holds no row.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The buffer the next row's bytes are appended to; the row ends with
    /// [`EncodedBatch::end_row`].
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Ends a row: the bytes appended since the previous row are the
    /// encoding of the row of `key`.
    pub fn end_row(&mut self, key: K) {
        self.keys.push(key);
        self.ends.push(self.bytes.len());
    }

    /// Drops the bytes appended since the last complete row (a row whose
    /// encoding failed half way).
    pub fn abandon_row(&mut self) {
        let end = self.ends.last().copied().unwrap_or(0);
        self.bytes.truncate(end);
    }

    /// The key and the encoded values of row `index`.
    pub fn row(&self, index: usize) -> Option<(&K, &[u8])> {
        let key = self.keys.get(index)?;
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1],
        };
        Some((key, &self.bytes[start..self.ends[index]]))
    }

    /// The key of the last row.
    pub fn last_key(&self) -> Option<&K> {
        self.keys.last()
    }
}

/// Where the history comes from: the old store, read in key order.
pub trait BackfillSource {
    /// The row key.
    type Key: BackfillKey;
    /// One row, as read.
    type Row;

    /// Up to `limit` rows with keys above `after` (from the start when
    /// `None`), in ascending key order.
    fn scan(
        &mut self,
        after: Option<&Self::Key>,
        limit: usize,
    ) -> Result<Batch<Self::Key, Self::Row>, BackfillError>;

    /// The rows of `keys` (ascending, all above `after`) as they are now: a
    /// key deleted since the scan is missing from the answer. A guarded job
    /// ([`Backfill::guarded_by`]) calls it with the batch's keys held. The
    /// default scans the range again from `after`.
    fn reread(
        &mut self,
        after: Option<&Self::Key>,
        keys: &[Self::Key],
    ) -> Result<Batch<Self::Key, Self::Row>, BackfillError> {
        let Some(last) = keys.last() else {
            return Ok(Vec::new());
        };
        let mut rows = Vec::with_capacity(keys.len());
        let mut from = after.cloned();
        loop {
            let batch = self.scan(from.as_ref(), keys.len().max(64))?;
            let Some((end, _)) = batch.last() else { break };
            let end = end.clone();
            rows.extend(
                batch
                    .into_iter()
                    .filter(|(key, _)| keys.binary_search(key).is_ok()),
            );
            if &end >= last {
                break;
            }
            from = Some(end);
        }
        Ok(rows)
    }

    /// How many rows there are (for progress), if the source can tell.
    fn count(&mut self) -> Result<Option<u64>, BackfillError> {
        Ok(None)
    }

    /// Up to `limit` rows with keys above `after` and at most `upto` (no
    /// upper bound when `None`), in ascending key order: the scan of one key
    /// range (a parallel backfill's worker, a reconciliation range whose
    /// digests differ). The default scans and drops the rows past `upto`;
    /// SQL sources put the bound in the query.
    fn scan_until(
        &mut self,
        after: Option<&Self::Key>,
        upto: Option<&Self::Key>,
        limit: usize,
    ) -> Result<Batch<Self::Key, Self::Row>, BackfillError> {
        let mut rows = self.scan(after, limit)?;
        if let Some(upto) = upto {
            let keep = rows.partition_point(|(key, _)| key <= upto);
            rows.truncate(keep);
        }
        Ok(rows)
    }

    /// Like [`BackfillSource::scan_until`], appending the rows to `into`
    /// and returning how many it appended: a caller that reads batch after
    /// batch (reconciliation) keeps one buffer instead of allocating one
    /// per batch. The default appends what `scan_until` returns; SQL
    /// sources write into `into` directly.
    fn scan_until_into(
        &mut self,
        after: Option<&Self::Key>,
        upto: Option<&Self::Key>,
        limit: usize,
        into: &mut Batch<Self::Key, Self::Row>,
    ) -> Result<usize, BackfillError> {
        let rows = self.scan_until(after, upto, limit)?;
        let read = rows.len();
        into.extend(rows);
        Ok(read)
    }

    /// The name of the encoding [`BackfillSource::scan_encoded_until`]
    /// writes rows in, when the source has one (default `None`).
    /// Reconciliation of two stores of the same row form
    /// ([`crate::reconcile::Reconcile::new`]) whose sources name the same
    /// encoding compares the encoded rows and reads only the rows whose
    /// bytes differ as rows. The contract: two rows whose encodings are
    /// equal are equal rows (`==`); equal rows should encode alike (if they
    /// do not, they are read again and count as settled, not as equal).
    fn row_encoding(&self) -> Option<&'static str> {
        None
    }

    /// Like [`BackfillSource::scan_until_into`], with the rows appended to
    /// `into` in the source's encoding ([`BackfillSource::row_encoding`]);
    /// returns how many. Called only when `row_encoding` names one; the
    /// default fails.
    fn scan_encoded_until(
        &mut self,
        after: Option<&Self::Key>,
        upto: Option<&Self::Key>,
        limit: usize,
        into: &mut EncodedBatch<Self::Key>,
    ) -> Result<usize, BackfillError> {
        let _ = (after, upto, limit, into);
        Err(BackfillError::Source(
            "this source has no encoded scan (BackfillSource::row_encoding is None)".to_owned(),
        ))
    }

    /// Every `every`-th key in ascending order (the `every`-th, the
    /// `2 * every`-th, ...): boundaries that cut the key space into ranges
    /// of about `every` rows each, for a parallel backfill
    /// ([`KeyRange::split`]) or range digests. The default scans the whole
    /// source; SQL sources read only the key index.
    fn boundaries(&mut self, every: usize) -> Result<Vec<Self::Key>, BackfillError> {
        let every = every.max(1);
        let mut keys = Vec::new();
        let mut after: Option<Self::Key> = None;
        let mut seen = 0_usize;
        loop {
            let batch = self.scan(after.as_ref(), every.clamp(64, 10_000))?;
            let Some((last, _)) = batch.last() else { break };
            let last = last.clone();
            for (key, _) in batch {
                seen += 1;
                if seen.is_multiple_of(every) {
                    keys.push(key);
                }
            }
            after = Some(last);
        }
        Ok(keys)
    }
}

/// Where the history goes: the new store.
pub trait BackfillSink {
    /// The row key.
    type Key;
    /// One row, as written.
    type Row;

    /// Writes each row whose key the new store does not have yet, and
    /// returns how many were written; a row already there (put by a live
    /// write, which is newer) is left as it is.
    fn write_if_absent(&mut self, rows: &[(Self::Key, Self::Row)]) -> Result<u64, BackfillError>;
}

/// Where a backfill records how far it got.
pub trait Checkpoint {
    /// The last key written and the rows written so far, if the job ran
    /// before.
    fn load(&mut self) -> Result<Option<(String, u64)>, BackfillError>;
    /// Records that every row up to `key` is written (`rows` in all).
    fn save(&mut self, key: &str, rows: u64) -> Result<(), BackfillError>;
    /// Forgets the position, so the next run starts from the beginning (a
    /// finished reconciliation does this, so the next one is a full pass).
    /// The default refuses: a checkpoint that cannot forget must not be
    /// taken for a fresh start.
    fn clear(&mut self) -> Result<(), BackfillError> {
        Err(BackfillError::Checkpoint(
            "this checkpoint cannot be cleared: implement `Checkpoint::clear`".to_owned(),
        ))
    }
}

/// A checkpoint kept in memory (tests, one-shot jobs).
#[derive(Debug, Default, Clone)]
pub struct MemoryCheckpoint(Option<(String, u64)>);

impl Checkpoint for MemoryCheckpoint {
    fn load(&mut self) -> Result<Option<(String, u64)>, BackfillError> {
        Ok(self.0.clone())
    }

    fn save(&mut self, key: &str, rows: u64) -> Result<(), BackfillError> {
        self.0 = Some((key.to_owned(), rows));
        Ok(())
    }

    fn clear(&mut self) -> Result<(), BackfillError> {
        self.0 = None;
        Ok(())
    }
}

impl<T: Checkpoint + ?Sized> Checkpoint for &mut T {
    fn load(&mut self) -> Result<Option<(String, u64)>, BackfillError> {
        (**self).load()
    }

    fn save(&mut self, key: &str, rows: u64) -> Result<(), BackfillError> {
        (**self).save(key, rows)
    }

    fn clear(&mut self) -> Result<(), BackfillError> {
        (**self).clear()
    }
}

impl<T: Checkpoint + ?Sized> Checkpoint for Box<T> {
    fn load(&mut self) -> Result<Option<(String, u64)>, BackfillError> {
        (**self).load()
    }

    fn save(&mut self, key: &str, rows: u64) -> Result<(), BackfillError> {
        (**self).save(key, rows)
    }

    fn clear(&mut self) -> Result<(), BackfillError> {
        (**self).clear()
    }
}

/// Controls a running backfill from another thread: throttle, pause, stop.
#[derive(Debug, Clone, Default)]
pub struct BackfillControl {
    inner: Arc<ControlInner>,
}

#[derive(Debug, Default)]
struct ControlInner {
    paused: Mutex<bool>,
    resumed: Condvar,
    stop: AtomicBool,
    /// Rows per second; 0 for no limit.
    rate: AtomicU64,
}

impl BackfillControl {
    /// Limits the job to `rows_per_second` (0: no limit).
    pub fn set_rate(&self, rows_per_second: u64) {
        self.inner.rate.store(rows_per_second, Ordering::Relaxed);
    }

    /// Pauses the job after its current batch.
    pub fn pause(&self) {
        *self
            .inner
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Resumes a paused job.
    pub fn resume(&self) {
        *self
            .inner
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        self.inner.resumed.notify_all();
    }

    /// Stops the job after its current batch (its checkpoint is saved);
    /// running it again resumes there.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.resume();
    }

    fn stopped(&self) -> bool {
        self.inner.stop.load(Ordering::SeqCst)
    }

    /// Blocks while paused; whether the job is to stop.
    fn wait_if_paused(&self) -> bool {
        let mut paused = self
            .inner
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *paused && !self.stopped() {
            paused = self
                .inner
                .resumed
                .wait(paused)
                .unwrap_or_else(PoisonError::into_inner);
        }
        self.stopped()
    }
}

/// How far a backfill is, shared with whoever watches it (the cutover
/// gate, a progress bar, metrics).
#[derive(Debug, Clone, Default)]
pub struct BackfillProgress {
    inner: Arc<ProgressInner>,
}

#[derive(Debug, Default)]
struct ProgressInner {
    /// Rows read and handled (written or found present) so far.
    done: AtomicU64,
    /// Rows written (the others were present already).
    written: AtomicU64,
    /// The source's row count, if known (`u64::MAX`: unknown).
    total: AtomicU64,
    finished: AtomicBool,
    /// Rows handled in this run and when it started, for the rate.
    started: Mutex<Option<(Instant, u64)>>,
}

/// A look at a backfill's progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressSnapshot {
    /// Rows handled.
    pub done: u64,
    /// Rows written (the rest were present already: live writes won).
    pub written: u64,
    /// The source's row count, if known.
    pub total: Option<u64>,
    /// Whether the job reached the end of the source.
    pub finished: bool,
    /// Rows per second in this run.
    pub rows_per_second: f64,
    /// The estimated time left, when the total and the rate are known.
    pub eta: Option<Duration>,
}

impl ProgressSnapshot {
    /// Progress in `[0, 1]`: 1 once the job reached the end of the source
    /// (the count may have grown meanwhile), else done over the total.
    pub fn fraction(&self) -> f64 {
        if self.finished {
            return 1.0;
        }
        match self.total {
            Some(0) => 0.0,
            Some(total) => (self.done as f64 / total as f64).min(0.999_999),
            None => 0.0,
        }
    }
}

impl BackfillProgress {
    /// A look at the progress now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let inner = &self.inner;
        let done = inner.done.load(Ordering::SeqCst);
        let total = match inner.total.load(Ordering::SeqCst) {
            u64::MAX => None,
            total => Some(total),
        };
        let rows_per_second = inner
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(0.0, |(at, from)| {
                let seconds = at.elapsed().as_secs_f64();
                if seconds > 0.0 {
                    done.saturating_sub(from) as f64 / seconds
                } else {
                    0.0
                }
            });
        let finished = inner.finished.load(Ordering::SeqCst);
        let eta = match (total, finished) {
            (_, true) => Some(Duration::ZERO),
            (Some(total), false) if rows_per_second > 0.0 => Some(Duration::from_secs_f64(
                total.saturating_sub(done) as f64 / rows_per_second,
            )),
            _ => None,
        };
        ProgressSnapshot {
            done,
            written: inner.written.load(Ordering::SeqCst),
            total,
            finished,
            rows_per_second,
            eta,
        }
    }

    /// The fraction the cutover gate checks ([`crate::GateInputs::with_backfill`]).
    pub fn fraction(&self) -> f64 {
        self.snapshot().fraction()
    }
}

/// What one run of a backfill did.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillReport {
    /// Rows handled in this run.
    pub rows: u64,
    /// Rows written in this run (the others were present: live writes won,
    /// or a batch was written again after a resume).
    pub written: u64,
    /// Batches in this run.
    pub batches: u64,
    /// Whether the job reached the end of the source (else it was stopped).
    pub finished: bool,
    /// The key the job resumed after, if it resumed.
    pub resumed_after: Option<String>,
    /// How long the run took.
    pub elapsed: Duration,
}

/// A backfill job: `source` -> `map` -> `sink`, checkpointed; see the
/// module docs.
pub struct Backfill<S, K, M, C>
where
    S: BackfillSource,
    K: BackfillSink<Key = S::Key>,
{
    source: S,
    sink: K,
    map: M,
    checkpoint: C,
    batch: usize,
    guard: Option<KeyGuard>,
    control: BackfillControl,
    progress: BackfillProgress,
}

impl<S, K> Backfill<S, K, fn(S::Row) -> S::Row, MemoryCheckpoint>
where
    S: BackfillSource,
    K: BackfillSink<Key = S::Key, Row = S::Row>,
{
    /// Copies `source` into `sink` row for row, with an in-memory
    /// checkpoint and batches of 1 000.
    pub fn new(source: S, sink: K) -> Self {
        Backfill::mapped(source, sink, |row| row)
    }
}

impl<S, K, M> Backfill<S, K, M, MemoryCheckpoint>
where
    S: BackfillSource,
    K: BackfillSink<Key = S::Key>,
    M: FnMut(S::Row) -> K::Row,
{
    /// Copies `source` into `sink` through `map` (the schema change: renamed
    /// columns, split fields, nullability made explicit).
    pub fn mapped(source: S, sink: K, map: M) -> Self {
        Backfill {
            source,
            sink,
            map,
            checkpoint: MemoryCheckpoint::default(),
            batch: 1_000,
            guard: None,
            control: BackfillControl::default(),
            progress: BackfillProgress::default(),
        }
    }
}

impl<S, K, M, C> Backfill<S, K, M, C>
where
    S: BackfillSource,
    K: BackfillSink<Key = S::Key>,
    M: FnMut(S::Row) -> K::Row,
    C: Checkpoint,
{
    /// Records progress in `checkpoint` (resuming from it).
    pub fn with_checkpoint<C2: Checkpoint>(self, checkpoint: C2) -> Backfill<S, K, M, C2> {
        Backfill {
            source: self.source,
            sink: self.sink,
            map: self.map,
            checkpoint,
            batch: self.batch,
            guard: self.guard,
            control: self.control,
            progress: self.progress,
        }
    }

    /// Rows per batch (at least 1); one checkpoint per batch.
    #[must_use]
    pub fn with_batch(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// Holds each batch's keys in the live adapter while the batch is read
    /// again and written (see the module docs): live writes then never
    /// interleave with the copy, deletes included.
    #[must_use]
    pub fn guarded_by(mut self, guard: KeyGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Uses `control` (throttle, pause, stop from another thread).
    #[must_use]
    pub fn with_control(mut self, control: BackfillControl) -> Self {
        self.control = control;
        self
    }

    /// The job's control handle.
    pub fn control(&self) -> BackfillControl {
        self.control.clone()
    }

    /// The job's progress, to watch from another thread.
    pub fn progress(&self) -> BackfillProgress {
        self.progress.clone()
    }

    /// Runs until the source is exhausted or the job is stopped.
    pub fn run(&mut self) -> Result<BackfillReport, BackfillError> {
        let started = Instant::now();
        let (mut after, done_before, mut report) = self.start()?;
        loop {
            if self.control.wait_if_paused() {
                break;
            }
            let scanned = self.source.scan(after.as_ref(), self.batch)?;
            let Some(last) = self.handle(started, &mut after, done_before, &mut report, scanned)?
            else {
                break;
            };
            after = Some(last);
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Like [`Backfill::run`], but reads ahead: a second thread reads the
    /// next batch from the source while this one writes the current batch
    /// (and its checkpoint), so reading and writing overlap, on two cores
    /// when the stores are in the process (SQLite) and on two connections
    /// when they are servers. The order, checkpoints, guard and control are
    /// those of [`Backfill::run`]: under a guard the batch is read again
    /// with its keys held, through the same source (the two threads take
    /// turns on it); a batch read ahead when the job stops is dropped
    /// unwritten and read again on resume.
    pub fn run_read_ahead(&mut self) -> Result<BackfillReport, BackfillError>
    where
        S: Send,
        S::Row: Send,
    {
        let started = Instant::now();
        let (after, done_before, mut report) = self.start()?;
        let source = Mutex::new(&mut self.source);
        let batch = self.batch;
        let outcome = std::thread::scope(|scope| {
            let (ahead, batches) =
                crossbeam_channel::bounded::<Result<Batch<S::Key, S::Row>, BackfillError>>(1);
            let reader = &source;
            let mut from = after.clone();
            scope.spawn(move || {
                loop {
                    let scanned = reader
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .scan(from.as_ref(), batch);
                    let next = match &scanned {
                        Ok(rows) => rows.last().map(|(key, _)| key.clone()),
                        Err(_) => None,
                    };
                    // The job left (stopped, or failed): stop reading.
                    if ahead.send(scanned).is_err() {
                        return;
                    }
                    match next {
                        Some(key) => from = Some(key),
                        None => return,
                    }
                }
            });
            let mut after = after;
            loop {
                if self.control.wait_if_paused() {
                    break;
                }
                let Ok(scanned) = batches.recv() else { break };
                let Some(last) = Self::handle_parts(
                    &mut HandleParts {
                        source: &source,
                        sink: &mut self.sink,
                        map: &mut self.map,
                        checkpoint: &mut self.checkpoint,
                        guard: self.guard.as_ref(),
                        control: &self.control,
                        progress: &self.progress,
                    },
                    started,
                    &mut after,
                    done_before,
                    &mut report,
                    scanned?,
                )?
                else {
                    break;
                };
                after = Some(last);
            }
            Ok::<(), BackfillError>(())
        });
        outcome?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Loads the checkpoint and resets the progress for a run: where to
    /// start, the rows done before, and an empty report.
    fn start(&mut self) -> Result<(Option<S::Key>, u64, BackfillReport), BackfillError> {
        let resumed = self.checkpoint.load()?;
        let (after, done_before) = match &resumed {
            Some((text, rows)) => (
                Some(
                    text.parse::<S::Key>()
                        .map_err(|_| BackfillError::BadCheckpoint {
                            found: text.clone(),
                        })?,
                ),
                *rows,
            ),
            None => (None, 0),
        };
        let inner = &self.progress.inner;
        inner.done.store(done_before, Ordering::SeqCst);
        inner
            .total
            .store(self.source.count()?.unwrap_or(u64::MAX), Ordering::SeqCst);
        *inner.started.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), done_before));
        let report = BackfillReport {
            rows: 0,
            written: 0,
            batches: 0,
            finished: false,
            resumed_after: resumed.map(|(key, _)| key),
            elapsed: Duration::ZERO,
        };
        Ok((after, done_before, report))
    }

    /// Writes one scanned batch, saves the checkpoint, counts and
    /// throttles; the batch's last key, or `None` at the end of the source.
    fn handle(
        &mut self,
        started: Instant,
        after: &mut Option<S::Key>,
        done_before: u64,
        report: &mut BackfillReport,
        scanned: Batch<S::Key, S::Row>,
    ) -> Result<Option<S::Key>, BackfillError> {
        let source = Mutex::new(&mut self.source);
        Self::handle_parts(
            &mut HandleParts {
                source: &source,
                sink: &mut self.sink,
                map: &mut self.map,
                checkpoint: &mut self.checkpoint,
                guard: self.guard.as_ref(),
                control: &self.control,
                progress: &self.progress,
            },
            started,
            after,
            done_before,
            report,
            scanned,
        )
    }

    fn handle_parts(
        parts: &mut HandleParts<'_, '_, S, K, M, C>,
        started: Instant,
        after: &mut Option<S::Key>,
        done_before: u64,
        report: &mut BackfillReport,
        scanned: Batch<S::Key, S::Row>,
    ) -> Result<Option<S::Key>, BackfillError> {
        let inner = &parts.progress.inner;
        let Some((last, _)) = scanned.last() else {
            report.finished = true;
            inner.finished.store(true, Ordering::SeqCst);
            return Ok(None);
        };
        let last = last.clone();
        check_order(after.as_ref(), &scanned)?;
        let handled = scanned.len() as u64;
        let written = Self::copy_batch(parts, after.as_ref(), scanned)?;
        parts
            .checkpoint
            .save(&last.to_string(), done_before + report.rows + handled)?;
        report.rows += handled;
        report.written += written;
        report.batches += 1;
        inner.done.fetch_add(handled, Ordering::SeqCst);
        inner.written.fetch_add(written, Ordering::SeqCst);
        throttle(parts.control, started, report.rows);
        Ok(Some(last))
    }

    /// Writes one scanned batch: under the guard, the rows as they are now.
    fn copy_batch(
        parts: &mut HandleParts<'_, '_, S, K, M, C>,
        after: Option<&S::Key>,
        scanned: Vec<(S::Key, S::Row)>,
    ) -> Result<u64, BackfillError> {
        let Some(guard) = parts.guard else {
            let rows: Vec<(S::Key, K::Row)> = scanned
                .into_iter()
                .map(|(key, row)| (key, (parts.map)(row)))
                .collect();
            return parts.sink.write_if_absent(&rows);
        };
        let keys: Vec<S::Key> = scanned.into_iter().map(|(key, _)| key).collect();
        let routing: Vec<&dyn RoutingKey> = keys.iter().map(|key| key as &dyn RoutingKey).collect();
        let _hold = guard.hold(&routing);
        let fresh = parts
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reread(after, &keys)?;
        let rows: Vec<(S::Key, K::Row)> = fresh
            .into_iter()
            .map(|(key, row)| (key, (parts.map)(row)))
            .collect();
        parts.sink.write_if_absent(&rows)
    }
}

/// The parts of a job that handling a batch needs (the source behind a
/// lock, which a read-ahead thread shares).
struct HandleParts<'a, 's, S, K, M, C> {
    source: &'a Mutex<&'s mut S>,
    sink: &'a mut K,
    map: &'a mut M,
    checkpoint: &'a mut C,
    guard: Option<&'a KeyGuard>,
    control: &'a BackfillControl,
    progress: &'a BackfillProgress,
}

/// Sleeps as needed to keep the run under the control's rate.
fn throttle(control: &BackfillControl, started: Instant, rows: u64) {
    let rate = control.inner.rate.load(Ordering::Relaxed);
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(rows as f64 / rate as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        std::thread::sleep(due - elapsed);
    }
}

fn check_order<K: BackfillKey, R>(after: Option<&K>, rows: &[(K, R)]) -> Result<(), BackfillError> {
    let mut previous = after;
    for (key, _) in rows {
        if let Some(previous) = previous
            && key <= previous
        {
            return Err(BackfillError::OutOfOrder {
                previous: previous.to_string(),
                next: key.to_string(),
            });
        }
        previous = Some(key);
    }
    Ok(())
}

impl<S, K, M, C> fmt::Debug for Backfill<S, K, M, C>
where
    S: BackfillSource,
    K: BackfillSink<Key = S::Key>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backfill")
            .field("batch", &self.batch)
            .field("guarded", &self.guard.is_some())
            .field("progress", &self.progress.snapshot())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A `BTreeMap` as a source and a sink.
    #[derive(Default, Clone)]
    struct Table(Arc<Mutex<BTreeMap<u64, String>>>);

    impl Table {
        fn with_rows(n: u64) -> Self {
            let table = Table::default();
            for key in 0..n {
                table.0.lock().unwrap().insert(key, format!("row {key}"));
            }
            table
        }

        fn rows(&self) -> BTreeMap<u64, String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl BackfillSource for Table {
        type Key = u64;
        type Row = String;

        fn scan(
            &mut self,
            after: Option<&u64>,
            limit: usize,
        ) -> Result<Vec<(u64, String)>, BackfillError> {
            let rows = self.0.lock().unwrap();
            let range = match after {
                Some(after) => rows.range(after + 1..),
                None => rows.range(0..),
            };
            Ok(range.take(limit).map(|(k, v)| (*k, v.clone())).collect())
        }

        fn count(&mut self) -> Result<Option<u64>, BackfillError> {
            Ok(Some(self.0.lock().unwrap().len() as u64))
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

    #[test]
    fn copies_everything_in_batches_and_reports_progress() {
        let (old, new) = (Table::with_rows(2_500), Table::default());
        let mut job = Backfill::new(old.clone(), new.clone()).with_batch(1_000);
        let progress = job.progress();
        let report = job.run().expect("ran");
        assert_eq!(
            (report.rows, report.written, report.batches),
            (2_500, 2_500, 3)
        );
        assert!(report.finished);
        assert_eq!(new.rows(), old.rows());
        let snapshot = progress.snapshot();
        assert_eq!((snapshot.done, snapshot.total), (2_500, Some(2_500)));
        assert_eq!(snapshot.fraction(), 1.0);
    }

    #[test]
    fn rows_already_in_the_new_store_are_kept() {
        let (old, new) = (Table::with_rows(10), Table::default());
        new.0.lock().unwrap().insert(3, "live".to_owned());
        let report = Backfill::new(old, new.clone()).run().expect("ran");
        assert_eq!((report.rows, report.written), (10, 9));
        assert_eq!(new.rows()[&3], "live");
    }

    /// A sink that stops its job after `batches` batches.
    struct StopAfter {
        table: Table,
        batches: usize,
        control: BackfillControl,
    }

    impl BackfillSink for StopAfter {
        type Key = u64;
        type Row = String;

        fn write_if_absent(&mut self, rows: &[(u64, String)]) -> Result<u64, BackfillError> {
            self.batches -= 1;
            if self.batches == 0 {
                self.control.stop();
            }
            self.table.write_if_absent(rows)
        }
    }

    #[test]
    fn a_stopped_job_resumes_after_its_checkpoint() {
        let (old, new) = (Table::with_rows(100), Table::default());
        let control = BackfillControl::default();
        let mut checkpoint = MemoryCheckpoint::default();
        let sink = StopAfter {
            table: new.clone(),
            batches: 3,
            control: control.clone(),
        };
        let report = Backfill::new(old.clone(), sink)
            .with_batch(10)
            .with_control(control)
            .with_checkpoint(&mut checkpoint)
            .run()
            .expect("ran");
        assert_eq!(
            (report.rows, report.batches, report.finished),
            (30, 3, false)
        );
        assert_eq!(new.rows().len(), 30);
        let saved = checkpoint.load().expect("saved").expect("a checkpoint");
        assert_eq!(saved, ("29".to_owned(), 30));
        let mut job = Backfill::new(old.clone(), new.clone())
            .with_batch(10)
            .with_checkpoint(&mut checkpoint);
        let report = job.run().expect("resumed");
        assert_eq!(report.resumed_after.as_deref(), Some("29"));
        assert_eq!((report.rows, report.written), (70, 70));
        assert!(report.finished);
        assert_eq!(new.rows(), old.rows());
        assert_eq!(job.progress().snapshot().done, 100);
    }

    #[test]
    fn a_checkpoint_of_another_job_is_a_clear_error() {
        let mut checkpoint = MemoryCheckpoint(Some(("not-a-number".to_owned(), 5)));
        let error = Backfill::new(Table::with_rows(3), Table::default())
            .with_checkpoint(&mut checkpoint)
            .run()
            .expect_err("bad checkpoint");
        assert!(error.to_string().contains("not-a-number"), "{error}");
    }

    #[test]
    fn a_source_out_of_order_is_refused() {
        struct Shuffled;
        impl BackfillSource for Shuffled {
            type Key = u64;
            type Row = ();
            fn scan(
                &mut self,
                after: Option<&u64>,
                _: usize,
            ) -> Result<Vec<(u64, ())>, BackfillError> {
                Ok(if after.is_none() {
                    vec![(2, ()), (1, ())]
                } else {
                    vec![]
                })
            }
        }
        struct Sink;
        impl BackfillSink for Sink {
            type Key = u64;
            type Row = ();
            fn write_if_absent(&mut self, rows: &[(u64, ())]) -> Result<u64, BackfillError> {
                Ok(rows.len() as u64)
            }
        }
        let error = Backfill::new(Shuffled, Sink)
            .run()
            .expect_err("out of order");
        assert!(matches!(error, BackfillError::OutOfOrder { .. }), "{error}");
    }

    #[test]
    fn a_job_reading_ahead_copies_the_same_and_stops_cleanly() {
        let (old, new) = (Table::with_rows(2_500), Table::default());
        new.0.lock().unwrap().insert(7, "live".to_owned());
        let report = Backfill::new(old.clone(), new.clone())
            .with_batch(300)
            .run_read_ahead()
            .expect("ran");
        assert_eq!(
            (report.rows, report.written, report.batches),
            (2_500, 2_499, 9)
        );
        assert!(report.finished);
        let mut expected = old.rows();
        expected.insert(7, "live".to_owned());
        assert_eq!(new.rows(), expected);

        // Stopped after three batches, it resumes from its checkpoint.
        let (old, new) = (Table::with_rows(100), Table::default());
        let control = BackfillControl::default();
        let mut checkpoint = MemoryCheckpoint::default();
        let sink = StopAfter {
            table: new.clone(),
            batches: 3,
            control: control.clone(),
        };
        let stopped = Backfill::new(old.clone(), sink)
            .with_batch(10)
            .with_control(control)
            .with_checkpoint(&mut checkpoint)
            .run_read_ahead()
            .expect("ran");
        assert_eq!((stopped.rows, stopped.finished), (30, false));
        let resumed = Backfill::new(old.clone(), new.clone())
            .with_batch(10)
            .with_checkpoint(&mut checkpoint)
            .run_read_ahead()
            .expect("resumed");
        assert_eq!((resumed.rows, resumed.written), (70, 70));
        assert_eq!(new.rows(), old.rows());
    }

    #[test]
    fn the_throttle_holds_the_rate() {
        let (old, new) = (Table::with_rows(200), Table::default());
        let mut job = Backfill::new(old, new).with_batch(50);
        job.control().set_rate(1_000);
        let report = job.run().expect("ran");
        // 200 rows at 1 000 rows/s: at least 150 ms (the first batch is free).
        assert!(report.elapsed >= Duration::from_millis(150), "{report:?}");
    }
}

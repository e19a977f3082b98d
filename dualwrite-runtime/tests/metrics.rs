//! The metrics publisher, against a recording `metrics` recorder: real dual
//! writes with injected secondary failures, then the published values
//! compared with the adapter's own stats.
#![cfg(feature = "metrics")]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use dualwrite_runtime::backfill::ProgressSnapshot;
use dualwrite_runtime::publisher::{names, record_backfill};
use dualwrite_runtime::reconcile::ReconcileReport;
use dualwrite_runtime::{LaneConfig, Migration, Phase, StatsSnapshot, SyncMode, dual_write};
use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

#[dual_write]
pub trait Kv {
    #[dual_write(key = key)]
    fn put(&self, key: u64, value: u64) -> Result<(), String>;
    #[dual_write(key = key)]
    fn delete(&self, key: u64) -> Result<(), String>;
    #[dual_write(key = key)]
    fn get(&self, key: u64) -> Result<Option<u64>, String>;
}

/// An in-memory store whose writes of chosen keys fail, and which can be
/// held (its writes block) to let a lane's queue build up.
#[derive(Default)]
struct Mem {
    map: Mutex<HashMap<u64, u64>>,
    failing: Mutex<HashSet<u64>>,
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl Mem {
    fn failing(keys: &[u64]) -> Self {
        let store = Mem::default();
        store.failing.lock().unwrap().extend(keys);
        store
    }

    fn check(&self, key: u64) -> Result<(), String> {
        let (held, released) = &*self.held;
        let mut held = held.lock().unwrap();
        while *held {
            held = released.wait(held).unwrap();
        }
        if self.failing.lock().unwrap().contains(&key) {
            return Err(format!("injected failure of key {key}"));
        }
        Ok(())
    }
}

impl Kv for Mem {
    fn put(&self, key: u64, value: u64) -> Result<(), String> {
        self.check(key)?;
        self.map.lock().unwrap().insert(key, value);
        Ok(())
    }

    fn delete(&self, key: u64) -> Result<(), String> {
        self.check(key)?;
        self.map.lock().unwrap().remove(&key);
        Ok(())
    }

    fn get(&self, key: u64) -> Result<Option<u64>, String> {
        Ok(self.map.lock().unwrap().get(&key).copied())
    }
}

/// What the recorder holds at one moment. (Taking it resets the
/// recorder's values; the publisher sets them again at its next publish.)
struct Taken(Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>);

fn take(snapshotter: &Snapshotter) -> Taken {
    Taken(snapshotter.snapshot().into_vec())
}

/// The value of metric `name` whose labels include `labels`; `None` when
/// none has them, a panic when several do.
fn value<'a>(taken: &'a Taken, name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    let found: Vec<&DebugValue> = taken
        .0
        .iter()
        .filter(|(key, _, _, _)| {
            let key = key.key();
            key.name() == name
                && labels.iter().all(|(k, v)| {
                    key.labels()
                        .any(|label| label.key() == *k && label.value() == *v)
                })
        })
        .map(|(_, _, _, value)| value)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.into_iter().next()
}

fn counter(taken: &Taken, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(taken, name, labels) {
        Some(DebugValue::Counter(value)) => *value,
        other => panic!("{name} {labels:?}: not a counter: {other:?}"),
    }
}

fn gauge(taken: &Taken, name: &str, labels: &[(&str, &str)]) -> f64 {
    match value(taken, name, labels) {
        Some(DebugValue::Gauge(value)) => value.into_inner(),
        other => panic!("{name} {labels:?}: not a gauge: {other:?}"),
    }
}

/// The published write counters agree with the adapter's stats.
fn assert_writes_match(taken: &Taken, stats: &StatsSnapshot) {
    let writes = |store: &str, role: &str, outcome: &str| {
        counter(
            taken,
            names::WRITES,
            &[
                ("trait", "Kv"),
                ("store", store),
                ("role", role),
                ("outcome", outcome),
            ],
        )
    };
    let both = |store: &str, outcome: &str| {
        writes(store, "primary", outcome) + writes(store, "secondary", outcome)
    };
    assert_eq!(both("old", "ok"), stats.old_writes_ok);
    assert_eq!(both("old", "failed"), stats.old_writes_failed);
    assert_eq!(both("new", "ok"), stats.new_writes_ok);
    assert_eq!(both("new", "failed"), stats.new_writes_failed);
    let role =
        |role: &str, outcome: &str| writes("old", role, outcome) + writes("new", role, outcome);
    assert_eq!(role("primary", "ok"), stats.primary_writes_ok);
    assert_eq!(role("primary", "failed"), stats.primary_writes_failed);
    assert_eq!(role("secondary", "ok"), stats.secondary_writes_ok);
    assert_eq!(role("secondary", "failed"), stats.secondary_writes_failed);
}

#[test]
fn synchronous_dual_writes_with_failures_are_published_as_the_stats_count_them() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        // Keys 3 and 7 fail on New; key 100 fails on Old (the primary).
        let adapter = KvDualWrite::new(
            Mem::failing(&[100]),
            Mem::failing(&[3, 7]),
            Migration::new(Phase::DualWrite),
        )
        .with_sync_mode(SyncMode::Tolerant);
        let publisher = adapter.core().metrics_publisher();
        for key in 0..40 {
            assert!(
                adapter.put(key, key * 10).is_ok(),
                "tolerant: the primary's result"
            );
        }
        assert!(adapter.delete(7).is_ok());
        assert!(adapter.put(100, 1).is_err());
        publisher.publish();

        let stats = adapter.stats();
        assert_eq!(stats.new_writes_failed, 3);
        assert_eq!(stats.dead_letters, 3);
        assert_eq!(stats.primary_writes_failed, 1);
        let taken = take(&snapshotter);
        assert_writes_match(&taken, &stats);

        let per_method = |name: &str, method: &str, pairs: &[(&str, &str)]| {
            let mut labels = vec![("trait", "Kv"), ("method", method)];
            labels.extend_from_slice(pairs);
            counter(&taken, name, &labels)
        };
        let secondary_new = [("store", "new"), ("role", "secondary")];
        assert_eq!(per_method(names::WRITE_FAILURES, "put", &secondary_new), 2);
        assert_eq!(
            per_method(names::WRITE_FAILURES, "delete", &secondary_new),
            1
        );
        let primary_old = [("store", "old"), ("role", "primary")];
        assert_eq!(per_method(names::WRITE_FAILURES, "put", &primary_old), 1);
        assert_eq!(
            per_method(names::DEAD_LETTERS, "put", &[("store", "new")]),
            2
        );
        assert_eq!(
            per_method(names::DEAD_LETTERS, "delete", &[("store", "new")]),
            1
        );
        // Listed by the trait: a zero series before any event, and a read
        // has no write series.
        assert_eq!(
            per_method(names::SHADOW_READS, "get", &[("outcome", "match")]),
            0
        );
        assert!(value(&taken, names::DEAD_LETTERS, &[("method", "get")]).is_none());
        assert_eq!(
            gauge(&taken, names::DEAD_LETTERS_HELD, &[("trait", "Kv")]),
            adapter.dead_letters().len() as f64
        );
        assert_eq!(
            gauge(
                &taken,
                names::PHASE,
                &[("trait", "Kv"), ("phase", "dual_write")]
            ),
            1.0
        );
        assert_eq!(
            gauge(
                &taken,
                names::PHASE,
                &[("trait", "Kv"), ("phase", "prepare")]
            ),
            0.0
        );
        // 41 dual-write calls on this thread: at least two were timed.
        match value(
            &taken,
            names::CALL_DURATION,
            &[("trait", "Kv"), ("method", "put")],
        ) {
            Some(DebugValue::Histogram(samples)) => {
                assert!(samples.len() >= 2, "{samples:?}");
                assert!(samples.iter().all(|s| s.into_inner() > 0.0));
            }
            other => panic!("no call durations: {other:?}"),
        }
        let p99 = |part: &str| gauge(&taken, names::LATENCY_P99, &[("part", part)]);
        assert!(p99("call") >= p99("primary") && p99("primary") > 0.0);

        // Shadow reads: key 3 is missing in New (its write failed).
        for phase in [Phase::Backfill, Phase::ShadowRead] {
            adapter
                .migration()
                .set_phase(phase)
                .expect("one step forward");
        }
        for key in [1, 2, 3, 4] {
            assert!(adapter.get(key).is_ok());
        }
        let before = adapter.stats();
        assert!(adapter.put(50, 5).is_ok());
        publisher.publish();
        let stats = adapter.stats();
        assert_eq!((stats.reads_matched, stats.reads_mismatched), (3, 1));
        let taken = take(&snapshotter);
        let shadow = |phase: &str, outcome: &str| {
            let labels = [
                ("trait", "Kv"),
                ("method", "get"),
                ("phase", phase),
                ("outcome", outcome),
            ];
            counter(&taken, names::SHADOW_READS, &labels)
        };
        // Every count is under the phase it was made in.
        assert_eq!(shadow("shadow_read", "match"), stats.reads_matched);
        assert_eq!(shadow("shadow_read", "mismatch"), stats.reads_mismatched);
        assert_eq!(shadow("shadow_read", "pending"), 0);
        assert_eq!(shadow("dual_write", "match"), 0);
        assert_eq!(shadow("backfill", "match"), 0);
        let primary_ok = |phase: &str| {
            let labels = [
                ("trait", "Kv"),
                ("phase", phase),
                ("store", "old"),
                ("role", "primary"),
                ("outcome", "ok"),
            ];
            counter(&taken, names::WRITES, &labels)
        };
        assert_eq!(primary_ok("dual_write"), before.primary_writes_ok);
        assert_eq!(primary_ok("shadow_read"), 1);
        assert_eq!(primary_ok("backfill"), 0);
        assert!(value(&taken, names::WRITES, &[("phase", "cutover")]).is_none());
        assert_eq!(
            counter(
                &taken,
                names::WRITE_FAILURES,
                &[
                    ("method", "put"),
                    ("phase", "dual_write"),
                    ("store", "new"),
                    ("role", "secondary")
                ]
            ),
            2
        );
        assert_eq!(
            counter(
                &taken,
                names::WRITE_FAILURES,
                &[
                    ("method", "put"),
                    ("phase", "shadow_read"),
                    ("store", "new"),
                    ("role", "secondary")
                ]
            ),
            0
        );
        assert_eq!(
            gauge(
                &taken,
                names::PHASE,
                &[("trait", "Kv"), ("phase", "shadow_read")]
            ),
            1.0
        );
    });
}

#[test]
fn lane_retries_dead_letters_depth_and_lag_are_published() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let new = Mem::failing(&[5, 6]);
        let held = Arc::clone(&new.held);
        let adapter = KvDualWrite::new(Mem::default(), new, Migration::new(Phase::DualWrite))
            .with_async_secondary(
                LaneConfig::default()
                    .with_lanes(1)
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(1))
                    .with_max_backoff(Duration::from_millis(2)),
            );
        let publisher = adapter
            .core()
            .metrics_publisher()
            .with_label("adapter", "eu");
        for key in 0..10 {
            assert!(adapter.put(key, key).is_ok());
        }
        adapter.flush(Duration::from_secs(30)).expect("flushed");
        publisher.publish();

        let stats = adapter.stats();
        assert_eq!(stats.dead_letters, 2);
        assert_eq!(stats.secondary_retries, 4);
        assert_eq!(stats.new_writes_failed, 6);
        let taken = take(&snapshotter);
        assert_writes_match(&taken, &stats);
        let labels = |pairs: &[(&'static str, &'static str)]| {
            let mut all = vec![("trait", "Kv"), ("adapter", "eu"), ("method", "put")];
            all.extend_from_slice(pairs);
            all
        };
        let new_store = labels(&[("store", "new")]);
        assert_eq!(counter(&taken, names::SECONDARY_RETRIES, &new_store), 4);
        assert_eq!(counter(&taken, names::DEAD_LETTERS, &new_store), 2);
        let secondary = labels(&[("store", "new"), ("role", "secondary")]);
        assert_eq!(counter(&taken, names::WRITE_FAILURES, &secondary), 6);
        // Depth, lag and pending of one publish.
        let lanes = |taken: &Taken| {
            (
                gauge(taken, names::LANE_QUEUE_DEPTH, &[("lane", "0")]),
                gauge(taken, names::REPLICATION_LAG, &[("adapter", "eu")]),
                gauge(taken, names::SECONDARY_PENDING, &[("adapter", "eu")]),
            )
        };
        assert_eq!(lanes(&taken), (0.0, 0.0, 0.0));

        // Hold the secondary store: writes queue up and age.
        *held.0.lock().unwrap() = true;
        for key in 20..25 {
            assert!(adapter.put(key, key).is_ok());
        }
        publisher.publish();
        thread::sleep(Duration::from_millis(60));
        publisher.publish();
        let (depth, lag, pending) = lanes(&take(&snapshotter));
        assert!(
            depth >= 4.0,
            "the lane holds one write, the rest wait: {depth}"
        );
        assert_eq!(pending, 5.0);
        assert!(lag >= 0.05, "lag {lag}");
        *held.0.lock().unwrap() = false;
        held.1.notify_all();
        adapter.flush(Duration::from_secs(30)).expect("flushed");
        publisher.publish();
        let taken = take(&snapshotter);
        assert_eq!(lanes(&taken), (0.0, 0.0, 0.0));
        assert_writes_match(&taken, &adapter.stats());
    });
}

#[test]
fn a_spawned_publisher_publishes_on_its_own_and_once_more_when_stopped() {
    // The publisher's thread registers its handles with the global
    // recorder: this is the only test of this binary that installs one.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only global recorder of this binary");
    let adapter = KvDualWrite::new(
        Mem::default(),
        Mem::failing(&[1]),
        Migration::new(Phase::DualWrite),
    );
    let publishing = adapter
        .core()
        .metrics_publisher()
        .with_label("adapter", "spawned")
        .spawn(Duration::from_millis(5))
        .expect("a thread");
    assert!(adapter.put(1, 1).is_ok());
    let labels = [("adapter", "spawned"), ("method", "put"), ("store", "new")];
    let dead = |taken: &Taken| {
        value(taken, names::DEAD_LETTERS, &labels).map(|value| match value {
            DebugValue::Counter(value) => *value,
            other => panic!("not a counter: {other:?}"),
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // A snapshot resets the recorder: wait for a publish that sees it.
    while dead(&take(&snapshotter)) != Some(1) {
        assert!(std::time::Instant::now() < deadline, "never published");
        thread::sleep(Duration::from_millis(2));
    }
    assert!(adapter.put(1, 2).is_ok());
    publishing.stop();
    assert_eq!(
        dead(&take(&snapshotter)),
        Some(2),
        "stopping publishes once more"
    );
}

#[test]
fn backfill_progress_and_reconciliation_gap_are_published() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let adapter = KvDualWrite::new(
            Mem::default(),
            Mem::default(),
            Migration::new(Phase::Backfill),
        );
        let publisher = adapter.core().metrics_publisher();
        let report = ReconcileReport {
            missing_in_new: 3,
            different: 2,
            repaired: 4,
            ..ReconcileReport::default()
        };
        publisher.record_reconcile(&report);
        let progress = ProgressSnapshot {
            done: 250,
            written: 200,
            total: Some(1000),
            finished: false,
            rows_per_second: 50.0,
            eta: None,
        };
        record_backfill(&[metrics::Label::new("backfill", "users")], &progress);

        let taken = take(&snapshotter);
        assert_eq!(gauge(&taken, names::RECONCILE_GAP, &[("trait", "Kv")]), 1.0);
        assert_eq!(
            gauge(
                &taken,
                names::RECONCILE_DIFFERENCES,
                &[("kind", "missing_in_new")]
            ),
            3.0
        );
        assert_eq!(
            counter(&taken, names::RECONCILE_RUNS, &[("trait", "Kv")]),
            1
        );
        let rows = |kind: &str| {
            gauge(
                &taken,
                names::BACKFILL_ROWS,
                &[("backfill", "users"), ("kind", kind)],
            )
        };
        assert_eq!(
            (rows("done"), rows("written"), rows("total")),
            (250.0, 200.0, 1000.0)
        );
        assert_eq!(
            gauge(&taken, names::BACKFILL_FRACTION, &[("backfill", "users")]),
            0.25
        );
    });
}

#[test]
fn publishing_without_a_recorder_is_harmless() {
    let adapter = KvDualWrite::new(
        Mem::default(),
        Mem::failing(&[2]),
        Migration::new(Phase::DualWrite),
    );
    let publisher = adapter.core().metrics_publisher();
    for key in 0..4 {
        assert!(adapter.put(key, key).is_ok());
    }
    publisher.publish();
    assert_eq!(adapter.stats().dead_letters, 1);
    drop(publisher);
    assert!(adapter.put(9, 9).is_ok());
}

/// Writers keep writing while the global phase moves ShadowRead → Cutover
/// (the primary moves from Old to New) and back: every write is counted
/// under the phase it was routed by, and the phases add up to the totals.
#[test]
fn counts_are_split_exactly_at_a_phase_change_under_load() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let adapter = Arc::new(KvDualWrite::new(
            Mem::default(),
            Mem::default(),
            Migration::new(Phase::ShadowRead),
        ));
        let publisher = adapter.core().metrics_publisher();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..3_u64)
            .map(|t| {
                let adapter = Arc::clone(&adapter);
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut key = t * 1_000_000;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        adapter.put(key % 64, key).expect("in-memory write");
                        key += 1;
                    }
                })
            })
            .collect();
        for phase in [Phase::Cutover, Phase::ShadowRead, Phase::Cutover] {
            thread::sleep(Duration::from_millis(20));
            adapter
                .migration()
                .change(dualwrite_runtime::PhaseChange::to(phase).forced())
                .expect("a phase change");
            publisher.publish();
        }
        thread::sleep(Duration::from_millis(20));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for writer in writers {
            writer.join().expect("a writer");
        }
        publisher.publish();
        let taken = take(&snapshotter);
        let writes = |phase: &str, store: &str, role: &str| {
            let labels = [
                ("phase", phase),
                ("store", store),
                ("role", role),
                ("outcome", "ok"),
            ];
            counter(&taken, names::WRITES, &labels)
        };
        // In ShadowRead Old is the primary, in Cutover New is.
        assert_eq!(writes("shadow_read", "new", "primary"), 0);
        assert_eq!(writes("cutover", "old", "primary"), 0);
        assert!(writes("shadow_read", "old", "primary") > 0);
        assert!(writes("cutover", "new", "primary") > 0);
        // Every primary write had its secondary, in the same phase.
        assert_eq!(
            writes("shadow_read", "old", "primary"),
            writes("shadow_read", "new", "secondary")
        );
        assert_eq!(
            writes("cutover", "new", "primary"),
            writes("cutover", "old", "secondary")
        );
        let stats = adapter.stats();
        assert_eq!(
            writes("shadow_read", "old", "primary") + writes("cutover", "new", "primary"),
            stats.primary_writes_ok
        );
    });
}

/// The change-data-capture follower's counters and lag are published.
#[cfg(feature = "outbox-sqlite")]
mod follower {
    use super::*;
    use dualwrite_runtime::Store;
    use dualwrite_runtime::cdc::{
        Cdc, CdcConfig, CdcError, ChangeBatch, ChangeKind, ChangeSource, Column, Observed,
        Position, RowChange, Value,
    };
    use dualwrite_runtime::outbox::sqlite::SqliteJournal;
    use dualwrite_runtime::outbox::{Durability, Journal, JournalCommand, NewRecord, OutboxConfig};

    #[dual_write(serde)]
    pub trait Notes {
        #[dual_write(key = key)]
        fn put(&self, key: u64, value: u64) -> Result<(), String>;
    }

    impl Notes for Mem {
        fn put(&self, key: u64, value: u64) -> Result<(), String> {
            Kv::put(self, key, value)
        }
    }

    /// A change stream in memory: positions 1, 2, ... in push order.
    #[derive(Clone, Default)]
    struct Feed {
        changes: Arc<Mutex<Vec<RowChange>>>,
        confirmed: Arc<Mutex<u64>>,
        /// While set, reads fail as a lost connection would.
        failing: Arc<std::sync::atomic::AtomicBool>,
        /// Confirms that fail (after the changes were journaled) before
        /// one succeeds.
        failed_confirms: Arc<std::sync::atomic::AtomicU32>,
        /// While set, another follower holds the feed: opening it, and
        /// every read of a follower that held it, fail with `Busy`.
        elsewhere: Arc<std::sync::atomic::AtomicBool>,
        /// While set, the follower's lock is gone with its connection: its
        /// reads fail with `LockLost` (opening again works).
        lock_lost: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Feed {
        fn push(&self, table: &str, key: u64, value: &str) {
            let mut changes = self.changes.lock().unwrap();
            let position = changes.len() as u64 + 1;
            let column = |name: &str, value: &str| Column {
                name: name.to_owned(),
                type_name: "bigint".to_owned(),
                value: Value::Text(value.to_owned()),
            };
            changes.push(RowChange {
                position: Position(position),
                xid: position,
                index: 0,
                schema: "public".to_owned(),
                table: table.to_owned(),
                kind: ChangeKind::Insert,
                columns: vec![column("key", &key.to_string()), column("value", value)],
                old_key: Vec::new(),
            });
        }
    }

    impl Feed {
        fn busy(&self) -> Result<(), CdcError> {
            if self.lock_lost.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(CdcError::LockLost {
                    source: self.describe(),
                });
            }
            if self.elsewhere.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(CdcError::Busy {
                    source: self.describe(),
                    detail: "another follower holds the feed".to_owned(),
                });
            }
            Ok(())
        }

        fn head_now(&self) -> Position {
            Position(self.changes.lock().unwrap().len() as u64 + 1)
        }
    }

    impl ChangeSource for Feed {
        fn open(&mut self) -> Result<Position, CdcError> {
            self.lock_lost
                .store(false, std::sync::atomic::Ordering::SeqCst);
            self.busy()?;
            Ok(Position(*self.confirmed.lock().unwrap()))
        }

        fn head(&mut self) -> Result<Position, CdcError> {
            self.busy()?;
            Ok(self.head_now())
        }

        fn observe(&mut self) -> Result<Observed, CdcError> {
            Ok(Observed {
                head: self.head_now(),
                confirmed: Position(*self.confirmed.lock().unwrap()),
            })
        }

        fn read(&mut self, limit: usize) -> Result<ChangeBatch, CdcError> {
            self.busy()?;
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(CdcError::Source {
                    source: self.describe(),
                    during: "reading changes",
                    error: "connection reset".to_owned(),
                });
            }
            let confirmed = *self.confirmed.lock().unwrap();
            let all = self.changes.lock().unwrap();
            let head = all.len() as u64 + 1;
            let changes: Vec<RowChange> = all
                .iter()
                .filter(|change| change.position.0 >= confirmed)
                .take(limit)
                .cloned()
                .collect();
            // Nothing left: everything up to the head was read.
            let through = changes
                .last()
                .map_or(confirmed.max(head), |change| change.position.0 + 1);
            let more = changes.len() >= limit;
            Ok(ChangeBatch {
                changes,
                through: Position(through),
                more,
            })
        }

        fn confirm(&mut self, through: Position) -> Result<(), CdcError> {
            self.busy()?;
            let failing = self
                .failed_confirms
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |left| left.checked_sub(1),
                )
                .is_ok();
            if failing {
                return Err(CdcError::Source {
                    source: self.describe(),
                    during: "advancing the slot",
                    error: "connection reset".to_owned(),
                });
            }
            let mut confirmed = self.confirmed.lock().unwrap();
            *confirmed = (*confirmed).max(through.0);
            Ok(())
        }

        fn describe(&self) -> String {
            "an in-memory feed".to_owned()
        }
    }

    fn map(change: &RowChange) -> Option<Result<NotesWrite, String>> {
        if change.table != "notes" {
            return None;
        }
        Some((|| {
            Ok(NotesWrite::Put {
                key: change.parse("key")?,
                value: change.parse("value")?,
            })
        })())
    }

    #[test]
    fn the_followers_counts_and_lag_are_published() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let journal = temp_journal("metrics");
        let feed = Feed::default();
        for key in 0..3 {
            feed.push("notes", key, "7");
        }
        feed.push("other", 9, "1");
        feed.push("notes", 4, "not a number");
        metrics::with_local_recorder(&recorder, || {
            let adapter = NotesDualWrite::new(
                Mem::default(),
                Mem::default(),
                Migration::new(Phase::DualWrite),
            )
            .with_cdc(
                journal,
                Cdc::new(feed.clone(), map)
                    .with_config(CdcConfig::default().with_poll_interval(Duration::from_millis(5))),
                OutboxConfig::default().with_max_attempts(1),
            )
            .expect("start change data capture");
            adapter.flush(Duration::from_secs(30)).expect("flush");
            let publisher = adapter.core().metrics_publisher();
            publisher.publish();
            let taken = take(&snapshotter);
            let changes = |outcome: &str| {
                counter(
                    &taken,
                    names::CDC_CHANGES,
                    &[("trait", "Notes"), ("outcome", outcome)],
                )
            };
            assert_eq!(changes("read"), 5);
            assert_eq!(changes("journaled"), 4, "mapped, and the rejected one");
            assert_eq!(changes("skipped"), 1);
            assert_eq!(changes("rejected"), 1);
            assert_eq!(changes("duplicate"), 0);
            assert_eq!(
                gauge(&taken, names::CDC_FAILING, &[("trait", "Notes")]),
                0.0
            );
            let lag = gauge(&taken, names::CDC_LAG, &[("trait", "Notes")]);
            assert!((0.0..5.0).contains(&lag), "caught up by the flush: {lag}");
            assert_eq!(Kv::get(adapter.new_store(), 2), Ok(Some(7)));
            // Stopped: the lag is 0, not frozen.
            assert!(adapter.shutdown(Duration::from_secs(30)).complete);
            publisher.publish();
            let taken = take(&snapshotter);
            assert_eq!(gauge(&taken, names::CDC_LAG, &[("trait", "Notes")]), 0.0);
        });
    }

    /// A journal without flushes in a new directory.
    fn temp_journal(tag: &str) -> Arc<SqliteJournal> {
        let dir = std::env::temp_dir().join(format!(
            "dualwrite-cdc-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Arc::new(SqliteJournal::open(dir.join("journal.db"), Durability::None).unwrap())
    }

    /// An adapter following `feed` into a journal in a new directory, with
    /// quick polls and retries.
    fn feed_adapter(feed: &Feed, tag: &str) -> NotesDualWrite<Mem, Mem> {
        let journal = temp_journal(tag);
        NotesDualWrite::new(
            Mem::default(),
            Mem::default(),
            Migration::new(Phase::DualWrite),
        )
        .with_cdc(
            journal,
            Cdc::new(feed.clone(), map).with_config(
                CdcConfig::default()
                    .with_poll_interval(Duration::from_millis(5))
                    .with_retry_interval(Duration::from_millis(20)),
            ),
            OutboxConfig::default(),
        )
        .expect("start change data capture")
    }

    /// A flush while the source's reads fail (a connection the server
    /// ended, a restart) waits for them to succeed again, up to its
    /// deadline, instead of failing at the first failed read.
    #[test]
    fn a_flush_waits_out_a_source_fault() {
        let feed = Feed::default();
        let adapter = feed_adapter(&feed, "fault");
        feed.failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for key in 0..3 {
            feed.push("notes", key, "5");
        }
        let failing = Arc::clone(&feed.failing);
        let heal = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            failing.store(false, std::sync::atomic::Ordering::SeqCst);
        });
        adapter
            .flush(Duration::from_secs(30))
            .expect("the flush waits for the source to come back");
        heal.join().unwrap();
        assert_eq!(Kv::get(adapter.new_store(), 2), Ok(Some(5)));
        assert_eq!(adapter.core().cdc_status().expect("status").journaled, 3);
        // A fault longer than the deadline still fails the flush.
        feed.failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        feed.push("notes", 7, "1");
        assert!(adapter.flush(Duration::from_millis(300)).is_err());
        feed.failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        adapter.flush(Duration::from_secs(30)).expect("flush");
        assert!(adapter.shutdown(Duration::from_secs(30)).complete);
    }

    /// A confirm that fails after its changes were journaled: the next
    /// round reads them again, finds them in the journal, and goes on (it
    /// used to insert them again, fail on their ids, and stay there).
    #[test]
    fn a_failed_confirm_after_journaling_does_not_stop_the_follower() {
        let feed = Feed::default();
        let adapter = feed_adapter(&feed, "confirm");
        adapter.flush(Duration::from_secs(30)).expect("flush");
        feed.failed_confirms
            .store(2, std::sync::atomic::Ordering::SeqCst);
        for key in 0..3 {
            feed.push("notes", key, "8");
        }
        adapter
            .flush(Duration::from_secs(10))
            .expect("the follower gets past the failed confirms");
        feed.push("notes", 9, "9");
        adapter.flush(Duration::from_secs(10)).expect("and goes on");
        assert_eq!(Kv::get(adapter.new_store(), 9), Ok(Some(9)));
        let status = adapter.core().cdc_status().expect("status");
        assert_eq!(status.journaled, 4, "{status:?}");
        assert!(status.duplicates >= 3, "{status:?}");
        assert!(adapter.shutdown(Duration::from_secs(30)).complete);
    }

    /// A journal that says it is shared by several instances (as
    /// PostgreSQL's is), over a SQLite journal: lets one adapter's follower
    /// stand by while the test plays the other instance's follower.
    #[derive(Debug)]
    struct Shared(Arc<SqliteJournal>);

    impl dualwrite_runtime::outbox::Journal for Shared {
        fn location(&self) -> &str {
            self.0.location()
        }
        fn next_sequence(&self) -> u64 {
            self.0.next_sequence()
        }
        fn append(
            &self,
            record: &dualwrite_runtime::outbox::NewRecord,
        ) -> Result<(), dualwrite_runtime::outbox::OutboxError> {
            self.0.append(record)
        }
        fn append_many(
            &self,
            records: &[dualwrite_runtime::outbox::NewRecord],
        ) -> Result<(), dualwrite_runtime::outbox::OutboxError> {
            self.0.append_many(records)
        }
        fn contains(
            &self,
            id: &dualwrite_runtime::outbox::IdempotencyId,
        ) -> Result<bool, dualwrite_runtime::outbox::OutboxError> {
            self.0.contains(id)
        }
        fn pending_keys(
            &self,
            stream: &str,
        ) -> Result<Vec<(i64, Option<u64>)>, dualwrite_runtime::outbox::OutboxError> {
            self.0.pending_keys(stream)
        }
        fn claim(
            &self,
            stream: &str,
            after: i64,
            limit: usize,
        ) -> Result<dualwrite_runtime::outbox::Claimed, dualwrite_runtime::outbox::OutboxError>
        {
            self.0.claim(stream, after, limit)
        }
        fn record_outcomes(
            &self,
            outcomes: &[dualwrite_runtime::outbox::Outcome],
        ) -> Result<(), dualwrite_runtime::outbox::OutboxError> {
            self.0.record_outcomes(outcomes)
        }
        fn prune(
            &self,
            before: std::time::SystemTime,
            limit: usize,
        ) -> Result<u64, dualwrite_runtime::outbox::OutboxError> {
            self.0.prune(before, limit)
        }
        fn attach(
            &self,
            stream: &str,
            listener: std::sync::Weak<dyn dualwrite_runtime::outbox::JournalListener>,
        ) -> Result<(), dualwrite_runtime::outbox::OutboxError> {
            self.0.attach(stream, listener)
        }
        fn dead_letters(
            &self,
        ) -> Result<
            Vec<dualwrite_runtime::outbox::JournalRecord>,
            dualwrite_runtime::outbox::OutboxError,
        > {
            dualwrite_runtime::outbox::Journal::dead_letters(&*self.0)
        }
        fn replay(&self, id: i64) -> Result<i64, dualwrite_runtime::outbox::OutboxError> {
            dualwrite_runtime::outbox::Journal::replay(&*self.0, id)
        }
        fn discard(&self, id: i64) -> Result<(), dualwrite_runtime::outbox::OutboxError> {
            dualwrite_runtime::outbox::Journal::discard(&*self.0, id)
        }
        fn is_shared(&self) -> bool {
            true
        }
    }

    /// A follower over a shared journal whose source another follower
    /// holds stands by: its flush waits for the other follower's confirmed
    /// position to pass the head (and fails at its deadline while it does
    /// not); it takes the source over once the other lets go, reading from
    /// where that one confirmed; and it stands by again when it finds the
    /// source taken from it. Over a journal only it drains, the held source
    /// is an error instead.
    #[test]
    fn a_follower_stands_by_while_another_holds_the_source() {
        use std::sync::atomic::Ordering::SeqCst;
        let feed = Feed::default();
        feed.elsewhere.store(true, SeqCst);
        let config = CdcConfig::default()
            .with_poll_interval(Duration::from_millis(5))
            .with_retry_interval(Duration::from_millis(20))
            .with_standby_interval(Duration::from_millis(20));
        let refused = NotesDualWrite::new(
            Mem::default(),
            Mem::default(),
            Migration::new(Phase::DualWrite),
        )
        .with_cdc(
            temp_journal("refused"),
            Cdc::new(feed.clone(), map).with_config(config.clone()),
            OutboxConfig::default(),
        );
        assert!(
            matches!(refused, Err(CdcError::Busy { .. })),
            "a local journal cannot stand by"
        );

        let journal = Arc::new(Shared(temp_journal("standby")));
        let adapter = NotesDualWrite::new(
            Mem::default(),
            Mem::default(),
            Migration::new(Phase::DualWrite),
        )
        .with_cdc(
            journal.clone(),
            Cdc::new(feed.clone(), map).with_config(config),
            OutboxConfig::default().with_stream("notes"),
        )
        .expect("a standby");
        let status = adapter.core().cdc_status().expect("status");
        assert!(status.standby && status.takeovers == 0, "{status:?}");

        // The other follower has not confirmed the new changes: the
        // standby's flush cannot pass them.
        for key in 0..3 {
            feed.push("notes", key, "4");
        }
        assert!(adapter.flush(Duration::from_millis(300)).is_err());
        // It confirms them (journaled in the shared journal, as far as
        // this adapter knows): the flush passes, this follower read
        // nothing.
        *feed.confirmed.lock().unwrap() = feed.head_now().0;
        adapter.flush(Duration::from_secs(10)).expect("flush");
        let status = adapter.core().cdc_status().expect("status");
        assert_eq!(
            (status.changes_read, status.confirmed),
            (0, feed.head_now())
        );
        assert_eq!(Kv::get(adapter.new_store(), 1), Ok(None));

        // The other follower goes away with three changes read and not
        // confirmed, two of them journaled: this one takes over, reads the
        // three, finds two in the journal and journals the third.
        feed.push("notes", 5, "6");
        feed.push("notes", 6, "7");
        feed.push("notes", 7, "8");
        let records: Vec<NewRecord> = feed.changes.lock().unwrap()[3..5]
            .iter()
            .map(|change| {
                let command = map(change).expect("a note").expect("mapped");
                NewRecord {
                    stream: "notes".to_owned(),
                    idempotency_id: change.idempotency_id("notes"),
                    sequence: journal.next_sequence(),
                    key_text: command.key_text(),
                    key_hash: command.key_hash(),
                    method: command.method().to_owned(),
                    target: Store::New,
                    payload: JournalCommand::encode(&command).expect("encode"),
                }
            })
            .collect();
        journal.append_many(&records).expect("the other follower's");
        feed.elsewhere.store(false, SeqCst);
        adapter.flush(Duration::from_secs(10)).expect("taken over");
        let status = adapter.core().cdc_status().expect("status");
        assert!(!status.standby && status.takeovers == 1, "{status:?}");
        assert_eq!((status.duplicates, status.journaled), (2, 1), "{status:?}");
        assert_eq!(Kv::get(adapter.new_store(), 6), Ok(Some(7)));
        assert_eq!(Kv::get(adapter.new_store(), 7), Ok(Some(8)));

        // Its lock goes with its connection: it stands by and opens the
        // source again rather than reading on without the lock.
        feed.lock_lost.store(true, SeqCst);
        feed.push("notes", 9, "1");
        adapter
            .flush(Duration::from_secs(10))
            .expect("opened again");
        let status = adapter.core().cdc_status().expect("status");
        assert!(!status.standby && status.takeovers == 2, "{status:?}");
        assert_eq!(Kv::get(adapter.new_store(), 9), Ok(Some(1)));

        // The source is taken from it (its connection ended, another
        // follower took the lock): it stands by again.
        feed.elsewhere.store(true, SeqCst);
        feed.push("notes", 8, "9");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !adapter.core().cdc_status().expect("status").standby {
            assert!(std::time::Instant::now() < deadline, "still leading");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(adapter.flush(Duration::from_millis(200)).is_err());
        feed.elsewhere.store(false, SeqCst);
        adapter
            .flush(Duration::from_secs(10))
            .expect("taken over again");
        assert_eq!(Kv::get(adapter.new_store(), 8), Ok(Some(9)));
        assert_eq!(adapter.core().cdc_status().expect("status").takeovers, 3);
        assert!(adapter.shutdown(Duration::from_secs(30)).complete);
    }

    /// The standby gauge is 1 while another follower holds the source, 0
    /// once this one took it over.
    #[test]
    fn the_standby_gauge_is_published() {
        use std::sync::atomic::Ordering::SeqCst;
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let feed = Feed::default();
        feed.elsewhere.store(true, SeqCst);
        metrics::with_local_recorder(&recorder, || {
            let adapter = NotesDualWrite::new(
                Mem::default(),
                Mem::default(),
                Migration::new(Phase::DualWrite),
            )
            .with_cdc(
                Arc::new(Shared(temp_journal("gauge"))),
                Cdc::new(feed.clone(), map).with_config(
                    CdcConfig::default()
                        .with_poll_interval(Duration::from_millis(5))
                        .with_standby_interval(Duration::from_millis(20)),
                ),
                OutboxConfig::default(),
            )
            .expect("a standby");
            let publisher = adapter.core().metrics_publisher();
            let standby = || {
                publisher.publish();
                gauge(
                    &take(&snapshotter),
                    names::CDC_STANDBY,
                    &[("trait", "Notes")],
                )
            };
            assert_eq!(standby(), 1.0);
            feed.elsewhere.store(false, SeqCst);
            adapter.flush(Duration::from_secs(10)).expect("taken over");
            assert_eq!(standby(), 0.0);
            assert!(adapter.shutdown(Duration::from_secs(30)).complete);
        });
    }
}

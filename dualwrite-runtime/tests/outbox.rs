//! The outbox through `DualWriteCore`, without the macro: the write path
//! (prepare, primary, hand-off), the appliers' retries and attempts, the
//! record's context on the secondary, panics, undecodable records, and a
//! journal whose appends fail.

#![cfg(feature = "outbox-sqlite")]

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dualwrite_runtime::outbox::sqlite::SqliteJournal;
use dualwrite_runtime::outbox::{
    Claimed, Durability, IdempotencyId, Journal, JournalCodec, JournalListener, JournalRecord,
    NewRecord, OutboxConfig, OutboxError, Outcome, RecordState, Side, WriteContext,
};
use dualwrite_runtime::{
    DualWriteCore, LaneContext, Migration, Phase, RoutingKey, Store, WriteCommand,
};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Put {
    key: u64,
    value: u64,
}

impl WriteCommand for Put {
    fn method(&self) -> &'static str {
        "put"
    }
    fn key_text(&self) -> Option<String> {
        Some(self.key.to_string())
    }
    fn key_hash(&self) -> Option<u64> {
        Some(self.key.route_hash())
    }
}

const WAIT: Duration = Duration::from_secs(30);

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dualwrite-runtime-outbox-{name}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("journal.db")
}

fn config() -> OutboxConfig {
    OutboxConfig::default()
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(2))
        .with_poll_interval(Duration::from_millis(5))
}

/// What the fake secondary saw of each call: (command, attempt, context).
type Calls = Arc<Mutex<Vec<(Put, u32, Option<WriteContext>)>>>;

/// Writes `command` through the core's write path, as generated code does
/// for a blocking method: ticket, outbox scope, primary, hand-off.
fn write(core: &DualWriteCore<Put>, command: Put, primary_ok: bool) {
    let key = command.key;
    let mut ticket = core.begin_write("put", Some(&key), Some(&key), false);
    assert!(ticket.secondary().is_some());
    let copy = command.clone();
    let _scope = ticket.outbox_scope(|| copy);
    // The primary call sees the record it may journal.
    let ctx = WriteContext::current().expect("a context during the primary call");
    assert_eq!((ctx.side(), ctx.attempt()), (Side::Primary, 0));
    assert_eq!(ctx.key_text(), Some(key.to_string().as_str()));
    if !ticket.primary_done(primary_ok) {
        return;
    }
    assert!(ticket.is_async());
    ticket.submit(command);
}

#[test]
fn the_appliers_retry_with_the_same_record_and_count_attempts() {
    let journal = Arc::new(SqliteJournal::open(temp_path("attempts"), Durability::None).unwrap());
    let calls: Calls = Arc::default();
    let seen = Arc::clone(&calls);
    let mut core: DualWriteCore<Put> = DualWriteCore::new(Migration::new(Phase::DualWrite));
    core.start_outbox(
        journal.clone(),
        config().with_appliers(1),
        JournalCodec::of(),
        move |lane: &LaneContext, target, command: &Put| {
            assert_eq!(target, Store::New);
            let ctx = WriteContext::current();
            seen.lock()
                .unwrap()
                .push((command.clone(), lane.attempt(), ctx));
            // Odd values fail twice.
            if command.value % 2 == 1 && lane.attempt() < 3 {
                return Err("flaky".to_owned());
            }
            Ok(())
        },
    )
    .unwrap();
    for value in 1..=4 {
        write(&core, Put { key: 7, value }, true);
    }
    // A failed primary write hands nothing over.
    write(&core, Put { key: 7, value: 99 }, false);
    core.flush(WAIT).unwrap();
    let calls = calls.lock().unwrap();
    let applied: Vec<(u64, u32)> = calls.iter().map(|(c, a, _)| (c.value, *a)).collect();
    assert_eq!(
        applied,
        vec![
            (1, 1),
            (1, 2),
            (1, 3),
            (2, 1),
            (3, 1),
            (3, 2),
            (3, 3),
            (4, 1)
        ]
    );
    // Each attempt saw the record's context: the same idempotency id and
    // sequence on every attempt, the attempt number, apply side.
    let first: Vec<&WriteContext> = calls
        .iter()
        .filter(|(c, _, _)| c.value == 1)
        .map(|(_, _, ctx)| ctx.as_ref().expect("a context"))
        .collect();
    assert!(first.iter().all(|ctx| ctx.side() == Side::Apply));
    assert!(
        first
            .iter()
            .all(|ctx| ctx.idempotency_id() == first[0].idempotency_id())
    );
    assert_eq!(
        first.iter().map(|ctx| ctx.attempt()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let sequences: Vec<u64> = calls
        .iter()
        .filter(|(_, attempt, _)| *attempt == 1)
        .map(|(_, _, ctx)| ctx.as_ref().unwrap().sequence())
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]));
    let snapshot = core.snapshot();
    assert_eq!(snapshot.secondary_retries, 4);
    assert_eq!(snapshot.secondary_pending, 0);
    let report = core.shutdown(WAIT);
    assert!(report.complete);
    let records = journal.records("Put").unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(
        records.iter().map(|r| r.attempts).collect::<Vec<_>>(),
        vec![3, 1, 3, 1]
    );
    assert!(records.iter().all(|r| r.state == RecordState::Done));
}

#[test]
fn a_panicking_secondary_and_an_undecodable_record_end_as_dead_letters() {
    let path = temp_path("panic");
    let journal = Arc::new(SqliteJournal::open(&path, Durability::None).unwrap());
    // A record written by an older version of the command type.
    journal
        .append(&NewRecord {
            stream: "Put".to_owned(),
            idempotency_id: IdempotencyId::generate(),
            sequence: journal.next_sequence(),
            key_text: Some("1".to_owned()),
            key_hash: Some(1_u64.route_hash()),
            method: "put".to_owned(),
            target: Store::New,
            payload: "{\"key\":1,\"amount\":5}".to_owned(),
        })
        .unwrap();
    let mut core: DualWriteCore<Put> = DualWriteCore::new(Migration::new(Phase::DualWrite));
    core.start_outbox(
        journal.clone(),
        config().with_max_attempts(2),
        JournalCodec::of(),
        |_: &LaneContext, _, command: &Put| {
            if command.value == 13 {
                panic!("unlucky");
            }
            Ok(())
        },
    )
    .unwrap();
    // The record of the earlier run counts as pending from the start.
    assert!(core.snapshot().secondary_pending >= 1 || journal.dead_letters().unwrap().len() == 1);
    write(&core, Put { key: 2, value: 13 }, true);
    write(&core, Put { key: 2, value: 14 }, true);
    core.flush(WAIT).unwrap();
    let letters = journal.dead_letters().unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let undecodable = &letters[0];
    assert!(
        undecodable
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("cannot decode the journaled command"),
        "{undecodable:?}"
    );
    assert_eq!(undecodable.attempts, 0);
    let panicked = &letters[1];
    assert_eq!(
        panicked.last_error.as_deref(),
        Some("secondary write panicked: unlucky")
    );
    assert_eq!(panicked.attempts, 2);
    assert_eq!(
        panicked.command::<Put>().unwrap(),
        Put { key: 2, value: 13 }
    );
    // The later write of the key was still applied.
    assert_eq!(core.snapshot().secondary_writes_ok, 1);
    assert_eq!(core.snapshot().dead_letters, 2);
}

#[test]
fn core_submit_journals_too() {
    let journal = Arc::new(SqliteJournal::open(temp_path("submit"), Durability::PerWrite).unwrap());
    let applied = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&applied);
    let mut core: DualWriteCore<Put> = DualWriteCore::new(Migration::new(Phase::DualWrite));
    core.start_outbox(
        journal.clone(),
        config().with_stream("puts"),
        JournalCodec::of(),
        move |_: &LaneContext, _, command: &Put| {
            sink.lock().unwrap().push(command.value);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(core.outbox_stream(), Some("puts"));
    core.submit(Store::New, Put { key: 1, value: 1 });
    core.submit_keyed("put", Some(&1_u64), Store::New, Put { key: 1, value: 2 });
    core.flush(WAIT).unwrap();
    assert_eq!(*applied.lock().unwrap(), vec![1, 2]);
    let records = journal.records("puts").unwrap();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.record.key_text.as_deref() == Some("1"))
    );
}

/// A journal whose appends fail on demand (a full disk).
#[derive(Debug)]
struct Failing {
    inner: SqliteJournal,
    fail: AtomicBool,
}

impl Journal for Failing {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn next_sequence(&self) -> u64 {
        self.inner.next_sequence()
    }
    fn append(&self, record: &NewRecord) -> Result<(), OutboxError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(OutboxError::Storage {
                during: "appending records",
                error: "disk full".to_owned(),
            });
        }
        self.inner.append(record)
    }
    fn contains(&self, id: &IdempotencyId) -> Result<bool, OutboxError> {
        self.inner.contains(id)
    }
    fn pending_keys(&self, stream: &str) -> Result<Vec<(i64, Option<u64>)>, OutboxError> {
        self.inner.pending_keys(stream)
    }
    fn claim(&self, stream: &str, after: i64, limit: usize) -> Result<Claimed, OutboxError> {
        self.inner.claim(stream, after, limit)
    }
    fn record_outcomes(&self, outcomes: &[Outcome]) -> Result<(), OutboxError> {
        self.inner.record_outcomes(outcomes)
    }
    fn prune(&self, before: SystemTime, limit: usize) -> Result<u64, OutboxError> {
        self.inner.prune(before, limit)
    }
    fn attach(&self, stream: &str, listener: Weak<dyn JournalListener>) -> Result<(), OutboxError> {
        self.inner.attach(stream, listener)
    }
    fn dead_letters(&self) -> Result<Vec<JournalRecord>, OutboxError> {
        self.inner.dead_letters()
    }
    fn replay(&self, id: i64) -> Result<i64, OutboxError> {
        self.inner.replay(id)
    }
    fn discard(&self, id: i64) -> Result<(), OutboxError> {
        self.inner.discard(id)
    }
}

impl fmt::Display for Failing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("failing journal")
    }
}

#[test]
fn a_write_that_cannot_be_journaled_is_kept_as_an_in_memory_dead_letter() {
    let journal = Arc::new(Failing {
        inner: SqliteJournal::open(temp_path("failing"), Durability::None).unwrap(),
        fail: AtomicBool::new(true),
    });
    let mut core: DualWriteCore<Put> = DualWriteCore::new(Migration::new(Phase::DualWrite));
    core.start_outbox(
        journal.clone(),
        config(),
        JournalCodec::of(),
        |_: &LaneContext, _, _: &Put| Ok(()),
    )
    .unwrap();
    write(&core, Put { key: 3, value: 1 }, true);
    let letters = core.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].command, Put { key: 3, value: 1 });
    assert_eq!(letters[0].key.as_deref(), Some("3"));
    assert!(
        letters[0].error.contains("disk full"),
        "{}",
        letters[0].error
    );
    // Not counted as pending: nothing will apply it.
    assert_eq!(core.snapshot().secondary_pending, 0);
    journal.fail.store(false, Ordering::SeqCst);
    write(&core, Put { key: 3, value: 2 }, true);
    core.flush(WAIT).unwrap();
    assert_eq!(core.snapshot().secondary_writes_ok, 1);
}

/// Two adapters draining one stream of one journal would apply its records
/// twice and out of order: the second is refused with a clear error while
/// the first drains, and takes the stream once the first shut down.
#[test]
fn a_stream_is_drained_by_one_adapter_at_a_time() {
    let journal = Arc::new(SqliteJournal::open(temp_path("taken"), Durability::None).unwrap());
    // The secondary is down at first: the first adapter's records stay
    // pending in the journal.
    let down = Arc::new(AtomicBool::new(true));
    let start = |core: &mut DualWriteCore<Put>, config: OutboxConfig| {
        let down = Arc::clone(&down);
        core.start_outbox(
            journal.clone(),
            config,
            JournalCodec::of(),
            move |_: &LaneContext, _, _: &Put| {
                if down.load(Ordering::SeqCst) {
                    Err("the secondary is down".to_owned())
                } else {
                    Ok(())
                }
            },
        )
    };
    let mut first: DualWriteCore<Put> = DualWriteCore::new(Migration::new(Phase::DualWrite));
    start(&mut first, config().with_max_attempts(u32::MAX)).unwrap();
    write(&first, Put { key: 1, value: 1 }, true);
    write(&first, Put { key: 2, value: 1 }, true);
    let mut second: DualWriteCore<Put> = DualWriteCore::new(Migration::new(Phase::DualWrite));
    let error = start(&mut second, config()).unwrap_err();
    // The refused adapter counts none of the first one's pending records.
    assert_eq!(second.snapshot().secondary_pending, 0);
    second.flush(Duration::from_millis(100)).unwrap();
    down.store(false, Ordering::SeqCst);
    assert_eq!(
        error,
        OutboxError::StreamTaken {
            stream: "Put".to_owned()
        }
    );
    assert!(error.to_string().contains("OutboxConfig::with_stream"));
    // Another stream of the same journal is free.
    start(&mut second, config().with_stream("other")).unwrap();
    // Restarting an adapter's own outbox is not a second adapter.
    start(&mut first, config()).unwrap();
    assert!(first.shutdown(WAIT).complete);
    let mut third: DualWriteCore<Put> = DualWriteCore::new(Migration::new(Phase::DualWrite));
    start(&mut third, config()).unwrap();
    write(&third, Put { key: 1, value: 1 }, true);
    assert!(third.shutdown(WAIT).complete);
    assert_eq!(journal.records("Put").unwrap()[0].state, RecordState::Done);
}

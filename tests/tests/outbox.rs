//! The outbox strategy through a generated adapter, on SQLite files: the
//! journal (append after the primary, and in the primary's transaction),
//! per-key order, dead letters kept in the journal and replayed, restart,
//! the phase fence, idempotent replays, and damaged journal files.

mod outbox_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dualwrite_runtime::outbox::sqlite::{
    IntegrityCheck, JournalCounts, SqliteJournal, SqliteJournalOptions,
};
use dualwrite_runtime::outbox::{Durability, Journal, OutboxConfig, OutboxError, RecordState};
use dualwrite_runtime::{Migration, Phase, Store, SyncMode, WriteStrategy};
use outbox_support::{
    Ledger, LedgerDualWrite, LedgerWrite, SqlStore, assert_per_key_order, temp_dir,
};

type Adapter = LedgerDualWrite<SqlStore, SqlStore>;

const WAIT: Duration = Duration::from_secs(30);

fn config() -> OutboxConfig {
    OutboxConfig::default()
        .with_appliers(2)
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(5))
        .with_poll_interval(Duration::from_millis(10))
}

fn journal(path: &std::path::Path, durability: Durability) -> Arc<SqliteJournal> {
    Arc::new(SqliteJournal::open(path, durability).expect("open journal"))
}

fn adapter(
    old: SqlStore,
    new: SqlStore,
    migration: Migration,
    journal: &Arc<SqliteJournal>,
    config: OutboxConfig,
) -> Adapter {
    LedgerDualWrite::new(old, new, migration)
        .with_outbox(journal.clone(), config)
        .expect("start the outbox")
}

#[test]
fn writes_reach_the_secondary_through_the_journal_in_key_order() {
    for durability in [Durability::PerWrite, Durability::Grouped, Durability::None] {
        let dir = temp_dir("append");
        let journal = journal(&dir.join("journal.db"), durability);
        let users = Arc::new(adapter(
            SqlStore::open(&dir.join("old.db")),
            SqlStore::open(&dir.join("new.db")),
            Migration::new(Phase::DualWrite),
            &journal,
            config(),
        ));
        assert!(matches!(users.core().strategy(), WriteStrategy::Outbox(_)));
        assert_eq!(users.core().outbox_stream(), Some("LedgerWrite"));
        let writers: Vec<_> = (0..3)
            .map(|writer| {
                let users = Arc::clone(&users);
                std::thread::spawn(move || {
                    for n in 1..=60 {
                        // Keys shared between writers: one key's writes
                        // interleave across threads.
                        users.put(n % 7, writer * 1_000 + n).expect("put");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        users.flush(WAIT).expect("drained");
        assert_eq!(
            users.old_store().rows(),
            users.new_store().rows(),
            "{durability:?}"
        );
        assert_per_key_order_by_version(&users.new_store().history());
        let stats = users.stats();
        assert_eq!(stats.secondary_pending, 0);
        let shutdown = users.shutdown(WAIT);
        assert!(shutdown.complete && shutdown.dead_letters.is_empty());
        // The outcomes are written when the outbox stops.
        let counts = journal.counts().unwrap();
        assert_eq!((counts.pending, counts.done, counts.dead), (0, 180, 0));
        let commits = journal.commit_stats();
        assert_eq!(commits.records, 180);
        if durability == Durability::Grouped {
            assert!(commits.commits <= commits.records);
        } else {
            assert_eq!(commits.commits, 180);
        }
    }
}

/// Versions (the records' sequences) never go back per key on the
/// secondary: the records of a key were applied in journal order.
fn assert_per_key_order_by_version(history: &[(i64, i64, i64)]) {
    let mut last = std::collections::HashMap::new();
    for &(id, _, version) in history {
        if let Some(previous) = last.insert(id, version) {
            assert!(
                version > previous,
                "key {id}: version {previous} then {version}"
            );
        }
    }
}

#[test]
fn the_transactional_outbox_journals_in_the_primarys_transaction() {
    let dir = temp_dir("transactional");
    let old_path = dir.join("old.db");
    let old = SqlStore::open(&old_path).journaling();
    // The journal lives in the primary's own database file.
    let journal = journal(&old_path, Durability::PerWrite);
    let users = adapter(
        old,
        SqlStore::open(&dir.join("new.db")),
        Migration::new(Phase::DualWrite),
        &journal,
        config(),
    );
    for n in 1..=50 {
        users.put(n % 5, n).expect("put");
        users.add(100 + n % 3, 1).expect("add");
    }
    users.flush(WAIT).expect("drained");
    assert_eq!(users.old_store().rows(), users.new_store().rows());
    // The runtime appended nothing itself: every record was written by the
    // store, in its transaction.
    assert_eq!(journal.commit_stats().records, 0);
    assert!(users.shutdown(WAIT).complete);
    let records = journal.records("LedgerWrite").unwrap();
    assert_eq!(records.len(), 100);
    assert!(records.iter().all(|r| r.state == RecordState::Done));
    // Sequences grow in journal order.
    assert!(
        records
            .windows(2)
            .all(|w| w[0].record.sequence < w[1].record.sequence)
    );
}

#[test]
fn a_store_journaling_into_another_database_fails_the_write() {
    let dir = temp_dir("wrong-db");
    let old = SqlStore::open(&dir.join("old.db")).journaling();
    // The journal is in another file than the one the store journals into.
    let journal = journal(&dir.join("journal.db"), Durability::PerWrite);
    let users = adapter(
        old,
        SqlStore::open(&dir.join("new.db")),
        Migration::new(Phase::DualWrite),
        &journal,
        config(),
    );
    let error = users.put(1, 1).unwrap_err();
    assert!(
        error.0.contains("the record would never be applied"),
        "{error}"
    );
    // Nothing was written anywhere, and nothing is left pending.
    assert!(users.old_store().rows().is_empty());
    assert_eq!(users.stats().secondary_pending, 0);
    users.flush(WAIT).expect("nothing pending");
}

#[test]
fn a_failed_primary_write_journals_nothing() {
    for in_tx in [false, true] {
        let dir = temp_dir("failed-primary");
        let old_path = dir.join("old.db");
        let old = SqlStore::open(&old_path);
        let (old, journal_path) = if in_tx {
            (old.journaling(), old_path.clone())
        } else {
            (old, dir.join("journal.db"))
        };
        let journal = journal(&journal_path, Durability::PerWrite);
        let users = adapter(
            old,
            SqlStore::open(&dir.join("new.db")),
            Migration::new(Phase::ShadowRead),
            &journal,
            config(),
        );
        assert!(users.put(1, -5).is_err());
        users.put(2, 5).unwrap();
        users.flush(WAIT).unwrap();
        assert_eq!(users.new_store().rows(), vec![(2, 5)]);
        assert_eq!(users.stats().secondary_pending, 0);
        // A phase change is not held up by the failed write.
        users
            .migration()
            .set_phase(Phase::Cutover)
            .expect("the fence passes");
        drop(users);
        assert_eq!(journal.records("LedgerWrite").unwrap().len(), 1);
    }
}

#[test]
fn dead_letters_stay_in_the_journal_and_replay_after_the_secondary_recovers() {
    let dir = temp_dir("dead");
    let journal = journal(&dir.join("journal.db"), Durability::Grouped);
    let new = SqlStore::open(&dir.join("new.db"));
    new.fail.store(true, Ordering::SeqCst);
    let users = adapter(
        SqlStore::open(&dir.join("old.db")),
        new,
        Migration::new(Phase::DualWrite),
        &journal,
        config().with_max_attempts(3),
    );
    for n in 1..=6 {
        users.put(n, n * 10).unwrap();
    }
    users.flush(WAIT).expect("every record applied or dead");
    assert!(users.new_store().rows().is_empty());
    let letters = journal.dead_letters().unwrap();
    assert_eq!(letters.len(), 6);
    for letter in &letters {
        assert_eq!(letter.state, RecordState::Dead);
        assert_eq!(letter.attempts, 3);
        assert_eq!(
            letter.last_error.as_deref(),
            Some("DbError(\"secondary down\")")
        );
        assert_eq!(letter.record.target, Store::New);
        // The command can be read back.
        let command: LedgerWrite = letter.command().unwrap();
        assert!(matches!(command, LedgerWrite::Put { .. }));
    }
    let stats = users.stats();
    assert_eq!(stats.dead_letters, 6);
    assert_eq!(stats.secondary_pending, 0);
    // The in-memory dead letters are for what could not be journaled.
    assert!(users.dead_letters().is_empty());

    // The secondary recovers: replay five (three through the adapter's
    // journal handle, two through another one, as an operator's tool in
    // another process would), discard one.
    users.new_store().fail.store(false, Ordering::SeqCst);
    let other = SqliteJournal::open(dir.join("journal.db"), Durability::PerWrite).unwrap();
    for (n, letter) in letters[..5].iter().enumerate() {
        let new_id = if n < 3 {
            journal.replay(letter.id).unwrap()
        } else {
            other.replay(letter.id).unwrap()
        };
        assert!(new_id > letter.id);
    }
    other.discard(letters[5].id).unwrap();
    // The other handle's replays are found by the appliers' poll (the
    // adapter counts them when it claims them).
    let expected: Vec<(i64, i64)> = (1..=5).map(|n| (n, n * 10)).collect();
    let deadline = std::time::Instant::now() + WAIT;
    while users.new_store().rows() != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    users.flush(WAIT).expect("replayed");
    assert_eq!(users.new_store().rows(), expected);
    assert_eq!(users.stats().secondary_pending, 0);
    // Nothing is counted twice or left counted: a fence passes at once.
    users.migration().set_phase(Phase::Backfill).unwrap();
    assert!(journal.dead_letters().unwrap().is_empty());
    // Only dead letters can be replayed or discarded.
    let applied = journal.records("LedgerWrite").unwrap()[0].id;
    assert!(matches!(
        journal.replay(applied),
        Err(OutboxError::NotDead { .. }) | Err(OutboxError::NotFound { .. })
    ));
    assert_eq!(
        journal.discard(9_999_999),
        Err(OutboxError::NotFound { id: 9_999_999 })
    );
}

#[test]
fn a_new_adapter_over_the_journal_resumes_pending_records() {
    let dir = temp_dir("restart");
    let journal_path = dir.join("journal.db");
    {
        let journal = journal(&journal_path, Durability::PerWrite);
        let new = SqlStore::open(&dir.join("new.db"));
        // The secondary is down for the whole first run.
        new.fail.store(true, Ordering::SeqCst);
        let users = adapter(
            SqlStore::open(&dir.join("old.db")),
            new,
            Migration::new(Phase::DualWrite),
            &journal,
            config()
                .with_max_attempts(1_000)
                .with_max_backoff(Duration::from_millis(20)),
        );
        for n in 1..=40 {
            users.put(n % 4, n).unwrap();
        }
        let report = users.shutdown(Duration::from_millis(100));
        assert!(!report.complete);
        assert!(report.still_pending > 0);
    }
    // A new process: a new journal handle and adapter over the same files.
    let journal = Arc::new(
        SqliteJournal::open_with(
            &journal_path,
            SqliteJournalOptions::new(Durability::PerWrite).with_create(false),
        )
        .unwrap(),
    );
    assert_eq!(journal.counts().unwrap().pending, 40);
    let users = adapter(
        SqlStore::open(&dir.join("old.db")),
        SqlStore::open(&dir.join("new.db")),
        Migration::new(Phase::DualWrite),
        &journal,
        config(),
    );
    // Counted as pending from the start, so a fence waits for them.
    users.flush(WAIT).expect("resumed");
    assert_eq!(users.old_store().rows(), users.new_store().rows());
    assert_per_key_order(&users.new_store().history());
    assert!(users.shutdown(WAIT).complete);
    assert_eq!(journal.counts().unwrap().done, 40);
}

#[test]
fn a_phase_change_waits_for_the_journal_records() {
    let dir = temp_dir("fence");
    let journal = journal(&dir.join("journal.db"), Durability::None);
    let new = SqlStore::open(&dir.join("new.db"));
    new.delay_micros.store(2_000, Ordering::SeqCst);
    let migration = Migration::new(Phase::ShadowRead);
    let users = adapter(
        SqlStore::open(&dir.join("old.db")),
        new,
        migration.clone(),
        &journal,
        config().with_appliers(1),
    );
    for n in 1..=100 {
        users.put(n % 10, n).unwrap();
    }
    assert!(users.stats().secondary_pending > 0, "the applier lags");
    migration.set_phase(Phase::Cutover).expect("fenced");
    // The fence let the phase move only once every record was applied.
    assert_eq!(users.stats().secondary_pending, 0);
    assert_eq!(users.old_store().rows(), users.new_store().rows());
    // After cutover the secondary is Old: records target it.
    users.put(1, 1_000).unwrap();
    users.flush(WAIT).unwrap();
    assert_eq!(users.old_store().get(1).unwrap(), Some(1_000));
    let last = journal.records("LedgerWrite").unwrap().pop().unwrap();
    assert_eq!(last.record.target, Store::Old);
}

#[test]
fn replaying_the_journal_twice_changes_nothing() {
    let dir = temp_dir("replay-twice");
    let journal = journal(&dir.join("journal.db"), Durability::PerWrite);
    let users = adapter(
        SqlStore::open(&dir.join("old.db")),
        SqlStore::open(&dir.join("new.db")),
        Migration::new(Phase::DualWrite),
        &journal,
        config().with_retention(None),
    );
    for n in 1..=30 {
        users.put(n % 6, n).unwrap();
        users.add(100 + n % 4, n).unwrap();
    }
    users.flush(WAIT).unwrap();
    let applied = users.new_store().rows();
    assert_eq!(users.old_store().rows(), applied);
    let history = users.new_store().history().len();
    assert!(users.shutdown(WAIT).complete);
    for round in 1..=2 {
        // Every done record pending again, delivered to a new adapter.
        assert_eq!(
            journal.requeue_done("LedgerWrite").unwrap(),
            60,
            "round {round}"
        );
        let again = adapter(
            SqlStore::open(&dir.join("old.db")),
            SqlStore::open(&dir.join("new.db")),
            Migration::new(Phase::DualWrite),
            &journal,
            config().with_retention(None),
        );
        again.flush(WAIT).unwrap();
        assert_eq!(again.new_store().rows(), applied, "round {round}");
        assert_eq!(again.new_store().history().len(), history, "round {round}");
        assert_eq!(again.stats().secondary_writes_ok, 60, "round {round}");
        assert!(again.shutdown(WAIT).complete);
    }
}

#[test]
fn switching_strategy_drains_the_outbox_first() {
    let dir = temp_dir("switch");
    let journal = journal(&dir.join("journal.db"), Durability::None);
    let new = SqlStore::open(&dir.join("new.db"));
    new.delay_micros.store(1_000, Ordering::SeqCst);
    let users = adapter(
        SqlStore::open(&dir.join("old.db")),
        new,
        Migration::new(Phase::DualWrite),
        &journal,
        config().with_appliers(1),
    );
    for n in 1..=50 {
        users.put(n % 3, n).unwrap();
    }
    let users = users.with_sync_mode(SyncMode::Strong);
    assert_eq!(users.stats().secondary_pending, 0);
    users.put(1, 500).unwrap();
    assert_eq!(users.new_store().get(1).unwrap(), Some(500));
    assert_per_key_order(&users.new_store().history());
}

/// Copies the write-ahead log into the database file and empties it,
/// retrying while a reader that is still closing holds it.
fn checkpoint_log(path: &std::path::Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    for _ in 0..500 {
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .unwrap();
        if busy == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the journal's log stayed busy for 5 s");
}

#[test]
fn damaged_journal_files_are_refused_at_open() {
    let dir = temp_dir("damaged");
    let path = dir.join("journal.db");
    {
        let journal = journal(&path, Durability::PerWrite);
        let users = adapter(
            SqlStore::open(&dir.join("old.db")),
            SqlStore::open(&dir.join("new.db")),
            Migration::new(Phase::DualWrite),
            &journal,
            // Never given up on, however slow the appends are: every record
            // must still be pending when the file is copied.
            config().with_max_attempts(u32::MAX),
        );
        // Enough records for several pages; the secondary is down so they
        // stay pending.
        users.new_store().fail.store(true, Ordering::SeqCst);
        for n in 0..2_000 {
            users.put(n, n).unwrap();
        }
        drop(users.shutdown(Duration::from_millis(10)));
    }
    // Every record into the file itself: an applier thread still closing
    // its connection (on a loaded machine) must not leave them in the log.
    checkpoint_log(&path);
    let good = std::fs::read(&path).unwrap();
    assert!(good.len() > 64 * 1024, "{} bytes", good.len());
    assert!(
        !dir.join("journal.db-wal").exists()
            || std::fs::metadata(dir.join("journal.db-wal")).unwrap().len() == 0
    );

    let open = |bytes: &[u8]| {
        let copy = dir.join(format!("copy-{}.db", bytes.len()));
        std::fs::write(&copy, bytes).unwrap();
        SqliteJournal::open(&copy, Durability::PerWrite)
    };
    // Intact: opens, every record still pending.
    let intact = open(&good).unwrap();
    assert_eq!(intact.counts().unwrap().pending, 2_000);

    // Truncated to half: the header's page count gives it away.
    let error = open(&good[..good.len() / 2]).unwrap_err();
    assert!(matches!(error, OutboxError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("truncated"), "{error}");

    // Cut inside the header.
    let error = open(&good[..50]).unwrap_err();
    assert!(matches!(error, OutboxError::Corrupt { .. }), "{error}");

    // Not a database at all.
    let mut garbage = good.clone();
    garbage[..16].copy_from_slice(b"definitely not a");
    let error = open(&garbage).unwrap_err();
    assert!(
        error.to_string().contains("not a SQLite database"),
        "{error}"
    );

    // Pages overwritten in the middle: the integrity check finds it.
    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    for byte in &mut damaged[middle..middle + 8_192] {
        *byte = 0xA5;
    }
    let error = open(&damaged).unwrap_err();
    assert!(matches!(error, OutboxError::Corrupt { .. }), "{error}");
    assert!(
        error.to_string().contains("corrupt or truncated"),
        "{error}"
    );

    // A full integrity check also opens the intact file.
    let copy = dir.join("full-check.db");
    std::fs::write(&copy, &good).unwrap();
    assert!(
        SqliteJournal::open_with(
            &copy,
            SqliteJournalOptions::default().with_check(IntegrityCheck::Full)
        )
        .is_ok()
    );

    // Opening without creating: a missing journal is an error, not a new one.
    let error = SqliteJournal::open_with(
        dir.join("absent.db"),
        SqliteJournalOptions::default().with_create(false),
    )
    .unwrap_err();
    assert!(matches!(error, OutboxError::Missing { .. }), "{error}");
    assert!(!dir.join("absent.db").exists());

    // Another format version.
    let other = dir.join("other-format.db");
    std::fs::write(&other, &good).unwrap();
    rusqlite::Connection::open(&other)
        .unwrap()
        // dualwrite-lint: allow(DW002) the test damages the journal's format row on purpose
        .execute(
            "UPDATE dualwrite_outbox_meta SET value = '9' WHERE name = 'format'",
            [],
        )
        .unwrap();
    let error = SqliteJournal::open(&other, Durability::PerWrite).unwrap_err();
    assert!(matches!(error, OutboxError::Format { .. }), "{error}");
}

#[test]
fn done_records_are_pruned_after_their_retention() {
    let dir = temp_dir("prune");
    let journal = journal(&dir.join("journal.db"), Durability::None);
    let users = adapter(
        SqlStore::open(&dir.join("old.db")),
        SqlStore::open(&dir.join("new.db")),
        Migration::new(Phase::DualWrite),
        &journal,
        config()
            .with_retention(Some(Duration::ZERO))
            .with_prune_interval(Duration::from_millis(10)),
    );
    users.new_store().fail.store(true, Ordering::SeqCst);
    users.put(99, 1).unwrap();
    users.flush(WAIT).unwrap();
    users.new_store().fail.store(false, Ordering::SeqCst);
    for n in 1..=20 {
        users.put(n, n).unwrap();
    }
    users.flush(WAIT).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    // Applied records are marked done shortly after (outcomes are written
    // in batches), then pruned.
    while journal.counts().unwrap()
        != (JournalCounts {
            pending: 0,
            done: 0,
            dead: 1,
        })
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let counts = journal.counts().unwrap();
    // Done records are gone; the dead letter stays.
    assert_eq!((counts.pending, counts.done, counts.dead), (0, 0, 1));
    assert_eq!(users.new_store().rows().len(), 20);
}

#[test]
fn sequences_keep_growing_across_restarts_and_pruning() {
    let dir = temp_dir("sequence");
    let path = dir.join("journal.db");
    let first = {
        let journal = journal(&path, Durability::None);
        let users = adapter(
            SqlStore::open(&dir.join("old.db")),
            SqlStore::open(&dir.join("new.db")),
            Migration::new(Phase::DualWrite),
            &journal,
            config(),
        );
        for n in 1..=10 {
            users.put(1, n).unwrap();
        }
        assert!(users.shutdown(WAIT).complete);
        let last = journal.records("LedgerWrite").unwrap().pop().unwrap();
        assert_eq!(journal.prune_done(Duration::ZERO).unwrap(), 10);
        assert!(journal.records("LedgerWrite").unwrap().is_empty());
        last.record.sequence
    };
    let journal = journal(&path, Durability::None);
    assert!(journal.next_sequence() > first);
}

/// Native `async fn` traits: records are appended after the primary call
/// (no transactional journaling: a thread-local is not the task's across an
/// `.await`); the appliers run the store's futures and the store sees the
/// record's context while they are polled.
mod async_trait_outbox {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use dualwrite_runtime::dual_write;
    use dualwrite_runtime::outbox::WriteContext;

    #[dual_write(serde)]
    pub trait Kv {
        #[dual_write(key = id)]
        async fn put(&self, id: u64, value: u64) -> Result<(), String>;
    }

    /// Keeps each key's value and the sequence it came with.
    #[derive(Default)]
    pub struct Memory(Mutex<BTreeMap<u64, (u64, Option<u64>)>>);

    impl Kv for Memory {
        async fn put(&self, id: u64, value: u64) -> Result<(), String> {
            tokio::task::yield_now().await;
            let sequence = WriteContext::current().map(|ctx| ctx.sequence());
            self.0.lock().unwrap().insert(id, (value, sequence));
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_async_trait_journals_after_the_primary() {
        let dir = temp_dir("async");
        let journal = journal(&dir.join("journal.db"), Durability::Grouped);
        let kv = KvDualWrite::new(
            Memory::default(),
            Memory::default(),
            Migration::new(Phase::DualWrite),
        )
        .with_outbox(journal.clone(), config())
        .unwrap();
        for n in 1..=40 {
            kv.put(n % 5, n).await.unwrap();
        }
        kv.flush_async(WAIT).await.unwrap();
        let old = kv.old_store().0.lock().unwrap().clone();
        let new = kv.new_store().0.lock().unwrap().clone();
        assert_eq!(old.len(), 5);
        for (id, (value, sequence)) in &new {
            assert_eq!(old[id].0, *value);
            // The primary had no context, the secondary had the record's.
            assert!(old[id].1.is_none() && sequence.is_some());
        }
        assert_eq!(journal.commit_stats().records, 40);
    }
}

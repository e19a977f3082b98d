//! The outbox relayed through NATS JetStream (`with_outbox_relay` with a
//! `NatsConfig`), on a real server: records flow journal -> JetStream ->
//! consumer -> secondary, a flush and a phase change wait for the
//! consumers, the server unreachable for a while (a private nats-server on
//! another loopback port, stopped and started again) loses nothing, per-key
//! order holds across redelivery, a kill -9 of a writing child process
//! loses no acknowledged write, and a poison record ends as a dead letter
//! in the journal.
//!
//! The shared server's URL comes from `DUALWRITE_NATS_URL`, the
//! nats-server binary (for the private servers) from
//! `DUALWRITE_NATS_SERVER`; without them the tests print `skipped: …`.

mod outbox_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dualwrite_runtime::outbox::nats::NatsConfig;
use dualwrite_runtime::outbox::sqlite::{SqliteJournal, SqliteJournalOptions};
use dualwrite_runtime::outbox::{Durability, OutboxConfig, WriteContext};
use dualwrite_runtime::{Migration, Phase};
use outbox_support::{
    DbError, Ledger, LedgerDualWrite, LedgerWrite, SqlStore, assert_per_key_order, dead_puts,
    kill_after_acks, spawn_child_role, temp_dir, unaccounted,
};

const WAIT: Duration = Duration::from_secs(60);

/// Set in the kill -9 test's child: `<directory> <nats url> <stream>`.
const CHILD: &str = "DUALWRITE_OUTBOX_NATS_CHILD";

fn nats_url() -> Option<String> {
    logs();
    match std::env::var("DUALWRITE_NATS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped: DUALWRITE_NATS_URL is not set (a NATS server with JetStream)");
            None
        }
    }
}

/// The relay's warnings and errors, on the test's output.
fn logs() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

fn nats_server_binary() -> Option<PathBuf> {
    logs();
    match std::env::var("DUALWRITE_NATS_SERVER") {
        Ok(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            println!(
                "skipped: DUALWRITE_NATS_SERVER is not set (the nats-server binary, for a private server)"
            );
            None
        }
    }
}

/// A journal stream (and so a JetStream stream and subjects) of its own
/// for each test run.
fn unique_stream(name: &str) -> String {
    format!(
        "{name}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    )
}

fn outbox_config(stream: &str) -> OutboxConfig {
    OutboxConfig::default()
        .with_stream(stream)
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(20))
        .with_poll_interval(Duration::from_millis(10))
}

fn nats_config(url: &str) -> NatsConfig {
    NatsConfig::new(url)
        .with_partitions(4)
        .with_publish_timeout(Duration::from_secs(1))
        .with_ack_wait(Duration::from_secs(2))
        .with_fetch_wait(Duration::from_millis(100))
}

/// Deletes the JetStream stream a test made.
fn delete_stream(url: &str, stream: &str) {
    let name = NatsConfig::default().stream_name_for(stream);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if let Ok(client) = async_nats::connect(url).await {
            let _ = async_nats::jetstream::new(client)
                .delete_stream(&name)
                .await;
        }
    });
}

fn journal(path: &Path) -> Arc<SqliteJournal> {
    Arc::new(SqliteJournal::open(path, Durability::None).expect("open journal"))
}

/// A secondary that logs every call it applies (not only the changes), so
/// a record applied out of order shows even when a version guard would
/// hide it; fails on demand.
#[derive(Default)]
struct Recorder {
    /// (key, value) of every applied call, in order (shared, so it can be
    /// read after the adapter is gone).
    calls: Arc<Mutex<Vec<(i64, i64)>>>,
    /// This value always fails.
    poison: Option<i64>,
    /// Every n-th call fails (0: none).
    fail_every: u64,
    count: AtomicU64,
    delay: Duration,
}

impl Recorder {
    fn calls(&self) -> Vec<(i64, i64)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Ledger for Recorder {
    fn put(&self, id: i64, value: i64) -> Result<(), DbError> {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        if self.poison == Some(value) {
            return Err(DbError(format!("value {value} is refused")));
        }
        if self.fail_every > 0 && n.is_multiple_of(self.fail_every) {
            return Err(DbError("transient failure".to_owned()));
        }
        assert!(
            WriteContext::current().is_some(),
            "applied with its WriteContext"
        );
        self.calls.lock().unwrap().push((id, value));
        Ok(())
    }

    fn add(&self, _id: i64, _by: i64) -> Result<(), DbError> {
        Err(DbError("not used".to_owned()))
    }

    fn get(&self, _id: i64) -> Result<Option<i64>, DbError> {
        Ok(None)
    }
}

/// Per key, the values applied never go back (each key's values grow;
/// a redelivered record may repeat the last one).
fn assert_calls_in_key_order(calls: &[(i64, i64)]) {
    let mut last: HashMap<i64, i64> = HashMap::new();
    for &(key, value) in calls {
        if let Some(previous) = last.insert(key, value) {
            assert!(
                value >= previous,
                "key {key} went back: {previous} then {value}"
            );
        }
    }
}

#[test]
fn records_flow_through_jetstream_and_a_phase_change_waits_for_the_consumers() {
    let Some(url) = nats_url() else { return };
    let stream = unique_stream("flow");
    let dir = temp_dir("nats-flow");
    let journal = journal(&dir.join("journal.db"));
    let new = SqlStore::open(&dir.join("new.db"));
    new.delay_micros.store(2_000, Ordering::SeqCst);
    let migration = Migration::new(Phase::ShadowRead);
    let users = LedgerDualWrite::new(SqlStore::open(&dir.join("old.db")), new, migration.clone())
        .with_outbox_relay(journal.clone(), outbox_config(&stream), nats_config(&url))
        .expect("start the relay");
    for n in 1..=200 {
        users.put(n % 16, n).unwrap();
    }
    assert!(
        users.stats().secondary_pending > 0,
        "the consumers lag behind"
    );
    migration.set_phase(Phase::Cutover).expect("fenced");
    // The fence let the phase move only once the consumers applied every
    // journaled record.
    assert_eq!(users.stats().secondary_pending, 0);
    assert_eq!(users.old_store().rows(), users.new_store().rows());
    assert_per_key_order(&users.new_store().history());
    let counts = journal.counts().unwrap();
    assert_eq!((counts.pending, counts.dead), (0, 0), "{counts:?}");
    assert!(users.shutdown(WAIT).complete);
    delete_stream(&url, &stream);
}

/// A nats-server of the test's own, on a free loopback port, with
/// JetStream files in `dir`; killed when dropped.
struct PrivateServer {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateServer {
    fn start(binary: &Path, dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = PrivateServer {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn the_server_unreachable_for_a_while_loses_nothing() {
    let Some(binary) = nats_server_binary() else {
        return;
    };
    let stream = unique_stream("outage");
    let dir = temp_dir("nats-outage");
    let store = dir.join("jetstream");
    let mut server = PrivateServer::start(&binary, &store);
    let journal = journal(&dir.join("journal.db"));
    let users = LedgerDualWrite::new(
        SqlStore::open(&dir.join("old.db")),
        SqlStore::open(&dir.join("new.db")),
        Migration::new(Phase::DualWrite),
    )
    .with_outbox_relay(
        journal.clone(),
        outbox_config(&stream),
        nats_config(&server.url()),
    )
    .expect("start the relay");
    for n in 1..=100 {
        users.put(n % 8, n).unwrap();
    }
    users
        .flush(WAIT)
        .expect("applied through the private server");
    assert_eq!(users.old_store().rows(), users.new_store().rows());

    server.stop();
    // Callers are not held up by the broker: their records are journaled.
    let started = Instant::now();
    for n in 101..=200 {
        users.put(n % 8, n).unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1_500));
    let waiting = journal.counts().unwrap().pending;
    assert_eq!(waiting, 100, "the records wait in the journal");
    assert_ne!(users.old_store().rows(), users.new_store().rows());

    server.restart();
    users.flush(WAIT).expect("applied once the server is back");
    assert_eq!(users.old_store().rows(), users.new_store().rows());
    assert_per_key_order(&users.new_store().history());
    let applied: HashSet<i64> = users
        .new_store()
        .history()
        .iter()
        .map(|&(_, value, _)| value)
        .collect();
    assert_eq!(applied.len(), 200, "every write applied");
    assert_eq!(journal.counts().unwrap().pending, 0);
    println!("nats outage: {waiting} records waited in the journal, all applied after the restart");
    assert!(users.shutdown(WAIT).complete);
}

#[test]
fn per_key_order_holds_across_redelivery() {
    let Some(url) = nats_url() else { return };
    let stream = unique_stream("redeliver");
    let dir = temp_dir("nats-redeliver");
    let journal = journal(&dir.join("journal.db"));
    // Every third call fails: records sit in their retry backoff when the
    // first adapter stops, and go back to JetStream unacknowledged.
    let first_calls = Arc::new(Mutex::new(Vec::new()));
    let first = LedgerDualWrite::new(
        SqlStore::open(&dir.join("old.db")),
        Recorder {
            calls: Arc::clone(&first_calls),
            fail_every: 3,
            delay: Duration::from_millis(1),
            ..Recorder::default()
        },
        Migration::new(Phase::DualWrite),
    )
    .with_outbox_relay(
        journal.clone(),
        outbox_config(&stream)
            .with_max_attempts(1_000)
            .with_initial_backoff(Duration::from_millis(20))
            .with_max_backoff(Duration::from_millis(50)),
        nats_config(&url),
    )
    .expect("start the first relay");
    let mut latest = BTreeMap::new();
    for n in 1..=300 {
        first.put(n % 8, n).unwrap();
        latest.insert(n % 8, n);
    }
    std::thread::sleep(Duration::from_millis(200));
    let report = first.shutdown(Duration::from_millis(300));
    // Read once its threads are joined: a consumer still in a store call
    // when the short shutdown returned finishes that record first.
    drop(first);
    let before = first_calls.lock().unwrap().clone();
    let pending = journal.counts().unwrap().pending;
    assert!(pending > 0, "records left for the second adapter");

    let second = LedgerDualWrite::new(
        SqlStore::open(&dir.join("old.db")),
        Recorder::default(),
        Migration::new(Phase::DualWrite),
    )
    .with_outbox_relay(journal.clone(), outbox_config(&stream), nats_config(&url))
    .expect("start the second relay");
    second.flush(WAIT).expect("the second adapter drains");
    let after = second.new_store().calls();
    let all: Vec<(i64, i64)> = before.iter().chain(after.iter()).copied().collect();
    assert_calls_in_key_order(&all);
    let applied: HashSet<i64> = all.iter().map(|&(_, value)| value).collect();
    assert_eq!(applied.len(), 300, "every write applied at least once");
    let mut last = BTreeMap::new();
    for &(key, value) in &all {
        last.insert(key, value);
    }
    assert_eq!(last, latest);
    println!(
        "redelivery: first adapter applied {} calls (shutdown complete: {}), left {pending} pending; second applied {}",
        before.len(),
        report.complete,
        after.len()
    );
    assert_eq!(journal.counts().unwrap().pending, 0);
    assert!(second.shutdown(WAIT).complete);
    delete_stream(&url, &stream);
}

#[test]
fn a_poison_record_ends_as_a_dead_letter_in_the_journal() {
    let Some(url) = nats_url() else { return };
    let stream = unique_stream("poison");
    let dir = temp_dir("nats-poison");
    let journal = journal(&dir.join("journal.db"));
    let users = LedgerDualWrite::new(
        SqlStore::open(&dir.join("old.db")),
        Recorder {
            poison: Some(666),
            ..Recorder::default()
        },
        Migration::new(Phase::DualWrite),
    )
    .with_outbox_relay(
        journal.clone(),
        outbox_config(&stream).with_max_attempts(3),
        nats_config(&url),
    )
    .expect("start the relay");
    for value in [1, 2, 666, 4] {
        users.put(7, value).unwrap();
    }
    users.flush(WAIT).expect("applied or dead");
    assert_eq!(users.new_store().calls(), vec![(7, 1), (7, 2), (7, 4)]);
    let dead = journal.dead_letters().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempts, 3);
    assert!(dead[0].last_error.as_deref().unwrap().contains("666"));
    assert!(matches!(
        dead[0].command::<LedgerWrite>().unwrap(),
        LedgerWrite::Put { id: 7, value: 666 }
    ));
    assert_eq!(journal.counts().unwrap().pending, 0);
    assert!(users.shutdown(WAIT).complete);
    delete_stream(&url, &stream);
}

/// The kill -9 test's child: writes until killed, printing each
/// acknowledged write.
#[test]
fn child_role() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.splitn(3, ' ');
    let (dir, url, stream) = (
        PathBuf::from(parts.next().unwrap()),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let new = SqlStore::open(&dir.join("new.db"));
    // A secondary slower than the primary, so records are in flight (in the
    // journal, in JetStream, in a consumer) when the process dies.
    new.delay_micros.store(1_000, Ordering::SeqCst);
    let journal = Arc::new(
        SqliteJournal::open(dir.join("journal.db"), Durability::PerWrite).expect("journal"),
    );
    let adapter = Arc::new(
        LedgerDualWrite::new(
            SqlStore::open(&dir.join("old.db")),
            new,
            Migration::new(Phase::DualWrite),
        )
        .with_outbox_relay(journal, outbox_config(&stream), nats_config(&url))
        .expect("relay"),
    );
    let writers: Vec<_> = (0..2_i64)
        .map(|writer| {
            let adapter = Arc::clone(&adapter);
            std::thread::spawn(move || {
                let mut value = 0;
                loop {
                    value += 1;
                    for key in (writer..16).step_by(2) {
                        adapter.put(key, value).expect("put");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {key} {value}").expect("stdout");
                        out.flush().expect("stdout");
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        let _ = writer.join();
    }
    unreachable!("the writers loop until the process is killed")
}

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_write() {
    let Some(url) = nats_url() else { return };
    let stream = unique_stream("crash");
    let dir = temp_dir("nats-crash");
    let mut child = spawn_child_role(&[(CHILD, format!("{} {url} {stream}", dir.display()))]);
    let acked = kill_after_acks(&mut child, 400);

    let journal = Arc::new(
        SqliteJournal::open_with(
            dir.join("journal.db"),
            SqliteJournalOptions::new(Durability::PerWrite).with_create(false),
        )
        .expect("the journal survives the kill"),
    );
    let pending_at_restart = journal.counts().unwrap().pending;
    let adapter = LedgerDualWrite::new(
        SqlStore::open(&dir.join("old.db")),
        SqlStore::open(&dir.join("new.db")),
        Migration::new(Phase::DualWrite),
    )
    .with_outbox_relay(journal.clone(), outbox_config(&stream), nats_config(&url))
    .expect("restart");
    adapter.flush(WAIT).expect("the consumers drain");

    let history = adapter.new_store().history();
    let dead = dead_puts(&journal.dead_letters().expect("dead letters"));
    let missing = unaccounted(&acked, &history, &dead);
    println!(
        "nats kill -9: {} writes acknowledged, {pending_at_restart} records pending at restart, {} missing after the drain, {} dead letters",
        acked.len(),
        missing.len(),
        dead.len()
    );
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    assert_per_key_order(&history);
    assert_eq!(journal.counts().unwrap().pending, 0);
    assert!(adapter.shutdown(WAIT).complete);
    delete_stream(&url, &stream);
}

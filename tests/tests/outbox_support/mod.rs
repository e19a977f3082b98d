//! What the outbox tests share: a ledger trait and a SQLite store that
//! plays the primary (optionally journaling in its own transaction) or the
//! secondary (version-guarded upserts, `apply_once` increments, a history
//! of every change so per-key order can be checked, failures on demand).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dualwrite_runtime::dual_write;
use dualwrite_runtime::outbox::{Side, WriteContext, sqlite};
use rusqlite::{Connection, OptionalExtension, params};

/// The store's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(error: rusqlite::Error) -> Self {
        DbError(error.to_string())
    }
}

impl From<dualwrite_runtime::WriteRefused> for DbError {
    fn from(refused: dualwrite_runtime::WriteRefused) -> Self {
        DbError(refused.to_string())
    }
}

#[dual_write(serde)]
pub trait Ledger {
    /// Sets an account's value (idempotent: a version guard on the
    /// secondary).
    #[dual_write(key = id)]
    fn put(&self, id: i64, value: i64) -> Result<(), DbError>;
    /// Adds to an account's value (not idempotent: applied once by
    /// idempotency id on the secondary).
    #[dual_write(write, key = id)]
    fn add(&self, id: i64, by: i64) -> Result<(), DbError>;
    #[dual_write(key = id)]
    fn get(&self, id: i64) -> Result<Option<i64>, DbError>;
}

/// A SQLite file with `kv (id, value, version)` and `history`.
pub struct SqlStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// As the primary: insert the journal record in the write's transaction.
    pub journal_in_tx: bool,
    /// As the secondary (an applier's call): fail every write.
    pub fail: AtomicBool,
    /// As the secondary: sleep this long (µs) per write.
    pub delay_micros: AtomicU64,
    /// Negative values make the primary write fail.
    pub refuse_negative: bool,
}

impl SqlStore {
    pub fn open(path: &Path) -> Self {
        let mut conn = Connection::open(path).expect("open store");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS kv (id INTEGER PRIMARY KEY, value INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS history (n INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER NOT NULL, value INTEGER NOT NULL, version INTEGER NOT NULL);",
        )
        .expect("store schema");
        sqlite::create_applied_table(&conn).expect("applied table");
        sqlite::short_busy_handler(&mut conn).expect("busy handler");
        SqlStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            journal_in_tx: false,
            fail: AtomicBool::new(false),
            delay_micros: AtomicU64::new(0),
            refuse_negative: true,
        }
    }

    pub fn journaling(mut self) -> Self {
        self.journal_in_tx = true;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every row, by id.
    pub fn rows(&self) -> Vec<(i64, i64)> {
        let conn = self.conn();
        let mut statement = conn
            .prepare("SELECT id, value FROM kv ORDER BY id")
            .expect("select");
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// Every change the store applied, in order: (id, value, version).
    pub fn history(&self) -> Vec<(i64, i64, i64)> {
        let conn = self.conn();
        let mut statement = conn
            .prepare("SELECT id, value, version FROM history ORDER BY n")
            .expect("select");
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .expect("history")
            .collect::<Result<_, _>>()
            .expect("history")
    }

    /// The store's role in the call: an applier's secondary call has an
    /// apply-side context.
    fn apply_context() -> Option<WriteContext> {
        WriteContext::current().filter(|ctx| ctx.side() == Side::Apply)
    }

    fn before_secondary_write(&self) -> Result<(), DbError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(DbError("secondary down".to_owned()));
        }
        let delay = self.delay_micros.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        Ok(())
    }

    fn journal_if_primary(&self, tx: &Connection) -> Result<(), DbError> {
        if !self.journal_in_tx {
            return Ok(());
        }
        if let Some(ctx) = WriteContext::current().filter(|ctx| ctx.side() == Side::Primary) {
            sqlite::append_in(tx, &ctx)?;
        }
        Ok(())
    }
}

impl Ledger for SqlStore {
    fn put(&self, id: i64, value: i64) -> Result<(), DbError> {
        if self.refuse_negative && value < 0 {
            return Err(DbError(format!("negative value {value}")));
        }
        let apply = Self::apply_context();
        if apply.is_some() {
            self.before_secondary_write()?;
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        // Under an applier, a version guard (the record's sequence): a
        // record applied again, or an older one, changes nothing. Elsewhere
        // (the primary, the lanes, the synchronous strategy) a plain upsert.
        let changed = match &apply {
            Some(ctx) => tx.execute(
                "INSERT INTO kv (id, value, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET value = excluded.value, version = excluded.version
                 WHERE kv.version < excluded.version",
                params![id, value, ctx.version()],
            )?,
            None => tx.execute(
                "INSERT INTO kv (id, value, version) VALUES (?1, ?2, 0)
                 ON CONFLICT(id) DO UPDATE SET value = excluded.value",
                params![id, value],
            )?,
        };
        let version = apply.as_ref().map_or(0, WriteContext::version);
        if changed == 1 {
            tx.execute(
                "INSERT INTO history (id, value, version) VALUES (?1, ?2, ?3)",
                params![id, value, version],
            )?;
        }
        self.journal_if_primary(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn add(&self, id: i64, by: i64) -> Result<(), DbError> {
        let apply = Self::apply_context();
        if apply.is_some() {
            self.before_secondary_write()?;
        }
        let version = apply.as_ref().map_or(0, WriteContext::version);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        sqlite::apply_once(&tx, apply.as_ref(), |conn| {
            conn.execute(
                "INSERT INTO kv (id, value, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET value = kv.value + excluded.value,
                     version = max(kv.version, excluded.version)",
                params![id, by, version],
            )?;
            Ok(())
        })?;
        self.journal_if_primary(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn get(&self, id: i64) -> Result<Option<i64>, DbError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM kv WHERE id = ?1", [id], |row| row.get(0))
            .optional()?)
    }
}

/// A fresh directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dualwrite-outbox-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Checks that, per key, the values the store applied never go back (the
/// tests write growing values per key).
pub fn assert_per_key_order(history: &[(i64, i64, i64)]) {
    let mut last: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    for &(id, value, _) in history {
        if let Some(previous) = last.insert(id, value) {
            assert!(
                value > previous,
                "key {id} went back: {previous} then {value}"
            );
        }
    }
}

/// Runs this test binary's `child_role` test alone in a child process,
/// with `envs` set (the role and its settings), its stdout piped (its
/// acknowledgements, read with [`Acks`]) and its stderr dropped.
pub fn spawn_child_role(envs: &[(&str, String)]) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_role",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .envs(envs.iter().map(|(name, value)| (name, value)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child")
}

/// A child's `ack <key> <value>` lines (one per write it saw
/// acknowledged), read by a thread of their own as they come (the child
/// never waits on its output).
pub struct Acks {
    acked: std::sync::Arc<Mutex<Vec<(i64, i64)>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Acks {
    pub fn new(child: &mut std::process::Child) -> Self {
        use std::io::BufRead;
        let stdout = child.stdout.take().expect("the child's stdout is piped");
        let acked = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&acked);
        let reader = std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                // A line cut by a kill has no newline: not an acknowledgement.
                if let Some(ack) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("ack ")) {
                    let (key, value) = ack.split_once(' ').expect("`ack key value`");
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((key.parse().unwrap(), value.parse().unwrap()));
                }
            }
        });
        Acks { acked, reader }
    }

    /// The writes acknowledged so far.
    pub fn acked(&self) -> Vec<(i64, i64)> {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `count` writes were acknowledged in all (or two minutes
    /// passed, or the child's output ended); whether it got that far.
    pub fn until(&self, count: usize) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let seen = self
                .acked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            if seen >= count {
                return true;
            }
            if self.reader.is_finished() || std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILLs the child once `count` writes were acknowledged in all (or
    /// after two minutes): no destructor, no flush; then takes what it
    /// wrote before it died. The acknowledged writes; asserts the child was
    /// killed, not ended, and acknowledged `count` at least.
    pub fn kill_after(self, child: &mut std::process::Child, count: usize) -> Vec<(i64, i64)> {
        let reached = self.until(count);
        // `Child::kill` sends SIGKILL on Unix.
        let killed = child.kill().is_ok();
        let status = child.wait().expect("wait for the child");
        let Acks { acked, reader } = self;
        reader.join().expect("the reader of the child's output");
        let acked = acked.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert!(killed, "the child ended by itself: {status:?}");
        assert!(!status.success(), "killed, not exited: {status:?}");
        assert!(reached, "only {} acknowledgements", acked.len());
        acked
    }
}

/// Reads a child's acknowledgements and SIGKILLs it once `kill_after`
/// came ([`Acks::kill_after`]).
pub fn kill_after_acks(child: &mut std::process::Child, kill_after: usize) -> Vec<(i64, i64)> {
    Acks::new(child).kill_after(child, kill_after)
}

/// The `put` writes kept as dead letters (other commands are not puts).
pub fn dead_puts(
    dead_letters: &[dualwrite_runtime::outbox::JournalRecord],
) -> std::collections::HashSet<(i64, i64)> {
    dead_letters
        .iter()
        .filter_map(|letter| match letter.command::<LedgerWrite>() {
            Ok(LedgerWrite::Put { id, value }) => Some((id, value)),
            _ => None,
        })
        .collect()
}

/// The acknowledged writes neither in the store's `history` nor dead
/// letters.
pub fn unaccounted(
    acked: &[(i64, i64)],
    history: &[(i64, i64, i64)],
    dead: &std::collections::HashSet<(i64, i64)>,
) -> Vec<(i64, i64)> {
    let applied: std::collections::HashSet<(i64, i64)> =
        history.iter().map(|&(k, v, _)| (k, v)).collect();
    acked
        .iter()
        .filter(|write| !applied.contains(write) && !dead.contains(write))
        .copied()
        .collect()
}

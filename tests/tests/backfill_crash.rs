//! A backfill process killed (SIGKILL) in the middle of its work resumes
//! from its SQLite checkpoint: the second run starts after the last
//! committed batch, not from the beginning, and the stores end identical.
//!
//! The test re-runs its own binary as the child (`backfill_child`, selected
//! by the `DUALWRITE_BACKFILL_CHILD` variable), which copies a 200,000-row
//! table in throttled batches and reports each checkpoint on stdout; the
//! parent kills it after a few batches, with no chance to clean up.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dualwrite_runtime::backfill::Backfill;
use dualwrite_runtime::backfill::sqlite::{SqliteCheckpoint, SqliteSink, SqliteSource};
use dualwrite_runtime::reconcile::Reconcile;
use rusqlite::Connection;

const ROWS: i64 = 200_000;
const CHILD: &str = "DUALWRITE_BACKFILL_CHILD";

fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 10000;
         CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, label TEXT NOT NULL, n INTEGER);",
    )
    .expect("schema");
    conn
}

type Job = Backfill<
    SqliteSource<i64>,
    SqliteSink<i64>,
    fn(Vec<rusqlite::types::Value>) -> Vec<rusqlite::types::Value>,
    SqliteCheckpoint,
>;

fn job(old: &Path, new: &Path) -> Job {
    let columns = ["label", "n"];
    Backfill::new(
        SqliteSource::new(open(old), "items", "id", &columns),
        SqliteSink::new(open(new), "items", "id", &columns),
    )
    .with_batch(2_000)
    .with_checkpoint(SqliteCheckpoint::new(open(new), "items").expect("checkpoint"))
}

/// The child: copies the table slowly, printing the rows done after each
/// checkpoint, until it is killed.
#[test]
fn backfill_child() {
    let Some(dir) = std::env::var_os(CHILD) else {
        return; // Only runs as the parent's child.
    };
    let dir = PathBuf::from(dir);
    let mut job = job(&dir.join("old.db"), &dir.join("new.db"));
    job.control().set_rate(40_000);
    let progress = job.progress();
    let watcher = std::thread::spawn(move || {
        let mut last = 0;
        loop {
            let done = progress.snapshot().done;
            if done != last {
                println!("done {done}");
                last = done;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    });
    job.run().expect("the child's backfill");
    drop(watcher);
}

#[test]
fn a_killed_backfill_resumes_after_its_last_checkpoint() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "dualwrite-backfill-crash-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let (old, new) = (dir.join("old.db"), dir.join("new.db"));
    {
        let mut conn = open(&old);
        let tx = conn.transaction().expect("tx");
        for id in 0..ROWS {
            // dualwrite-lint: allow(DW002) the history the backfill copies: Old only, on purpose
            tx.execute(
                "INSERT INTO items (id, label, n) VALUES (?1, ?2, ?3)",
                (id, format!("item {id}"), (id % 3 != 0).then_some(id * 7)),
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
        drop(open(&new));
    }

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "backfill_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("stdout");
    let mut seen = 0_u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if let Some(done) = line.strip_prefix("done ") {
            seen = done.parse().expect("a count");
            if seen >= 30_000 {
                break;
            }
        }
    }
    // A few milliseconds on, so the kill lands inside the next batch or its
    // throttle wait rather than right after a checkpoint.
    std::thread::sleep(std::time::Duration::from_millis(13));
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed: {status:?}");
    assert!(
        (30_000..ROWS as u64).contains(&seen),
        "killed mid-run, after {seen} rows"
    );

    let copied: i64 = open(&new)
        .query_row("SELECT COUNT(*) FROM items", [], |row| row.get(0))
        .expect("count");
    let resumed = job(&old, &new).run().expect("the resumed backfill");
    let after: u64 = resumed
        .resumed_after
        .as_deref()
        .expect("the second run resumed from the checkpoint")
        .parse()
        .expect("a key");
    assert!(resumed.finished, "{resumed:?}");
    assert!(
        after + 1 >= seen,
        "the checkpoint ({after}) is at least the last reported progress ({seen})"
    );
    assert!(
        resumed.rows <= ROWS as u64 - seen,
        "the second run did not start over: {resumed:?} after {seen}"
    );
    // Rows of the batch in flight when the child died may have been
    // committed without their checkpoint: the resumed run finds them present
    // and skips them (insert-if-absent), so no row is written twice.
    assert_eq!(
        resumed.written,
        (ROWS - copied) as u64,
        "{resumed:?}, {copied} rows copied before the kill"
    );
    let columns = ["label", "n"];
    let report = Reconcile::new(
        SqliteSource::<i64>::new(open(&old), "items", "id", &columns),
        SqliteSource::<i64>::new(open(&new), "items", "id", &columns),
    )
    .run()
    .expect("reconcile");
    assert_eq!((report.equal, report.gap()), (ROWS as u64, 0), "{report}");
    eprintln!(
        "killed after {seen} rows ({copied} committed); resumed after key {after}, copied {} more",
        resumed.written
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! Reconciliation on SQLite files: planted drift (missing, extra, different)
//! is found with the columns that differ, a dry run writes nothing, a repair
//! closes the gap, and the keys of a real adapter's dead letters are
//! re-checked and repaired.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use dualwrite_runtime::backfill::sqlite::{
    SqliteCheckpoint, SqliteRepair, SqliteSource, column_diff,
};
use dualwrite_runtime::reconcile::{Difference, Reconcile, RepairWith};
use dualwrite_runtime::{LaneConfig, Migration, Phase, dual_write};
use rusqlite::Connection;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dualwrite-reconcile-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA busy_timeout = 10000;
         CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);",
    )
    .expect("schema");
    conn
}

fn fill(path: &Path, rows: i64) {
    let mut conn = open(path);
    let tx = conn.transaction().expect("tx");
    for id in 0..rows {
        // dualwrite-lint: allow(DW002) test data, written to each store on its own
        tx.execute(
            "INSERT INTO people (id, name, email) VALUES (?1, ?2, ?3)",
            (id, format!("person {id}"), format!("p{id}@example.com")),
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

type Row = dualwrite_runtime::backfill::sqlite::SqliteRow;

/// The job comparing the two `people` tables, column by column.
type Job = Reconcile<
    SqliteSource<i64>,
    SqliteSource<i64>,
    fn(Row) -> Row,
    Box<dyn FnMut(&Row, &Row) -> Option<Vec<String>>>,
>;

fn job(old: &Path, new: &Path) -> Job {
    let columns = ["name", "email"];
    Reconcile::mapped(
        SqliteSource::new(open(old), "people", "id", &columns),
        SqliteSource::new(open(new), "people", "id", &columns),
        (|row| row) as fn(_) -> _,
        Box::new(column_diff(&columns)) as Box<dyn FnMut(&Row, &Row) -> Option<Vec<String>>>,
    )
    .with_batch(500)
}

fn repair(path: &Path) -> SqliteRepair<i64> {
    SqliteRepair::new(open(path), "people", "id", &["name", "email"])
}

#[test]
fn planted_drift_is_found_reported_and_repaired() {
    let dir = scratch("drift");
    let (old, new) = (dir.join("old.db"), dir.join("new.db"));
    fill(&old, 5_000);
    fill(&new, 5_000);
    let conn = open(&new);
    // dualwrite-lint: allow(DW002) planted drift: New only, on purpose
    conn.execute("DELETE FROM people WHERE id IN (10, 2500)", [])
        .expect("missing");
    // dualwrite-lint: allow(DW002) planted drift: New only, on purpose
    conn.execute(
        "INSERT INTO people (id, name, email) VALUES (9000, 'ghost', NULL)",
        [],
    )
    .expect("extra");
    // dualwrite-lint: allow(DW002) planted drift: New only, on purpose
    conn.execute("UPDATE people SET email = NULL WHERE id = 4321", [])
        .expect("different");
    // dualwrite-lint: allow(DW002) planted drift: New only, on purpose
    conn.execute("UPDATE people SET name = 'renamed' WHERE id = 77", [])
        .expect("different");

    let report = job(&old, &new).run().expect("dry run");
    assert!(report.dry_run);
    // Reading both stores at once finds exactly the same.
    let concurrent = job(&old, &new)
        .with_concurrent_reads()
        .run()
        .expect("concurrent reads");
    assert_eq!(concurrent, report);
    assert_eq!(
        (
            report.missing_in_new,
            report.extra_in_new,
            report.different,
            report.gap()
        ),
        (2, 1, 2, 5),
        "{report}"
    );
    assert_eq!(report.equal, 4_996);
    assert!(report.differences.contains(&Difference::Different {
        key: "4321".to_owned(),
        fields: vec!["email".to_owned()],
    }));
    assert!(report.differences.contains(&Difference::Different {
        key: "77".to_owned(),
        fields: vec!["name".to_owned()],
    }));
    // The report names keys and columns, never values.
    let text = report.to_string();
    assert!(
        !text.contains("renamed") && !text.contains("ghost"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&report.to_json()).expect("the report is JSON");
    assert_eq!(json["extra_in_new"], 1);
    assert_eq!(json["differences"][0]["kind"], "missing_in_new");

    // The dry run wrote nothing.
    assert_eq!(job(&old, &new).run().expect("again").gap(), 5);
    let repaired = job(&old, &new)
        .repair_into(&mut repair(&new))
        .expect("repair");
    assert_eq!((repaired.repaired, repaired.gap()), (5, 0));
    let after = job(&old, &new).run().expect("after");
    assert_eq!((after.found(), after.equal), (0, 5_000));
    let _ = std::fs::remove_dir_all(&dir);
}

#[dual_write]
trait People {
    #[dual_write(write, key = id)]
    fn rename(&self, id: i64, name: &str) -> Result<(), String>;
}

struct Db {
    conn: Mutex<Connection>,
    fail: AtomicBool,
    slow: AtomicBool,
}

impl Db {
    /// The `people` table of the database at `path`, healthy.
    fn at(path: &Path) -> Db {
        Db {
            conn: Mutex::new(open(path)),
            fail: AtomicBool::new(false),
            slow: AtomicBool::new(false),
        }
    }
}

impl People for Db {
    fn rename(&self, id: i64, name: &str) -> Result<(), String> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("the new store is down".to_owned());
        }
        if self.slow.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .execute("UPDATE people SET name = ?2 WHERE id = ?1", (id, name))
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// The adapter's dead letters name the keys whose secondary write failed:
/// re-checking those keys finds them different and repairs them.
#[test]
fn dead_letter_keys_are_rechecked_and_repaired() {
    let dir = scratch("letters");
    let (old_path, new_path) = (dir.join("old.db"), dir.join("new.db"));
    fill(&old_path, 100);
    fill(&new_path, 100);
    let kv = PeopleDualWrite::new(
        Db::at(&old_path),
        Db::at(&new_path),
        Migration::new(Phase::DualWrite),
    );
    kv.new_store().fail.store(true, Ordering::SeqCst);
    for id in [3, 30, 60] {
        kv.rename(id, "new name").expect("the primary succeeded");
    }
    kv.new_store().fail.store(false, Ordering::SeqCst);
    kv.rename(61, "fine").expect("both");
    let keys: Vec<i64> = kv
        .take_dead_letters()
        .into_iter()
        .filter_map(|letter| letter.key?.parse().ok())
        .collect();
    assert_eq!(keys, [3, 30, 60]);
    let report = job(&old_path, &new_path)
        .guarded_by(kv.core().key_guard())
        .recheck_into(&keys, &mut repair(&new_path))
        .expect("rechecked");
    assert_eq!(
        (report.different, report.repaired, report.gap()),
        (3, 3, 0),
        "{report}"
    );
    assert_eq!(job(&old_path, &new_path).run().expect("scan").found(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A write acknowledged by the primary whose secondary write is still queued
/// in a lane is not a difference: under the key guard, reconciliation waits
/// for the lane before it compares, so the gap counts only real drift.
#[test]
fn a_write_still_queued_in_a_lane_is_not_counted_as_drift() {
    let dir = scratch("queued");
    let (old_path, new_path) = (dir.join("old.db"), dir.join("new.db"));
    fill(&old_path, 100);
    fill(&new_path, 100);
    let kv = PeopleDualWrite::new(
        Db::at(&old_path),
        Db::at(&new_path),
        Migration::new(Phase::DualWrite),
    )
    .with_async_secondary(LaneConfig::default());
    kv.new_store().slow.store(true, Ordering::SeqCst);
    kv.rename(42, "queued for the new store").expect("primary");
    let report = job(&old_path, &new_path)
        .guarded_by(kv.core().key_guard())
        .run()
        .expect("scan");
    assert_eq!(
        (report.different, report.settled, report.gap()),
        (0, 1, 0),
        "{report}"
    );
    // Without the adapter's guard the scan cannot know, and counts it.
    kv.rename(43, "queued too").expect("primary");
    let unguarded = job(&old_path, &new_path).run().expect("scan");
    assert_eq!(unguarded.different, 1, "{unguarded}");
    kv.flush(std::time::Duration::from_secs(10)).expect("flush");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Range digests on SQLite files whose schemas differ: old `(first, last)`,
/// new `full_name`. Equal data reads no row; drift planted in one range
/// makes only that range go row by row, and the difference is found.
#[test]
fn range_digests_read_only_the_ranges_that_differ() {
    let dir = scratch("digests");
    let (old_path, new_path) = (dir.join("old.db"), dir.join("new.db"));
    let old = Connection::open(&old_path).expect("old");
    // dualwrite-lint: allow(DW002) test data, written to each store on its own
    old.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, first TEXT NOT NULL, last TEXT NOT NULL, email TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)
         INSERT INTO users SELECT i, 'First' || i, 'Last' || (i % 13), CASE WHEN i % 5 = 0 THEN NULL ELSE 'u' || i || '@example.com' END FROM n;",
    )
    .expect("old data");
    let new = Connection::open(&new_path).expect("new");
    // dualwrite-lint: allow(DW002) test data, written to each store on its own
    new.execute_batch(&format!(
        "ATTACH DATABASE '{}' AS old;
         CREATE TABLE users (id INTEGER PRIMARY KEY, full_name TEXT NOT NULL, email TEXT);
         INSERT INTO users SELECT id, first || ' ' || last, email FROM old.users;
         DETACH DATABASE old;",
        old_path.display()
    ))
    .expect("new data");
    let job = || {
        let map: fn(Row) -> Row = full_name;
        Reconcile::mapped(
            SqliteSource::<i64>::new(
                Connection::open(&old_path).expect("old"),
                "users",
                "id",
                &["first", "last", "email"],
            )
            .with_digest(&["first || ' ' || last", "email"])
            .expect("old digest"),
            SqliteSource::<i64>::new(
                Connection::open(&new_path).expect("new"),
                "users",
                "id",
                &["full_name", "email"],
            )
            .with_digest(&["full_name", "email"])
            .expect("new digest"),
            map,
            column_diff(&["full_name", "email"]),
        )
        .with_batch(250)
    };

    let equal = job().run_with_digests(1_000).expect("equal");
    assert_eq!((equal.found(), equal.equal), (0, 4_000), "{equal}");
    assert_eq!((equal.ranges, equal.ranges_differing), (1, 0), "{equal}");
    assert_eq!(
        (equal.old_rows, equal.new_rows, equal.rows_in_equal_ranges),
        (0, 0, 4_000),
        "no row moved: {equal}"
    );

    // dualwrite-lint: allow(DW002) planted drift: New only, on purpose
    new.execute("UPDATE users SET email = 'changed' WHERE id = 2345", [])
        .expect("drift");
    let drifted = job().run_with_digests(1_000).expect("drifted");
    // The whole key space, then its five ranges; one read row by row.
    assert_eq!(
        (drifted.ranges, drifted.ranges_differing),
        (6, 1),
        "{drifted}"
    );
    assert_eq!(
        (drifted.old_rows, drifted.new_rows),
        (1_000, 1_000),
        "only the range (2000..3000] is read: {drifted}"
    );
    assert_eq!(
        drifted.differences,
        [Difference::Different {
            key: "2345".to_owned(),
            fields: vec!["email".to_owned()],
        }]
    );
    assert_eq!(drifted.equal, 3_999);

    // Without digest expressions on one side, it is the row-by-row scan.
    let plain = Reconcile::mapped(
        SqliteSource::<i64>::new(
            Connection::open(&old_path).expect("old"),
            "users",
            "id",
            &["first", "last", "email"],
        ),
        SqliteSource::<i64>::new(
            Connection::open(&new_path).expect("new"),
            "users",
            "id",
            &["full_name", "email"],
        )
        .with_digest(&["full_name", "email"])
        .expect("new digest"),
        full_name,
        column_diff(&["full_name", "email"]),
    )
    .run_with_digests(1_000)
    .expect("plain");
    assert_eq!((plain.ranges, plain.old_rows, plain.found()), (0, 4_000, 1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The digest test's mapping: `first`, `last`, `email` to `full_name`,
/// `email`.
fn full_name(row: Row) -> Row {
    let text = |value: &rusqlite::types::Value| match value {
        rusqlite::types::Value::Text(text) => text.clone(),
        _ => String::new(),
    };
    let name = format!("{} {}", text(&row[0]), text(&row[1]));
    vec![rusqlite::types::Value::Text(name), row[2].clone()]
}

/// A repair through the trait's own write commands (`PeopleWrite::apply`),
/// the path a live write takes.
#[test]
fn a_repair_goes_through_the_write_commands() {
    let dir = scratch("commands");
    let (old_path, new_path) = (dir.join("old.db"), dir.join("new.db"));
    fill(&old_path, 200);
    fill(&new_path, 200);
    let new_db: Db = Db::at(&new_path);
    // dualwrite-lint: allow(DW001) planted drift: New only, on purpose
    new_db.rename(5, "drifted").expect("plant");
    // dualwrite-lint: allow(DW001) planted drift: New only, on purpose
    new_db.rename(150, "drifted too").expect("plant");
    let mut sink = RepairWith::new(
        |id: &i64, row: &Row| {
            let rusqlite::types::Value::Text(name) = &row[0] else {
                return Err(format!("row {id} has no name"));
            };
            PeopleWrite::Rename {
                id: *id,
                name: name.clone(),
            }
            .apply(&new_db)
        },
        |id: &i64| Err(format!("no delete command for {id}")),
    );
    let report = job(&old_path, &new_path)
        .repair_into(&mut sink)
        .expect("repair");
    assert_eq!((report.different, report.repaired), (2, 2), "{report}");
    assert_eq!(job(&old_path, &new_path).run().expect("scan").found(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A repair that fails half way resumes from its checkpoint, and a run that
/// reaches the end clears it, so the next run is a full pass again.
#[test]
fn a_failed_repair_resumes_from_its_checkpoint() {
    let dir = scratch("resume");
    let (old_path, new_path) = (dir.join("old.db"), dir.join("new.db"));
    fill(&old_path, 5_000);
    fill(&new_path, 5_000);
    let conn = open(&new_path);
    // dualwrite-lint: allow(DW002) planted drift: New only, on purpose
    conn.execute("UPDATE people SET name = 'drift' WHERE id % 500 = 7", [])
        .expect("drift");
    let checkpoint = || SqliteCheckpoint::new(open(&new_path), "reconcile-people").expect("cp");
    // A sink that fails at its fourth repair.
    let mut repairs = 0;
    let mut failing = RepairWith::new(
        |id: &i64, _row: &Row| {
            repairs += 1;
            if repairs > 3 {
                return Err(format!("the new store went away at {id}"));
            }
            open(&new_path)
                // dualwrite-lint: allow(DW002) the repair of planted drift, New only
                .execute(
                    "UPDATE people SET name = 'person ' || id WHERE id = ?1",
                    [id],
                )
                .map(drop)
                .map_err(|e| e.to_string())
        },
        |_: &i64| Ok(()),
    );
    let stopped = job(&old_path, &new_path)
        .with_batch(500)
        .with_checkpoint(checkpoint())
        .repair_into(&mut failing);
    assert!(stopped.is_err(), "{stopped:?}");
    let resumed = job(&old_path, &new_path)
        .with_batch(500)
        .with_checkpoint(checkpoint())
        .repair_into(&mut repair(&new_path))
        .expect("resumed");
    let after: i64 = resumed
        .resumed_after
        .as_deref()
        .expect("resumed from the checkpoint")
        .parse()
        .expect("a key");
    assert!(after >= 499, "{resumed}");
    assert!(resumed.old_rows < 5_000, "did not start over: {resumed}");
    assert_eq!(resumed.gap(), 0, "{resumed}");
    let full = job(&old_path, &new_path)
        .with_checkpoint(checkpoint())
        .run()
        .expect("full pass");
    assert_eq!(full.resumed_after, None, "the finished run cleared it");
    assert_eq!((full.old_rows, full.found()), (5_000, 0), "{full}");
    let _ = std::fs::remove_dir_all(&dir);
}

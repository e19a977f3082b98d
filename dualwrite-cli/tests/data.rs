//! `dualwrite backfill` and `dualwrite reconcile`, run as an operator would:
//! SQLite files, a run killed half way and resumed, MariaDB to PostgreSQL
//! (when `DUALWRITE_MARIADB_URL` and `DUALWRITE_POSTGRES_URL` are set), and
//! the exit codes of bad input and unreachable databases.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rusqlite::Connection;
use serde_json::Value;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dw-cli-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dualwrite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .args(args)
        .output()
        .expect("run dualwrite")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

fn text(output: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(output)))
}

/// `users(id, full_name, email)` with `rows` rows in `old`; an empty
/// `accounts(account_id, name, email)` in `new`, but for one row a live
/// write put there (id 7).
fn sqlite_pair(dir: &TempDir, rows: i64) -> (String, String) {
    let (old, new) = (dir.path("old.db"), dir.path("new.db"));
    let mut conn = Connection::open(&old).expect("old");
    conn.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, full_name TEXT NOT NULL, email TEXT)",
    )
    .expect("schema");
    let tx = conn.transaction().expect("tx");
    for id in 1..=rows {
        // dualwrite-lint: allow(DW002) the old table's history, written before the migration
        tx.execute(
            "INSERT INTO users VALUES (?1, ?2, ?3)",
            (
                id,
                format!("name {id}"),
                (id % 5 != 0).then(|| format!("u{id}@x")),
            ),
        )
        .expect("row");
    }
    tx.commit().expect("commit");
    let conn = Connection::open(&new).expect("new");
    // dualwrite-lint: allow(DW002) a row a live write put in the new table, on purpose
    conn.execute_batch(
        "CREATE TABLE accounts (account_id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
         INSERT INTO accounts VALUES (7, 'written live', NULL);",
    )
    .expect("new schema");
    (old, new)
}

const MAP: [&str; 6] = [
    "--table",
    "users:accounts",
    "--key",
    "id:account_id",
    "--columns",
    "full_name:name,email",
];

fn with(first: &[&str], rest: &[&str]) -> Vec<String> {
    first
        .iter()
        .chain(MAP.iter())
        .chain(rest.iter())
        .map(|s| (*s).to_owned())
        .collect()
}

fn run(args: Vec<String>) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    dualwrite(&args)
}

#[test]
fn sqlite_backfill_keeps_live_rows_and_reconcile_repairs_them() {
    let dir = TempDir::new("sqlite");
    let (old, new) = sqlite_pair(&dir, 5_000);
    let dbs = ["--old", old.as_str(), "--new", new.as_str()];

    let dry = run(with(
        &["--json", "backfill"],
        &[&dbs[..], &["--dry-run"]].concat(),
    ));
    assert_eq!(code(&dry), 0, "{}", text(&dry));
    assert_eq!(json(&dry)["would_copy"], 4_999);

    let done = run(with(&["--json", "backfill"], &dbs));
    assert_eq!(code(&done), 0, "{}", text(&done));
    let report = json(&done);
    assert_eq!(
        (report["rows"].as_u64(), report["written"].as_u64()),
        (Some(5_000), Some(4_999))
    );
    let kept: String = Connection::open(&new)
        .expect("new")
        .query_row("SELECT name FROM accounts WHERE account_id = 7", [], |r| {
            r.get(0)
        })
        .expect("row 7");
    assert_eq!(
        kept, "written live",
        "the backfill never overwrites a row New has"
    );

    // The live row differs from Old: a dry run reports it and exits 1.
    let found = run(with(&["--json", "reconcile"], &dbs));
    assert_eq!(code(&found), 1, "{}", text(&found));
    let report = json(&found);
    assert_eq!(report["different"], 1);
    assert_eq!(report["differences"][0]["key"], "7");
    assert_eq!(
        report["differences"][0]["fields"],
        serde_json::json!(["name", "email"])
    );

    let repaired = run(with(&["reconcile"], &[&dbs[..], &["--repair"]].concat()));
    assert_eq!(code(&repaired), 0, "{}", text(&repaired));
    let clean = run(with(&["reconcile"], &dbs));
    assert_eq!(code(&clean), 0, "{}", text(&clean));
    assert!(
        text(&clean).contains("gap (unresolved)                0"),
        "{}",
        text(&clean)
    );

    // Run again: the checkpoint says everything is copied.
    let again = run(with(&["--json", "backfill"], &dbs));
    assert_eq!(code(&again), 0, "{}", text(&again));
    assert_eq!(json(&again)["rows"], 0);
    assert_eq!(json(&again)["resumed_after"], "5000");
}

// The child copies at 2 000 rows/s (20 s for all of them), so it is still
// running when the test, however slowly it is scheduled, sees 5 000 rows.
#[test]
fn a_killed_backfill_resumes_from_its_checkpoint() {
    let dir = TempDir::new("killed");
    let (old, new) = sqlite_pair(&dir, 40_000);
    let args = with(
        &["backfill"],
        &[
            "--old", &old, "--new", &new, "--rate", "2000", "--batch", "500",
        ],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let count = || -> i64 {
        Connection::open(&new)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    while count() < 5_000 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    let copied = count();
    assert!(
        (5_000..40_000).contains(&copied),
        "killed half way, {copied} copied"
    );

    let resumed = run(with(
        &["--json", "backfill"],
        &["--old", &old, "--new", &new],
    ));
    assert_eq!(code(&resumed), 0, "{}", text(&resumed));
    let report = json(&resumed);
    let after: i64 = report["resumed_after"]
        .as_str()
        .expect("resumed")
        .parse()
        .expect("a key");
    assert!(after >= 4_000, "resumed after key {after}");
    assert!(report["rows"].as_i64().expect("rows") <= 40_000 - after);
    assert_eq!(count(), 40_000);
    let clean = run(with(&["reconcile"], &["--old", &old, "--new", &new]));
    // Only the live row 7 differs.
    assert_eq!(code(&clean), 1, "{}", text(&clean));
    assert!(
        text(&clean).contains("different                       1"),
        "{}",
        text(&clean)
    );
}

#[test]
fn bad_input_exits_2_and_missing_databases_exit_3() {
    let dir = TempDir::new("bad");
    let (old, new) = sqlite_pair(&dir, 10);
    let bad = [
        vec!["backfill", "--old", "ftp://x", "--new", &new],
        vec!["backfill", "--old", &old, "--new", &new, "--columns", ":"],
        vec!["reconcile", "--old", &old, "--new", &new, "--key", ""],
        vec!["backfill", "--old", &old, "--new", &new, "--batch", "0"],
    ];
    for args in bad {
        let mut full: Vec<&str> = args.clone();
        for (i, flag) in MAP.iter().enumerate().step_by(2) {
            if !full.contains(flag) {
                full.push(flag);
                full.push(MAP[i + 1]);
            }
        }
        let output = dualwrite(&full);
        assert_eq!(code(&output), 2, "{args:?}: {}", text(&output));
    }
    let missing = dir.path("missing.db");
    let output = run(with(&["backfill"], &["--old", &missing, "--new", &new]));
    assert_eq!(code(&output), 3, "{}", text(&output));
    assert!(
        text(&output).contains("no SQLite database"),
        "{}",
        text(&output)
    );
    assert!(!Path::new(&missing).exists(), "nothing is created");
    let output = run(with(
        &["reconcile"],
        &[
            "--old",
            &old,
            "--new",
            "postgres://postgres@127.0.0.1:1/test",
        ],
    ));
    assert_eq!(code(&output), 3, "{}", text(&output));
}

#[test]
fn mariadb_to_postgres() {
    let (Ok(maria), Ok(pg)) = (
        std::env::var("DUALWRITE_MARIADB_URL"),
        std::env::var("DUALWRITE_POSTGRES_URL"),
    ) else {
        eprintln!(
            "skipped: set DUALWRITE_MARIADB_URL and DUALWRITE_POSTGRES_URL to run against real servers"
        );
        return;
    };
    let suffix = std::process::id();
    let (old_table, new_table) = (
        format!("dw_cli_users_{suffix}"),
        format!("dw_cli_accounts_{suffix}"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let maria_pool = rt
        .block_on(sqlx::mysql::MySqlPool::connect(&maria))
        .expect("MariaDB");
    let pg_pool = rt
        .block_on(sqlx::postgres::PgPool::connect(&pg))
        .expect("PostgreSQL");
    rt.block_on(async {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {old_table};
             CREATE TABLE {old_table} (id BIGINT PRIMARY KEY, full_name VARCHAR(100) NOT NULL, email VARCHAR(100));
             INSERT INTO {old_table} SELECT seq, CONCAT('name ', seq), IF(seq % 5 = 0, NULL, CONCAT('u', seq, '@x')) FROM seq_1_to_3000;"
        )))
        .execute(&maria_pool)
        .await
        .expect("old table");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {new_table};
             CREATE TABLE {new_table} (account_id BIGINT PRIMARY KEY, name TEXT NOT NULL, email TEXT);
             INSERT INTO {new_table} VALUES (7, 'written live', NULL);"
        )))
        .execute(&pg_pool)
        .await
        .expect("new table");
    });
    let table = format!("{old_table}:{new_table}");
    let args = |command: &str, extra: &[&str]| {
        let mut args = vec![
            "--json",
            command,
            "--old",
            &maria,
            "--new",
            &pg,
            "--table",
            &table,
            "--key",
            "id:account_id",
            "--columns",
            "full_name:name,email",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    };
    let done = run(args("backfill", &["--job", &table]));
    assert_eq!(code(&done), 0, "{}", text(&done));
    assert_eq!(json(&done)["written"], 2_999);
    let found = run(args("reconcile", &[]));
    assert_eq!(code(&found), 1, "{}", text(&found));
    let repaired = run(args("reconcile", &["--repair"]));
    assert_eq!(code(&repaired), 0, "{}", text(&repaired));
    let clean = run(args("reconcile", &[]));
    assert_eq!(code(&clean), 0, "{}", text(&clean));
    rt.block_on(async {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {old_table}")))
            .execute(&maria_pool)
            .await;
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {new_table}; DELETE FROM dualwrite_backfill_checkpoint WHERE job = '{table}'"
        )))
        .execute(&pg_pool)
        .await;
    });
}

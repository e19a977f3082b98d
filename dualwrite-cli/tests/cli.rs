//! The `dualwrite` binary, run as an operator would: its commands, output
//! formats and exit codes, against SQLite phase files (and PostgreSQL when
//! `DUALWRITE_POSTGRES_URL` is set), with a service instance following the
//! same file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use dualwrite_runtime::phase_source::{PhaseSync, SqlitePhaseSource, SyncOptions};
use dualwrite_runtime::{Migration, Phase};
use serde_json::Value;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dw-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn db(&self) -> String {
        self.0.join("phase.db").display().to_string()
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `dualwrite --phase-db DB --actor ops-test ARGS`.
fn dualwrite(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .args(["--phase-db", db, "--actor", "ops-test"])
        .args(args)
        .env_remove("DUALWRITE_PHASE_DB")
        .output()
        .expect("run dualwrite")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

#[test]
fn help_documents_commands_exit_codes_and_gate_inputs() {
    let output = Command::new(env!("CARGO_BIN_EXE_dualwrite"))
        .arg("--help")
        .output()
        .expect("run");
    assert_eq!(code(&output), 0);
    let help = stdout(&output);
    for expected in [
        "status",
        "advance",
        "rollback",
        "set",
        "audit",
        "clear",
        "backfill",
        "reconcile",
        "--phase-db",
        "--json",
        "Exit codes:",
        "0  done",
        "1  refused",
        "2  bad input",
        "3  a database is unreachable",
        "--gate-inputs FILE",
        "\"reads_compared\"",
    ] {
        assert!(help.contains(expected), "help lacks {expected:?}:\n{help}");
    }
}

#[test]
fn status_of_a_missing_file_is_unreachable_and_creates_nothing() {
    let dir = TempDir::new("missing");
    let output = dualwrite(&dir.db(), &["status"]);
    assert_eq!(code(&output), 3, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no phase database at"),
        "{}",
        stderr(&output)
    );
    assert!(!Path::new(&dir.db()).exists());
    let output = dualwrite(&dir.db(), &["--json", "audit"]);
    assert_eq!(code(&output), 3);
    assert_eq!(json(&output)["exit_code"], 3);
}

#[test]
fn set_status_rollback_and_audit_on_a_sqlite_file() {
    let dir = TempDir::new("flow");
    let db = dir.db();
    let output = dualwrite(&db, &["set", "dual_write", "--reason", "start"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(stdout(&output).contains("moved the migration from `prepare` to `dual_write`"));

    // Skipping phases is refused (exit 1) and changes nothing.
    let output = dualwrite(&db, &["set", "cutover"]);
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("straight to `cutover`"),
        "{}",
        stderr(&output)
    );
    // Forcing needs a reason.
    let output = dualwrite(&db, &["set", "cutover", "--force"]);
    assert_eq!(code(&output), 2);
    let output = dualwrite(
        &db,
        &["set", "backfill", "--key", "tenant-42", "--reason", "pilot"],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let output = dualwrite(&db, &["set", "shadow_read", "--percent", "10"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));

    let status = json(&dualwrite(&db, &["--json", "status"]));
    assert_eq!(status["global"], "dual_write");
    assert_eq!(status["overrides"]["tenant-42"], "backfill");
    assert_eq!(status["rollouts"][0]["phase"], "shadow_read");
    assert_eq!(status["rollouts"][0]["percent"], 10.0);
    // v1 initialized, then three changes.
    assert_eq!(status["version"], 4);
    let audit = status["audit"].as_array().expect("records");
    assert_eq!(audit.len(), 4);
    assert_eq!(audit[2]["actor"], "ops-test");
    assert_eq!(audit[2]["key"], "tenant-42");
    assert_eq!(audit[2]["reason"], "pilot");
    assert_eq!(audit[3]["scope"], "rollout shadow_read 10%");

    let text = stdout(&dualwrite(&db, &["status"]));
    assert!(text.contains("global phase    dual_write"), "{text}");
    assert!(text.contains("tenant-42  backfill"), "{text}");
    assert!(text.contains("shadow_read  10% of keys"), "{text}");

    // Rollback needs a reason; a key goes back one step.
    assert_eq!(
        code(&dualwrite(&db, &["rollback", "--key", "tenant-42"])),
        2
    );
    let output = dualwrite(
        &db,
        &["rollback", "--key", "tenant-42", "--reason", "mismatches"],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(stdout(&output).contains("key `tenant-42` from `backfill` to `dual_write`"));
    let output = dualwrite(&db, &["--json", "clear", "--key", "tenant-42"]);
    assert_eq!(code(&output), 0);
    assert_eq!(json(&output)["cleared"], true);

    let audit = json(&dualwrite(&db, &["--json", "audit", "--after", "4"]));
    let records = audit.as_array().expect("records");
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["reason"], "mismatches");
    assert_eq!(records[1]["reason"], "override lifted");
    assert!(records[0]["at"].as_str().expect("time").ends_with('Z'));
}

#[test]
fn advance_goes_through_the_gate() {
    let dir = TempDir::new("advance");
    let db = dir.db();
    // prepare -> dual_write has no criteria.
    let output = dualwrite(&db, &["advance"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    // Without measurements the gate refuses, and says how to proceed.
    let output = dualwrite(&db, &["advance"]);
    assert_eq!(code(&output), 1);
    let error = stderr(&output);
    assert!(
        error.contains("the cutover gate refused `dual_write` -> `backfill`"),
        "{error}"
    );
    assert!(error.contains("--gate-inputs FILE"), "{error}");

    // The service's measurements pass the step.
    let good = dir.file(
        "good.json",
        r#"{"secondary_ok": 5000, "secondary_failed": 0}"#,
    );
    let output = dualwrite(
        &db,
        &[
            "--json",
            "advance",
            "--gate-inputs",
            good.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code(&output), 0, "{}", stdout(&output));
    let moved = json(&output);
    assert_eq!(
        (moved["from"].as_str(), moved["to"].as_str()),
        (Some("dual_write"), Some("backfill"))
    );
    assert!(moved["gate"].as_str().expect("report").contains("passed"));

    // A bad file is bad input.
    let bad = dir.file("bad.json", r#"{"secondary_okk": 5000}"#);
    let output = dualwrite(
        &db,
        &["advance", "--gate-inputs", bad.to_str().expect("utf-8")],
    );
    assert_eq!(code(&output), 2);
    assert!(stderr(&output).contains("unknown field `secondary_okk`"));

    // Forced, with the refusing report kept in the audit log.
    let output = dualwrite(
        &db,
        &[
            "advance", "--key", "tenant-1", "--force", "--reason", "tonight",
        ],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let last = json(&dualwrite(&db, &["--json", "audit", "--limit", "1"]));
    assert_eq!(last[0]["forced"], true);
    assert_eq!(last[0]["key"], "tenant-1");
    assert!(
        last[0]["gate"]
            .as_str()
            .expect("report")
            .contains("refused")
    );
}

#[test]
fn cleanup_cannot_be_left() {
    let dir = TempDir::new("cleanup");
    let db = dir.db();
    let output = dualwrite(&db, &["set", "cleanup", "--force", "--reason", "done"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let output = dualwrite(&db, &["rollback", "--reason", "oops"]);
    assert_eq!(code(&output), 1);
    assert!(stderr(&output).contains("cleanup cannot roll back"));
    let output = dualwrite(&db, &["advance"]);
    assert_eq!(code(&output), 1);
    assert!(stderr(&output).contains("last phase"));
}

#[test]
fn bad_input_exits_2() {
    let dir = TempDir::new("bad");
    let db = dir.db();
    for args in [
        &["set", "halfway"][..],
        &["set", "backfill", "--percent", "101"],
        &["set", "backfill", "--percent", "5", "--key", "k"],
        &["--tables", "x; drop", "set", "backfill"],
        &["frobnicate"],
    ] {
        let output = dualwrite(&db, args);
        assert_eq!(code(&output), 2, "{args:?}: {}", stderr(&output));
    }
    let output = dualwrite("mysql://root@127.0.0.1/test", &["status"]);
    assert_eq!(code(&output), 2);
    assert!(stderr(&output).contains("not a SQLite file path nor a postgres:// URL"));
    let not_a_db = dir.file(
        "not.db",
        "this is not a database, just text, long enough to be read",
    );
    let output = dualwrite(not_a_db.to_str().expect("utf-8"), &["status"]);
    assert_eq!(code(&output), 3, "{}", stderr(&output));
}

#[test]
fn a_following_service_sees_the_operators_change() {
    let dir = TempDir::new("service");
    let db = dir.db();
    let service = Migration::new(Phase::DualWrite);
    let source = SqlitePhaseSource::open(&db).expect("open");
    let sync = PhaseSync::follow_with(
        &service,
        Arc::new(source),
        SyncOptions::new().actor("svc-1"),
    )
    .expect("follow");
    let status = json(&dualwrite(&db, &["--json", "status"]));
    assert_eq!(status["global"], "dual_write");
    assert_eq!(status["audit"][0]["actor"], "svc-1");

    let output = dualwrite(
        &db,
        &[
            "set", "cutover", "--key", "acme/42", "--force", "--reason", "vip",
        ],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(sync.wait_for_version(2, Duration::from_secs(5)));
    assert_eq!(service.phase_for(Some(&"acme/42")), Phase::Cutover);
    let applied = service.history().pop().expect("applied");
    assert_eq!(applied.actor.as_deref(), Some("ops-test"));
    assert!(applied.forced);
}

#[test]
fn postgres_phase_database() {
    let Ok(url) = std::env::var("DUALWRITE_POSTGRES_URL") else {
        if std::env::var_os("CI").is_some() {
            panic!("CI must set DUALWRITE_POSTGRES_URL (.ci/run does)");
        }
        eprintln!("skipped: set DUALWRITE_POSTGRES_URL to run against a real PostgreSQL");
        return;
    };
    // Tables of their own, dropped at the end.
    let prefix = format!("dw_cli_test_{}", std::process::id());
    let _cleanup = DropTables {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dualwrite"))
            .args(["--phase-db", &url, "--tables", &prefix, "--actor", "ops-pg"])
            .args(args)
            .output()
            .expect("run")
    };
    let output = run(&["set", "dual_write"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let output = run(&["set", "backfill", "--key", "t1"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let status = json(&run(&["--json", "status"]));
    assert_eq!(status["global"], "dual_write");
    assert_eq!(status["overrides"]["t1"], "backfill");
    assert_eq!(status["audit"].as_array().expect("records").len(), 3);
    assert!(
        status["source"]
            .as_str()
            .expect("source")
            .starts_with("postgres ")
    );

    // A server that does not answer: exit 3.
    let output = dualwrite(
        "postgres://postgres@127.0.0.1:1/test",
        &["--timeout", "1", "status"],
    );
    assert_eq!(code(&output), 3, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("unreachable"),
        "{}",
        stderr(&output)
    );
}

/// Drops the test's tables when it ends, passed or not (with psql, which
/// comes with the server).
struct DropTables {
    url: String,
    prefix: String,
}

impl Drop for DropTables {
    fn drop(&mut self) {
        let prefix = &self.prefix;
        let dropped = Command::new("psql")
            .args([self.url.as_str(), "-q", "-c"])
            .arg(format!(
                "DROP TABLE IF EXISTS {prefix}_state, {prefix}_override, {prefix}_rollout, {prefix}_audit"
            ))
            .output();
        match dropped {
            Ok(out) if out.status.success() => {}
            _ => eprintln!("could not drop the tables {prefix}_*"),
        }
    }
}

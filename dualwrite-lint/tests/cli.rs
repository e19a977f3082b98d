//! The command line end to end: exit codes, paths, walking, test policy,
//! severities, allowed paths, the cargo subcommand form.

mod support;

use support::*;

#[test]
fn clean_fixture_exits_0() {
    let output = run(&fixture("driver-clean"), &["check"]);
    assert_eq!(code(&output), 0, "{}", stdout(&output));
    assert!(stdout(&output).contains("no findings in 1 file"));
}

/// Needs the engine (DW001): `pg.insert(..)` on a `PgUserStore` outside its impl.
#[test]
fn bypass_fixture_exits_1_with_dw001() {
    let output = run(&fixture("driver-bypass"), &["check"]);
    let out = stdout(&output);
    assert_eq!(code(&output), 1, "{out}");
    assert!(out.contains("DW001(adapter-bypass)"), "{out}");
    assert!(out.contains("UserStoreDualWrite"), "{out}");
    assert!(out.contains("src/lib.rs:25:"), "{out}");
    assert!(out.contains("1 error, 0 warnings in 1 file"), "{out}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = fixture("driver-clean");
    for args in [
        &["check", "--bogus"][..],
        &["check", "--format", "xml"],
        &["check", "--fail-on", "fatal"],
        &["frobnicate"],
        &[],
    ] {
        let output = run(&dir, args);
        assert_eq!(code(&output), 2, "{args:?}: {}", stderr(&output));
    }
    let help = run(&dir, &["--help"]);
    assert_eq!(code(&help), 0);
    assert!(stdout(&help).contains("check"));
    assert_eq!(code(&run(&dir, &["--version"])), 0);
}

#[test]
fn missing_path_exits_2() {
    let output = run(&fixture("driver-clean"), &["check", "no/such/dir"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("no/such/dir"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn works_as_a_cargo_subcommand() {
    let dir = fixture("driver-clean");
    let cargo = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cargo-dualwrite-lint"))
            .args(args)
            .current_dir(&dir.path)
            .output()
            .unwrap()
    };
    let output = cargo(&["dualwrite-lint", "check"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("no findings"));
    // Usage lines and help name the command as it was typed.
    let help = cargo(&["dualwrite-lint", "check", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Usage: cargo dualwrite-lint check [OPTIONS]"),
        "{text}"
    );
    assert!(
        text.contains("  cargo dualwrite-lint check --format github"),
        "{text}"
    );
    let wrong = cargo(&["dualwrite-lint", "check", "--bogus"]);
    assert_eq!(wrong.status.code(), Some(2));
    let text = String::from_utf8_lossy(&wrong.stderr);
    assert!(text.contains("Usage: cargo dualwrite-lint check"), "{text}");
    // Invoked directly, it is `dualwrite-lint`.
    let direct = run(&dir, &["check", "--bogus"]);
    assert!(
        stderr(&direct).contains("Usage: dualwrite-lint check"),
        "{}",
        stderr(&direct)
    );
}

#[test]
fn help_shows_examples_and_exit_codes() {
    let dir = fixture("driver-clean");
    for args in [&["--help"][..], &["check", "--help"]] {
        let help = run(&dir, args);
        assert_eq!(code(&help), 0);
        let text = stdout(&help);
        for expected in [
            "Examples:",
            "  dualwrite-lint check --baseline dualwrite-baseline.json",
            "Exit codes:",
            "  0  no finding at or above --fail-on",
            "  1  findings at or above --fail-on",
            "  2  usage error, bad config or baseline file, missing path, internal error",
        ] {
            assert!(text.contains(expected), "{args:?}: {expected}\n{text}");
        }
    }
}

#[test]
fn fail_on_sets_the_threshold() {
    let tree = TempTree::new("fail-on");
    tree.write("src/empty.rs", "");
    tree.write("src/lib.rs", "pub fn f() {}\n");
    let (code_default, doc) = check_json(&tree.path, &[]);
    assert_eq!(code_default, 0);
    assert_eq!(doc["findings"][0]["severity"], "warning");
    let (code_warning, doc) = check_json(&tree.path, &["--fail-on", "warning"]);
    assert_eq!(code_warning, 1);
    assert_eq!(doc["failed"], true);
}

#[test]
fn paths_are_relative_to_the_root() {
    let tree = TempTree::new("root");
    tree.write("a/src/bad.rs", broken_at(2));
    tree.write("b/src/bad.rs", broken_at(3));
    // From inside the tree: relative to the current directory.
    let (_, doc) = check_json(&tree.path, &["a"]);
    assert_eq!(
        findings(&doc),
        vec![("DW000".into(), "a/src/bad.rs".into(), 2)]
    );
    // From a directory that does not contain it: relative to the checked directory.
    let elsewhere = TempTree::new("elsewhere");
    let (_, doc) = check_json(&elsewhere.path, &[tree.path.join("b").to_str().unwrap()]);
    assert_eq!(
        findings(&doc),
        vec![("DW000".into(), "src/bad.rs".into(), 3)]
    );
    // --root wins.
    let (_, doc) = check_json(
        &elsewhere.path,
        &[
            "--root",
            tree.path.to_str().unwrap(),
            tree.path.join("b").to_str().unwrap(),
        ],
    );
    assert_eq!(
        findings(&doc),
        vec![("DW000".into(), "b/src/bad.rs".into(), 3)]
    );
    // A single file.
    let (_, doc) = check_json(&tree.path, &["a/src/bad.rs"]);
    assert_eq!(findings(&doc).len(), 1);
}

#[test]
fn walk_skips_target_hidden_ignored_and_excluded() {
    let tree = TempTree::new("walk");
    tree.write("src/lib.rs", "pub fn f() {}\n");
    tree.write("target/debug/build/out.rs", broken_at(1));
    tree.write(".hidden/bad.rs", broken_at(1));
    tree.write("src/.also_hidden.rs", broken_at(1));
    tree.write(".gitignore", "ignored/\n");
    tree.write("ignored/bad.rs", broken_at(1));
    tree.write("src/generated/bad.rs", broken_at(1));
    tree.write("notes.txt", "fn ( not rust");
    tree.write("dualwrite.toml", "exclude = [\"src/generated/**\"]\n");
    let (code, doc) = check_json(&tree.path, &[]);
    assert_eq!(findings(&doc), vec![]);
    assert_eq!(code, 0);
    assert_eq!(doc["summary"]["files"], 1);
}

#[test]
fn skip_tests_leaves_out_test_directories() {
    let tree = TempTree::new("skip-tests");
    tree.write("src/lib.rs", "pub fn f() {}\n");
    tree.write("tests/it.rs", broken_at(1));
    let (code_all, doc) = check_json(&tree.path, &[]);
    assert_eq!(code_all, 1);
    assert_eq!(doc["findings"][0]["in_test"], true);
    let (code_skip, doc) = check_json(&tree.path, &["--skip-tests"]);
    assert_eq!(code_skip, 0);
    assert_eq!(doc["summary"]["files"], 1);
    tree.write("dualwrite.toml", "tests = \"skip\"\n");
    assert_eq!(check_json(&tree.path, &[]).0, 0);
}

#[test]
fn severity_overrides_and_off() {
    let tree = TempTree::new("severity");
    tree.write("src/bad.rs", broken_at(1));
    tree.write("dualwrite.toml", "[severity]\nDW000 = \"warning\"\n");
    let (code, doc) = check_json(&tree.path, &[]);
    assert_eq!(
        (code, doc["findings"][0]["severity"].as_str()),
        (0, Some("warning"))
    );
    tree.write("dualwrite.toml", "[severity]\nDW000 = \"off\"\n");
    let (code, doc) = check_json(&tree.path, &[]);
    assert_eq!((code, findings(&doc).len()), (0, 0));
}

/// Needs the engine (DW001).
#[test]
fn allowed_paths_permit_bypasses() {
    let tree = TempTree::new("allow");
    let source = std::fs::read_to_string(fixture("driver-bypass").join("src/lib.rs")).unwrap();
    tree.write("src/backfill/run.rs", &source);
    let (code, doc) = check_json(&tree.path, &[]);
    assert_eq!(code, 1, "{doc}");
    tree.write("dualwrite.toml", "allow = [\"src/backfill/**\"]\n");
    let (code, doc) = check_json(&tree.path, &[]);
    assert_eq!((code, findings(&doc)), (0, vec![]));
}

#[test]
fn cargo_metadata_config_is_read() {
    let tree = TempTree::new("metadata");
    tree.write("src/bad.rs", broken_at(1));
    tree.write(
        "Cargo.toml",
        "[package]\nname = \"x\"\nversion = \"0.1.0\"\n\n[package.metadata.dualwrite]\nexclude = [\"src/bad.rs\"]\n",
    );
    assert_eq!(check_json(&tree.path, &[]).0, 0);
    tree.write(
        "Cargo.toml",
        "[workspace]\n[workspace.metadata.dualwrite.severity]\nDW000 = \"note\"\n",
    );
    let (code, doc) = check_json(&tree.path, &[]);
    assert_eq!(
        (code, doc["findings"][0]["severity"].as_str()),
        (0, Some("note"))
    );
}

/// The repository checks itself clean: its only bypasses are the fixtures
/// (excluded by the root `dualwrite.toml`) and two suppressed, reasoned ones.
#[test]
fn this_workspace_is_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dualwrite-lint"))
        .arg("check")
        .arg("--root")
        .arg(root)
        .arg(root)
        .output()
        .expect("run dualwrite-lint");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("no findings"), "{stdout}");
}

/// `--explain` shows how each DW001 receiver's type was inferred; JSON and
/// SARIF always carry it.
#[test]
fn explain_shows_the_inference_chain() {
    let dir = fixture("receivers_inferred");
    let chain = "`s` = `self.stores[_]` (bound by `for`): `PgOrders`";
    let plain = stdout(&run(&dir, &["check"]));
    assert!(!plain.contains("receiver type, as inferred"), "{plain}");
    let explained = stdout(&run(&dir, &["check", "--explain"]));
    assert!(
        explained.contains("receiver type, as inferred:"),
        "{explained}"
    );
    assert!(explained.contains(chain), "{explained}");
    let (code, doc) = check_json(&dir, &[]);
    assert_eq!(code, 1);
    let explain = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["location"]["file"] == "src/service.rs" && f["location"]["start_line"] == 24)
        .map(|f| f["explain"].clone())
        .unwrap();
    assert_eq!(
        explain,
        serde_json::json!([
            "`self` is `OrderService` (the method's receiver)",
            "`self.stores` is `Vec<crate::store::PgOrders>` (field `stores` of `OrderService`)",
            "`self.stores[_]` is `PgOrders` (an element of `Vec<crate::store::PgOrders>`)",
            chain,
            "`PgOrders` implements the #[dual_write] trait `OrderStore`: it is a raw store, and `insert` is a write",
        ])
    );
    let sarif: serde_json::Value =
        serde_json::from_str(&stdout(&run(&dir, &["check", "--format", "sarif"]))).unwrap();
    let results = sarif["runs"][0]["results"].as_array().unwrap();
    assert!(
        results.iter().all(|r| r["properties"]["explain"]
            .as_array()
            .is_some_and(|e| e.len() >= 2)),
        "{results:#?}"
    );
}

/// Through the driver: each crate's manifest (and the workspace's
/// `Cargo.lock`) gates the clients' rules, and included SQL is read next
/// to the file that includes it.
#[test]
fn clients_are_gated_and_included_sql_is_read() {
    let (_, doc) = check_json(&fixture("client_deps"), &[]);
    let mut found: Vec<(String, u64)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["location"]["file"].as_str().unwrap().to_owned(),
                f["location"]["start_line"].as_u64().unwrap(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("catalog/src/lib.rs".to_owned(), 9),
            ("community/src/lib.rs".to_owned(), 24),
            ("jobs/src/lib.rs".to_owned(), 3),
        ]
    );
    let (_, doc) = check_json(&fixture("sql_forms"), &[]);
    let lines: Vec<u64> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["location"]["start_line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [9, 16, 31, 36, 47, 50, 60, 62, 65, 66, 71, 74]);
}

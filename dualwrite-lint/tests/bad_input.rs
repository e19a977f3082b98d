//! Bad input and coverage: every file or path not checked gives DW000 with
//! its path, a location and a cause, at the `unchecked` level (a warning
//! unless configured) except syntax errors (errors); the summary counts
//! them by cause; the run goes on to the other files, and nothing crashes
//! or hangs. Also: the root and its config are found from a subdirectory.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn only_finding(doc: &serde_json::Value) -> &serde_json::Value {
    let all = doc["findings"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{doc}");
    &all[0]
}

/// A tree with one good file and `bad` at `src/bad.rs`.
fn check_bad(name: &str, bad: impl AsRef<[u8]>) -> (i32, serde_json::Value, TempTree) {
    let tree = TempTree::new(name);
    tree.write("src/good.rs", "pub fn good() {}\n");
    tree.write("src/bad.rs", bad);
    let (code, doc) = check_json(&tree.path, &[]);
    assert_eq!(
        doc["summary"]["files"].as_u64().unwrap() + doc["summary"]["not_checked"].as_u64().unwrap(),
        2,
        "the run went on: {doc}"
    );
    (code, doc, tree)
}

/// `(kind, count)` of `summary.not_checked_causes`.
fn causes(doc: &serde_json::Value) -> Vec<(String, u64)> {
    doc["summary"]["not_checked_causes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

fn position(f: &serde_json::Value) -> (u64, u64) {
    (
        f["location"]["start_line"].as_u64().unwrap(),
        f["location"]["start_column"].as_u64().unwrap(),
    )
}

#[test]
fn unparsable_file_is_an_error() {
    let (code, doc, _t) = check_bad("unparsable", "fn a() {}\n\nfn b() {\n    let x = ;\n}\n");
    let f = only_finding(&doc);
    assert_eq!(
        (f["rule"].as_str(), f["severity"].as_str()),
        (Some("DW000"), Some("error"))
    );
    assert_eq!(f["location"]["file"], "src/bad.rs");
    assert_eq!(position(f), (4, 13));
    assert!(f["message"].as_str().unwrap().contains("does not parse"));
    assert_eq!(causes(&doc), [("parse-error".to_owned(), 1)]);
    assert_eq!(code, 1);
}

#[test]
fn not_utf8_is_a_warning() {
    let (code, doc, _t) = check_bad("not-utf8", b"fn a() {}\nconst X: &str = \"caf\xe9\";\n");
    let f = only_finding(&doc);
    assert_eq!(
        (f["rule"].as_str(), f["severity"].as_str()),
        (Some("DW000"), Some("warning"))
    );
    assert_eq!(position(f), (2, 21));
    assert!(f["message"].as_str().unwrap().contains("not valid UTF-8"));
    assert!(f["help"].as_str().unwrap().contains("UTF-8"), "{f}");
    assert_eq!(causes(&doc), [("not-utf8".to_owned(), 1)]);
    assert_eq!(code, 0);
}

#[test]
fn empty_file_is_a_warning_and_checked() {
    let (code, doc, _t) = check_bad("empty", "  \n");
    let f = only_finding(&doc);
    assert_eq!(
        (f["rule"].as_str(), f["severity"].as_str()),
        (Some("DW000"), Some("warning"))
    );
    assert!(f["message"].as_str().unwrap().contains("empty"));
    assert_eq!(doc["summary"]["not_checked"], 0);
    assert_eq!(code, 0);
}

#[test]
fn ten_megabyte_file() {
    let line = "pub fn f() { let _ = 1 + 2 + 3; }\n";
    let big = line.repeat(10 * 1024 * 1024 / line.len() + 1);
    let (code, doc, tree) = check_bad("huge", big);
    let f = only_finding(&doc);
    assert_eq!(
        (f["rule"].as_str(), f["severity"].as_str()),
        (Some("DW000"), Some("warning"))
    );
    assert!(
        f["message"].as_str().unwrap().contains("max_file_size"),
        "{f}"
    );
    assert_eq!(code, 0);
    let human = stdout(&run(&tree.path, &["check"]));
    assert!(
        human.ends_with("0 errors, 1 warning in 1 file; 1 not checked (too large: 1)\n"),
        "{human}"
    );
}

#[test]
fn unchecked_level_is_configurable() {
    let tree = TempTree::new("unchecked-level");
    tree.write("src/lib.rs", "pub fn f() {}\n".repeat(200));
    tree.write("src/ok.rs", "pub fn g() {}\n");
    tree.write(
        "dualwrite.toml",
        "max_file_size = \"1 KiB\"\nunchecked = \"error\"\n",
    );
    let (code, doc) = check_json(&tree.path, &[]);
    let f = only_finding(&doc);
    assert!(f["message"].as_str().unwrap().contains("1024 bytes"));
    assert_eq!(f["severity"], "error");
    assert_eq!(code, 1);
    tree.write(
        "dualwrite.toml",
        "max_file_size = \"1 KiB\"\nunchecked = \"note\"\n",
    );
    let (code, doc) = check_json(&tree.path, &[]);
    assert_eq!(
        (code, only_finding(&doc)["severity"].as_str()),
        (0, Some("note"))
    );
    // Hidden findings still count in the summary.
    tree.write(
        "dualwrite.toml",
        "max_file_size = \"1 KiB\"\n[severity]\nDW000 = \"off\"\n",
    );
    let (code, doc) = check_json(&tree.path, &[]);
    assert_eq!((code, doc["findings"].as_array().unwrap().len()), (0, 0));
    assert_eq!(causes(&doc), [("too-large".to_owned(), 1)]);
}

#[test]
fn deep_nesting() {
    let deep = format!(
        "fn f() {{\n    let x = {}1{};\n}}\n",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let (code, doc, tree) = check_bad("deep", deep);
    let f = only_finding(&doc);
    assert_eq!(
        (f["rule"].as_str(), f["severity"].as_str()),
        (Some("DW000"), Some("warning"))
    );
    let message = f["message"].as_str().unwrap();
    assert!(
        message.contains("too complex to parse safely: brackets nested deeper than 256"),
        "{f}"
    );
    // The deepest point: the bracket that crossed the limit.
    assert_eq!(position(f), (2, 13 + 254));
    assert!(f["help"].as_str().unwrap().contains("max_nesting"), "{f}");
    assert_eq!(causes(&doc), [("too-deep".to_owned(), 1)]);
    assert_eq!(code, 0);
    // The human output does not print the 200 KB line.
    let human = stdout(&run(&tree.path, &["check"]));
    assert!(human.len() < 4000, "{} bytes", human.len());
}

/// The forms that overflowed the stack before the complete pre-check: each
/// is a DW000 "too complex" finding now, with a cause and help that fit.
#[test]
fn deep_nesting_of_every_form() {
    let interest = "fn f(c: &rusqlite::Connection) {\n    c.execute(\"DELETE FROM t\", []).unwrap();\n    let v = x";
    for (name, text, cause) in [
        (
            "closures-20000",
            format!("fn f() {{\n    let c = {}1;\n}}\n", "|| ".repeat(20_000)),
            "closures nested deeper than 256",
        ),
        (
            "chain-1000000",
            format!("{interest}{};\n}}\n", ".a()".repeat(1_000_000)),
            "more than 16384 operators, method calls",
        ),
        (
            "binary-1000000",
            format!("{interest}{};\n}}\n", " + x".repeat(1_000_000)),
            "more than 16384 operators",
        ),
        (
            "generics",
            format!(
                "type T = {}u8{};\n",
                "Vec<".repeat(100_000),
                ">".repeat(100_000)
            ),
            "generic arguments nested deeper than 256",
        ),
        (
            "closures-with-params",
            format!("fn f() {{ let c = {}1; }}\n", "|a, b| ".repeat(100_000)),
            "closures nested deeper than 256",
        ),
        (
            "unary",
            format!("fn f() {{ let c = {}true; }}\n", "!".repeat(100_000)),
            "prefix operators",
        ),
        (
            "else-if",
            format!(
                "{interest};\n    if a {{}}{}\n}}\n",
                " else if a {}".repeat(100_000)
            ),
            "`else` branches",
        ),
        (
            "returns",
            format!("fn f() {{ {}1 }}\n", "return ".repeat(100_000)),
            "`return`",
        ),
        (
            "assignments",
            format!("fn f() {{ {}1; }}\n", "a = ".repeat(100_000)),
            "assignments",
        ),
    ] {
        let (code, doc, _t) = check_bad(name, &text);
        let f = only_finding(&doc);
        assert_eq!(f["rule"], "DW000", "{name}");
        assert_eq!(f["fingerprint"]["callee"], "too-deep", "{name}");
        let message = f["message"].as_str().unwrap();
        assert!(message.contains(cause), "{name}: {message}");
        assert!(!f["help"].as_str().unwrap().is_empty());
        assert_eq!(code, 0, "{name}");
    }
}

#[cfg(unix)]
#[test]
fn symlink_loops_and_escapes() {
    use std::os::unix::fs::symlink;
    let tree = TempTree::new("symlinks");
    let outside = TempTree::new("symlinks-outside");
    outside.write("secret.rs", broken_at(1));
    outside.write("notes.txt", "not rust");
    tree.write("src/lib.rs", "pub fn f() {}\n");
    symlink(&tree.path, tree.path.join("src/to_root")).unwrap();
    symlink("loop_b", tree.path.join("src/loop_a")).unwrap();
    symlink("loop_a", tree.path.join("src/loop_b")).unwrap();
    symlink(&outside.path, tree.path.join("src/escape")).unwrap();
    symlink(
        outside.path.join("secret.rs"),
        tree.path.join("src/secret.rs"),
    )
    .unwrap();
    // A link to a file that is not Rust hides no code.
    symlink(
        outside.path.join("notes.txt"),
        tree.path.join("src/notes.txt"),
    )
    .unwrap();
    symlink(tree.path.join("src/lib.rs"), tree.path.join("src/alias.rs")).unwrap();
    tree.write("shared/real.rs", "pub fn v() {}\n");
    symlink(
        tree.path.join("shared"),
        tree.path.join("src/linked_shared"),
    )
    .unwrap();

    // Only `src` is walked; `shared` is reached through the link.
    let (code, doc) = check_json(&tree.path, &["src"]);
    let found: Vec<(String, String, String)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(
                (f["rule"].as_str(), f["severity"].as_str()),
                (Some("DW000"), Some("warning"))
            );
            (
                f["location"]["file"].as_str().unwrap().to_owned(),
                f["fingerprint"]["callee"].as_str().unwrap().to_owned(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let paths: Vec<(&str, &str)> = found
        .iter()
        .map(|(f, k, _)| (f.as_str(), k.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("src/escape", "symlink-outside-root"),
            ("src/loop_a", "symlink-broken"),
            ("src/loop_b", "symlink-broken"),
            ("src/secret.rs", "symlink-outside-root"),
        ],
        "{found:?}"
    );
    assert!(
        found[0].2.contains(&outside.path.display().to_string()),
        "{found:?}"
    );
    // lib.rs once (the alias and src/to_root reach the same file), and shared/real.rs.
    assert_eq!(doc["summary"]["files"], 2, "{doc}");
    assert_eq!(
        causes(&doc),
        [
            ("symlink-broken".to_owned(), 2),
            ("symlink-outside-root".to_owned(), 2)
        ]
    );
    assert_eq!(code, 0);
    let human = stdout(&run(&tree.path, &["check", "src"]));
    assert!(
        human.ends_with(
            "0 errors, 4 warnings in 2 files; 4 not checked (broken symlink: 2, symlink outside the root: 2)\n"
        ),
        "{human}"
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_named_rs_is_reported_not_opened() {
    let tree = TempTree::new("fifo");
    tree.write("src/lib.rs", "pub fn f() {}\n");
    let made = Command::new("mkfifo")
        .arg(tree.path.join("src/pipe.rs"))
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    std::os::unix::fs::symlink(tree.path.join("src/pipe.rs"), tree.path.join("src/link.rs"))
        .unwrap();
    let (code, doc) = check_json(&tree.path, &[]);
    let files: Vec<(String, String)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["location"]["file"].as_str().unwrap().to_owned(),
                f["fingerprint"]["callee"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            ("src/link.rs".to_owned(), "not-a-file".to_owned()),
            ("src/pipe.rs".to_owned(), "not-a-file".to_owned())
        ]
    );
    assert_eq!(code, 0);
}

/// Runs the lint as an unprivileged user, when this process is privileged
/// (root reads every directory, so a locked one proves nothing) and
/// `setpriv` is there; `None` when the test cannot be made meaningful.
#[cfg(unix)]
fn run_locked_out(dir: &Path, locked: &Path, args: &[&str]) -> Option<Output> {
    if std::fs::read_dir(locked).is_err() {
        return Some(run(dir, args));
    }
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_dualwrite-lint"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .ok()?;
    // setpriv missing its rights, or the binary not reachable by that user.
    if output.status.code() == Some(127) || output.status.code() == Some(126) {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stderr);
    if text.contains("setpriv:") {
        return None;
    }
    Some(output)
}

#[cfg(unix)]
#[test]
fn unreadable_directory_and_file_are_reported_with_their_paths() {
    use std::os::unix::fs::PermissionsExt;
    let tree = TempTree::new("unreadable");
    tree.write("src/lib.rs", "pub fn f() {}\n");
    tree.write("src/locked/hidden.rs", broken_at(1));
    tree.write("src/secret.rs", "pub fn s() {}\n");
    let locked = tree.path.join("src/locked");
    let secret = tree.path.join("src/secret.rs");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let output = run_locked_out(&tree.path, &locked, &["check", "--format", "json"]);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(output) = output else {
        eprintln!("skipped: running privileged without setpriv, every directory is readable");
        return;
    };
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&output)));
    let found: Vec<(String, String, String)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["severity"], "warning", "{f}");
            (
                f["location"]["file"].as_str().unwrap().to_owned(),
                f["fingerprint"]["callee"].as_str().unwrap().to_owned(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let paths: Vec<(&str, &str)> = found
        .iter()
        .map(|(f, k, _)| (f.as_str(), k.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("src/locked", "unreadable-dir"),
            ("src/secret.rs", "unreadable")
        ],
        "{found:?}"
    );
    assert!(found[0].2.contains("ermission denied"), "{found:?}");
    assert_eq!(doc["summary"]["files"], 1);
    assert_eq!(doc["summary"]["not_checked"], 2);
    assert_eq!(code(&output), 0);
}

/// Run from a subdirectory, the lint finds the root's `dualwrite.toml`:
/// its excludes apply and paths are named from the root.
#[test]
fn a_subdirectory_run_finds_the_root_and_its_config() {
    let tree = TempTree::new("subdir");
    tree.write(
        "dualwrite.toml",
        "exclude = [\"crates/app/src/generated/**\"]\n",
    );
    tree.write("crates/app/src/lib.rs", broken_at(3));
    tree.write("crates/app/src/generated/out.rs", broken_at(1));
    tree.write("crates/other/src/lib.rs", broken_at(1));
    let sub = tree.path.join("crates/app/src");
    let (code, doc) = check_json(&sub, &[]);
    assert_eq!(
        findings(&doc),
        vec![("DW000".into(), "crates/app/src/lib.rs".into(), 3)]
    );
    assert_eq!(code, 1);
    // A path given from there too.
    let (_, doc) = check_json(&sub, &["lib.rs"]);
    assert_eq!(findings(&doc).len(), 1);
    assert_eq!(
        doc["findings"][0]["location"]["file"],
        "crates/app/src/lib.rs"
    );
}

/// The same with the config in a workspace `Cargo.toml`; a member's own
/// `Cargo.toml` (no `[workspace]`) is not the root.
#[test]
fn a_subdirectory_run_finds_the_workspace() {
    let tree = TempTree::new("workspace");
    tree.write(
        "Cargo.toml",
        "[workspace]\nmembers = [\"app\"]\n[workspace.metadata.dualwrite.severity]\nDW000 = \"note\"\n",
    );
    tree.write(
        "app/Cargo.toml",
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\n",
    );
    tree.write("app/src/lib.rs", broken_at(2));
    let (code, doc) = check_json(&tree.path.join("app/src"), &[]);
    assert_eq!(
        findings(&doc),
        vec![("DW000".into(), "app/src/lib.rs".into(), 2)]
    );
    assert_eq!(
        (code, doc["findings"][0]["severity"].as_str()),
        (0, Some("note"))
    );
}

#[test]
fn nightly_syntax_is_named_as_the_cause() {
    let (code, doc, _t) = check_bad("nightly", "fn f() -> Result<(), E> {\n    do yeet E;\n}\n");
    let f = only_finding(&doc);
    assert_eq!(f["rule"], "DW000");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("nightly-only syntax (`do yeet`"),
        "{f}"
    );
    assert!(f["help"].as_str().unwrap().contains("stable Rust"), "{f}");
    assert_eq!(causes(&doc), [("nightly-syntax".to_owned(), 1)]);
    assert_eq!(code, 0);
}

#[test]
fn a_huge_numeric_literal_is_rejected_before_parsing() {
    let (_, doc, _t) = check_bad(
        "huge-number",
        format!("const N: u128 = {};\n", "9".repeat(100_000)),
    );
    let f = only_finding(&doc);
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("numeric literal longer than 512"),
        "{f}"
    );
    assert!(f["help"].as_str().unwrap().contains("string"), "{f}");
    assert_eq!(position(f), (1, 17));
}

/// The coverage fixture (`tests/lint-fixtures/driver-coverage`), run from
/// a subdirectory: the `dualwrite.toml` two levels up is found (its
/// `exclude` and `max_nesting` apply), and every file not checked is
/// reported with its path, position and cause as in `expected.txt`.
/// Symlinks and unreadable directories, which a fixture cannot hold, are
/// built in temporary directories by the tests above.
#[test]
fn coverage_fixture_from_a_subdirectory() {
    let tree = fixture("driver-coverage");
    let (code, doc) = check_json(&tree.path.join("crates/app/src"), &[]);
    let got: Vec<String> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{}:{}:{} {} {}",
                f["location"]["file"].as_str().unwrap(),
                f["location"]["start_line"],
                f["location"]["start_column"],
                f["rule"].as_str().unwrap(),
                f["fingerprint"]["callee"].as_str().unwrap(),
            )
        })
        .collect();
    let expected = tree.read("expected.txt");
    assert_eq!(got, expected.lines().collect::<Vec<_>>(), "{doc}");
    assert_eq!(doc["summary"]["files"], 1, "{doc}");
    assert_eq!(doc["summary"]["not_checked"], 4, "{doc}");
    assert_eq!(code, 1, "the syntax error is an error");
}

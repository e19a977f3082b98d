//! Config errors: each stops the run with exit code 2 and a message that
//! names the file and the line.

mod support;

use support::*;

fn config_error(name: &str, file: &str, text: &str) -> String {
    let tree = TempTree::new(name);
    tree.write("src/lib.rs", "pub fn f() {}\n");
    tree.write(file, text);
    let output = run(&tree.path, &["check"]);
    assert_eq!(code(&output), 2, "{text:?}: {}", stdout(&output));
    stderr(&output)
}

#[test]
fn bad_toml() {
    let message = config_error(
        "bad-toml",
        "dualwrite.toml",
        "allow = [\"src/**\"\n\n[severity\n",
    );
    assert!(message.contains("dualwrite.toml:3:1"), "{message}");
    assert!(message.contains("missing comma"), "{message}");
}

#[test]
fn unknown_key() {
    let message = config_error(
        "unknown-key",
        "dualwrite.toml",
        "allow = []\n\nalow = [\"src/backfill/**\"]\n",
    );
    assert!(message.contains("dualwrite.toml:3:1"), "{message}");
    assert!(message.contains("unknown field `alow`"), "{message}");
    // The snippet is shown with a label on the key.
    assert!(message.contains("3 │ alow"), "{message}");
}

#[test]
fn unknown_rule_in_severity() {
    let message = config_error(
        "unknown-rule",
        "dualwrite.toml",
        "[severity]\nDW009 = \"error\"\n",
    );
    assert!(message.contains("dualwrite.toml:2:1"), "{message}");
}

#[test]
fn bad_severity() {
    let message = config_error(
        "bad-severity",
        "dualwrite.toml",
        "[severity]\nDW001 = \"warning\"\nDW002 = \"fatal\"\n",
    );
    assert!(message.contains("dualwrite.toml:3:9"), "{message}");
    assert!(message.contains("fatal"), "{message}");
}

#[test]
fn bad_glob() {
    let message = config_error(
        "bad-glob",
        "dualwrite.toml",
        "exclude = [\"gen/**\"]\nallow = [\n  \"src/backfill/**\",\n  \"src/[jobs\",\n]\n",
    );
    assert!(message.contains("dualwrite.toml:4:3"), "{message}");
    assert!(message.contains("invalid glob `src/[jobs`"), "{message}");
}

#[test]
fn bad_raw_write_entry() {
    let message = config_error(
        "bad-api",
        "dualwrite.toml",
        "[raw_writes]\nadd = [\n  { name = \"exec\", kind = \"sometimes\" },\n]\n",
    );
    assert!(message.contains("dualwrite.toml:3:"), "{message}");
}

#[test]
fn bad_cargo_metadata() {
    let message = config_error(
        "bad-metadata",
        "Cargo.toml",
        "[package]\nname = \"x\"\n\n[package.metadata.dualwrite]\ntests = \"sometimes\"\n",
    );
    assert!(message.contains("Cargo.toml:5:9"), "{message}");
}

#[test]
fn explicit_config_file() {
    let tree = TempTree::new("explicit-config");
    tree.write("src/bad.rs", broken_at(1));
    tree.write("ci/lint.toml", "exclude = [\"src/bad.rs\"]\n");
    assert_eq!(code(&run(&tree.path, &["check"])), 1);
    assert_eq!(
        code(&run(&tree.path, &["check", "--config", "ci/lint.toml"])),
        0
    );
    let missing = run(&tree.path, &["check", "--config", "ci/none.toml"]);
    assert_eq!(code(&missing), 2);
    assert!(stderr(&missing).contains("ci/none.toml"));
}

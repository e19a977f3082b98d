//! Baselines: write, re-run clean, a new finding fails alone, a fixed one
//! is reported stale, moved code keeps its entry.

mod support;

use support::*;

fn tree_with_findings(name: &str) -> TempTree {
    let tree = TempTree::new(name);
    tree.write("src/a.rs", broken_at(2));
    tree.write("src/b.rs", broken_at(5));
    tree.write(
        "src/c.rs",
        "// dualwrite-lint: allow(DW001) stale excuse\npub fn c() {}\n",
    );
    tree
}

#[test]
fn write_then_rerun_is_clean() {
    let tree = tree_with_findings("baseline-write");
    let output = run(
        &tree.path,
        &["check", "--write-baseline", "lint-baseline.json"],
    );
    assert_eq!(code(&output), 0, "{}", stdout(&output));
    assert!(stdout(&output).contains("wrote 3 findings to the baseline"));

    let file: serde_json::Value = serde_json::from_str(&tree.read("lint-baseline.json")).unwrap();
    assert_eq!(file["version"], 1);
    assert_eq!(file["tool"], "dualwrite-lint");
    let entries = file["findings"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    for entry in entries {
        let keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["callee", "file", "item", "occurrence", "rule"]);
    }
    let order: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["rule"].as_str().unwrap(), e["file"].as_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            ("DW000", "src/a.rs"),
            ("DW000", "src/b.rs"),
            ("DW004", "src/c.rs")
        ]
    );

    let (code, doc) = check_json(&tree.path, &["--baseline", "lint-baseline.json"]);
    assert_eq!((code, findings(&doc)), (0, vec![]));
    assert_eq!(doc["baseline"]["matched"], 3);
    assert_eq!(doc["baseline"]["stale"], serde_json::json!([]));
}

#[test]
fn only_new_findings_fail() {
    let tree = tree_with_findings("baseline-new");
    run(&tree.path, &["check", "--write-baseline", "base.json"]);
    tree.write("src/d.rs", broken_at(1));
    let (code, doc) = check_json(&tree.path, &["--baseline", "base.json"]);
    assert_eq!(findings(&doc), vec![("DW000".into(), "src/d.rs".into(), 1)]);
    assert_eq!(code, 1);
}

#[test]
fn fixed_findings_are_reported_stale() {
    let tree = tree_with_findings("baseline-stale");
    run(&tree.path, &["check", "--write-baseline", "base.json"]);
    tree.write("src/b.rs", "pub fn b() {}\n");
    let (code, doc) = check_json(&tree.path, &["--baseline", "base.json"]);
    assert_eq!((code, findings(&doc)), (0, vec![]));
    let stale = doc["baseline"]["stale"].as_array().unwrap();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0]["file"], "src/b.rs");

    let human = stdout(&run(&tree.path, &["check", "--baseline", "base.json"]));
    assert!(human.contains("1 stale entry"), "{human}");
    assert!(human.contains("stale: DW000 src/b.rs"), "{human}");
    let github = stdout(&run(
        &tree.path,
        &["check", "--baseline", "base.json", "--format", "github"],
    ));
    assert!(
        github.starts_with("::notice title=dualwrite-lint baseline::"),
        "{github}"
    );
    let sarif = stdout(&run(
        &tree.path,
        &["check", "--baseline", "base.json", "--format", "sarif"],
    ));
    let sarif: serde_json::Value = serde_json::from_str(&sarif).unwrap();
    assert_eq!(
        sarif["runs"][0]["properties"]["baseline"]["stale"][0]["file"],
        "src/b.rs"
    );
}

#[test]
fn moving_code_keeps_the_baseline_valid() {
    let tree = tree_with_findings("baseline-move");
    run(&tree.path, &["check", "--write-baseline", "base.json"]);
    tree.write("src/a.rs", broken_at(9));
    tree.write(
        "src/c.rs",
        "\n\n\n// dualwrite-lint: allow(DW001) stale excuse\npub fn c() {}\n",
    );
    let (code, doc) = check_json(&tree.path, &["--baseline", "base.json"]);
    assert_eq!((code, findings(&doc)), (0, vec![]));
    assert_eq!(doc["baseline"]["stale"], serde_json::json!([]));
}

#[test]
fn baseline_is_a_multiset() {
    let tree = TempTree::new("baseline-multiset");
    tree.write(
        "src/lib.rs",
        "// dualwrite-lint: allow(DW002) a\n// dualwrite-lint: allow(DW002) b\npub fn f() {}\n",
    );
    run(&tree.path, &["check", "--write-baseline", "base.json"]);
    tree.write(
        "src/lib.rs",
        "// dualwrite-lint: allow(DW002) a\n// dualwrite-lint: allow(DW002) b\n// dualwrite-lint: allow(DW002) c\npub fn f() {}\n",
    );
    let (code, doc) = check_json(
        &tree.path,
        &["--baseline", "base.json", "--fail-on", "warning"],
    );
    assert_eq!(findings(&doc).len(), 1, "{doc}");
    assert_eq!(code, 1);
}

#[test]
fn bad_baseline_file_exits_2() {
    let tree = TempTree::new("baseline-bad");
    tree.write("src/lib.rs", "pub fn f() {}\n");
    tree.write("base.json", "{ \"version\": 1, \"findings\": [ }");
    assert_eq!(
        code(&run(&tree.path, &["check", "--baseline", "base.json"])),
        2
    );
    tree.write(
        "base.json",
        "{ \"version\": 99, \"tool\": \"dualwrite-lint\", \"findings\": [] }",
    );
    let output = run(&tree.path, &["check", "--baseline", "base.json"]);
    assert_eq!(code(&output), 2);
    assert!(stderr(&output).contains("version 99"));
    assert_eq!(
        code(&run(&tree.path, &["check", "--baseline", "missing.json"])),
        2
    );
}

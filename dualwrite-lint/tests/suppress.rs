//! Inline suppressions end to end: with a reason, without one (DW004),
//! unused (DW004), on the line or the line above; text in strings and doc
//! comments is not a suppression.

mod support;

use support::*;

#[test]
fn suppression_fixture() {
    let (code, doc) = check_json(&fixture("driver-suppress"), &[]);
    let found: Vec<(String, String, u64, String)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_owned(),
                f["location"]["file"].as_str().unwrap().to_owned(),
                f["location"]["start_line"].as_u64().unwrap(),
                f["severity"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            // The parse error it covers stays suppressed; only the missing reason is reported.
            ("DW004".into(), "src/no_reason.rs".into(), 3, "error".into()),
            ("DW004".into(), "src/unused.rs".into(), 2, "warning".into()),
        ]
    );
    assert_eq!(code, 1);
}

#[test]
fn line_above_and_same_line() {
    let tree = TempTree::new("suppress-lines");
    tree.write(
        "src/above.rs",
        "// dualwrite-lint: allow(DW000) vendored, fixed upstream\n// dualwrite-lint: allow(unreadable-file) the rule's name works too\nfn broken() { let x = ; }\n",
    );
    tree.write(
        "src/same.rs",
        "\nfn broken() { let x = ; } // dualwrite-lint: allow(DW000): one-off\n",
    );
    tree.write(
        "src/too_far.rs",
        "// dualwrite-lint: allow(DW000) two lines above is too far\n\nfn broken() { let x = ; }\n",
    );
    let (code, doc) = check_json(&tree.path, &[]);
    let mut rules = findings(&doc);
    rules.sort();
    let expected: Vec<(String, String, u64)> = vec![
        // Two stacked suppressions for one rule: the first one is used, the second is unused.
        ("DW000".into(), "src/too_far.rs".into(), 3),
        ("DW004".into(), "src/above.rs".into(), 2),
        ("DW004".into(), "src/too_far.rs".into(), 1),
    ];
    assert_eq!(rules, expected);
    assert_eq!(code, 1);
}

#[test]
fn malformed_and_unknown_rules_are_dw004() {
    let tree = TempTree::new("suppress-malformed");
    tree.write(
        "src/lib.rs",
        "// dualwrite-lint: allow DW001 no parentheses\n// dualwrite-lint: allow(DW042) no such rule\npub fn f() {}\n",
    );
    let (code, doc) = check_json(&tree.path, &[]);
    let messages: Vec<&str> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("malformed suppression"));
    assert!(messages[1].contains("unknown rule `DW042`"));
    assert_eq!(code, 1);
}

#[test]
fn unused_suppressions_of_disabled_rules_are_quiet() {
    let tree = TempTree::new("suppress-off");
    tree.write(
        "src/lib.rs",
        "// dualwrite-lint: allow(DW002) legacy\npub fn f() {}\n",
    );
    assert_eq!(findings(&check_json(&tree.path, &[]).1).len(), 1);
    tree.write("dualwrite.toml", "[severity]\nDW002 = \"off\"\n");
    assert_eq!(findings(&check_json(&tree.path, &[]).1).len(), 0);
}

/// Needs the engine (DW001).
#[test]
fn suppresses_an_adapter_bypass() {
    let tree = TempTree::new("suppress-dw001");
    let source = std::fs::read_to_string(fixture("driver-bypass").join("src/lib.rs")).unwrap();
    let source = source.replace(
        "    pg.insert(id)\n",
        "    // dualwrite-lint: allow(DW001) one-off repair of the primary only\n    pg.insert(id)\n",
    );
    tree.write("src/lib.rs", source);
    let (code, doc) = check_json(&tree.path, &[]);
    assert_eq!((code, findings(&doc)), (0, vec![]));
}

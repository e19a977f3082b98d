//! Bad input: every kind gives DW000 with a location and a reason, the run
//! goes on to the other files, and nothing crashes or hangs.

mod support;

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
    assert_eq!(doc["summary"]["files"], 2, "the run went on: {doc}");
    (code, doc, tree)
}

#[test]
fn unparsable_file() {
    let (code, doc, _t) = check_bad("unparsable", "fn a() {}\n\nfn b() {\n    let x = ;\n}\n");
    let f = only_finding(&doc);
    assert_eq!(f["rule"], "DW000");
    assert_eq!(f["location"]["file"], "src/bad.rs");
    assert_eq!(
        (
            f["location"]["start_line"].as_u64(),
            f["location"]["start_column"].as_u64()
        ),
        (Some(4), Some(13))
    );
    assert!(f["message"].as_str().unwrap().contains("does not parse"));
    assert_eq!(code, 1);
}

#[test]
fn not_utf8() {
    let (code, doc, _t) = check_bad("not-utf8", b"fn a() {}\nconst X: &str = \"caf\xe9\";\n");
    let f = only_finding(&doc);
    assert_eq!(f["rule"], "DW000");
    assert_eq!(
        (
            f["location"]["start_line"].as_u64(),
            f["location"]["start_column"].as_u64()
        ),
        (Some(2), Some(21))
    );
    assert!(f["message"].as_str().unwrap().contains("not valid UTF-8"));
    assert_eq!(code, 1);
}

#[test]
fn empty_file_is_a_warning() {
    let (code, doc, _t) = check_bad("empty", "  \n");
    let f = only_finding(&doc);
    assert_eq!(
        (f["rule"].as_str(), f["severity"].as_str()),
        (Some("DW000"), Some("warning"))
    );
    assert!(f["message"].as_str().unwrap().contains("empty"));
    assert_eq!(code, 0);
}

#[test]
fn ten_megabyte_file() {
    let line = "pub fn f() { let _ = 1 + 2 + 3; }\n";
    let big = line.repeat(10 * 1024 * 1024 / line.len() + 1);
    let (code, doc, _t) = check_bad("huge", big);
    let f = only_finding(&doc);
    assert_eq!(f["rule"], "DW000");
    assert!(
        f["message"].as_str().unwrap().contains("max_file_size"),
        "{f}"
    );
    assert_eq!(code, 1);
}

#[test]
fn max_file_size_is_configurable() {
    let tree = TempTree::new("size-config");
    tree.write("src/lib.rs", "pub fn f() {}\n".repeat(200));
    tree.write("dualwrite.toml", "max_file_size = \"1 KiB\"\n");
    let (code, doc) = check_json(&tree.path, &[]);
    assert!(
        only_finding(&doc)["message"]
            .as_str()
            .unwrap()
            .contains("1024 bytes")
    );
    assert_eq!(code, 1);
}

#[test]
fn deep_nesting() {
    let deep = format!(
        "fn f() {{ let x = {}1{}; }}\n",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let (code, doc, _t) = check_bad("deep", deep);
    let f = only_finding(&doc);
    assert_eq!(f["rule"], "DW000");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("nested deeper than 256"),
        "{f}"
    );
    assert_eq!(code, 1);
    // The human output does not print the 200 KB line.
    let human = stdout(&run(&_t.path, &["check"]));
    assert!(human.len() < 4000, "{} bytes", human.len());
}

#[test]
fn deep_nesting_without_brackets() {
    for (name, text) in [
        (
            "generics",
            format!(
                "type T = {}u8{};\n",
                "Vec<".repeat(100_000),
                ">".repeat(100_000)
            ),
        ),
        (
            "closures",
            format!("fn f() {{ let c = {}1; }}\n", "|x| ".repeat(100_000)),
        ),
        (
            "unary",
            format!("fn f() {{ let c = {}true; }}\n", "!".repeat(100_000)),
        ),
    ] {
        let (code, doc, _t) = check_bad(name, text);
        assert_eq!(only_finding(&doc)["rule"], "DW000", "{name}");
        assert_eq!(code, 1);
    }
}

#[cfg(unix)]
#[test]
fn symlink_loops_and_escapes() {
    use std::os::unix::fs::symlink;
    let tree = TempTree::new("symlinks");
    let outside = TempTree::new("symlinks-outside");
    outside.write("secret.rs", broken_at(1));
    tree.write("src/lib.rs", "pub fn f() {}\n");
    symlink(&tree.path, tree.path.join("src/to_root")).unwrap();
    symlink("loop_b", tree.path.join("src/loop_a")).unwrap();
    symlink("loop_a", tree.path.join("src/loop_b")).unwrap();
    symlink(&outside.path, tree.path.join("src/escape")).unwrap();
    symlink(tree.path.join("src/lib.rs"), tree.path.join("src/alias.rs")).unwrap();
    tree.write("shared/real.rs", "pub fn v() {}\n");
    symlink(
        tree.path.join("shared"),
        tree.path.join("src/linked_shared"),
    )
    .unwrap();

    // Only `src` is walked; `shared` is reached through the link.
    let (code, doc) = check_json(&tree.path, &["src"]);
    let notes: Vec<(String, String)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(
                (f["rule"].as_str(), f["severity"].as_str()),
                (Some("DW000"), Some("note"))
            );
            (
                f["location"]["file"].as_str().unwrap().to_owned(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let files: Vec<&str> = notes.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        files,
        ["src/escape", "src/loop_a", "src/loop_b"],
        "{notes:?}"
    );
    assert!(notes[0].1.contains("outside the root"));
    // lib.rs once (the alias and src/to_root reach the same file), and shared/real.rs.
    assert_eq!(doc["summary"]["files"], 2, "{doc}");
    assert_eq!(code, 0);
}

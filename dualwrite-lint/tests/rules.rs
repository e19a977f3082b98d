//! The rules against fixture crates with golden findings.
//!
//! Each directory under `tests/lint-fixtures/` (except the driver's
//! `driver-*` ones) is a tree of plain `.rs` files, never compiled, with an
//! `expected.txt`: one `file:line:col RULE message` line per finding.
//! Set `DUALWRITE_LINT_BLESS=1` to rewrite the golden files (then read
//! every changed line against the fixture before committing).

use std::path::{Path, PathBuf};

use dualwrite_lint::analysis::{
    AnalysisConfig, ApiTable, FileSummary, Interest, SourceFile, analyze,
    declares_annotated_traits, summarize, summarize_with,
};
use dualwrite_lint::finding::{Finding, RuleId};

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lint-fixtures")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// How a fixture's files are summarized.
#[derive(Clone, Copy, PartialEq)]
enum Passes {
    /// As the driver does: files that declare annotated traits first, then
    /// the rest with only the calls of interest recorded.
    Driver,
    /// Every call of every file recorded.
    RecordAll,
}

/// Summarizes every file of a fixture.
fn summaries(name: &str, passes: Passes) -> Vec<FileSummary> {
    let root = fixtures_root().join(name);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let sources: Vec<(String, String, PathBuf)> = files
        .iter()
        .map(|path| {
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (
                rel,
                std::fs::read_to_string(path).unwrap(),
                path.parent().unwrap().to_path_buf(),
            )
        })
        .collect();
    let summarize_one = |(rel, text, dir): &(String, String, PathBuf),
                         interest: Option<&Interest>| {
        let summary = summarize_with(
            SourceFile {
                path: rel,
                text,
                is_test_file: rel.starts_with("tests/"),
                dir: Some(dir),
            },
            interest,
        )
        .unwrap_or_else(|e| panic!("{rel}: {e:?}"));
        proc_macro2::extra::invalidate_current_thread_spans();
        summary
    };
    let first_pass = |(_, text, _): &&(String, String, PathBuf)| {
        passes == Passes::RecordAll || declares_annotated_traits(text)
    };
    let mut out: Vec<Option<FileSummary>> = sources
        .iter()
        .map(|source| first_pass(&source).then(|| summarize_one(source, None)))
        .collect();
    let interest = Interest::new(&ApiTable::default_table(), out.iter().flatten());
    // In file order, as the driver keeps it.
    sources
        .iter()
        .zip(&mut out)
        .map(|(source, summary)| {
            summary
                .take()
                .unwrap_or_else(|| summarize_one(source, Some(&interest)))
        })
        .collect()
}

fn findings(name: &str) -> Vec<Finding> {
    findings_with(name, Passes::Driver)
}

fn findings_with(name: &str, passes: Passes) -> Vec<Finding> {
    let config = AnalysisConfig {
        apis: ApiTable::default_table(),
        root: Some(fixtures_root().join(name)),
    };
    analyze(&summaries(name, passes), &config)
}

/// Recording only the calls of interest changes no finding, in any fixture.
#[test]
fn recording_only_calls_of_interest_changes_no_finding() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // The driver's fixtures hold bad input on purpose; the driver's
        // tests run them through both passes.
        .filter(|name| fixtures_root().join(name).is_dir() && !name.starts_with("driver-"))
        .collect();
    names.sort();
    assert!(names.len() >= 7, "{names:?}");
    for name in &names {
        let driver = render(&findings_with(name, Passes::Driver));
        let all = render(&findings_with(name, Passes::RecordAll));
        assert_eq!(driver, all, "fixture `{name}`");
    }
}

/// A function body that names an annotated trait is walked even when it
/// calls none of its writes: an `impl` in it makes a raw store.
#[test]
fn bodies_naming_an_annotated_trait_are_walked() {
    let declaring = summarize(SourceFile {
        path: "src/store.rs",
        text: "#[dual_write] pub trait UserStore { fn rename_account(&self, id: u64); }\n",
        is_test_file: false,
        dir: None,
    })
    .unwrap();
    let interest = Interest::new(&ApiTable::default_table(), [&declaring]);
    let text = "fn setup() {\n    struct Local;\n    impl UserStore for Local {}\n}\nfn other() { struct Hidden; impl Display for Hidden {} }\n";
    let summary = summarize_with(
        SourceFile {
            path: "src/setup.rs",
            text,
            is_test_file: false,
            dir: None,
        },
        Some(&interest),
    )
    .unwrap();
    proc_macro2::extra::invalidate_current_thread_spans();
    let impls: Vec<_> = summary
        .impls
        .iter()
        .map(|i| i.trait_path.to_string())
        .collect();
    // `other` names nothing of interest: its body is parsed, not walked.
    assert_eq!(impls, ["UserStore"]);
}

/// The calls left out are many: a file without annotated traits keeps
/// only its raw-write calls.
#[test]
fn calls_of_no_interest_are_not_recorded() {
    let text = "fn f(v: Vec<u8>, c: &rusqlite::Connection) {\n    let n = v.len();\n    println!(\"{}\", v.iter().count());\n    c.execute(\"DELETE FROM t\", []).unwrap();\n}\n";
    let source = SourceFile {
        path: "src/lib.rs",
        text,
        is_test_file: false,
        dir: None,
    };
    let interest = Interest::new(&ApiTable::default_table(), []);
    let all = summarize(source).unwrap();
    let some = summarize_with(source, Some(&interest)).unwrap();
    proc_macro2::extra::invalidate_current_thread_spans();
    let names = |s: &FileSummary| {
        s.calls
            .iter()
            .map(|c| c.callee.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&all),
        ["len", "println", "count", "iter", "unwrap", "execute"]
    );
    assert_eq!(names(&some), ["execute"]);
}

fn render(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            format!(
                "{}:{}:{} {} {}\n",
                f.location.file, f.location.start_line, f.location.start_column, f.rule, f.message
            )
        })
        .collect()
}

/// Compares a fixture's findings with its `expected.txt`.
fn check(name: &str) -> Vec<Finding> {
    let found = findings(name);
    let actual = render(&found);
    let expected_path = fixtures_root().join(name).join("expected.txt");
    if std::env::var_os("DUALWRITE_LINT_BLESS").is_some() {
        std::fs::write(&expected_path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "findings of fixture `{name}` differ from expected.txt"
    );
    found
}

#[test]
fn receivers() {
    let found = check("receivers");
    assert!(found.iter().all(|f| f.rule == RuleId::DW001));
    let first = &found[0];
    assert_eq!(first.label, "raw store write");
    assert_eq!(
        first.help,
        "call this through `UserStoreDualWrite` so both stores receive it"
    );
    assert_eq!(first.fingerprint.item, "impl OrderService::place");
    assert_eq!(first.fingerprint.callee, "PgUserStore::insert");
    assert!(!first.in_test);
}

#[test]
fn macro_bodies() {
    check("macro_bodies");
}

#[test]
fn raw_writes() {
    let found = check("raw_writes");
    assert!(found.iter().all(|f| f.rule == RuleId::DW002));
    assert!(
        found[0].help.contains("`impl UserStore for ..`")
            && found[0].help.contains("`UserStoreDualWrite`"),
        "{}",
        found[0].help
    );
}

#[test]
fn false_positives() {
    check("false_positives");
}

#[test]
fn unclassified() {
    check("unclassified");
}

/// A trait the macro rejects: the lint guards the writes of the macro's
/// partial model, classified exactly as the macro classifies them.
#[test]
fn rejected_model() {
    check("rejected_model");
}

#[test]
fn test_code() {
    let found = check("test_code");
    let flags: Vec<(&str, usize, bool)> = found
        .iter()
        .map(|f| (f.location.file.as_str(), f.location.start_line, f.in_test))
        .collect();
    assert_eq!(
        flags,
        vec![
            ("src/lib.rs", 20, false),
            ("src/lib.rs", 25, false),
            ("src/lib.rs", 30, true),
            ("src/lib.rs", 38, true),
            ("src/lib.rs", 45, true),
            ("tests/integration.rs", 6, true),
        ]
    );
}

#[test]
fn fingerprints_number_repeated_calls_and_ignore_lines() {
    let found = check("fingerprints");
    let prints: Vec<(&str, &str, usize)> = found
        .iter()
        .map(|f| {
            (
                f.fingerprint.item.as_str(),
                f.fingerprint.callee.as_str(),
                f.fingerprint.occurrence,
            )
        })
        .collect();
    assert_eq!(
        prints,
        vec![
            ("static WARM_UP", "sqlx::query", 0),
            ("fn twice", "PgUserStore::insert", 0),
            ("fn twice", "sqlx::query", 0),
            ("fn twice", "PgUserStore::insert", 1),
            ("mod jobs::fn run", "PgUserStore::insert", 0),
        ]
    );

    // The same file with lines added above everything: same fingerprints.
    let text = std::fs::read_to_string(fixtures_root().join("fingerprints/src/lib.rs")).unwrap();
    let shifted = format!(
        "// a new header\n\n{}",
        text.replace("fn twice", "\nfn twice")
    );
    let summary = summarize(SourceFile {
        path: "src/lib.rs",
        text: &shifted,
        is_test_file: false,
        dir: None,
    })
    .unwrap();
    proc_macro2::extra::invalidate_current_thread_spans();
    let moved = analyze(
        &[summary],
        &AnalysisConfig {
            apis: ApiTable::default_table(),
            root: None,
        },
    );
    assert_eq!(moved.len(), found.len());
    for (before, after) in found.iter().zip(&moved) {
        assert_eq!(before.fingerprint, after.fingerprint);
        assert_ne!(before.location.start_line, after.location.start_line);
    }
}

#[test]
fn receivers_inferred() {
    let found = check("receivers_inferred");
    assert!(found.iter().all(|f| f.rule == RuleId::DW001));
    assert!(found.iter().all(|f| f.explain.len() >= 2), "{found:#?}");
}

#[test]
fn sql_forms() {
    let found = check("sql_forms");
    assert!(found.iter().all(|f| f.rule == RuleId::DW002));
}

/// A client's rules apply only in crates that depend on it (`Cargo.toml`,
/// renamed dependencies, `Cargo.lock`).
#[test]
fn client_deps() {
    let found = check("client_deps");
    assert!(found.iter().all(|f| f.rule == RuleId::DW002));
}

/// The lines of a fixture marked `// DW00x` (the findings it must have),
/// as `file:line RULE`, for fixtures whose every finding is marked.
fn marked_lines(name: &str) -> Vec<String> {
    let root = fixtures_root().join(name);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut out = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            if let Some((_, rest)) = line.split_once("// DW00") {
                out.push(format!("{rel}:{} DW00{}", i + 1, &rest[..1]));
            }
        }
    }
    out.sort();
    out
}

fn found_lines(found: &[Finding]) -> Vec<String> {
    let mut out: Vec<String> = found
        .iter()
        .map(|f| format!("{}:{} {}", f.location.file, f.location.start_line, f.rule))
        .collect();
    out.sort();
    out
}

/// Enum variant patterns (`Some(Stores::Legacy(s))`, `Backend::Pg(store)`
/// arms, struct variants, `Self::` and glob-imported variants) and every
/// parameter of an iterator adaptor's closure (`zip`, `fold`, `enumerate`,
/// `reduce`, `max_by`, `map_or`) are typed.
#[test]
fn receivers_patterns() {
    let found = check("receivers_patterns");
    assert!(found.iter().all(|f| f.rule == RuleId::DW001));
    assert!(found.iter().all(|f| f.explain.len() >= 2), "{found:#?}");
    assert_eq!(found_lines(&found), marked_lines("receivers_patterns"));
}

/// The `mysql` and `mysql_async` clients: a write through their
/// `Queryable` methods (`exec_drop`, `query_drop`, `exec_batch`, on a
/// connection or a transaction, awaited or not) is reported; reads and
/// `SET` are not.
#[test]
fn mysql_clients() {
    let found = check("mysql_clients");
    assert!(found.iter().all(|f| f.rule == RuleId::DW002));
    assert_eq!(found_lines(&found), marked_lines("mysql_clients"));
}

/// A crate with its own `Transaction` type: a receiver whose type is
/// written as rusqlite's (imported by name, returned qualified, a
/// parameter) is still a client's, and the crate's own type stays clean.
#[test]
fn shadowed_client_types() {
    let found = check("shadowed_client_types");
    assert!(found.iter().all(|f| f.rule == RuleId::DW002));
    assert_eq!(found_lines(&found), marked_lines("shadowed_client_types"));
}

/// sqlx `QueryBuilder`: text pushed after the constructor (`push`,
/// `push_unseparated`, through `separated`, chained, a `format!`, a local
/// or a `const`) makes the built statement a write.
#[test]
fn query_builder() {
    let found = check("query_builder");
    assert!(found.iter().all(|f| f.rule == RuleId::DW002));
    assert_eq!(found_lines(&found), marked_lines("query_builder"));
}

/// In a crate that depends on sea-orm and mongodb, their name-based rules
/// hold only for entities (`Entity::update_many`, also re-exported under
/// another name) and collections (`Collection<_>`, `db.collection(..)`):
/// the crate's own `CommunityTag::update_many` and other receivers with the
/// same method names stay clean.
#[test]
fn client_receivers() {
    let found = check("client_receivers");
    assert!(found.iter().all(|f| f.rule == RuleId::DW002));
    assert_eq!(found_lines(&found), marked_lines("client_receivers"));
}

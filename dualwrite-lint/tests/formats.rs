//! Every output format, on hand-built findings (independent of the rules
//! engine) and end to end: human (miette), JSON (validated against
//! schema/findings.schema.json), SARIF 2.1.0 (field by field, as GitHub
//! code scanning requires), GitHub workflow commands.

mod support;

use std::path::PathBuf;

use dualwrite_lint::check::CheckReport;
use dualwrite_lint::finding::{Finding, Fingerprint, Location, RuleId, Severity};
use dualwrite_lint::output::{self, Format};
use serde_json::Value;
use support::*;

const SOURCE: &str =
    "pub fn repair(pg: &PgUserStore) {\n    pg.insert(user);\n    pg.insert(user);\n}\n";

fn finding(rule: RuleId, severity: Severity, line: usize, message: &str) -> Finding {
    Finding {
        rule,
        severity,
        message: message.to_owned(),
        label: "raw store write".to_owned(),
        help: "call this through `UserStoreDualWrite` so both stores receive it".to_owned(),
        location: Location {
            file: "src/jobs dir/repair.rs".to_owned(),
            start_line: line,
            start_column: 8,
            end_line: line,
            end_column: 14,
        },
        fingerprint: Fingerprint {
            rule,
            file: "src/jobs dir/repair.rs".to_owned(),
            item: "fn repair".to_owned(),
            callee: "PgUserStore::insert".to_owned(),
            occurrence: line - 2,
        },
        in_test: false,
        explain: Vec::new(),
    }
}

fn sample(tree: &TempTree) -> CheckReport {
    tree.write("src/jobs dir/repair.rs", SOURCE);
    CheckReport {
        root: tree.path.clone(),
        findings: vec![
            finding(
                RuleId::DW001,
                Severity::Error,
                2,
                "`insert` of `UserStore` is called on the raw store `PgUserStore`, bypassing the dual-write adapter",
            ),
            finding(
                RuleId::DW002,
                Severity::Warning,
                3,
                "100% raw, with: colons, commas\nand a newline",
            ),
        ],
        files_checked: 42,
        not_checked: Vec::new(),
        bytes_checked: 1000,
        baseline: None,
        baseline_written: None,
        fail_on: Severity::Error,
    }
}

#[test]
fn human_format() {
    let tree = TempTree::new("fmt-human");
    let text = output::render(&sample(&tree), Format::Human, false).stdout;
    assert!(text.contains("DW001(adapter-bypass)"), "{text}");
    assert!(
        text.contains("src/jobs dir/repair.rs:2:8: `insert` of `UserStore`"),
        "{text}"
    );
    assert!(text.contains("2 │     pg.insert(user);"), "{text}");
    assert!(text.contains("raw store write"), "{text}");
    assert!(
        text.contains("help: call this through `UserStoreDualWrite`"),
        "{text}"
    );
    assert!(text.ends_with("1 error, 1 warning in 42 files\n"), "{text}");
    assert!(!text.contains('\u{1b}'), "no color codes: {text}");
    let colored = output::render(&sample(&tree), Format::Human, true).stdout;
    assert!(colored.contains('\u{1b}'));
}

/// A blank line between diagnostics; the rule's long help once, after
/// them, not under every finding; a finding's own help stays under it.
#[test]
fn human_format_prints_each_rules_help_once() {
    let tree = TempTree::new("fmt-human-help");
    let mut report = sample(&tree);
    for line in [2, 3, 3] {
        let mut f = finding(RuleId::DW004, Severity::Warning, line, "unused suppression");
        f.help = RuleId::DW004.help().to_owned();
        report.findings.push(f);
    }
    let text = output::render(&report, Format::Human, false).stdout;
    assert_eq!(text.matches(RuleId::DW004.help()).count(), 1, "{text}");
    assert_eq!(text.matches(RuleId::DW001.help()).count(), 1, "{text}");
    assert_eq!(
        text.matches("help: call this through `UserStoreDualWrite`")
            .count(),
        2,
        "{text}"
    );
    let about = text.find("About these rules:").expect("the rules' help");
    assert!(
        text[about..].contains(&format!(
            "  DW004(suppression): {}\n    {}\n",
            RuleId::DW004.description(),
            RuleId::DW004.help()
        )),
        "{text}"
    );
    // Five diagnostics (each opens with its rule's code), a blank line
    // after each, none doubled.
    let diagnostics = &text[..about];
    assert!(diagnostics.starts_with("DW001(adapter-bypass)\n"), "{text}");
    assert_eq!(diagnostics.matches("\n\nDW00").count(), 4, "{text}");
    assert!(diagnostics.ends_with("╰────\n\n"), "{text}");
    assert!(!text.contains("\n\n\n"), "{text}");
    assert!(
        text.ends_with("\n\n1 error, 4 warnings in 42 files\n"),
        "{text}"
    );
}

#[test]
fn github_format() {
    let tree = TempTree::new("fmt-github");
    let rendered = output::render(&sample(&tree), Format::Github, false);
    let text = rendered.stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "::error file=src/jobs dir/repair.rs,line=2,col=8,endLine=2,endColumn=14,title=DW001 adapter-bypass::`insert` of `UserStore` is called on the raw store `PgUserStore`, bypassing the dual-write adapter%0Ahelp: call this through `UserStoreDualWrite` so both stores receive it"
    );
    assert!(
        lines[1].starts_with("::warning file=src/jobs dir/repair.rs,line=3,col=8,endLine=3,endColumn=14,title=DW002 raw-write::100%25 raw, with: colons, commas%0Aand a newline%0Ahelp: "),
        "{}",
        lines[1]
    );
    // Nothing but workflow commands on stdout; the summary on stderr.
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(rendered.stderr, "1 error, 1 warning in 42 files\n");
    assert_eq!(
        dualwrite_lint::output::github::escape_property("a:b,c%d\r\n"),
        "a%3Ab%2Cc%25d%0D%0A"
    );
}

#[test]
fn sarif_format_field_by_field() {
    let tree = TempTree::new("fmt-sarif");
    let log: Value =
        serde_json::from_str(&output::render(&sample(&tree), Format::Sarif, false).stdout).unwrap();
    assert_eq!(
        log["$schema"],
        "https://json.schemastore.org/sarif-2.1.0.json"
    );
    assert_eq!(log["version"], "2.1.0");
    let runs = log["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    let driver = &run["tool"]["driver"];
    assert_eq!(driver["name"], "dualwrite-lint");
    assert!(
        driver["informationUri"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    assert_eq!(driver["version"], env!("CARGO_PKG_VERSION"));
    let rules = driver["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 5);
    for (index, rule) in RuleId::ALL.iter().enumerate() {
        let r = &rules[index];
        assert_eq!(r["id"], rule.code());
        assert_eq!(r["name"], rule.name());
        assert_eq!(r["shortDescription"]["text"], rule.description());
        assert!(r["fullDescription"]["text"].as_str().unwrap().len() > rule.description().len());
        assert_eq!(r["help"]["text"], rule.help());
        let level = r["defaultConfiguration"]["level"].as_str().unwrap();
        assert!(["error", "warning", "note"].contains(&level));
    }
    assert_eq!(run["columnKind"], "unicodeCodePoints");
    let base = run["originalUriBaseIds"]["%SRCROOT%"]["uri"]
        .as_str()
        .unwrap();
    assert!(
        base.starts_with("file:///") && base.ends_with('/'),
        "{base}"
    );

    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let first = &results[0];
    assert_eq!(first["ruleId"], "DW001");
    assert_eq!(first["ruleIndex"], 1);
    assert_eq!(first["level"], "error");
    assert!(
        first["message"]["text"]
            .as_str()
            .unwrap()
            .contains("UserStoreDualWrite")
    );
    let physical = &first["locations"][0]["physicalLocation"];
    assert_eq!(
        physical["artifactLocation"]["uri"],
        "src/jobs%20dir/repair.rs"
    );
    assert_eq!(physical["artifactLocation"]["uriBaseId"], "%SRCROOT%");
    let region = &physical["region"];
    assert_eq!(
        (
            &region["startLine"],
            &region["startColumn"],
            &region["endLine"],
            &region["endColumn"]
        ),
        (
            &Value::from(2),
            &Value::from(8),
            &Value::from(2),
            &Value::from(14)
        )
    );
    assert_eq!(results[1]["level"], "warning");
    assert_eq!(results[1]["ruleIndex"], 2);

    // Lines 2 and 3 hold the same text: same hash, occurrences 1 and 2.
    let hash = |r: &Value| {
        r["partialFingerprints"]["primaryLocationLineHash"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a, b) = (hash(&results[0]), hash(&results[1]));
    let (a_hash, a_occ) = a.split_once(':').unwrap();
    let (b_hash, b_occ) = b.split_once(':').unwrap();
    assert_eq!(a_hash.len(), 16);
    assert_eq!(a_hash, b_hash);
    assert_eq!((a_occ, b_occ), ("1", "2"));
    // Moving the code down keeps the hash.
    tree.write("src/jobs dir/repair.rs", format!("\n\n{SOURCE}"));
    let mut moved = sample(&tree);
    tree.write("src/jobs dir/repair.rs", format!("\n\n{SOURCE}"));
    for f in &mut moved.findings {
        f.location.start_line += 2;
        f.location.end_line += 2;
    }
    let log: Value =
        serde_json::from_str(&output::render(&moved, Format::Sarif, false).stdout).unwrap();
    assert_eq!(hash(&log["runs"][0]["results"][0]), a);
}

/// A small JSON Schema validator for the keywords the schema uses:
/// `type`, `enum`, `required`, `properties`, `additionalProperties: false`,
/// `items`, `minimum`, `$ref` to `#/$defs/..`.
fn validate(schema: &Value, root: &Value, value: &Value, path: &str) -> Vec<String> {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.strip_prefix("#/$defs/").expect("local $ref");
            &root["$defs"][name]
        }
        None => schema,
    };
    let mut errors = Vec::new();
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => panic!("bad type in schema"),
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !allowed.contains(&actual) {
            errors.push(format!("{path}: {actual} is not {allowed:?}"));
            return errors;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        errors.push(format!("{path}: {value} not in {options:?}"));
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_i64),
        value.as_i64(),
    ) && n < min
    {
        errors.push(format!("{path}: {n} < {min}"));
    }
    if let Value::Object(map) = value {
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !map.contains_key(key.as_str().unwrap()) {
                errors.push(format!("{path}: missing {key}"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, child) in map {
            match properties.and_then(|p| p.get(key)) {
                Some(sub) => errors.extend(validate(sub, root, child, &format!("{path}.{key}"))),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{path}: unexpected {key}"))
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            errors.extend(validate(item_schema, root, item, &format!("{path}[{i}]")));
        }
    }
    errors
}

fn schema() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema/findings.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_valid(doc: &Value) {
    let schema = schema();
    let errors = validate(&schema, &schema, doc, "$");
    assert!(errors.is_empty(), "{errors:#?}\n{doc:#}");
}

#[test]
fn json_format_matches_the_schema() {
    let tree = TempTree::new("fmt-json");
    let doc: Value =
        serde_json::from_str(&output::render(&sample(&tree), Format::Json, false).stdout).unwrap();
    assert_valid(&doc);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["summary"]["errors"], 1);
    assert_eq!(doc["findings"][0]["rule_name"], "adapter-bypass");
    assert_eq!(
        doc["findings"][0]["fingerprint"]["callee"],
        "PgUserStore::insert"
    );
    // The validator catches what it should.
    let mut broken = doc.clone();
    broken["findings"][0]["extra"] = Value::from(1);
    broken["summary"]["files"] = Value::from(-1);
    let schema = schema();
    assert_eq!(validate(&schema, &schema, &broken, "$").len(), 2);
}

#[test]
fn every_format_end_to_end() {
    let dir = fixture("driver-suppress");
    for format in ["human", "json", "sarif", "github"] {
        let output = run(&dir, &["check", "--format", format]);
        assert_eq!(code(&output), 1, "{format}");
        let text = stdout(&output);
        match format {
            "json" => assert_valid(&serde_json::from_str(&text).unwrap()),
            "sarif" => {
                let log: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(log["runs"][0]["results"].as_array().unwrap().len(), 2);
            }
            "github" => {
                assert!(
                    text.starts_with("::error file=src/no_reason.rs,line=3,col=27,"),
                    "{text}"
                );
                assert!(text.lines().all(|l| l.starts_with("::")), "{text}");
                assert_eq!(
                    stderr(&output),
                    "1 error, 1 warning in 1 file; 2 not checked (parse error: 2)\n"
                );
            }
            _ => assert!(
                text.contains("DW004(suppression)")
                    && text.ends_with(
                        "1 error, 1 warning in 1 file; 2 not checked (parse error: 2)\n"
                    ),
                "{text}"
            ),
        }
    }
    // With a baseline, the JSON baseline object matches the schema too.
    let tree = TempTree::new("fmt-json-baseline");
    tree.write("src/a.rs", broken_at(1));
    run(&tree.path, &["check", "--write-baseline", "b.json"]);
    tree.write("src/a.rs", "pub fn a() {}\n");
    let (_, doc) = check_json(&tree.path, &["--baseline", "b.json"]);
    assert_eq!(doc["baseline"]["stale"].as_array().unwrap().len(), 1);
    assert_valid(&doc);
}

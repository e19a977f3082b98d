//! `--format sarif`: SARIF 2.1.0 as GitHub code scanning reads it.
//!
//! Every rule is listed in `tool.driver.rules` (id, name, descriptions,
//! help, default level); results point at repository-relative URIs under
//! `%SRCROOT%`, with a full region (1-based lines and columns counted in
//! Unicode code points, declared by `columnKind`) and
//! `partialFingerprints.primaryLocationLineHash`, computed like GitHub's: a
//! hash of the line's text without whitespace, then `:` and the 1-based
//! occurrence of that hash in the file. `dualwrite/v1` is the baseline
//! fingerprint, hashed, which does not move with lines either.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{SourceCache, default_severity, fnv1a};
use crate::check::CheckReport;
use crate::finding::{Finding, RuleId, Severity};

/// The SARIF schema.
pub const SARIF_SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// Renders the report as a SARIF log.
pub fn render(report: &CheckReport) -> String {
    let mut text = serde_json::to_string_pretty(&log(report)).unwrap_or_default();
    text.push('\n');
    text
}

/// The SARIF log as a JSON value.
pub fn log(report: &CheckReport) -> Value {
    let rules: Vec<Value> = RuleId::ALL.iter().map(|r| rule(*r)).collect();
    let mut sources = SourceCache::new(&report.root);
    let mut line_hashes: HashMap<(String, u64), usize> = HashMap::new();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| result(f, report, &mut sources, &mut line_hashes))
        .collect();
    let mut root_uri = format!("file://{}", uri_path(&report.root.to_string_lossy()));
    if !root_uri.ends_with('/') {
        root_uri.push('/');
    }
    let mut run = json!({
        "tool": {
            "driver": {
                "name": "dualwrite-lint",
                "informationUri": env!("CARGO_PKG_REPOSITORY"),
                "version": env!("CARGO_PKG_VERSION"),
                "semanticVersion": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }
        },
        "originalUriBaseIds": { "%SRCROOT%": { "uri": root_uri } },
        "columnKind": "unicodeCodePoints",
        "invocations": [ { "executionSuccessful": true } ],
        "results": results,
    });
    if let Some(outcome) = &report.baseline {
        run["properties"] = json!({
            "baseline": {
                "file": outcome.file,
                "matched": outcome.matched,
                "stale": outcome.stale,
            }
        });
    }
    json!({
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [run],
    })
}

fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "note",
    }
}

fn rule(rule: RuleId) -> Value {
    json!({
        "id": rule.code(),
        "name": rule.name(),
        "shortDescription": { "text": rule.description() },
        "fullDescription": { "text": format!("{} {}", rule.description(), rule.help()) },
        "help": { "text": rule.help() },
        "defaultConfiguration": { "level": level(default_severity(rule)) },
        "properties": { "tags": ["dual-write"] },
    })
}

fn result(
    finding: &Finding,
    report: &CheckReport,
    sources: &mut SourceCache,
    line_hashes: &mut HashMap<(String, u64), usize>,
) -> Value {
    let l = &finding.location;
    let (end_line, end_column) = if (l.end_line, l.end_column) < (l.start_line, l.start_column) {
        (l.start_line, l.start_column)
    } else {
        (l.end_line, l.end_column)
    };
    let line = sources
        .text_for(finding)
        .map(|text| text.line(l.start_line).to_owned())
        .unwrap_or_default();
    let normalized: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    let hash = fnv1a(normalized.as_bytes());
    let occurrence = line_hashes.entry((l.file.clone(), hash)).or_insert(0);
    *occurrence += 1;
    let fp = &finding.fingerprint;
    let identity = format!(
        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
        fp.rule, fp.file, fp.item, fp.callee, fp.occurrence
    );
    let rule_index = RuleId::ALL
        .iter()
        .position(|r| *r == finding.rule)
        .unwrap_or(0);
    let mut value = json!({
        "ruleId": finding.rule.code(),
        "ruleIndex": rule_index,
        "level": level(finding.severity),
        "message": { "text": format!("{}\nhelp: {}", finding.message, finding.help) },
        "locations": [ {
            "physicalLocation": {
                "artifactLocation": { "uri": uri_path(&l.file), "uriBaseId": "%SRCROOT%" },
                "region": {
                    "startLine": l.start_line,
                    "startColumn": l.start_column,
                    "endLine": end_line,
                    "endColumn": end_column,
                }
            },
            "message": { "text": finding.label },
        } ],
        "partialFingerprints": {
            "primaryLocationLineHash": format!("{hash:016x}:{occurrence}"),
            "dualwrite/v1": format!("{:016x}", fnv1a(identity.as_bytes())),
        },
        "properties": if finding.explain.is_empty() {
            json!({ "inTest": finding.in_test })
        } else {
            json!({ "inTest": finding.in_test, "explain": finding.explain })
        },
    });
    if report.baseline.is_some() {
        value["baselineState"] = json!("new");
    }
    value
}

/// Percent-encodes what may not appear in a URI path (keeps `/`).
fn uri_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

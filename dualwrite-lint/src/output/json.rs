//! `--format json`: a stable, versioned document, described in
//! `docs/json-schema.md` and `schema/findings.schema.json`.
//!
//! Fields are only ever added in a minor version; renaming or removing one
//! bumps [`JSON_VERSION`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::baseline::BaselineOutcome;
use crate::check::CheckReport;
use crate::finding::{Fingerprint, Location, RuleId, Severity};

/// The `version` field of the document.
pub const JSON_VERSION: u32 = 1;

/// The whole document.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// [`JSON_VERSION`].
    pub version: u32,
    /// The tool and its version.
    pub tool: JsonTool,
    /// The lowest severity that fails the run.
    pub fail_on: Severity,
    /// Whether the run fails (exit code 1).
    pub failed: bool,
    /// Counts.
    pub summary: JsonSummary,
    /// Every finding reported (after suppressions and the baseline).
    pub findings: Vec<JsonFinding<'a>>,
    /// What the baseline did, or `null` without one.
    pub baseline: Option<&'a BaselineOutcome>,
}

/// `tool`.
#[derive(Debug, Serialize)]
pub struct JsonTool {
    /// `dualwrite-lint`.
    pub name: &'static str,
    /// The crate version.
    pub version: &'static str,
}

/// `summary`.
#[derive(Debug, Serialize)]
pub struct JsonSummary {
    /// Files checked (read and parsed).
    pub files: usize,
    /// Paths not checked (files, directories, symlinks), each also a DW000
    /// finding (unless the configuration or the baseline hides it).
    pub not_checked: usize,
    /// How many of them per cause (`too-large`, `symlink-outside-root`...).
    pub not_checked_causes: BTreeMap<&'static str, usize>,
    /// Findings of severity error.
    pub errors: usize,
    /// Findings of severity warning.
    pub warnings: usize,
    /// Findings of severity note.
    pub notes: usize,
}

/// One finding.
#[derive(Debug, Serialize)]
pub struct JsonFinding<'a> {
    /// `DW001`.
    pub rule: RuleId,
    /// `adapter-bypass`.
    pub rule_name: &'static str,
    /// `error`, `warning` or `note`.
    pub severity: Severity,
    /// What is wrong.
    pub message: &'a str,
    /// The short label on the call.
    pub label: &'a str,
    /// What to do.
    pub help: &'a str,
    /// Where.
    pub location: &'a Location,
    /// Its identity for baselines.
    pub fingerprint: &'a Fingerprint,
    /// In test code.
    pub in_test: bool,
    /// How the receiver's type was inferred, one step a line (DW001).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub explain: &'a [String],
}

/// Renders the report as pretty-printed JSON.
pub fn render(report: &CheckReport) -> String {
    let document = JsonReport {
        version: JSON_VERSION,
        tool: JsonTool {
            name: "dualwrite-lint",
            version: env!("CARGO_PKG_VERSION"),
        },
        fail_on: report.fail_on,
        failed: report.failed(),
        summary: JsonSummary {
            files: report.files_checked,
            not_checked: report.not_checked.len(),
            not_checked_causes: report
                .not_checked
                .iter()
                .fold(BTreeMap::new(), |mut counts, n| {
                    *counts.entry(n.kind.tag()).or_insert(0) += 1;
                    counts
                }),
            errors: report.count(Severity::Error),
            warnings: report.count(Severity::Warning),
            notes: report.count(Severity::Note),
        },
        findings: report
            .findings
            .iter()
            .map(|f| JsonFinding {
                rule: f.rule,
                rule_name: f.rule.name(),
                severity: f.severity,
                message: &f.message,
                label: &f.label,
                help: &f.help,
                location: &f.location,
                fingerprint: &f.fingerprint,
                in_test: f.in_test,
                explain: &f.explain,
            })
            .collect(),
        baseline: report.baseline.as_ref(),
    };
    let mut text = serde_json::to_string_pretty(&document)
        .unwrap_or_else(|error| format!("{{\"version\":{JSON_VERSION},\"error\":\"{error}\"}}"));
    text.push('\n');
    text
}

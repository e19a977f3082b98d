//! Rendering a [`CheckReport`] in one of the output formats.

pub mod github;
pub mod human;
pub mod json;
pub mod sarif;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::check::CheckReport;
use crate::finding::{Finding, RuleId, Severity};

/// An output format of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// miette diagnostics with source snippets, then a summary line.
    Human,
    /// The documented JSON schema (`schema/findings.schema.json`).
    Json,
    /// SARIF 2.1.0, for GitHub code scanning.
    Sarif,
    /// GitHub Actions workflow commands (`::error file=…::`).
    Github,
}

/// Renders `report` in `format`; `color` applies to `human` only.
pub fn render(report: &CheckReport, format: Format, color: bool) -> String {
    match format {
        Format::Human => human::render(report, color),
        Format::Json => json::render(report),
        Format::Sarif => sarif::render(report),
        Format::Github => github::render(report),
    }
}

/// The severity a rule has when the configuration says nothing: what the
/// rule lists as its default level in SARIF.
pub fn default_severity(rule: RuleId) -> Severity {
    match rule {
        RuleId::DW004 => Severity::Warning,
        _ => Severity::Error,
    }
}

/// `3 errors, 1 warning in 42 files`, or `no findings in 42 files`.
pub fn summary_line(report: &CheckReport) -> String {
    let files = plural(report.files_checked, "file");
    let mut parts = Vec::new();
    for (severity, name) in [
        (Severity::Error, "error"),
        (Severity::Warning, "warning"),
        (Severity::Note, "note"),
    ] {
        let count = report.count(severity);
        if count > 0 || severity != Severity::Note {
            parts.push(plural(count, name));
        }
    }
    if report.findings.is_empty() {
        format!("no findings in {files}")
    } else {
        format!("{} in {files}", parts.join(", "))
    }
}

/// What to say about the baseline, one line each (empty without one).
pub fn baseline_lines(report: &CheckReport) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some((path, count)) = &report.baseline_written {
        lines.push(format!(
            "wrote {} to the baseline {}",
            plural(*count, "finding"),
            path.display()
        ));
        return lines;
    }
    if let Some(outcome) = &report.baseline {
        lines.push(format!(
            "baseline {}: {} excused",
            outcome.file,
            plural(outcome.matched, "finding")
        ));
        if !outcome.stale.is_empty() {
            lines.push(format!(
                "baseline {}: {} no longer found (fixed or moved); rewrite it with --write-baseline:",
                outcome.file,
                match outcome.stale.len() {
                    1 => "1 stale entry".to_owned(),
                    n => format!("{n} stale entries"),
                }
            ));
            for entry in &outcome.stale {
                lines.push(format!(
                    "  stale: {} {} in `{}` calling `{}` (occurrence {})",
                    entry.rule, entry.file, entry.item, entry.callee, entry.occurrence
                ));
            }
        }
    }
    lines
}

fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        format!("1 {word}")
    } else {
        format!("{count} {word}s")
    }
}

/// The text of the files that have findings, read again at render time so
/// that the check itself keeps no file text in memory.
pub struct SourceCache {
    root: PathBuf,
    texts: HashMap<String, Option<String>>,
}

/// Files bigger than this are not shown in snippets.
const SNIPPET_FILE_LIMIT: u64 = 8 * 1024 * 1024;

impl SourceCache {
    /// A cache for files under `root`.
    pub fn new(root: &Path) -> Self {
        SourceCache {
            root: root.to_owned(),
            texts: HashMap::new(),
        }
    }

    /// The text of the finding's file, when it can and should be shown: not
    /// for files that were unreadable, too large, not UTF-8 or too deep.
    pub fn text_for(&mut self, finding: &Finding) -> Option<&str> {
        if finding.rule == RuleId::DW000
            && matches!(
                finding.fingerprint.callee.as_str(),
                "too-large" | "not-utf8" | "unreadable" | "too-deep" | "walk" | "empty"
            )
        {
            return None;
        }
        let root = &self.root;
        self.texts
            .entry(finding.location.file.clone())
            .or_insert_with(|| {
                let path = root.join(&finding.location.file);
                let size = std::fs::metadata(&path).ok()?.len();
                if size > SNIPPET_FILE_LIMIT {
                    return None;
                }
                std::fs::read_to_string(path).ok()
            })
            .as_deref()
    }
}

/// The byte offset of a 1-based line and column (in characters), clamped
/// to the text.
pub fn byte_offset(text: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return text.len(),
        }
    }
    let line_text = text[start..].split('\n').next().unwrap_or("");
    let within = line_text
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(line_text.len(), |(i, _)| i);
    start + within
}

/// The text of a 1-based line.
pub fn line_text(text: &str, line: usize) -> &str {
    text.split('\n')
        .nth(line.saturating_sub(1))
        .unwrap_or("")
        .trim_end_matches('\r')
}

/// 64-bit FNV-1a: small, and stable across releases and platforms (unlike
/// `std`'s hasher), which fingerprints need.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

//! Rendering a [`CheckReport`] in one of the output formats.

pub mod github;
pub mod human;
pub mod json;
pub mod sarif;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// What a run prints: the report on stdout and, for `github`, the summary
/// line on stderr (so stdout holds nothing but workflow commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// For stdout.
    pub stdout: String,
    /// For stderr (empty but for `github`).
    pub stderr: String,
}

/// Renders `report` in `format`; `color` applies to `human` only.
pub fn render(report: &CheckReport, format: Format, color: bool) -> Rendered {
    let (stdout, stderr) = match format {
        Format::Human => (human::render(report, color), String::new()),
        Format::Json => (json::render(report), String::new()),
        Format::Sarif => (sarif::render(report), String::new()),
        Format::Github => (
            github::render(report),
            format!("{}\n", summary_line(report)),
        ),
    };
    Rendered { stdout, stderr }
}

/// The severity a rule has when the configuration says nothing: what the
/// rule lists as its default level in SARIF.
pub fn default_severity(rule: RuleId) -> Severity {
    match rule {
        RuleId::DW004 => Severity::Warning,
        _ => Severity::Error,
    }
}

/// `3 errors, 1 warning in 42 files`, or `no findings in 42 files`, then
/// what was not checked and why: `; 2 not checked (too large: 1, symlink
/// outside the root: 1)`.
pub fn summary_line(report: &CheckReport) -> String {
    let mut line = findings_line(report);
    if !report.not_checked.is_empty() {
        let causes: Vec<String> = report
            .not_checked_by_cause()
            .into_iter()
            .map(|(label, count)| format!("{label}: {count}"))
            .collect();
        line.push_str(&format!(
            "; {} not checked ({})",
            report.not_checked.len(),
            causes.join(", ")
        ));
    }
    line
}

fn findings_line(report: &CheckReport) -> String {
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
    texts: HashMap<String, Option<Arc<SourceText>>>,
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

    /// The text of the finding's file, when it can and should be shown: of
    /// the files not checked, only those with a syntax error.
    pub fn text_for(&mut self, finding: &Finding) -> Option<Arc<SourceText>> {
        if finding.rule == RuleId::DW000
            && finding.fingerprint.callee != crate::intake::Unchecked::ParseError.tag()
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
                let text = std::fs::read_to_string(path).ok()?;
                Some(Arc::new(SourceText::new(text)))
            })
            .clone()
    }
}

/// A file's text with its line starts, so that each finding costs the size
/// of its lines, not of the file (a file can have thousands of findings).
#[derive(Debug)]
pub struct SourceText {
    text: String,
    /// Byte offsets of the line starts; the first is 0.
    line_starts: Vec<usize>,
}

impl SourceText {
    /// Indexes `text`.
    pub fn new(text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1));
        SourceText { text, line_starts }
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text of a 1-based line, without its line break (empty past the end).
    pub fn line(&self, line: usize) -> &str {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return "";
        };
        let end = self
            .line_starts
            .get(line)
            .map_or(self.text.len(), |next| next - 1);
        self.text
            .get(start..end)
            .unwrap_or("")
            .trim_end_matches('\r')
    }

    /// The byte offset of a 1-based line and column (in characters),
    /// clamped to the text.
    pub fn offset(&self, line: usize, column: usize) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        let line_text = self.text[start..].split('\n').next().unwrap_or("");
        let within = line_text
            .char_indices()
            .nth(column.saturating_sub(1))
            .map_or(line_text.len(), |(i, _)| i);
        start + within
    }

    /// The 0-based line holding a byte offset.
    fn line_index(&self, offset: usize) -> usize {
        self.line_starts
            .partition_point(|start| *start <= offset)
            .saturating_sub(1)
    }
}

/// A [`SourceText`] as miette reads it: the lines around a span are found
/// through the line index (miette's own implementation for strings scans
/// the text from its start for every span).
#[derive(Debug, Clone)]
pub struct IndexedSource(pub Arc<SourceText>);

impl miette::SourceCode for IndexedSource {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let source = &*self.0;
        let text = source.text.as_str();
        let start = span.offset();
        let end = start.saturating_add(span.len());
        if end > text.len() || !text.is_char_boundary(start) || !text.is_char_boundary(end) {
            return Err(miette::MietteError::OutOfBounds);
        }
        let start_line = source.line_index(start);
        let last_line = source.line_index(end.saturating_sub(1).max(start));
        let (window_start, line, column) = if context_lines_before == 0 {
            let line_start = source.line_starts[start_line];
            (start, start_line, text[line_start..start].chars().count())
        } else {
            let first = start_line.saturating_sub(context_lines_before);
            (source.line_starts[first], first, 0)
        };
        let window_end = if context_lines_after == 0 {
            end
        } else {
            source
                .line_starts
                .get(last_line + context_lines_after + 1)
                .copied()
                .unwrap_or(text.len())
        };
        let line_count = text[window_start..window_end].matches('\n').count();
        Ok(Box::new(miette::MietteSpanContents::new(
            &text.as_bytes()[window_start..window_end],
            (window_start, window_end - window_start).into(),
            line,
            column,
            line_count,
        )))
    }
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

//! `--format github`: GitHub Actions workflow commands, one per finding
//! (`::error file=…,line=…,col=…,endLine=…,endColumn=…,title=…::message`),
//! which the Actions runner turns into annotations on the pull request.
//! Warnings use `::warning`, notes `::notice`. Values are escaped per the
//! workflow-command rules: `%`, `\r`, `\n` everywhere, and `:` and `,` in
//! properties. The summary line goes to stderr ([`super::render`]), so
//! stdout holds nothing but workflow commands.

use super::baseline_lines;
use crate::check::CheckReport;
use crate::finding::Severity;

/// Renders the report as workflow commands.
pub fn render(report: &CheckReport) -> String {
    let mut out = String::new();
    for finding in &report.findings {
        let command = match finding.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "notice",
        };
        let l = &finding.location;
        let title = format!("{} {}", finding.rule.code(), finding.rule.name());
        out.push_str(&format!(
            "::{command} file={},line={},col={},endLine={},endColumn={},title={}::{}\n",
            escape_property(&l.file),
            l.start_line,
            l.start_column,
            l.end_line.max(l.start_line),
            l.end_column,
            escape_property(&title),
            escape_data(&format!("{}\nhelp: {}", finding.message, finding.help)),
        ));
    }
    let stale = report.baseline.as_ref().map_or(0, |b| b.stale.len());
    if stale > 0 {
        out.push_str(&format!(
            "::notice title={}::{}\n",
            escape_property("dualwrite-lint baseline"),
            escape_data(&baseline_lines(report).join("\n"))
        ));
    }
    out
}

/// Escapes a message.
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a property value.
pub fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

//! `--format human`: one miette diagnostic per finding (rule code, message,
//! the source snippet with a label on the call, and the finding's help),
//! then a summary line.

use std::fmt;

use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode,
    SourceSpan,
};

use super::{SourceCache, baseline_lines, byte_offset, line_text, summary_line};
use crate::check::CheckReport;
use crate::finding::{Finding, Severity};

/// Lines longer than this are not shown as snippets (generated code).
const SNIPPET_LINE_LIMIT: usize = 1000;

/// Renders the report for a terminal or a CI log.
pub fn render(report: &CheckReport, color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_links(false)
        .with_width(120);
    let mut sources = SourceCache::new(&report.root);
    let mut out = String::new();
    for finding in &report.findings {
        let diagnostic = FindingDiagnostic::new(finding, &mut sources);
        let mut rendered = String::new();
        if handler.render_report(&mut rendered, &diagnostic).is_err() {
            rendered = plain(finding);
        }
        out.push_str(&rendered);
        if !rendered.ends_with('\n') {
            out.push('\n');
        }
    }
    for line in baseline_lines(report) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&summary_line(report));
    out.push('\n');
    out
}

/// `file:line:col: severity[DW001]: message`, when miette cannot render.
fn plain(finding: &Finding) -> String {
    let l = &finding.location;
    format!(
        "{}:{}:{}: {}[{}]: {}\n",
        l.file, l.start_line, l.start_column, finding.severity, finding.rule, finding.message
    )
}

/// A finding as a miette diagnostic.
struct FindingDiagnostic<'a> {
    finding: &'a Finding,
    headline: String,
    code: String,
    source: Option<(NamedSource<String>, SourceSpan)>,
}

impl<'a> FindingDiagnostic<'a> {
    fn new(finding: &'a Finding, sources: &mut SourceCache) -> Self {
        let l = &finding.location;
        let source = sources.text_for(finding).and_then(|text| {
            if line_text(text, l.start_line).len() > SNIPPET_LINE_LIMIT {
                return None;
            }
            let start = byte_offset(text, l.start_line, l.start_column);
            let end = byte_offset(text, l.end_line, l.end_column).max(start);
            Some((
                NamedSource::new(l.file.clone(), text.to_owned()),
                SourceSpan::from(start..end),
            ))
        });
        FindingDiagnostic {
            finding,
            headline: format!(
                "{}:{}:{}: {}",
                l.file, l.start_line, l.start_column, finding.message
            ),
            code: format!("{}({})", finding.rule.code(), finding.rule.name()),
            source,
        }
    }
}

impl fmt::Debug for FindingDiagnostic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.headline)
    }
}

impl fmt::Display for FindingDiagnostic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.headline)
    }
}

impl std::error::Error for FindingDiagnostic<'_> {}

impl Diagnostic for FindingDiagnostic<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(&self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.finding.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
            Severity::Note => miette::Severity::Advice,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(&self.finding.help))
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|(s, _)| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let (_, span) = self.source.as_ref()?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some(self.finding.label.clone()),
            *span,
        ))))
    }
}

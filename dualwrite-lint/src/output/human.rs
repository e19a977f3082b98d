//! `--format human`: one miette diagnostic per finding (rule code, message,
//! the source snippet with a label on the call, and the finding's own help
//! when it says more than the rule's), a blank line between them, then,
//! once per rule that has findings, what the rule finds and what to do,
//! then the summary line.

use std::collections::BTreeSet;
use std::fmt;

use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode,
    SourceSpan,
};

use super::{IndexedSource, SourceCache, baseline_lines, summary_line};
use crate::check::CheckReport;
use crate::finding::{Finding, RuleId, Severity};

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
        out.push_str(rendered.trim_end_matches('\n'));
        out.push('\n');
        if !finding.explain.is_empty() {
            out.push_str("  receiver type, as inferred:\n");
            for (i, step) in finding.explain.iter().enumerate() {
                out.push_str(&format!("    {}. {step}\n", i + 1));
            }
        }
        out.push('\n');
    }
    let rules: BTreeSet<RuleId> = report.findings.iter().map(|f| f.rule).collect();
    if !rules.is_empty() {
        out.push_str("About these rules:\n");
        for rule in rules {
            out.push_str(&format!(
                "  {}({}): {}\n    {}\n",
                rule.code(),
                rule.name(),
                rule.description(),
                rule.help()
            ));
        }
        out.push('\n');
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
    source: Option<(NamedSource<IndexedSource>, SourceSpan)>,
}

impl<'a> FindingDiagnostic<'a> {
    fn new(finding: &'a Finding, sources: &mut SourceCache) -> Self {
        let l = &finding.location;
        let source = sources.text_for(finding).and_then(|text| {
            if text.line(l.start_line).len() > SNIPPET_LINE_LIMIT {
                return None;
            }
            let start = text.offset(l.start_line, l.start_column);
            let end = text.offset(l.end_line, l.end_column).max(start);
            Some((
                NamedSource::new(l.file.clone(), IndexedSource(text)),
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

    /// The finding's own help; the rule's long help is printed once, after
    /// the findings.
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        (self.finding.help != self.finding.rule.help())
            .then(|| Box::new(&self.finding.help) as Box<dyn fmt::Display + 'b>)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::output::SourceText;

    fn render(
        handler: &GraphicalReportHandler,
        span: SourceSpan,
        source: impl SourceCode + 'static,
    ) -> String {
        let diagnostic =
            miette::MietteDiagnostic::new("m").with_label(LabeledSpan::at(span, "here"));
        let report = miette::Report::new(diagnostic).with_source_code(source);
        let mut out = String::new();
        handler.render_report(&mut out, report.as_ref()).unwrap();
        out
    }

    /// The indexed source renders exactly as miette's own for a string.
    #[test]
    fn indexed_source_renders_like_a_string() {
        let text =
            "fn a() {}\r\nfn b() {\n    let x = 1;\n    pg.insert(x);\n}\n\nfn c() { é(); }\n";
        let handler =
            GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_width(120);
        for needle in ["fn a", "pg.insert", "}\n\nfn c", "é()", "c() { é(); }\n"] {
            let start = text.find(needle).unwrap();
            let span = SourceSpan::from(start..start + needle.len());
            let indexed = IndexedSource(Arc::new(SourceText::new(text.to_owned())));
            assert_eq!(
                render(&handler, span, indexed),
                render(&handler, span, text.to_owned()),
                "{needle:?}"
            );
        }
    }
}

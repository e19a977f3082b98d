//! `check`: the driver. Walks the paths, reads and summarizes every file in
//! parallel, runs the rules, then applies (in this order) the rule levels of
//! the configuration, inline suppressions, the test policy, the allowed
//! paths and the baseline.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::analysis::{self, FileSummary, Interest, SourceFile, declares_annotated_traits};
use crate::baseline::{self, BaselineOutcome};
use crate::config::{Config, TestPolicy};
use crate::error::DriverError;
use crate::finding::{Finding, Fingerprint, Location, RuleId, Severity};
use crate::intake::{self, Rejection, Unchecked};
use crate::suppress::{self, Suppression};
use crate::walk::{self, SourcePath, WalkOptions};

/// The stack of each parsing thread (and of the thread that runs a
/// command). syn, the drop of its syntax trees and the lint's visitors
/// recurse; the nesting pre-check ([`crate::nesting`]) bounds how deep,
/// and this holds the deepest it lets through with a wide margin, even in
/// a debug build (see the README's Robustness section).
pub const PARSE_STACK_SIZE: usize = 64 * 1024 * 1024;

/// What to check and how.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Files or directories (default: the current directory).
    pub paths: Vec<PathBuf>,
    /// The root that findings are relative to (see [`walk::resolve_root`]).
    pub root: Option<PathBuf>,
    /// An explicit config file.
    pub config: Option<PathBuf>,
    /// Skip test code whatever the config says.
    pub skip_tests: bool,
    /// Excuse the findings listed in this baseline.
    pub baseline: Option<PathBuf>,
    /// Write the current findings to this baseline.
    pub write_baseline: Option<PathBuf>,
    /// The lowest severity that fails the run.
    pub fail_on: Severity,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            paths: vec![PathBuf::from(".")],
            root: None,
            config: None,
            skip_tests: false,
            baseline: None,
            write_baseline: None,
            fail_on: Severity::Error,
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The root every finding's file is relative to.
    pub root: PathBuf,
    /// The findings to report, sorted by file and position.
    pub findings: Vec<Finding>,
    /// How many files were checked (read and parsed).
    pub files_checked: usize,
    /// The paths not checked and why (files, directories, links), by path.
    pub not_checked: Vec<NotChecked>,
    /// How many bytes they held.
    pub bytes_checked: u64,
    /// What the baseline did, when one was given.
    pub baseline: Option<BaselineOutcome>,
    /// The baseline written, and how many entries it holds.
    pub baseline_written: Option<(PathBuf, usize)>,
    /// The lowest severity that fails the run.
    pub fail_on: Severity,
}

/// A path not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotChecked {
    /// The path, relative to the root.
    pub path: String,
    /// Why.
    pub kind: Unchecked,
}

impl CheckReport {
    /// How many paths were not checked, per cause label, most first.
    pub fn not_checked_by_cause(&self) -> Vec<(&'static str, usize)> {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for n in &self.not_checked {
            *counts.entry(n.kind.label()).or_insert(0) += 1;
        }
        let mut counts: Vec<(&'static str, usize)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        counts
    }

    /// Whether a finding is at or above `fail_on` (exit code 1).
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.severity >= self.fail_on)
    }

    /// How many findings have `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }
}

/// What reading and summarizing one file produced.
struct FileOutcome {
    summary: Option<FileSummary>,
    rejection: Option<Rejection>,
    suppressions: Vec<Suppression>,
    bytes: u64,
}

/// Runs `check`.
pub fn run(options: &CheckOptions) -> Result<CheckReport, DriverError> {
    let (root, paths) = walk::resolve_root(&options.paths, options.root.as_deref())?;
    let config = Config::load(&root, options.config.as_deref())?;
    let skip_tests = options.skip_tests || config.tests == TestPolicy::Skip;
    let baseline_entries = options
        .baseline
        .as_deref()
        .map(baseline::read)
        .transpose()?;
    let walked = walk::walk(&WalkOptions {
        root: root.clone(),
        paths,
        exclude: config.exclude.clone(),
        skip_test_files: skip_tests,
    });

    let pool = rayon::ThreadPoolBuilder::new()
        .stack_size(PARSE_STACK_SIZE)
        .thread_name(|i| format!("dualwrite-lint-{i}"))
        .build()
        .map_err(|error| DriverError::new(format!("cannot start worker threads: {error}")))?;
    let mut analysis_config = config.analysis_config();
    analysis_config.root = Some(root.to_path_buf());
    let (outcomes, engine_findings) = pool.install(|| {
        // Files that declare annotated traits first, recording every call;
        // then the rest, recording only the calls that can match a rule
        // (see `analysis::Interest`). The texts of the rest are kept between
        // the passes up to `KEPT_TEXT_BUDGET` bytes and read again beyond.
        let kept = AtomicU64::new(0);
        let first: Vec<FirstPass> = walked
            .files
            .par_iter()
            .map(
                |file| match intake::read_text(&file.abs, config.max_file_size) {
                    Err(rejection) => FirstPass::Done(Box::new(rejected(rejection))),
                    Ok(text) if declares_annotated_traits(&text) => FirstPass::Done(Box::new(
                        match intake::too_complex(&text, config.max_nesting) {
                            Some(rejection) => rejected(rejection),
                            None => summarize_file(file, &text, None),
                        },
                    )),
                    Ok(text) => {
                        let size = text.len() as u64;
                        let total = kept.fetch_add(size, Ordering::Relaxed) + size;
                        FirstPass::Later((total <= KEPT_TEXT_BUDGET).then_some(text))
                    }
                },
            )
            .collect();
        let interest = Interest::new(
            &analysis_config.apis,
            first.iter().filter_map(|pass| match pass {
                FirstPass::Done(outcome) => outcome.summary.as_ref(),
                FirstPass::Later(_) => None,
            }),
        );
        let mut outcomes: Vec<FileOutcome> = first
            .into_par_iter()
            .zip(walked.files.par_iter())
            .map(|(pass, file)| {
                let text = match pass {
                    FirstPass::Done(outcome) => return *outcome,
                    FirstPass::Later(Some(text)) => {
                        match intake::too_complex(&text, config.max_nesting) {
                            Some(rejection) => return rejected(rejection),
                            None => text,
                        }
                    }
                    FirstPass::Later(None) => match intake::read_source(
                        &file.abs,
                        config.max_file_size,
                        config.max_nesting,
                    ) {
                        Ok(text) => text,
                        Err(rejection) => return rejected(rejection),
                    },
                };
                summarize_file(file, &text, Some(&interest))
            })
            .collect();
        let summaries: Vec<FileSummary> = outcomes
            .iter_mut()
            .filter_map(|o| o.summary.take())
            .collect();
        let findings = catch_unwind(AssertUnwindSafe(|| {
            analysis::analyze(&summaries, &analysis_config)
        }));
        // Millions of small allocations: freed on every thread.
        summaries.into_par_iter().for_each(drop);
        (outcomes, findings)
    });
    let engine_findings = engine_findings.map_err(|panic| {
        DriverError::new(format!(
            "internal error in the analysis: {}",
            panic_message(&*panic)
        ))
    })?;

    let mut findings = Vec::new();
    let mut suppressions: BTreeMap<String, Vec<Suppression>> = BTreeMap::new();
    let mut not_checked = Vec::new();
    let mut bytes_checked = 0;
    for (file, outcome) in walked.files.iter().zip(outcomes) {
        bytes_checked += outcome.bytes;
        if let Some(rejection) = outcome.rejection {
            if rejection.kind.is_unchecked() {
                not_checked.push(NotChecked {
                    path: file.rel.clone(),
                    kind: rejection.kind,
                });
            }
            findings.push(rejection_finding(file, rejection, &config));
        }
        if !outcome.suppressions.is_empty() {
            suppressions.insert(file.rel.clone(), outcome.suppressions);
        }
    }
    let files_checked = walked.files.len() - not_checked.len();
    for notice in &walked.notices {
        not_checked.push(NotChecked {
            path: notice.rel.clone(),
            kind: notice.kind,
        });
        findings.push(driver_finding(
            config.unchecked.severity(),
            notice.reason.clone(),
            notice.kind.help().to_owned(),
            notice.kind.label().to_owned(),
            Location::file_start(&notice.rel),
            notice.kind,
            walk::is_test_path(&notice.rel),
        ));
    }
    not_checked.sort_by(|a, b| a.path.cmp(&b.path));
    findings.extend(engine_findings);
    findings.retain(|f| !config.is_off(f.rule));

    let (kept, problems) = suppress::apply(findings, &suppressions, |rule| config.is_off(rule));
    let mut findings = kept;
    findings.extend(problems.into_iter().map(|mut f| {
        f.in_test = walk::is_test_path(&f.location.file);
        f
    }));
    findings.retain_mut(|f| match config.level(f.rule) {
        None => true,
        Some(level) => match level.severity() {
            None => false,
            Some(severity) => {
                f.severity = severity;
                true
            }
        },
    });
    if skip_tests {
        findings.retain(|f| !f.in_test);
    }
    findings.retain(|f| {
        !(matches!(f.rule, RuleId::DW001 | RuleId::DW002) && config.is_allowed(&f.location.file))
    });
    findings
        .sort_by(|a, b| (&a.location, a.rule, &a.message).cmp(&(&b.location, b.rule, &b.message)));
    findings.dedup();

    let mut report = CheckReport {
        root,
        findings,
        files_checked,
        not_checked,
        bytes_checked,
        baseline: None,
        baseline_written: None,
        fail_on: options.fail_on,
    };
    // The baseline in force: the one just written (its findings are, by
    // definition, the baseline) or the one given.
    let applied = if let Some(path) = &options.write_baseline {
        baseline::write(path, &report.findings)?;
        report.baseline_written = Some((path.clone(), report.findings.len()));
        let entries: Vec<Fingerprint> = report
            .findings
            .iter()
            .map(|f| f.fingerprint.clone())
            .collect();
        Some((entries, path))
    } else {
        baseline_entries.zip(options.baseline.as_ref())
    };
    if let Some((entries, path)) = applied {
        let (kept, outcome) = baseline::filter(
            std::mem::take(&mut report.findings),
            &entries,
            &path.display().to_string(),
        );
        report.findings = kept;
        report.baseline = Some(outcome);
    }
    Ok(report)
}

/// How many bytes of source text the first pass keeps for the second; the
/// rest is read again.
const KEPT_TEXT_BUDGET: u64 = 256 << 20;

/// A file after the first pass.
enum FirstPass {
    /// Rejected, or summarized with every call recorded.
    Done(Box<FileOutcome>),
    /// For the second pass; its text if kept.
    Later(Option<String>),
}

/// The outcome of a file rejected at intake.
fn rejected(rejection: Rejection) -> FileOutcome {
    FileOutcome {
        summary: None,
        rejection: Some(rejection),
        suppressions: Vec::new(),
        bytes: 0,
    }
}

/// Summarizes one file, on a parsing thread, recording the calls
/// `interest` names (all if `None`).
fn summarize_file(file: &SourcePath, text: &str, interest: Option<&Interest>) -> FileOutcome {
    let suppressions = suppress::scan(&file.rel, text);
    let source = SourceFile {
        path: &file.rel,
        text,
        is_test_file: file.is_test_file,
        dir: file.abs.parent(),
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        analysis::summarize_with(source, interest)
    }));
    // Every span created while summarizing this file is dead from here on;
    // without this, proc-macro2 keeps every file's text for the whole run.
    proc_macro2::extra::invalidate_current_thread_spans();
    let (summary, rejection) = match result {
        Ok(Ok(summary)) => (Some(summary), None),
        Ok(Err(failure)) if failure.too_complex => (
            None,
            Some(Rejection {
                kind: Unchecked::TooDeep,
                message: format!(
                    "file not checked: too complex to walk safely: {}",
                    failure.message
                ),
                help: "Move the inner parts of the expression into `let` bindings or helper functions; if the file is generated, exclude it in dualwrite.toml.".to_owned(),
                line: failure.line.max(1),
                column: failure.column.max(1),
            }),
        ),
        Ok(Err(failure)) if crate::lex::nightly_syntax(text).is_some() => (
            None,
            Some(Rejection {
                kind: Unchecked::NightlySyntax,
                message: format!(
                    "file not checked: it uses nightly-only syntax ({}), which the parser does not read: {}",
                    crate::lex::nightly_syntax(text).unwrap_or_default(),
                    failure.message
                ),
                help: Unchecked::NightlySyntax.help().to_owned(),
                line: failure.line.max(1),
                column: failure.column.max(1),
            }),
        ),
        Ok(Err(failure)) => (
            None,
            Some(Rejection {
                kind: Unchecked::ParseError,
                message: format!("file not checked: it does not parse: {}", failure.message),
                help: Unchecked::ParseError.help().to_owned(),
                line: failure.line.max(1),
                column: failure.column.max(1),
            }),
        ),
        Err(panic) => (
            None,
            Some(Rejection {
                kind: Unchecked::Panic,
                message: format!(
                    "file not checked: internal error while parsing it: {}",
                    panic_message(&*panic)
                ),
                help: Unchecked::Panic.help().to_owned(),
                line: 1,
                column: 1,
            }),
        ),
    };
    FileOutcome {
        summary,
        rejection,
        suppressions,
        bytes: text.len() as u64,
    }
}

/// The DW000 finding of a file not checked: a syntax error is an error,
/// an empty file a warning, the rest at the `unchecked` level.
fn rejection_finding(file: &SourcePath, rejection: Rejection, config: &Config) -> Finding {
    let location = Location {
        file: file.rel.clone(),
        start_line: rejection.line,
        start_column: rejection.column,
        end_line: rejection.line,
        end_column: rejection.column,
    };
    let severity = match rejection.kind {
        Unchecked::ParseError => Severity::Error,
        Unchecked::Empty => Severity::Warning,
        _ => config.unchecked.severity(),
    };
    let label = rejection.kind.finding_label();
    driver_finding(
        severity,
        rejection.message,
        rejection.help,
        label.to_owned(),
        location,
        rejection.kind,
        file.is_test_file,
    )
}

/// A finding made by the driver itself (DW000); its fingerprint's callee is
/// the kind of problem, so the baseline survives line moves.
fn driver_finding(
    severity: Severity,
    message: String,
    help: String,
    label: String,
    location: Location,
    kind: Unchecked,
    in_test: bool,
) -> Finding {
    let rule = RuleId::DW000;
    Finding {
        rule,
        severity,
        message,
        label,
        help,
        fingerprint: Fingerprint {
            rule,
            file: location.file.clone(),
            item: String::new(),
            callee: kind.tag().to_owned(),
            occurrence: 0,
        },
        location,
        in_test,
        explain: Vec::new(),
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

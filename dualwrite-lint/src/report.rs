//! `report [PATHS...]`: a table of every `#[dual_write]` trait, for
//! architecture review: per method its kind (read, write, passthrough,
//! inherited), key, comparator and `file:line`. Markdown or JSON.

use rayon::prelude::*;
use serde::Serialize;

use dualwrite_codegen::{Compare, MethodKind, TraitModel};

use crate::check::{CheckOptions, PARSE_STACK_SIZE};
use crate::config::{Config, TestPolicy};
use crate::error::DriverError;
use crate::intake;
use crate::traits::annotated_traits;
use crate::walk::{self, SourcePath, WalkOptions};

/// The `version` of the JSON form.
pub const REPORT_VERSION: u32 = 1;

/// Output formats of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Markdown tables.
    Markdown,
    /// JSON.
    Json,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TraitReport {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// Every annotated trait, by file then line.
    pub traits: Vec<TraitEntry>,
    /// Files that could not be read or parsed.
    pub unreadable: Vec<Unreadable>,
}

/// One trait.
#[derive(Debug, Clone, Serialize)]
pub struct TraitEntry {
    /// Its name.
    pub name: String,
    /// The file, relative to the root.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// The generated adapter (absent when the macro rejects the trait).
    pub adapter: Option<String>,
    /// The generated command enum.
    pub command: Option<String>,
    /// Its methods, in declaration order.
    pub methods: Vec<MethodEntry>,
    /// The macro's errors (DW003), empty when it expands.
    pub errors: Vec<TraitError>,
}

/// One method.
#[derive(Debug, Clone, Serialize)]
pub struct MethodEntry {
    /// Its name.
    pub name: String,
    /// `write`, `read`, `passthrough` or `inherited`.
    pub kind: &'static str,
    /// The routing key (`user.id`), if any.
    pub key: Option<String>,
    /// For reads: `PartialEq`, a custom function, or `none`.
    pub comparator: Option<String>,
    /// 1-based line.
    pub line: usize,
}

/// One macro error.
#[derive(Debug, Clone, Serialize)]
pub struct TraitError {
    /// The message.
    pub message: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// A file not read.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    /// The file, relative to the root.
    pub file: String,
    /// Why.
    pub reason: String,
}

/// Builds the report over the paths of `options` (its root, config and
/// test policy; baselines do not apply).
pub fn build(options: &CheckOptions) -> Result<TraitReport, DriverError> {
    let (root, paths) = walk::resolve_root(&options.paths, options.root.as_deref())?;
    let config = Config::load(&root, options.config.as_deref())?;
    let walked = walk::walk(&WalkOptions {
        root,
        paths,
        exclude: config.exclude.clone(),
        skip_test_files: options.skip_tests || config.tests == TestPolicy::Skip,
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .stack_size(PARSE_STACK_SIZE)
        .build()
        .map_err(|error| DriverError::new(format!("cannot start worker threads: {error}")))?;
    let per_file: Vec<Result<Vec<TraitEntry>, Unreadable>> = pool.install(|| {
        walked
            .files
            .par_iter()
            .map(|file| traits_of(file, &config))
            .collect()
    });
    let mut report = TraitReport {
        version: REPORT_VERSION,
        ..TraitReport::default()
    };
    for result in per_file {
        match result {
            Ok(entries) => report.traits.extend(entries),
            Err(unreadable) => report.unreadable.push(unreadable),
        }
    }
    Ok(report)
}

fn traits_of(file: &SourcePath, config: &Config) -> Result<Vec<TraitEntry>, Unreadable> {
    let unreadable = |reason: String| Unreadable {
        file: file.rel.clone(),
        reason,
    };
    let text = intake::read_source(&file.abs, config.max_file_size, config.max_nesting)
        .map_err(|r| unreadable(r.message))?;
    // Cheap filter: most files have no annotated trait.
    if !text.contains("dual_write") {
        return Ok(Vec::new());
    }
    let result = std::panic::catch_unwind(|| {
        annotated_traits(&text).map(|traits| {
            traits
                .into_iter()
                .map(|t| entry(&file.rel, t.name, t.line, &t.model))
                .collect::<Vec<_>>()
        })
    });
    proc_macro2::extra::invalidate_current_thread_spans();
    match result {
        Ok(Ok(entries)) => Ok(entries),
        Ok(Err(error)) => {
            let at = error.span().start();
            Err(unreadable(format!(
                "does not parse at {}:{}: {error}",
                at.line,
                at.column + 1
            )))
        }
        Err(_) => Err(unreadable("internal error while parsing".to_owned())),
    }
}

fn entry(
    file: &str,
    name: String,
    line: usize,
    model: &Result<TraitModel, Vec<syn::Error>>,
) -> TraitEntry {
    match model {
        Ok(model) => TraitEntry {
            name,
            file: file.to_owned(),
            line,
            adapter: Some(model.adapter.to_string()),
            command: Some(model.command.to_string()),
            methods: model
                .methods
                .iter()
                .map(|m| MethodEntry {
                    name: m.ident.to_string(),
                    kind: m.kind.as_str(),
                    key: m.key.as_ref().map(|k| k.display()),
                    comparator: (m.kind == MethodKind::Read).then(|| match &m.compare {
                        Compare::Eq => "PartialEq".to_owned(),
                        Compare::Custom(path) => quote::quote!(#path).to_string().replace(' ', ""),
                        Compare::Skip => "none".to_owned(),
                    }),
                    line: m.ident.span().start().line,
                })
                .collect(),
            errors: Vec::new(),
        },
        Err(errors) => TraitEntry {
            name,
            file: file.to_owned(),
            line,
            adapter: None,
            command: None,
            methods: Vec::new(),
            errors: errors
                .iter()
                .map(|e| {
                    let at = e.span().start();
                    TraitError {
                        message: e.to_string(),
                        line: at.line,
                        column: at.column + 1,
                    }
                })
                .collect(),
        },
    }
}

/// The report as Markdown.
pub fn markdown(report: &TraitReport) -> String {
    let mut out = String::from("# Dual-write traits\n\n");
    let files: std::collections::BTreeSet<&str> =
        report.traits.iter().map(|t| t.file.as_str()).collect();
    out.push_str(&format!(
        "{} annotated trait{} in {} file{}.\n",
        report.traits.len(),
        if report.traits.len() == 1 { "" } else { "s" },
        files.len(),
        if files.len() == 1 { "" } else { "s" },
    ));
    for t in &report.traits {
        out.push_str(&format!("\n## `{}` ({}:{})\n\n", t.name, t.file, t.line));
        if !t.errors.is_empty() {
            out.push_str("The macro rejects this trait (DW003):\n\n");
            for e in &t.errors {
                out.push_str(&format!(
                    "- {}:{}:{}: {}\n",
                    t.file,
                    e.line,
                    e.column,
                    cell(&e.message)
                ));
            }
            continue;
        }
        out.push_str(&format!(
            "Adapter `{}`, command enum `{}`.\n\n",
            t.adapter.as_deref().unwrap_or("?"),
            t.command.as_deref().unwrap_or("?")
        ));
        out.push_str("| Method | Kind | Key | Comparator | Location |\n");
        out.push_str("|---|---|---|---|---|\n");
        for m in &t.methods {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {}:{} |\n",
                m.name,
                m.kind,
                m.key
                    .as_deref()
                    .map_or("-".to_owned(), |k| format!("`{k}`")),
                m.comparator
                    .as_deref()
                    .map_or("-".to_owned(), |c| format!("`{}`", cell(c))),
                t.file,
                m.line
            ));
        }
    }
    if !report.unreadable.is_empty() {
        out.push_str("\n## Files not read\n\n");
        for u in &report.unreadable {
            out.push_str(&format!("- {}: {}\n", u.file, cell(&u.reason)));
        }
    }
    out
}

/// Escapes `|` and newlines inside a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The report as JSON.
pub fn json(report: &TraitReport) -> String {
    let mut text = serde_json::to_string_pretty(report).unwrap_or_default();
    text.push('\n');
    text
}

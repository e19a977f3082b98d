//! The analysis engine: one parse per file produces a [`FileSummary`] (all
//! that the rules need, with resolved line/column positions, so no syntax
//! tree or span outlives its file); [`analyze`] then resolves types across
//! files and applies the rules.
//!
//! Pass 1 ([`summarize`], per file, in parallel) walks the syntax tree once
//! (`collect`), inferring receiver types with a scope-aware environment
//! (`env`, `hints`) and reading macro bodies as code (`macros`). Pass 2
//! ([`analyze`], once) builds a global index (`index`) of annotated traits,
//! their raw stores, struct fields, aliases and constants, and applies
//! DW001, DW002 and DW003 (`rules`).

pub mod apis;
mod collect;
mod deps;
mod env;
mod hints;
mod index;
mod interest;
pub mod macros;
mod rules;
pub mod sql;
pub mod summary;
pub mod ty;

use serde::{Deserialize, Serialize};
use syn::visit::Visit;

pub use apis::{ApiKind, ApiSpec, ApiTable, CallForm};
pub use interest::{Interest, declares_annotated_traits};
pub use summary::FileSummary;

use crate::finding::Finding;

/// A source file handed to the engine.
#[derive(Debug, Clone, Copy)]
pub struct SourceFile<'a> {
    /// Path relative to the checked root, `/`-separated.
    pub path: &'a str,
    /// The file's text.
    pub text: &'a str,
    /// Whether the whole file is test code (under a `tests/` directory).
    pub is_test_file: bool,
    /// The file's directory on disk: SQL that the file includes
    /// (`include_str!("queries/insert.sql")`) is read relative to it.
    /// `None`: included files are not read.
    pub dir: Option<&'a std::path::Path>,
}

/// Why a file could not be summarized (reported as DW000 by the driver).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParseFailure {
    /// syn's message.
    pub message: String,
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column of the error.
    pub column: usize,
    /// Not a syntax error: the file nests deeper than the walk goes
    /// (`MAX_WALK_DEPTH`).
    pub too_complex: bool,
}

/// Engine settings.
#[derive(Debug, Clone, Default)]
pub struct AnalysisConfig {
    /// The raw-write APIs DW002 looks for.
    pub apis: ApiTable,
    /// The checked root on disk: each file's crate manifest (`Cargo.toml`,
    /// and `Cargo.lock` when present) is looked up between the file and
    /// the root, and a client's APIs apply only where the crate depends on
    /// that client. `None`: every API applies everywhere.
    pub root: Option<std::path::PathBuf>,
}

/// Parses one file and extracts its summary. Must be called on the thread
/// that will call `proc_macro2::extra::invalidate_current_thread_spans`
/// afterwards (the driver does this per file).
pub fn summarize(file: SourceFile<'_>) -> Result<FileSummary, ParseFailure> {
    summarize_with(file, None)
}

/// [`summarize`], recording only the calls `interest` names (and reading
/// only the macro bodies that mention one): a call of any other name can
/// match no rule, so leaving it out changes no finding. `None` records
/// every call. The same threading rule as for [`summarize`] applies.
pub fn summarize_with(
    file: SourceFile<'_>,
    interest: Option<&Interest>,
) -> Result<FileSummary, ParseFailure> {
    match syn::parse_file(file.text) {
        Ok(ast) => {
            let mut collector = collect::Collector::new(
                file.path,
                file.text,
                file.is_test_file,
                interest,
                file.dir,
            );
            collector.visit_file(&ast);
            if let Some(at) = collector.too_deep() {
                return Err(ParseFailure {
                    message: format!(
                        "expressions, types or patterns nested deeper than {} levels",
                        collect::MAX_WALK_DEPTH
                    ),
                    line: at.line,
                    column: at.column + 1,
                    too_complex: true,
                });
            }
            Ok(collector.finish())
        }
        Err(error) => {
            let start = error.span().start();
            Err(ParseFailure {
                message: error.to_string(),
                line: start.line,
                column: start.column + 1,
                too_complex: false,
            })
        }
    }
}

/// Applies DW001, DW002 and DW003 to a set of summaries. Findings come
/// ordered by file, line, column and rule, all with severity `error` (the
/// driver applies the configured severities, allowed paths and test policy).
pub fn analyze(summaries: &[FileSummary], config: &AnalysisConfig) -> Vec<Finding> {
    rules::apply(summaries, &config.apis, config.root.as_deref())
}

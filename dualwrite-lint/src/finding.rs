//! What the lint reports: rules, severities, locations and findings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A rule, with a stable id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuleId {
    /// A path that was not checked (unreadable, unparsable, too large,
    /// too complex, a symlink not followed...).
    DW000,
    /// A write method of an annotated trait called on a raw store instead of the adapter.
    DW001,
    /// A write sent straight to a database client.
    DW002,
    /// A `#[dual_write]` trait the macro would reject (e.g. an unclassifiable method).
    DW003,
    /// A suppression without a reason, or one that suppresses nothing.
    DW004,
}

impl RuleId {
    /// Every rule, in id order.
    pub const ALL: [RuleId; 5] = [
        RuleId::DW000,
        RuleId::DW001,
        RuleId::DW002,
        RuleId::DW003,
        RuleId::DW004,
    ];

    /// `DW001`.
    pub fn code(self) -> &'static str {
        match self {
            RuleId::DW000 => "DW000",
            RuleId::DW001 => "DW001",
            RuleId::DW002 => "DW002",
            RuleId::DW003 => "DW003",
            RuleId::DW004 => "DW004",
        }
    }

    /// `adapter-bypass`.
    pub fn name(self) -> &'static str {
        match self {
            RuleId::DW000 => "unreadable-file",
            RuleId::DW001 => "adapter-bypass",
            RuleId::DW002 => "raw-write",
            RuleId::DW003 => "unclassified-method",
            RuleId::DW004 => "suppression",
        }
    }

    /// One line saying what the rule finds.
    pub fn description(self) -> &'static str {
        match self {
            RuleId::DW000 => {
                "A path was not checked: a Rust file that does not parse, is too large, not UTF-8, unreadable or too complex to parse safely, a directory that cannot be read, or a symlink not followed."
            }
            RuleId::DW001 => {
                "A write method of a #[dual_write] trait is called on a raw store instead of the dual-write adapter."
            }
            RuleId::DW002 => {
                "A write goes straight to a database client outside the implementations of #[dual_write] traits."
            }
            RuleId::DW003 => {
                "A #[dual_write] trait has a method the macro cannot classify or an invalid option."
            }
            RuleId::DW004 => "A dualwrite-lint suppression has no reason, or suppresses nothing.",
        }
    }

    /// What to do about a finding of this rule.
    pub fn help(self) -> &'static str {
        match self {
            RuleId::DW000 => {
                "Code the lint does not read can hide bypasses: fix what each finding names, or exclude the path in dualwrite.toml. Syntax errors are errors; `unchecked` in dualwrite.toml sets the level of the other causes (default: warning)."
            }
            RuleId::DW001 => {
                "Call the write through the generated adapter (`<Trait>DualWrite`) so both stores receive it; inside a backfill or reconciliation job, allow the path in dualwrite.toml."
            }
            RuleId::DW002 => {
                "Move the write into an implementation of a #[dual_write] repository trait and call it through the adapter, or suppress with a reason if only one store must see it."
            }
            RuleId::DW003 => {
                "Mark the method #[dual_write(write)], #[dual_write(read)] or #[dual_write(passthrough)], or fix the option the message names."
            }
            RuleId::DW004 => {
                "Write the reason after the suppression (`// dualwrite-lint: allow(DW001) backfill job`), and delete suppressions that no longer match a finding."
            }
        }
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for RuleId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuleId::ALL
            .into_iter()
            .find(|r| r.code().eq_ignore_ascii_case(s) || r.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown rule `{s}`; rules are DW000 to DW004"))
    }
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Note,
    /// Worth a look.
    Warning,
    /// Fails CI by default.
    Error,
}

impl Severity {
    /// `error`, `warning` or `note`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "note" => Ok(Severity::Note),
            "warning" | "warn" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            _ => Err(format!(
                "unknown severity `{s}`; expected error, warning or note"
            )),
        }
    }
}

/// Where a finding is: a file relative to the checked root (with `/`
/// separators) and a 1-based line/column range (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Location {
    /// The file, relative to the root, `/`-separated.
    pub file: String,
    /// First line, 1-based.
    pub start_line: usize,
    /// First column, 1-based.
    pub start_column: usize,
    /// Last line, 1-based.
    pub end_line: usize,
    /// Column just past the end, 1-based.
    pub end_column: usize,
}

impl Location {
    /// The location of a whole file (line 1, column 1).
    pub fn file_start(file: &str) -> Self {
        Location {
            file: file.to_owned(),
            start_line: 1,
            start_column: 1,
            end_line: 1,
            end_column: 1,
        }
    }
}

/// What identifies a finding across edits that move lines: the baseline
/// compares these, never line numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The rule.
    pub rule: RuleId,
    /// The file, relative to the root.
    pub file: String,
    /// The enclosing item, e.g. `impl OrderService::place` or `fn main` (empty at file level).
    pub item: String,
    /// What is called, e.g. `PgUserStore::insert` or `sqlx::query`.
    pub callee: String,
    /// 0 for the first such call in the item, 1 for the second...
    pub occurrence: usize,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule.
    pub rule: RuleId,
    /// Its severity (the rule's, after configuration).
    pub severity: Severity,
    /// What is wrong, in one sentence.
    pub message: String,
    /// The label on the source snippet (short).
    pub label: String,
    /// What to do, specific to this finding (e.g. names the adapter to use).
    pub help: String,
    /// Where.
    pub location: Location,
    /// Stable identity for baselines.
    pub fingerprint: Fingerprint,
    /// Inside `#[cfg(test)]` / `#[test]` code or a `tests/` directory.
    pub in_test: bool,
    /// How the receiver's type was inferred, one step a line (DW001):
    /// shown by `check --explain`, always in JSON and SARIF.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explain: Vec<String>,
}

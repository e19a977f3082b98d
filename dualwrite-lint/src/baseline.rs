//! Baselines: adopt the lint on a code base with known findings, and fail
//! only on new ones.
//!
//! The file (JSON, written by `--write-baseline FILE`) is
//!
//! ```json
//! { "version": 1, "tool": "dualwrite-lint",
//!   "findings": [ { "rule": "DW001", "file": "src/jobs.rs",
//!                   "item": "fn repair", "callee": "PgUserStore::insert",
//!                   "occurrence": 0 } ] }
//! ```
//!
//! Entries are fingerprints, sorted, without line numbers, so moving code
//! keeps them valid. The baseline is a multiset: two identical entries
//! excuse two identical findings.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DriverError;
use crate::finding::{Finding, Fingerprint};

/// The format version written in the file.
pub const BASELINE_VERSION: u32 = 1;

/// The baseline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineFile {
    /// [`BASELINE_VERSION`].
    pub version: u32,
    /// `dualwrite-lint`.
    pub tool: String,
    /// The excused findings, sorted.
    pub findings: Vec<Fingerprint>,
}

/// What applying a baseline did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BaselineOutcome {
    /// The baseline file, as given.
    pub file: String,
    /// How many findings it excused (not reported).
    pub matched: usize,
    /// Entries that match no current finding: fixed, or moved to another
    /// item; rewrite the baseline to drop them.
    pub stale: Vec<Fingerprint>,
}

/// Writes the baseline of `findings` to `path`.
pub fn write(path: &Path, findings: &[Finding]) -> Result<(), DriverError> {
    let mut entries: Vec<Fingerprint> = findings.iter().map(|f| f.fingerprint.clone()).collect();
    entries.sort();
    let file = BaselineFile {
        version: BASELINE_VERSION,
        tool: "dualwrite-lint".to_owned(),
        findings: entries,
    };
    let mut text = serde_json::to_string_pretty(&file)
        .map_err(|error| DriverError::new(format!("cannot encode the baseline: {error}")))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|error| {
        DriverError::new(format!("cannot write baseline {}: {error}", path.display()))
    })
}

/// Reads a baseline file.
pub fn read(path: &Path) -> Result<Vec<Fingerprint>, DriverError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        DriverError::new(format!("cannot read baseline {}: {error}", path.display()))
    })?;
    let file: BaselineFile = serde_json::from_str(&text).map_err(|error| {
        DriverError::new(format!(
            "{}:{}:{}: invalid baseline: {error}",
            path.display(),
            error.line(),
            error.column()
        ))
    })?;
    if file.version != BASELINE_VERSION {
        return Err(DriverError::new(format!(
            "{}: baseline version {} is not supported (expected {BASELINE_VERSION}); rewrite it with --write-baseline",
            path.display(),
            file.version
        )));
    }
    Ok(file.findings)
}

/// Drops the findings the baseline excuses; lists its stale entries.
pub fn filter(
    findings: Vec<Finding>,
    baseline: &[Fingerprint],
    file: &str,
) -> (Vec<Finding>, BaselineOutcome) {
    let mut remaining: HashMap<&Fingerprint, usize> = HashMap::new();
    for entry in baseline {
        *remaining.entry(entry).or_insert(0) += 1;
    }
    let mut matched = 0;
    let mut kept = Vec::new();
    for finding in findings {
        match remaining.get_mut(&finding.fingerprint) {
            Some(count) if *count > 0 => {
                *count -= 1;
                matched += 1;
            }
            _ => kept.push(finding),
        }
    }
    let mut stale = Vec::new();
    for entry in baseline {
        if let Some(count) = remaining.get_mut(entry)
            && *count > 0
        {
            *count -= 1;
            stale.push(entry.clone());
        }
    }
    stale.sort();
    (
        kept,
        BaselineOutcome {
            file: file.to_owned(),
            matched,
            stale,
        },
    )
}

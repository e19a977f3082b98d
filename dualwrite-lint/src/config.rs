//! The configuration: `dualwrite.toml` at the root, or
//! `[workspace.metadata.dualwrite]` (or `[package.metadata.dualwrite]`) in
//! the root's `Cargo.toml`.
//!
//! Every key is checked: an unknown key, a bad value or a bad glob stops the
//! run (exit 2) with a report that points at the line, because a typo in a
//! CI config that silently does nothing is worse than a failing build.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};
use serde::Deserialize;
use toml::Spanned;

use crate::analysis::{AnalysisConfig, ApiSpec, ApiTable};
use crate::error::DriverError;
use crate::finding::{RuleId, Severity};
use crate::nesting::MAX_NESTING_LIMIT;

/// The default `max_file_size`: 5 MiB. Hand-written Rust files are far
/// smaller; bigger ones are generated and slow to parse.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 5 * 1024 * 1024;

/// The default `max_nesting`: deeper nesting than this is reported
/// (DW000) instead of parsed, so a hostile file cannot overflow the stack
/// (see [`crate::nesting`]).
pub const DEFAULT_MAX_NESTING: usize = 256;

/// How paths that are not checked (too large, not UTF-8, unreadable, too
/// complex, symlinks out of the root...) are reported: `unchecked =
/// "warn"` (the default), `"error"` or `"note"`. Never silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UncheckedLevel {
    /// Fail the run (with the default `--fail-on error`).
    Error,
    /// Reported, and counted in the summary line (default).
    #[default]
    #[serde(alias = "warn")]
    Warning,
    /// Reported as notes.
    Note,
}

impl UncheckedLevel {
    /// The severity of the findings.
    pub fn severity(self) -> Severity {
        match self {
            UncheckedLevel::Error => Severity::Error,
            UncheckedLevel::Warning => Severity::Warning,
            UncheckedLevel::Note => Severity::Note,
        }
    }
}

/// Whether test code is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestPolicy {
    /// `#[cfg(test)]` items and `tests/` directories are checked (default).
    #[default]
    Check,
    /// They are skipped.
    Skip,
}

/// What the configuration says about one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleLevel {
    /// Every finding of the rule is an error.
    Error,
    /// Every finding of the rule is a warning.
    Warning,
    /// Every finding of the rule is a note.
    Note,
    /// The rule is disabled.
    Off,
}

impl RuleLevel {
    /// The severity it forces, or `None` when the rule is off.
    pub fn severity(self) -> Option<Severity> {
        match self {
            RuleLevel::Error => Some(Severity::Error),
            RuleLevel::Warning => Some(Severity::Warning),
            RuleLevel::Note => Some(Severity::Note),
            RuleLevel::Off => None,
        }
    }
}

/// Extra and removed raw-write APIs (DW002).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWrites {
    /// APIs added to the built-in table.
    #[serde(default)]
    pub add: Vec<ApiSpec>,
    /// Names of built-in APIs to drop.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    /// Paths (relative to the root) where DW001 and DW002 are allowed.
    pub allow: GlobSet,
    /// Paths (relative to the root) never walked.
    pub exclude: GlobSet,
    /// Per-rule overrides.
    pub severity: BTreeMap<RuleId, RuleLevel>,
    /// Test-code policy.
    pub tests: TestPolicy,
    /// Files larger than this many bytes are reported, not parsed.
    pub max_file_size: u64,
    /// Nesting deeper than this is reported, not parsed.
    pub max_nesting: usize,
    /// How paths not checked are reported.
    pub unchecked: UncheckedLevel,
    /// Changes to the raw-write API table.
    pub raw_writes: RawWrites,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            allow: GlobSet::empty(),
            exclude: GlobSet::empty(),
            severity: BTreeMap::new(),
            tests: TestPolicy::Check,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_nesting: DEFAULT_MAX_NESTING,
            unchecked: UncheckedLevel::default(),
            raw_writes: RawWrites::default(),
        }
    }
}

impl Config {
    /// Loads `explicit` if given, else `<root>/dualwrite.toml`, else the
    /// `dualwrite` metadata table of `<root>/Cargo.toml`, else the defaults.
    pub fn load(root: &Path, explicit: Option<&Path>) -> Result<Config, DriverError> {
        if let Some(path) = explicit {
            let text = read_config(path)?;
            return if is_manifest(path) {
                parse_manifest(path, &text).map(|c| c.unwrap_or_default())
            } else {
                parse_dualwrite_toml(path, &text)
            };
        }
        let dedicated = root.join("dualwrite.toml");
        if dedicated.is_file() {
            let text = read_config(&dedicated)?;
            return parse_dualwrite_toml(&dedicated, &text);
        }
        let manifest = root.join("Cargo.toml");
        if manifest.is_file() {
            let text = read_config(&manifest)?;
            if let Some(config) = parse_manifest(&manifest, &text)? {
                return Ok(config);
            }
        }
        Ok(Config::default())
    }

    /// Parses the text of a `dualwrite.toml` (`name` is used in messages).
    pub fn from_toml(name: &Path, text: &str) -> Result<Config, DriverError> {
        parse_dualwrite_toml(name, text)
    }

    /// Whether `file` (relative to the root) is in an allowed path.
    pub fn is_allowed(&self, file: &str) -> bool {
        self.allow.is_match(file)
    }

    /// The level configured for `rule`, if any.
    pub fn level(&self, rule: RuleId) -> Option<RuleLevel> {
        self.severity.get(&rule).copied()
    }

    /// Whether `rule` is disabled.
    pub fn is_off(&self, rule: RuleId) -> bool {
        self.level(rule) == Some(RuleLevel::Off)
    }

    /// The engine settings this configuration implies.
    pub fn analysis_config(&self) -> AnalysisConfig {
        AnalysisConfig {
            apis: self.api_table(),
            root: None,
        }
    }

    /// The raw-write API table: the built-in one with `raw_writes` applied.
    pub fn api_table(&self) -> ApiTable {
        ApiTable::default_table().with_changes(self.raw_writes.add.clone(), &self.raw_writes.remove)
    }
}

/// The keys of the configuration, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
    #[serde(default)]
    severity: SeverityTable,
    #[serde(default)]
    tests: TestPolicy,
    #[serde(default)]
    max_file_size: Option<Spanned<FileSize>>,
    #[serde(default)]
    max_nesting: Option<Spanned<usize>>,
    #[serde(default)]
    unchecked: UncheckedLevel,
    #[serde(default)]
    raw_writes: RawWrites,
}

/// `[severity]`: one optional key per rule (codes; lowercase accepted).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeverityTable {
    #[serde(rename = "DW000", alias = "dw000")]
    dw000: Option<RuleLevel>,
    #[serde(rename = "DW001", alias = "dw001")]
    dw001: Option<RuleLevel>,
    #[serde(rename = "DW002", alias = "dw002")]
    dw002: Option<RuleLevel>,
    #[serde(rename = "DW003", alias = "dw003")]
    dw003: Option<RuleLevel>,
    #[serde(rename = "DW004", alias = "dw004")]
    dw004: Option<RuleLevel>,
}

/// `max_file_size = 5242880` or `max_file_size = "5 MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileSize {
    Bytes(u64),
    Text(String),
}

/// The parts of a `Cargo.toml` that may hold the configuration; every other
/// key is ignored.
#[derive(Debug, Deserialize)]
struct Manifest {
    workspace: Option<MetadataHolder>,
    package: Option<MetadataHolder>,
}

#[derive(Debug, Deserialize)]
struct MetadataHolder {
    metadata: Option<Metadata>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    dualwrite: Option<RawConfig>,
}

fn is_manifest(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "Cargo.toml")
}

fn read_config(path: &Path) -> Result<String, DriverError> {
    std::fs::read_to_string(path).map_err(|error| {
        DriverError::new(format!("cannot read config {}: {error}", path.display()))
    })
}

fn parse_dualwrite_toml(path: &Path, text: &str) -> Result<Config, DriverError> {
    let raw: RawConfig = toml::from_str(text).map_err(|error| toml_error(path, text, &error))?;
    build(path, text, raw)
}

fn parse_manifest(path: &Path, text: &str) -> Result<Option<Config>, DriverError> {
    let manifest: Manifest =
        toml::from_str(text).map_err(|error| toml_error(path, text, &error))?;
    let from = |holder: Option<MetadataHolder>| holder.and_then(|h| h.metadata?.dualwrite);
    let raw = from(manifest.workspace).or_else(|| from(manifest.package));
    raw.map(|raw| build(path, text, raw)).transpose()
}

fn build(path: &Path, text: &str, raw: RawConfig) -> Result<Config, DriverError> {
    let allow = globs(path, text, &raw.allow)?;
    let exclude = globs(path, text, &raw.exclude)?;
    let max_file_size = match raw.max_file_size {
        None => DEFAULT_MAX_FILE_SIZE,
        Some(size) => {
            let span = size.span();
            parse_size(size.into_inner())
                .map_err(|why| spanned_error(path, text, span, &why, "this size"))?
        }
    };
    let max_nesting = match raw.max_nesting {
        None => DEFAULT_MAX_NESTING,
        Some(depth) if *depth.get_ref() == 0 || *depth.get_ref() > MAX_NESTING_LIMIT => {
            return Err(spanned_error(
                path,
                text,
                depth.span(),
                &format!("max_nesting must be between 1 and {MAX_NESTING_LIMIT}"),
                "this value",
            ));
        }
        Some(depth) => depth.into_inner(),
    };
    let table = raw.severity;
    let severity = [
        (RuleId::DW000, table.dw000),
        (RuleId::DW001, table.dw001),
        (RuleId::DW002, table.dw002),
        (RuleId::DW003, table.dw003),
        (RuleId::DW004, table.dw004),
    ]
    .into_iter()
    .filter_map(|(rule, level)| Some((rule, level?)))
    .collect();
    Ok(Config {
        source: Some(path.to_owned()),
        allow,
        exclude,
        severity,
        tests: raw.tests,
        max_file_size,
        max_nesting,
        unchecked: raw.unchecked,
        raw_writes: raw.raw_writes,
    })
}

/// Compiles path globs the way `.gitignore` reads them: `*` stays within a
/// path segment, `**` crosses them, a pattern without `/` matches at any
/// depth, and a pattern naming a directory also matches everything in it.
fn globs(path: &Path, text: &str, patterns: &[Spanned<String>]) -> Result<GlobSet, DriverError> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        for form in glob_forms(pattern.get_ref()) {
            let glob = GlobBuilder::new(&form)
                .literal_separator(true)
                .build()
                .map_err(|error| {
                    let why = format!("invalid glob `{}`: {}", pattern.get_ref(), error.kind());
                    spanned_error(path, text, pattern.span(), &why, "this pattern")
                })?;
            set.add(glob);
        }
    }
    set.build()
        .map_err(|error| DriverError::new(format!("{}: {error}", path.display())))
}

/// The globs one configured pattern stands for.
fn glob_forms(pattern: &str) -> Vec<String> {
    let pattern = pattern.trim_start_matches("./");
    let rooted = pattern.starts_with('/');
    let body = pattern.trim_matches('/');
    let base = if rooted || body.contains('/') {
        body.to_owned()
    } else {
        format!("**/{body}")
    };
    if base.ends_with("/**") {
        vec![base]
    } else {
        let inside = format!("{base}/**");
        vec![base, inside]
    }
}

fn parse_size(size: FileSize) -> Result<u64, String> {
    let text = match size {
        FileSize::Bytes(0) => return Err("max_file_size must be at least 1 byte".to_owned()),
        FileSize::Bytes(bytes) => return Ok(bytes),
        FileSize::Text(text) => text,
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "invalid size `{text}`: expected bytes or a number with KB, KiB, MB, MiB, GB or GiB"
            ));
        }
    };
    let number: u64 = digits.parse().map_err(|_| {
        format!("invalid size `{text}`: expected a number of bytes, such as \"5 MiB\"")
    })?;
    match number.checked_mul(factor) {
        Some(0) => Err("max_file_size must be at least 1 byte".to_owned()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("invalid size `{text}`: too large")),
    }
}

fn toml_error(path: &Path, text: &str, error: &toml::de::Error) -> DriverError {
    let message = error.message().trim().to_owned();
    match error.span() {
        Some(span) => spanned_error(path, text, span, &message, "here"),
        None => DriverError::new(format!("{}: invalid config: {message}", path.display())),
    }
}

/// A config error as a miette report: `file:line:col: message`, then the
/// snippet with a label on the offending text.
fn spanned_error(
    path: &Path,
    text: &str,
    span: Range<usize>,
    message: &str,
    label: &str,
) -> DriverError {
    let (line, column) = line_column(text, span.start);
    let headline = format!(
        "{}:{line}:{column}: invalid config: {message}",
        path.display()
    );
    let diagnostic = MietteDiagnostic::new(headline.clone())
        .with_code("dualwrite-lint::config")
        .with_label(LabeledSpan::at(span, label));
    let report = miette::Report::new(diagnostic).with_source_code(NamedSource::new(
        path.display().to_string(),
        text.to_owned(),
    ));
    let mut rendered = String::new();
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor());
    if handler
        .render_report(&mut rendered, report.as_ref())
        .is_err()
    {
        return DriverError::new(headline);
    }
    DriverError::new(rendered)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, DriverError> {
        Config::from_toml(Path::new("dualwrite.toml"), text)
    }

    #[test]
    fn reads_every_key() {
        let config = parse(
            r#"
allow = ["src/backfill/**", "reconcile.rs"]
exclude = ["gen/"]
tests = "skip"
max_file_size = "1 MiB"
max_nesting = 64
unchecked = "warn"
[severity]
DW001 = "warning"
DW004 = "off"
[raw_writes]
add = [{ name = "exec_write", kind = "write", call = "method" }]
remove = ["execute"]
"#,
        )
        .unwrap();
        assert!(config.is_allowed("src/backfill/run.rs"));
        assert!(config.is_allowed("src/jobs/reconcile.rs"));
        assert!(!config.is_allowed("src/main.rs"));
        assert!(config.exclude.is_match("gen/a.rs"));
        assert!(config.exclude.is_match("gen"));
        assert_eq!(config.tests, TestPolicy::Skip);
        assert_eq!(config.max_file_size, 1024 * 1024);
        assert_eq!(config.max_nesting, 64);
        assert_eq!(config.unchecked, UncheckedLevel::Warning);
        assert_eq!(
            parse("unchecked = \"error\"").unwrap().unchecked.severity(),
            Severity::Error
        );
        assert_eq!(config.level(RuleId::DW001), Some(RuleLevel::Warning));
        assert!(config.is_off(RuleId::DW004));
        let table = config.api_table();
        assert!(table.specs.iter().all(|spec| spec.name != "execute"));
        assert_eq!(
            table.specs.last().map(|spec| spec.name.as_str()),
            Some("exec_write")
        );
        assert!(table.specs.len() > 10, "the built-in table stays");
    }

    #[test]
    fn star_stays_in_one_segment() {
        let config = parse(r#"allow = ["src/*.rs"]"#).unwrap();
        assert!(config.is_allowed("src/a.rs"));
        assert!(!config.is_allowed("src/deep/a.rs"));
    }

    #[test]
    fn errors_point_at_the_line() {
        for (text, line) in [
            ("allow = []\nbogus = 1\n", 2),
            ("[severity]\nDW001 = \"fatal\"\n", 2),
            ("\n\nallow = [\"src/[\"]\n", 3),
            ("allow = [\n", 1),
            ("max_file_size = \"big\"\n", 1),
            ("\nmax_nesting = 100000\n", 2),
            ("unchecked = \"off\"\n", 1),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(
                error.contains(&format!("dualwrite.toml:{line}:")),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn reads_cargo_metadata() {
        let text = "[package]\nname = \"x\"\n[package.metadata.dualwrite]\nallow = [\"jobs/**\"]\n";
        let config = parse_manifest(Path::new("Cargo.toml"), text)
            .unwrap()
            .unwrap();
        assert!(config.is_allowed("jobs/a.rs"));
        let error = parse_manifest(
            Path::new("Cargo.toml"),
            "[workspace.metadata.dualwrite]\nalow = []\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("Cargo.toml:2:"), "{error}");
        assert!(
            parse_manifest(Path::new("Cargo.toml"), "[package]\nname = \"x\"\n")
                .unwrap()
                .is_none()
        );
    }
}

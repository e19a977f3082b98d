//! The command line: `check`, `expand` and `report`, their flags, and the
//! exit codes (0 clean, 1 findings at or above `--fail-on`, 2 usage,
//! config or internal error).

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::check::{self, CheckOptions, PARSE_STACK_SIZE};
use crate::error::DriverError;
use crate::expand;
use crate::finding::Severity;
use crate::output::{self, Format};
use crate::report::{self, ReportFormat};

/// Exit code: no finding at or above `--fail-on`.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: findings at or above `--fail-on`.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: bad usage, bad config, missing path, internal error.
pub const EXIT_ERROR: u8 = 2;

/// Audits Rust sources for writes that bypass the dual-write adapter.
#[derive(Debug, Parser)]
#[command(name = "dualwrite-lint", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check files for adapter bypasses and raw writes (DW000-DW004).
    Check(CheckArgs),
    /// Print the code #[dual_write] generates for each trait of FILE.
    Expand(ExpandArgs),
    /// Table of every #[dual_write] trait: per method kind, key, comparator, location.
    Report(ReportArgs),
}

/// Flags shared by `check` and `report`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Files or directories to check.
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,
    /// Config file (default: ROOT/dualwrite.toml, else [workspace.metadata.dualwrite] in ROOT/Cargo.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory that reported paths are relative to (default: the current directory, if it contains PATHS).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Skip test code: #[cfg(test)] items, #[test] functions and tests/ directories.
    #[arg(long)]
    pub skip_tests: bool,
}

/// `check` flags.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Paths, config, root, test policy.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Lowest severity that makes the exit code 1.
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    pub fail_on: FailOn,
    /// Report only findings not in this baseline file; list its stale entries.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Write every current finding to this baseline file (and exit 0).
    #[arg(long, value_name = "FILE")]
    pub write_baseline: Option<PathBuf>,
    /// Colors in human output (auto: when stdout is a terminal and NO_COLOR is unset).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Human output: show under each DW001 finding how the receiver's type
    /// was inferred (JSON and SARIF always carry it).
    #[arg(long)]
    pub explain: bool,
}

/// `expand` flags.
#[derive(Debug, Args)]
pub struct ExpandArgs {
    /// The Rust file holding #[dual_write] traits.
    pub file: PathBuf,
    /// Expand only this trait.
    #[arg(long = "trait", value_name = "NAME")]
    pub trait_name: Option<String>,
    /// Write one file per trait (`<trait_snake>.rs`) into DIR instead of printing.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `report` flags.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Paths, config, root, test policy.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Markdown)]
    pub format: ReportFormat,
}

/// `--fail-on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    /// Fail on errors only.
    Error,
    /// Fail on warnings and errors.
    Warning,
    /// Fail on any finding.
    Note,
}

impl From<FailOn> for Severity {
    fn from(value: FailOn) -> Self {
        match value {
            FailOn::Error => Severity::Error,
            FailOn::Warning => Severity::Warning,
            FailOn::Note => Severity::Note,
        }
    }
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Color when stdout is a terminal and `NO_COLOR` is unset.
    Auto,
    /// Always color.
    Always,
    /// Never color.
    Never,
}

impl ColorChoice {
    fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// Examples and exit codes, under `--help`, for the program named `bin`.
fn after_help(bin: &str) -> String {
    format!(
        "Examples:
  {bin} check                          Check the current directory's project (its root: the
                                              nearest dualwrite.toml or workspace Cargo.toml above)
  {bin} check src/jobs --fail-on warning
  {bin} check --format github          Annotations in a GitHub Actions job
  {bin} check --write-baseline dualwrite-baseline.json
  {bin} check --baseline dualwrite-baseline.json   Only new findings fail
  {bin} expand src/store.rs            The code #[dual_write] generates
  {bin} report --format json           Every #[dual_write] trait and its methods

Exit codes:
  0  no finding at or above --fail-on (paths not checked are warnings unless
     dualwrite.toml says `unchecked = \"error\"`)
  1  findings at or above --fail-on; for expand, a trait the macro rejects
  2  usage error, bad config or baseline file, missing path, internal error"
    )
}

/// The command line definition, named `bin` in usage lines and help.
pub fn command(bin: &str) -> clap::Command {
    let help = after_help(bin);
    Cli::command()
        .bin_name(bin.to_owned())
        .after_help(help.clone())
        .mut_subcommand("check", |c| c.after_help(help))
}

/// The entry point of both binaries (`dualwrite-lint` and
/// `cargo-dualwrite-lint`).
pub fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    // `cargo dualwrite-lint check` runs `cargo-dualwrite-lint dualwrite-lint check`.
    let bin = if args.get(1).is_some_and(|a| a == "dualwrite-lint") {
        args.remove(1);
        "cargo dualwrite-lint"
    } else {
        "dualwrite-lint"
    };
    let parsed = command(bin)
        .try_get_matches_from(args)
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() {
                EXIT_ERROR
            } else {
                EXIT_CLEAN
            };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    // The command runs on a thread with the parsing threads' stack: it
    // parses too (`expand`), and nothing it does may overflow a smaller one.
    let outcome = std::thread::Builder::new()
        .name("dualwrite-lint".to_owned())
        .stack_size(PARSE_STACK_SIZE)
        .spawn(move || run(cli))
        .map_err(|error| DriverError::new(format!("cannot start a thread: {error}")))
        .and_then(|thread| {
            thread.join().map_err(|panic| {
                DriverError::new(format!("internal error: {}", check::panic_message(&*panic)))
            })?
        });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let message = error.message();
            if message.ends_with('\n') {
                eprint!("dualwrite-lint: {message}");
            } else {
                eprintln!("dualwrite-lint: {message}");
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> Result<u8, DriverError> {
    match cli.command {
        Command::Check(args) => {
            let options = CheckOptions {
                paths: args.common.paths,
                root: args.common.root,
                config: args.common.config,
                skip_tests: args.common.skip_tests,
                baseline: args.baseline,
                write_baseline: args.write_baseline,
                fail_on: args.fail_on.into(),
            };
            let mut report = check::run(&options)?;
            if args.format == Format::Human && !args.explain {
                for finding in &mut report.findings {
                    finding.explain.clear();
                }
            }
            let rendered = output::render(&report, args.format, args.color.enabled());
            write_stdout(&rendered.stdout)?;
            if !rendered.stderr.is_empty() {
                eprint!("{}", rendered.stderr);
            }
            Ok(if report.failed() {
                EXIT_FINDINGS
            } else {
                EXIT_CLEAN
            })
        }
        Command::Expand(args) => {
            let ok = expand::run(&args.file, args.trait_name.as_deref(), args.out.as_deref())?;
            Ok(if ok { EXIT_CLEAN } else { EXIT_FINDINGS })
        }
        Command::Report(args) => {
            let options = CheckOptions {
                paths: args.common.paths,
                root: args.common.root,
                config: args.common.config,
                skip_tests: args.common.skip_tests,
                ..CheckOptions::default()
            };
            let built = report::build(&options)?;
            for u in &built.unreadable {
                eprintln!("warning: {}: not read: {}", u.file, u.reason);
            }
            let text = match args.format {
                ReportFormat::Markdown => report::markdown(&built),
                ReportFormat::Json => report::json(&built),
            };
            write_stdout(&text)?;
            Ok(EXIT_CLEAN)
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(text: &str) -> Result<(), DriverError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(DriverError::new(
            format!("cannot write the output: {error}"),
        )),
        _ => Ok(()),
    }
}

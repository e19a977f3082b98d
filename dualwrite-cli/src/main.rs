//! `dualwrite`: the operator's view and control of a migration's shared
//! phases (the spec's feature flags), kept in a phase database that every
//! service instance follows (`dualwrite_runtime::phase_source`).
//!
//! Every change goes through a `Migration` that follows the database, so
//! the spec's rules (no leaving Cleanup, no skipping phases unless forced,
//! rollouts checked for every group of keys they move) and the cutover
//! gates apply exactly as in the service, and the change is stored with
//! compare-and-set and an audit record naming the operator.

mod data;
mod gate_inputs;
mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dualwrite_runtime::phase_source::{
    PhaseSource, PhaseSync, PhaseTables, PostgresPhaseSource, SourceError, SqlitePhaseSource,
    SyncOptions,
};
use dualwrite_runtime::{
    AdvanceError, CutoverGate, GateInputs, Migration, Phase, PhaseChange, PhaseError, RoutingKey,
    Transition,
};

use crate::output::Printer;

const EXIT_CODES: &str = "\
Exit codes:
  0  done (or, for status and audit, shown)
  1  refused: by the spec's phase rules, by the cutover gate, or because
     another instance changed the phases meanwhile (look, then try again);
     for reconcile, differences are left (a dry run found some, or a
     repair could not close them)
  2  bad input: arguments, a phase name, a gate-inputs file, a table prefix
     or database URL that cannot be used
  3  a database is unreachable or failed: the phase database (a missing
     SQLite file for status/audit, a PostgreSQL server that does not
     answer, a file that is not a database), or for backfill and reconcile
     the old or the new one

Gate inputs: `advance` evaluates the spec's cutover gate, which needs the
service's measurements. Pass them with --gate-inputs FILE, a JSON object the
service writes (every field optional; a missing counter is 0, a missing
measurement is not measured, which fails its criterion):
  {\"reads_compared\": 120000, \"reads_matched\": 119990,
   \"secondary_ok\": 500000, \"secondary_failed\": 3,
   \"latency\": {\"samples\": 4000, \"call_p50_us\": 110, \"call_p99_us\": 950,
               \"primary_p50_us\": 100, \"primary_p99_us\": 900},
   \"backfill\": 1.0, \"gap\": 0}
Without it the gate sees no measurements and refuses every step that has
criteria (only prepare -> dual_write has none); --force --reason R moves
anyway, recorded as forced with the gate's report.";

/// Shows and moves a dual-write migration's shared phases.
#[derive(Parser)]
#[command(name = "dualwrite", version, after_help = EXIT_CODES)]
struct Cli {
    /// The phase database: a SQLite file (created by the first change) or a
    /// postgres:// URL. Default: $DUALWRITE_PHASE_DB, else
    /// dualwrite-phase.db.
    #[arg(long, global = true, value_name = "PATH|URL")]
    phase_db: Option<String>,
    /// The tables' name prefix: PREFIX_state, PREFIX_override,
    /// PREFIX_rollout, PREFIX_audit (one migration per prefix).
    #[arg(
        long,
        global = true,
        value_name = "PREFIX",
        default_value = "dualwrite_phase"
    )]
    tables: String,
    /// Who makes the change, for the audit log. Default: $DUALWRITE_ACTOR,
    /// else $USER, else "operator".
    #[arg(long, global = true, value_name = "NAME")]
    actor: Option<String>,
    /// The longest to wait for a PostgreSQL phase database (to connect, and
    /// for each query), in seconds.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 5)]
    timeout: u64,
    /// Print JSON on stdout (errors too, as {"error", "exit_code"}).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The global phase, overrides, rollouts and the latest changes.
    Status {
        /// How many of the latest audit records to show.
        #[arg(long, value_name = "N", default_value_t = 10)]
        audit: usize,
    },
    /// Moves the global phase (or a key's) one step forward through the
    /// cutover gate.
    Advance {
        /// A tenant or entity key instead of the global phase.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// The service's measurements for the gate (JSON; see below).
        #[arg(long, value_name = "FILE")]
        gate_inputs: Option<PathBuf>,
        /// Move even if the gate refuses (recorded as forced, with the
        /// gate's report).
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why, for the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Moves the global phase (or a key's) one step back. Leaving cleanup
    /// is refused; leaving cutover is allowed and needs reconciliation.
    Rollback {
        /// A tenant or entity key instead of the global phase.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Why, for the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Sets the global phase, a key's override, or a rollout.
    Set {
        /// prepare, dual_write, backfill, shadow_read, cutover or cleanup.
        #[arg(value_parser = parse_phase)]
        phase: Phase,
        /// A tenant or entity key instead of the global phase.
        #[arg(long, value_name = "KEY", conflicts_with = "percent")]
        key: Option<String>,
        /// A rollout instead: keys whose hash falls in the first N % use the
        /// phase (0 removes the rollout).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: Option<u8>,
        /// Allow skipping phases (never leaving cleanup).
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why, for the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Lifts a key's override: the key follows its rollout or the global
    /// phase again.
    Clear {
        /// The tenant or entity key.
        #[arg(long, value_name = "KEY")]
        key: String,
    },
    /// Copies a table of the old database into the new one, in key order,
    /// checkpointed (a stopped run resumes), keeping every row the new
    /// table has already (live writes win). Renamed tables and columns
    /// only: computed fields need the library's `Backfill` in the service.
    Backfill(data::BackfillArgs),
    /// Compares a table of both databases by key: missing, extra and
    /// different rows, with the columns that differ (never the values).
    /// A dry run unless --repair. Exit 1 while differences are left.
    Reconcile(data::ReconcileArgs),
    /// The audit log: every stored change, oldest first.
    Audit {
        /// At most this many (the latest).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// Only changes after this version.
        #[arg(long, value_name = "VERSION", default_value_t = 0)]
        after: u64,
    },
}

fn parse_phase(text: &str) -> Result<Phase, String> {
    text.parse().map_err(|error| format!("{error}"))
}

/// Why a command failed, and its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Exit 1: refused by the rules, the gate, or a concurrent change.
    Refused(String),
    /// Exit 2: input that cannot be used.
    BadInput(String),
    /// Exit 3: the database is unreachable or failed.
    Database(String),
    /// Exit 1: reconciliation left differences; the report printed on
    /// stdout says which (so `--json` prints no second document).
    Unresolved(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Refused(_) | Failure::Unresolved(_) => 1,
            Failure::BadInput(_) => 2,
            Failure::Database(_) => 3,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Refused(m)
            | Failure::BadInput(m)
            | Failure::Database(m)
            | Failure::Unresolved(m) => m,
        }
    }
}

impl From<SourceError> for Failure {
    fn from(error: SourceError) -> Self {
        match error {
            SourceError::InvalidConfig { .. } => Failure::BadInput(error.to_string()),
            SourceError::Conflict { .. } => Failure::Refused(error.to_string()),
            SourceError::Unreachable { .. } | SourceError::Storage { .. } => {
                Failure::Database(error.to_string())
            }
        }
    }
}

impl From<PhaseError> for Failure {
    fn from(error: PhaseError) -> Self {
        match error {
            PhaseError::Source { .. } => Failure::Database(error.to_string()),
            other => Failure::Refused(other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let printer = Printer { json: cli.json };
    match run(&cli, &printer) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !(cli.json && matches!(failure, Failure::Unresolved(_))) {
                printer.failure(failure.message(), failure.code());
            }
            ExitCode::from(failure.code())
        }
    }
}

fn run(cli: &Cli, printer: &Printer) -> Result<(), Failure> {
    match &cli.command {
        Command::Backfill(args) => data::backfill(args, cli.json),
        Command::Reconcile(args) => data::reconcile(args, cli.json),
        Command::Status { audit } => {
            let source = open_source(cli, true)?;
            let state = source.load()?;
            let records = source.audit(0, *audit)?;
            printer.status(&source.describe(), &state, &records);
            Ok(())
        }
        Command::Audit { limit, after } => {
            let source = open_source(cli, true)?;
            let records = source.audit(*after, *limit)?;
            printer.audit(&records);
            Ok(())
        }
        Command::Advance {
            key,
            gate_inputs,
            force,
            reason,
        } => {
            let inputs = match gate_inputs {
                Some(path) => gate_inputs::read(path).map_err(Failure::BadInput)?,
                None => GateInputs::default(),
            };
            let measured = gate_inputs.is_some();
            change(cli, printer, |migration| {
                let gate = CutoverGate::new();
                let result = match (key, force, reason) {
                    (None, true, Some(reason)) => {
                        migration.advance_forced(&gate, &inputs, reason.as_str())
                    }
                    (Some(key), true, Some(reason)) => {
                        migration.advance_forced_for(key, &gate, &inputs, reason.as_str())
                    }
                    (None, _, _) => migration.advance(&gate, &inputs),
                    (Some(key), _, _) => migration.advance_for(key, &gate, &inputs),
                };
                result.map_err(|error| advance_failure(error, measured))
            })
        }
        Command::Rollback { key, reason } => change(cli, printer, |migration| {
            let from = match key {
                Some(key) => migration.phase_for(Some(key as &dyn RoutingKey)),
                None => migration.phase(),
            };
            let Some(to) = previous(from) else {
                return Err(Failure::Refused(format!(
                    "`{from}` is the first phase: there is nothing to roll back to"
                )));
            };
            let mut step = PhaseChange::to(to).reason(reason.as_str());
            if let Some(key) = key {
                step = step.for_key(key);
            }
            Ok(migration.change(step)?)
        }),
        Command::Set {
            phase,
            key,
            percent,
            force,
            reason,
        } => change(cli, printer, |migration| {
            let mut step = PhaseChange::to(*phase);
            if let Some(key) = key {
                step = step.for_key(key);
            }
            if let Some(percent) = percent {
                step = step.for_percent(*percent);
            }
            if *force {
                step = step.forced();
            }
            if let Some(reason) = reason {
                step = step.reason(reason.as_str());
            }
            Ok(migration.change(step)?)
        }),
        Command::Clear { key } => {
            let source = open_source(cli, false)?;
            let (migration, sync) = follow(cli, source)?;
            let cleared = migration.try_clear_phase_for(key);
            let version = migration.source_version();
            let after = migration.phase_for(Some(key as &dyn RoutingKey));
            sync.stop();
            match cleared? {
                Some(previous) => printer.cleared(key, previous, after, version),
                None => printer.nothing_to_clear(key, after, version),
            }
            Ok(())
        }
    }
}

/// The phase before `phase`, if any.
fn previous(phase: Phase) -> Option<Phase> {
    let at = Phase::ALL.iter().position(|p| *p == phase)?;
    at.checked_sub(1).map(|i| Phase::ALL[i])
}

fn advance_failure(error: AdvanceError, measured: bool) -> Failure {
    match error {
        AdvanceError::Refused(report) => {
            // The report's own first line repeats the headline.
            let text = report.to_string();
            let mut message = format!(
                "the cutover gate refused `{}` -> `{}`:",
                report.from, report.to
            );
            for line in text.lines().skip(1) {
                message.push('\n');
                message.push_str(line);
            }
            if !measured {
                message.push_str(
                    "\nno measurements were given: pass --gate-inputs FILE (written by the service), or --force --reason TEXT to move anyway",
                );
            }
            Failure::Refused(message)
        }
        AdvanceError::AtLastPhase { .. } => Failure::Refused(error.to_string()),
        AdvanceError::Phase(error) => error.into(),
    }
}

/// Makes one change through a migration following the phase database,
/// and prints it.
fn change(
    cli: &Cli,
    printer: &Printer,
    make: impl FnOnce(&Migration) -> Result<Transition, Failure>,
) -> Result<(), Failure> {
    let source = open_source(cli, false)?;
    let (migration, sync) = follow(cli, source)?;
    let result = make(&migration);
    let version = migration.source_version();
    sync.stop();
    printer.transition(&result?, version);
    Ok(())
}

/// A migration following `source` (an empty database takes `prepare`).
fn follow(cli: &Cli, source: Arc<dyn PhaseSource>) -> Result<(Migration, PhaseSync), Failure> {
    let migration = Migration::new(Phase::Prepare);
    let options = SyncOptions::new()
        .actor(actor(cli))
        .wait_timeout(Duration::from_millis(50));
    let sync = PhaseSync::follow_with(&migration, source, options)?;
    Ok((migration, sync))
}

fn actor(cli: &Cli) -> String {
    cli.actor
        .clone()
        .or_else(|| std::env::var("DUALWRITE_ACTOR").ok())
        .or_else(|| std::env::var("USER").ok())
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "operator".to_owned())
}

/// Opens the phase database named by `--phase-db`. With `must_exist`, a
/// SQLite file that does not exist is an error (status and audit do not
/// create one).
fn open_source(cli: &Cli, must_exist: bool) -> Result<Arc<dyn PhaseSource>, Failure> {
    let db = cli
        .phase_db
        .clone()
        .or_else(|| std::env::var("DUALWRITE_PHASE_DB").ok())
        .unwrap_or_else(|| "dualwrite-phase.db".to_owned());
    let tables = PhaseTables::with_prefix(&cli.tables);
    tables
        .validate()
        .map_err(|error| Failure::BadInput(format!("--tables `{}`: {error}", cli.tables)))?;
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        let timeout = Duration::from_secs(cli.timeout.max(1));
        return Ok(Arc::new(PostgresPhaseSource::connect_with_timeout(
            &db, tables, timeout,
        )?));
    }
    if db.contains("://") {
        return Err(Failure::BadInput(format!(
            "--phase-db `{db}`: not a SQLite file path nor a postgres:// URL"
        )));
    }
    let path = Path::new(&db);
    if must_exist && !path.exists() {
        return Err(Failure::Database(format!(
            "no phase database at {db}: a service following it, or the first change made with this tool, creates it"
        )));
    }
    Ok(Arc::new(SqlitePhaseSource::open_with(path, tables)?))
}

//! `dualwrite backfill` and `dualwrite reconcile`: a table of one database
//! copied into, or compared with, a table of another, for migrations whose
//! schema change is renamed tables and columns (a schema change with
//! computed fields is written as a mapping in the service, with the
//! library's `Backfill` and `Reconcile`).
//!
//! Databases: a SQLite file (a path, or `sqlite:PATH`), `postgres://…`,
//! `mysql://…` / `mariadb://…`. Rows cross as [`SqlValue`]s: SQLite's
//! values are converted (integers, reals, text, blobs, NULL), the servers'
//! sources and sinks carry them as the runtime reads and writes them.
//!
//! This process holds no adapter's key guard: the copy never overwrites a
//! row a live write put in New (insert-if-absent), but a row deleted by a
//! live write between the scan and the copy can come back. Run
//! `dualwrite reconcile` after it, or run the backfill in the service with
//! `Backfill::guarded_by`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use dualwrite_runtime::Store;
use dualwrite_runtime::backfill::sqlite::{
    SqliteCheckpoint, SqliteRepair, SqliteRow, SqliteSink, SqliteSource,
};
use dualwrite_runtime::backfill::sqlx::mysql::{
    MySqlCheckpoint, MySqlKey, MySqlRepair, MySqlSink, MySqlSource,
};
use dualwrite_runtime::backfill::sqlx::postgres::{
    PgCheckpoint, PgKey, PgRepair, PgSink, PgSource,
};
use dualwrite_runtime::backfill::sqlx::{SqlRow, SqlTable, SqlValue, column_diff};
use dualwrite_runtime::backfill::{
    Backfill, BackfillError, BackfillKey, BackfillSink, BackfillSource, Batch, Checkpoint,
};
use dualwrite_runtime::reconcile::{Reconcile, ReconcileReport, RepairSink};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rusqlite::types::{FromSql, ToSql, Value};
use serde_json::json;

use crate::Failure;

/// What both data commands need: the two tables and how their columns
/// correspond.
#[derive(Args, Debug)]
pub struct Tables {
    /// The old database: a SQLite file (PATH or sqlite:PATH),
    /// postgres://… or mysql://….
    #[arg(long, value_name = "DB")]
    old: String,
    /// The new database, likewise.
    #[arg(long, value_name = "DB")]
    new: String,
    /// The table: OLD_NAME, or OLD_NAME:NEW_NAME when it was renamed
    /// (`schema.table` for a schema).
    #[arg(long, value_name = "OLD[:NEW]")]
    table: String,
    /// The key column (primary key or unique), OLD[:NEW].
    #[arg(long, value_name = "OLD[:NEW]")]
    key: String,
    /// The columns to copy or compare, comma-separated, each OLD[:NEW]:
    /// `full_name:name,email,created:created_at`.
    #[arg(long, value_name = "LIST")]
    columns: String,
    /// The key's type: rows are read and resumed in its order.
    #[arg(long, value_enum, default_value_t = KeyType::Int)]
    key_type: KeyType,
    /// Rows per batch.
    #[arg(long, value_name = "N", default_value_t = 1_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: u32,
}

/// The key column's type.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KeyType {
    /// A 64-bit integer.
    Int,
    /// Text (sorted bytewise: PostgreSQL `COLLATE "C"`, MariaDB `_bin`).
    Text,
}

/// `dualwrite backfill`.
#[derive(Args, Debug)]
pub struct BackfillArgs {
    #[command(flatten)]
    tables: Tables,
    /// Rows per second at most (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    rate: u64,
    /// The checkpoint's name (kept in the new database), so a stopped job
    /// resumes; default `OLD_TABLE->NEW_TABLE`.
    #[arg(long, value_name = "NAME")]
    job: Option<String>,
    /// Compare instead, and say how many rows a backfill would copy; write
    /// nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `dualwrite reconcile`.
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    tables: Tables,
    /// Repair the differences from the authoritative side (default: a dry
    /// run that writes nothing).
    #[arg(long)]
    repair: bool,
    /// Whose rows are right: old before cutover, new after.
    #[arg(long, value_enum, default_value_t = Side::Old)]
    authoritative: Side,
    /// List at most this many differences (all are counted).
    #[arg(long, value_name = "N", default_value_t = 100)]
    max_listed: usize,
}

/// A side of the migration.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Side {
    Old,
    New,
}

/// Where a table lives.
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
    MySql(String),
}

impl Db {
    fn parse(flag: &str, text: &str) -> Result<Db, Failure> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(Db::Postgres(text.to_owned()))
        } else if text.starts_with("mysql://") || text.starts_with("mariadb://") {
            Ok(Db::MySql(text.replacen("mariadb://", "mysql://", 1)))
        } else if let Some(path) = text.strip_prefix("sqlite:") {
            Ok(Db::Sqlite(PathBuf::from(path.trim_start_matches("//"))))
        } else if text.contains("://") || text.is_empty() {
            Err(Failure::BadInput(format!(
                "{flag} `{text}`: a SQLite file path, postgres://… or mysql://…"
            )))
        } else {
            Ok(Db::Sqlite(PathBuf::from(text)))
        }
    }

    fn sqlite(&self, flag: &str) -> Result<Option<rusqlite::Connection>, Failure> {
        let Db::Sqlite(path) = self else {
            return Ok(None);
        };
        if !path.exists() {
            return Err(Failure::Database(format!(
                "{flag}: no SQLite database at {}",
                path.display()
            )));
        }
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| Failure::Database(format!("{flag} {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| Failure::Database(e.to_string()))?;
        Ok(Some(conn))
    }
}

/// The two tables and their columns, checked.
struct Plan {
    old: Db,
    new: Db,
    old_table: SqlTable,
    new_table: SqlTable,
    batch: usize,
}

fn split_pair(flag: &str, text: &str) -> Result<(String, String), Failure> {
    let (old, new) = match text.split_once(':') {
        Some((old, new)) => (old.trim(), new.trim()),
        None => (text.trim(), text.trim()),
    };
    if old.is_empty() || new.is_empty() {
        return Err(Failure::BadInput(format!(
            "{flag} `{text}`: expected NAME or OLD:NEW"
        )));
    }
    Ok((old.to_owned(), new.to_owned()))
}

impl Plan {
    fn new(tables: &Tables) -> Result<Plan, Failure> {
        let (old_name, new_name) = split_pair("--table", &tables.table)?;
        let (old_key, new_key) = split_pair("--key", &tables.key)?;
        let pairs = tables
            .columns
            .split(',')
            .filter(|c| !c.trim().is_empty())
            .map(|column| split_pair("--columns", column))
            .collect::<Result<Vec<_>, _>>()?;
        if pairs.is_empty() {
            return Err(Failure::BadInput(
                "--columns: name at least one column besides the key".to_owned(),
            ));
        }
        let old_columns: Vec<&str> = pairs.iter().map(|(o, _)| o.as_str()).collect();
        let new_columns: Vec<&str> = pairs.iter().map(|(_, n)| n.as_str()).collect();
        let bad = |e: BackfillError| Failure::BadInput(e.to_string());
        Ok(Plan {
            old: Db::parse("--old", &tables.old)?,
            new: Db::parse("--new", &tables.new)?,
            old_table: SqlTable::new(&old_name, &old_key, &old_columns).map_err(bad)?,
            new_table: SqlTable::new(&new_name, &new_key, &new_columns).map_err(bad)?,
            batch: tables.batch as usize,
        })
    }

    fn names(table: &SqlTable) -> (String, String, Vec<String>) {
        (
            table.name(),
            table.key().to_owned(),
            table.columns().to_vec(),
        )
    }
}

fn db_error(error: BackfillError) -> Failure {
    Failure::Database(error.to_string())
}

/// Converts SQLite's values to the common form, and back.
fn from_sqlite(row: SqliteRow) -> SqlRow {
    row.into_iter()
        .map(|value| match value {
            Value::Null => SqlValue::Null,
            Value::Integer(n) => SqlValue::Int(n),
            Value::Real(x) => SqlValue::Float(x),
            Value::Text(text) => SqlValue::Text(text),
            Value::Blob(bytes) => SqlValue::Bytes(bytes),
        })
        .collect()
}

fn to_sqlite(row: &SqlRow) -> SqliteRow {
    row.iter()
        .map(|value| match value {
            SqlValue::Null => Value::Null,
            SqlValue::Bool(b) => Value::Integer(i64::from(*b)),
            SqlValue::Int(n) => Value::Integer(*n),
            SqlValue::Float(x) => Value::Real(*x),
            SqlValue::Text(text) => Value::Text(text.clone()),
            SqlValue::Bytes(bytes) => Value::Blob(bytes.clone()),
        })
        .collect()
}

/// The keys the commands take: every backend can read and write them.
pub trait CliKey: BackfillKey + FromSql + ToSql + PgKey + MySqlKey + Send {}
impl<K: BackfillKey + FromSql + ToSql + PgKey + MySqlKey + Send> CliKey for K {}

/// Any backend's source, with rows in the common form.
struct AnySource<K>(Box<dyn BackfillSource<Key = K, Row = SqlRow> + Send>);

impl<K: BackfillKey> BackfillSource for AnySource<K> {
    type Key = K;
    type Row = SqlRow;

    fn scan(&mut self, after: Option<&K>, limit: usize) -> Result<Batch<K, SqlRow>, BackfillError> {
        self.0.scan(after, limit)
    }

    fn reread(&mut self, after: Option<&K>, keys: &[K]) -> Result<Batch<K, SqlRow>, BackfillError> {
        self.0.reread(after, keys)
    }

    fn count(&mut self) -> Result<Option<u64>, BackfillError> {
        self.0.count()
    }

    fn scan_until(
        &mut self,
        after: Option<&K>,
        upto: Option<&K>,
        limit: usize,
    ) -> Result<Batch<K, SqlRow>, BackfillError> {
        self.0.scan_until(after, upto, limit)
    }
}

/// A SQLite source seen in the common form.
struct SqliteAsSql<K>(SqliteSource<K>);

impl<K: CliKey> BackfillSource for SqliteAsSql<K> {
    type Key = K;
    type Row = SqlRow;

    fn scan(&mut self, after: Option<&K>, limit: usize) -> Result<Batch<K, SqlRow>, BackfillError> {
        Ok(convert(self.0.scan(after, limit)?))
    }

    fn reread(&mut self, after: Option<&K>, keys: &[K]) -> Result<Batch<K, SqlRow>, BackfillError> {
        Ok(convert(self.0.reread(after, keys)?))
    }

    fn count(&mut self) -> Result<Option<u64>, BackfillError> {
        self.0.count()
    }

    fn scan_until(
        &mut self,
        after: Option<&K>,
        upto: Option<&K>,
        limit: usize,
    ) -> Result<Batch<K, SqlRow>, BackfillError> {
        Ok(convert(self.0.scan_until(after, upto, limit)?))
    }
}

fn convert<K>(batch: Batch<K, SqliteRow>) -> Batch<K, SqlRow> {
    batch
        .into_iter()
        .map(|(key, row)| (key, from_sqlite(row)))
        .collect()
}

/// Any backend's sink, taking rows in the common form.
struct AnySink<K>(Box<dyn BackfillSink<Key = K, Row = SqlRow> + Send>);

impl<K> BackfillSink for AnySink<K> {
    type Key = K;
    type Row = SqlRow;

    fn write_if_absent(&mut self, rows: &[(K, SqlRow)]) -> Result<u64, BackfillError> {
        self.0.write_if_absent(rows)
    }
}

/// A SQLite sink taking rows in the common form.
struct SqliteSinkAsSql<K>(SqliteSink<K>);

impl<K: CliKey> BackfillSink for SqliteSinkAsSql<K> {
    type Key = K;
    type Row = SqlRow;

    fn write_if_absent(&mut self, rows: &[(K, SqlRow)]) -> Result<u64, BackfillError> {
        self.0.write_if_absent(&sqlite_rows(rows))
    }
}

/// Any backend's repair sink, taking rows in the common form.
struct AnyRepair<K>(Box<dyn RepairSink<Key = K, Row = SqlRow> + Send>);

impl<K> RepairSink for AnyRepair<K> {
    type Key = K;
    type Row = SqlRow;

    fn upsert(&mut self, rows: &[(K, SqlRow)]) -> Result<(), BackfillError> {
        self.0.upsert(rows)
    }

    fn delete(&mut self, keys: &[K]) -> Result<(), BackfillError> {
        self.0.delete(keys)
    }
}

/// A SQLite repair sink taking rows in the common form.
struct SqliteRepairAsSql<K>(SqliteRepair<K>);

impl<K: CliKey> RepairSink for SqliteRepairAsSql<K> {
    type Key = K;
    type Row = SqlRow;

    fn upsert(&mut self, rows: &[(K, SqlRow)]) -> Result<(), BackfillError> {
        self.0.upsert(&sqlite_rows(rows))
    }

    fn delete(&mut self, keys: &[K]) -> Result<(), BackfillError> {
        self.0.delete(keys)
    }
}

fn sqlite_rows<K: Clone>(rows: &[(K, SqlRow)]) -> Vec<(K, SqliteRow)> {
    rows.iter()
        .map(|(key, row)| (key.clone(), to_sqlite(row)))
        .collect()
}

fn source<K: CliKey + 'static>(
    db: &Db,
    flag: &str,
    table: &SqlTable,
) -> Result<AnySource<K>, Failure> {
    let (name, key, columns) = Plan::names(table);
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    Ok(AnySource(match db {
        Db::Sqlite(_) => {
            let conn = db
                .sqlite(flag)?
                .ok_or_else(|| Failure::BadInput(flag.to_owned()))?;
            Box::new(SqliteAsSql(SqliteSource::<K>::new(
                conn, &name, &key, &columns,
            )))
        }
        Db::Postgres(url) => Box::new(PgSource::<K>::connect(url, table).map_err(db_error)?),
        Db::MySql(url) => Box::new(MySqlSource::<K>::connect(url, table).map_err(db_error)?),
    }))
}

fn sink<K: CliKey + 'static>(db: &Db, table: &SqlTable) -> Result<AnySink<K>, Failure> {
    let (name, key, columns) = Plan::names(table);
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    Ok(AnySink(match db {
        Db::Sqlite(_) => {
            let conn = db
                .sqlite("--new")?
                .ok_or_else(|| Failure::BadInput("--new".to_owned()))?;
            Box::new(SqliteSinkAsSql(SqliteSink::<K>::new(
                conn, &name, &key, &columns,
            )))
        }
        Db::Postgres(url) => Box::new(PgSink::<K>::connect(url, table).map_err(db_error)?),
        Db::MySql(url) => Box::new(MySqlSink::<K>::connect(url, table).map_err(db_error)?),
    }))
}

fn repair<K: CliKey + 'static>(
    db: &Db,
    flag: &str,
    table: &SqlTable,
) -> Result<AnyRepair<K>, Failure> {
    let (name, key, columns) = Plan::names(table);
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    Ok(AnyRepair(match db {
        Db::Sqlite(_) => {
            let conn = db
                .sqlite(flag)?
                .ok_or_else(|| Failure::BadInput(flag.to_owned()))?;
            Box::new(SqliteRepairAsSql(SqliteRepair::<K>::new(
                conn, &name, &key, &columns,
            )))
        }
        Db::Postgres(url) => Box::new(PgRepair::<K>::connect(url, table).map_err(db_error)?),
        Db::MySql(url) => Box::new(MySqlRepair::<K>::connect(url, table).map_err(db_error)?),
    }))
}

fn checkpoint(db: &Db, job: &str) -> Result<Box<dyn Checkpoint + Send>, Failure> {
    Ok(match db {
        Db::Sqlite(_) => {
            let conn = db
                .sqlite("--new")?
                .ok_or_else(|| Failure::BadInput("--new".to_owned()))?;
            Box::new(SqliteCheckpoint::new(conn, job).map_err(db_error)?)
        }
        Db::Postgres(url) => Box::new(PgCheckpoint::connect(url, job).map_err(db_error)?),
        Db::MySql(url) => Box::new(MySqlCheckpoint::connect(url, job).map_err(db_error)?),
    })
}

/// A boxed checkpoint as a checkpoint.
struct AnyCheckpoint(Box<dyn Checkpoint + Send>);

impl Checkpoint for AnyCheckpoint {
    fn load(&mut self) -> Result<Option<(String, u64)>, BackfillError> {
        self.0.load()
    }

    fn save(&mut self, key: &str, rows: u64) -> Result<(), BackfillError> {
        self.0.save(key, rows)
    }

    fn clear(&mut self) -> Result<(), BackfillError> {
        self.0.clear()
    }
}

fn progress_bar(json: bool) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} rows, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Runs `dualwrite backfill`.
pub fn backfill(args: &BackfillArgs, json: bool) -> Result<(), Failure> {
    let plan = Plan::new(&args.tables)?;
    if args.dry_run {
        let report = match args.tables.key_type {
            KeyType::Int => compare::<i64>(&plan, None, 0, json)?,
            KeyType::Text => compare::<String>(&plan, None, 0, json)?,
        };
        let would = report.missing_in_new;
        if json {
            println!(
                "{}",
                json!({"dry_run": true, "old_rows": report.old_rows, "new_rows": report.new_rows, "would_copy": would})
            );
        } else {
            println!(
                "dry run: {} rows in the old table, {} in the new; a backfill would copy {would} (rows New has already are kept)",
                report.old_rows, report.new_rows
            );
        }
        return Ok(());
    }
    match args.tables.key_type {
        KeyType::Int => run_backfill::<i64>(&plan, args, json),
        KeyType::Text => run_backfill::<String>(&plan, args, json),
    }
}

fn run_backfill<K: CliKey + 'static>(
    plan: &Plan,
    args: &BackfillArgs,
    json: bool,
) -> Result<(), Failure> {
    let job_name = args
        .job
        .clone()
        .unwrap_or_else(|| format!("{}->{}", plan.old_table.name(), plan.new_table.name()));
    let source = source::<K>(&plan.old, "--old", &plan.old_table)?;
    let sink = sink::<K>(&plan.new, &plan.new_table)?;
    let checkpoint = AnyCheckpoint(checkpoint(&plan.new, &job_name)?);
    let mut job = Backfill::new(source, sink)
        .with_checkpoint(checkpoint)
        .with_batch(plan.batch);
    job.control().set_rate(args.rate);
    let progress = job.progress();
    let bar = progress_bar(json);
    bar.set_prefix("backfill");
    let report = std::thread::scope(|scope| {
        let worker = scope.spawn(move || job.run());
        while !worker.is_finished() {
            let snapshot = progress.snapshot();
            if let Some(total) = snapshot.total {
                bar.set_length(total);
            }
            bar.set_position(snapshot.done);
            std::thread::sleep(Duration::from_millis(100));
        }
        worker.join()
    })
    .map_err(|_| Failure::Database("the backfill thread panicked".to_owned()))?;
    bar.finish_and_clear();
    let report = report.map_err(db_error)?;
    let seconds = report.elapsed.as_secs_f64();
    if json {
        println!(
            "{}",
            json!({
                "job": job_name,
                "rows": report.rows,
                "written": report.written,
                "kept": report.rows - report.written,
                "batches": report.batches,
                "finished": report.finished,
                "resumed_after": report.resumed_after,
                "seconds": seconds,
            })
        );
    } else {
        if let Some(after) = &report.resumed_after {
            println!("resumed after key {after} (checkpoint `{job_name}`)");
        }
        println!(
            "backfill `{job_name}`: {} rows in {seconds:.1} s ({:.0} rows/s), {} written, {} already in the new table and kept",
            report.rows,
            report.rows as f64 / seconds.max(1e-9),
            report.written,
            report.rows - report.written
        );
        println!(
            "this process held no live adapter's key guard: run `dualwrite reconcile` to find rows deleted meanwhile"
        );
    }
    Ok(())
}

/// Runs `dualwrite reconcile`; a gap left is exit code 1.
pub fn reconcile(args: &ReconcileArgs, json: bool) -> Result<(), Failure> {
    let plan = Plan::new(&args.tables)?;
    let repair = args.repair.then_some(match args.authoritative {
        Side::Old => Store::Old,
        Side::New => Store::New,
    });
    let report = match args.tables.key_type {
        KeyType::Int => compare::<i64>(&plan, repair, args.max_listed, json)?,
        KeyType::Text => compare::<String>(&plan, repair, args.max_listed, json)?,
    };
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    if report.gap() > 0 {
        return Err(Failure::Unresolved(format!(
            "{} difference(s) left unresolved{}",
            report.gap(),
            if args.repair {
                ""
            } else {
                " (dry run: --repair to repair them)"
            }
        )));
    }
    Ok(())
}

fn compare<K: CliKey + 'static>(
    plan: &Plan,
    repair_from: Option<Store>,
    max_listed: usize,
    json: bool,
) -> Result<ReconcileReport, Failure> {
    let old = source::<K>(&plan.old, "--old", &plan.old_table)?;
    let new = source::<K>(&plan.new, "--new", &plan.new_table)?;
    let columns: Vec<String> = plan.new_table.columns().to_vec();
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut job = Reconcile::mapped(old, new, |row: SqlRow| row, column_diff(&columns))
        .with_batch(plan.batch)
        .with_max_listed(max_listed)
        .authoritative(repair_from.unwrap_or(Store::Old));
    let bar = progress_bar(json);
    bar.set_prefix("reconcile");
    bar.enable_steady_tick(Duration::from_millis(200));
    let report = match repair_from {
        None => job.run(),
        Some(Store::Old) => job.repair_into(&mut repair::<K>(&plan.new, "--new", &plan.new_table)?),
        Some(Store::New) => job.repair_into(&mut repair::<K>(&plan.old, "--old", &plan.old_table)?),
    };
    bar.finish_and_clear();
    report.map_err(db_error)
}

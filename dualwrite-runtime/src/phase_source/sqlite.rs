//! A phase source in a SQLite file (feature `sqlite`).
//!
//! The file is in WAL mode, so the instances reading it do not block the
//! one writing. Changes are found by polling: `PRAGMA data_version` (a
//! counter SQLite bumps when another connection commits, read without
//! touching a table) every poll interval, and the version row only when it
//! moved. Every instance must reach the file through a local file system
//! (SQLite's locks do not work over most network file systems): this source
//! suits the instances of one host, a test, or an operator's file;
//! PostgreSQL suits a fleet.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::{
    AuditRecord, PhaseSource, PhaseState, PhaseTables, SourceError, scope_columns,
    stored_basis_points, stored_phase, stored_scope, stored_version,
};

/// How long a connection waits for another's write lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`PhaseSource`] in a SQLite database file: four tables (see
/// [`PhaseTables`]) created if absent.
///
/// ```
/// use dualwrite_runtime::phase_source::{PhaseSource, SqlitePhaseSource};
///
/// let dir = std::env::temp_dir().join(format!("phase-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let source = SqlitePhaseSource::open(dir.join("phase.db"))?;
/// assert_eq!(source.load()?.version, 0);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SqlitePhaseSource {
    path: PathBuf,
    tables: PhaseTables,
    /// Loads, compare-and-sets and audit reads.
    conn: Mutex<Connection>,
    /// The waiters' polls, on a connection of their own so that a waiter
    /// never holds up a change.
    watch: Mutex<Connection>,
    poll: Duration,
}

impl SqlitePhaseSource {
    /// Opens (creating it if needed) the database file at `path` with the
    /// default table names.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SourceError> {
        Self::open_with(path, PhaseTables::default())
    }

    /// Opens (creating it if needed) the database file at `path`, with
    /// these table names; switches it to WAL mode and creates the tables.
    pub fn open_with(path: impl AsRef<Path>, tables: PhaseTables) -> Result<Self, SourceError> {
        tables.validate()?;
        let path = path.as_ref().to_path_buf();
        let conn = connect(&path)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(|error| sqlite_error(&path, error))?;
        create_tables(&conn, &tables).map_err(|error| sqlite_error(&path, error))?;
        let watch = connect(&path)?;
        Ok(SqlitePhaseSource {
            path,
            tables,
            conn: Mutex::new(conn),
            watch: Mutex::new(watch),
            poll: Duration::from_millis(10),
        })
    }

    /// How often a waiter looks for a change (10 ms unless set): the bound
    /// on how late another process's change is seen, beside the time to
    /// apply it.
    #[must_use]
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_micros(100));
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
        // A connection is left consistent by SQLite whatever panicked.
        connection.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, error: rusqlite::Error) -> SourceError {
        sqlite_error(&self.path, error)
    }
}

impl std::fmt::Debug for SqlitePhaseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlitePhaseSource")
            .field("path", &self.path)
            .field("tables", &self.tables)
            .field("poll", &self.poll)
            .finish()
    }
}

fn connect(path: &Path) -> Result<Connection, SourceError> {
    let conn = Connection::open(path).map_err(|error| sqlite_error(path, error))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|error| sqlite_error(path, error))?;
    Ok(conn)
}

fn create_tables(conn: &Connection, tables: &PhaseTables) -> rusqlite::Result<()> {
    let PhaseTables {
        state,
        overrides,
        rollouts,
        audit,
    } = tables;
    // dualwrite-lint: allow(DW002) the phase source's own tables, in one store on purpose
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS {state} (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             version INTEGER NOT NULL,
             global_phase TEXT NOT NULL
         );
         INSERT INTO {state} (id, version, global_phase) VALUES (1, 0, 'prepare')
             ON CONFLICT (id) DO NOTHING;
         CREATE TABLE IF NOT EXISTS {overrides} (
             routing_key TEXT PRIMARY KEY,
             phase TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS {rollouts} (
             phase TEXT PRIMARY KEY,
             basis_points INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS {audit} (
             version INTEGER PRIMARY KEY,
             at_us INTEGER NOT NULL,
             actor TEXT NOT NULL,
             scope TEXT NOT NULL,
             routing_key TEXT,
             basis_points INTEGER,
             from_phase TEXT NOT NULL,
             to_phase TEXT NOT NULL,
             reason TEXT,
             forced INTEGER NOT NULL,
             gate TEXT
         );
         COMMIT;"
    ))
}

/// Maps a rusqlite error: a file that cannot be opened or a database
/// locked past the busy timeout is unreachable; anything else is a storage
/// error.
fn sqlite_error(path: &Path, error: rusqlite::Error) -> SourceError {
    let reason = format!("sqlite file {}: {error}", path.display());
    match error.sqlite_error_code() {
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly,
        ) => SourceError::Unreachable { reason },
        _ => SourceError::Storage { reason },
    }
}

/// Reads the whole state (call inside a transaction, for one snapshot).
fn read_state(conn: &Connection, tables: &PhaseTables) -> Result<PhaseState, ReadError> {
    let (version, global): (i64, String) = conn
        .query_row(
            &format!(
                "SELECT version, global_phase FROM {} WHERE id = 1",
                tables.state
            ),
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, "prepare".to_owned()));
    let mut state = PhaseState::new(stored_phase(&global)?);
    state.version = stored_version(version)?;
    let mut select = conn.prepare(&format!(
        "SELECT routing_key, phase FROM {}",
        tables.overrides
    ))?;
    let rows = select.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    for row in rows {
        let (key, phase) = row?;
        state.overrides.insert(key, stored_phase(&phase)?);
    }
    let mut select = conn.prepare(&format!(
        "SELECT phase, basis_points FROM {}",
        tables.rollouts
    ))?;
    let rows = select.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (phase, basis_points) = row?;
        state.rollouts.push(super::Rollout {
            phase: stored_phase(&phase)?,
            basis_points: stored_basis_points(basis_points)?,
        });
    }
    Ok(state.normalized())
}

/// A rusqlite error or bad stored data, while reading.
enum ReadError {
    Sqlite(rusqlite::Error),
    Source(SourceError),
}

impl From<rusqlite::Error> for ReadError {
    fn from(error: rusqlite::Error) -> Self {
        ReadError::Sqlite(error)
    }
}

impl From<SourceError> for ReadError {
    fn from(error: SourceError) -> Self {
        ReadError::Source(error)
    }
}

impl SqlitePhaseSource {
    fn read_error(&self, error: ReadError) -> SourceError {
        match error {
            ReadError::Sqlite(error) => self.error(error),
            ReadError::Source(error) => error,
        }
    }

    fn load_on(&self, conn: &mut Connection) -> Result<PhaseState, SourceError> {
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        let state = read_state(&tx, &self.tables).map_err(|e| self.read_error(e))?;
        tx.commit().map_err(|e| self.error(e))?;
        Ok(state)
    }
}

impl PhaseSource for SqlitePhaseSource {
    fn describe(&self) -> String {
        format!("sqlite file {}", self.path.display())
    }

    fn load(&self) -> Result<PhaseState, SourceError> {
        self.load_on(&mut Self::lock(&self.conn))
    }

    fn compare_and_set(
        &self,
        expected_version: u64,
        next: &PhaseState,
        record: &AuditRecord,
    ) -> Result<u64, SourceError> {
        let mut conn = Self::lock(&self.conn);
        // IMMEDIATE: take the write lock before reading the version, so no
        // other writer can slip in between the check and the write.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let stored = read_state(&tx, &self.tables).map_err(|e| self.read_error(e))?;
        if stored.version != expected_version {
            return Err(SourceError::Conflict {
                current: Box::new(stored),
            });
        }
        let version = expected_version + 1;
        let version_sql = i64::try_from(version).map_err(|_| SourceError::Storage {
            reason: "the phase state's version overflowed".to_owned(),
        })?;
        let next = next.clone().normalized();
        let tables = &self.tables;
        let write = || -> rusqlite::Result<()> {
            // dualwrite-lint: allow(DW002) the shared phase state, in one store on purpose
            tx.execute(
                &format!(
                    "UPDATE {} SET version = ?1, global_phase = ?2 WHERE id = 1",
                    tables.state
                ),
                (version_sql, next.global.as_str()),
            )?;
            // dualwrite-lint: allow(DW002) the shared phase state, in one store on purpose
            tx.execute(&format!("DELETE FROM {}", tables.overrides), [])?;
            // dualwrite-lint: allow(DW002) the shared phase state, in one store on purpose
            let mut insert = tx.prepare(&format!(
                "INSERT INTO {} (routing_key, phase) VALUES (?1, ?2)",
                tables.overrides
            ))?;
            for (key, phase) in &next.overrides {
                insert.execute((key, phase.as_str()))?;
            }
            // dualwrite-lint: allow(DW002) the shared phase state, in one store on purpose
            tx.execute(&format!("DELETE FROM {}", tables.rollouts), [])?;
            // dualwrite-lint: allow(DW002) the shared phase state, in one store on purpose
            let mut insert = tx.prepare(&format!(
                "INSERT INTO {} (phase, basis_points) VALUES (?1, ?2)",
                tables.rollouts
            ))?;
            for rollout in &next.rollouts {
                insert.execute((rollout.phase.as_str(), i64::from(rollout.basis_points)))?;
            }
            let (scope, key, basis_points) = scope_columns(&record.scope);
            // dualwrite-lint: allow(DW002) the phase source's audit log, in one store on purpose
            tx.execute(
                &format!(
                    "INSERT INTO {} (version, at_us, actor, scope, routing_key, basis_points,
                         from_phase, to_phase, reason, forced, gate)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    tables.audit
                ),
                rusqlite::params![
                    version_sql,
                    record.at_micros(),
                    record.actor,
                    scope,
                    key,
                    basis_points,
                    record.from.as_str(),
                    record.to.as_str(),
                    record.reason,
                    record.forced,
                    record.gate,
                ],
            )?;
            Ok(())
        };
        write().map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))?;
        Ok(version)
    }

    fn audit(&self, after_version: u64, limit: usize) -> Result<Vec<AuditRecord>, SourceError> {
        let conn = Self::lock(&self.conn);
        let after = i64::try_from(after_version).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let read = || -> Result<Vec<AuditRecord>, ReadError> {
            let mut select = conn.prepare(&format!(
                "SELECT version, at_us, actor, scope, routing_key, basis_points, from_phase,
                        to_phase, reason, forced, gate
                 FROM {} WHERE version > ?1 ORDER BY version DESC LIMIT ?2",
                self.tables.audit
            ))?;
            let rows = select.query_map((after, limit), |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, Option<i64>>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, String>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, bool>(9)?,
                    row.get::<_, Option<String>>(10)?,
                ))
            })?;
            let mut records = Vec::new();
            for row in rows {
                let (version, at, actor, scope, key, bp, from, to, reason, forced, gate) = row?;
                records.push(AuditRecord {
                    version: stored_version(version)?,
                    at: AuditRecord::time_from_micros(at),
                    actor,
                    scope: stored_scope(&scope, key, bp)?,
                    from: stored_phase(&from)?,
                    to: stored_phase(&to)?,
                    reason,
                    forced,
                    gate,
                });
            }
            records.reverse();
            Ok(records)
        };
        read().map_err(|e| self.read_error(e))
    }

    fn wait_for_change(
        &self,
        known_version: u64,
        timeout: Duration,
    ) -> Result<Option<PhaseState>, SourceError> {
        let deadline = Instant::now() + timeout;
        let mut conn = Self::lock(&self.watch);
        let mut seen = None;
        loop {
            let data_version: i64 = conn
                .query_row("PRAGMA data_version", [], |row| row.get(0))
                .map_err(|e| self.error(e))?;
            if seen != Some(data_version) {
                seen = Some(data_version);
                let version: i64 = conn
                    .query_row(
                        &format!("SELECT version FROM {} WHERE id = 1", self.tables.state),
                        [],
                        |row| row.get(0),
                    )
                    .map_err(|e| self.error(e))?;
                if stored_version(version)? > known_version {
                    return self.load_on(&mut conn).map(Some);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            thread::sleep(left.min(self.poll));
        }
    }
}

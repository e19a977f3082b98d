//! A phase source in PostgreSQL tables (feature `postgres`), changes pushed
//! with `LISTEN`/`NOTIFY`.
//!
//! Built on sqlx (already the project's PostgreSQL client) behind a blocking
//! interface: the source owns a one-worker tokio runtime, and each call runs
//! as a task on it while the calling thread waits on a channel. So the
//! source works from any thread, a thread of another tokio runtime included
//! (where `block_on` would panic), as `Migration::change` needs.
//!
//! A compare-and-set locks the state row (`SELECT .. FOR UPDATE`), checks
//! the version, rewrites the state, appends the audit record and calls
//! `pg_notify` in one transaction: the notice is delivered at commit, to
//! every instance's listener connection. A waiter reads the version before
//! it waits for a notice, and again after its listener reconnects (notices
//! sent while it was disconnected are lost), so no change is missed.

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use super::{
    AuditRecord, PhaseSource, PhaseState, PhaseTables, Rollout, SourceError, scope_columns,
    stored_basis_points, stored_phase, stored_scope, stored_version,
};

/// A [`PhaseSource`] in four tables of a PostgreSQL database (see
/// [`PhaseTables`]; created if absent), with a `NOTIFY` on every change.
pub struct PostgresPhaseSource {
    /// The URL with its password hidden, for messages.
    shown: String,
    /// The client and the runtime it runs on; `None` only while dropping.
    client: Option<(Arc<Inner>, tokio::runtime::Runtime)>,
    timeout: Duration,
}

struct Inner {
    pool: PgPool,
    listener: tokio::sync::Mutex<PgListener>,
    tables: PhaseTables,
    channel: String,
    shown: String,
}

impl PostgresPhaseSource {
    /// Connects to the database at `url` (`postgres://user@host/db`) with
    /// the default table names and creates the tables if needed.
    pub fn connect(url: &str) -> Result<Self, SourceError> {
        Self::connect_with(url, PhaseTables::default())
    }

    /// Connects to the database at `url` with these table names and
    /// creates the tables if needed. Fails with
    /// [`SourceError::Unreachable`] if the server cannot be reached within
    /// 10 s.
    pub fn connect_with(url: &str, tables: PhaseTables) -> Result<Self, SourceError> {
        Self::connect_with_timeout(url, tables, Duration::from_secs(10))
    }

    /// Like [`PostgresPhaseSource::connect_with`], with `timeout` as the
    /// longest the connection, and then each load, compare-and-set or audit
    /// read, may take before it fails as [`SourceError::Unreachable`].
    pub fn connect_with_timeout(
        url: &str,
        tables: PhaseTables,
        timeout: Duration,
    ) -> Result<Self, SourceError> {
        tables.validate()?;
        let shown = hide_password(url);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dualwrite-phase-pg")
            .enable_all()
            .build()
            .map_err(|error| SourceError::Unreachable {
                reason: format!("cannot start the client runtime: {error}"),
            })?;
        let channel = channel_of(&tables);
        let connect = {
            let url = url.to_owned();
            let shown = shown.clone();
            let tables = tables.clone();
            let channel = channel.clone();
            async move {
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(timeout)
                    .connect(&url)
                    .await
                    .map_err(|e| pg_error(&shown, e))?;
                create_tables(&pool, &tables)
                    .await
                    .map_err(|e| pg_error(&shown, e))?;
                let mut listener = PgListener::connect(&url)
                    .await
                    .map_err(|e| pg_error(&shown, e))?;
                listener
                    .listen(&channel)
                    .await
                    .map_err(|e| pg_error(&shown, e))?;
                Ok(Inner {
                    pool,
                    listener: tokio::sync::Mutex::new(listener),
                    tables,
                    channel,
                    shown,
                })
            }
        };
        let inner = run_on(&runtime, &shown, timeout, connect)?;
        Ok(PostgresPhaseSource {
            shown,
            client: Some((Arc::new(inner), runtime)),
            timeout,
        })
    }

    /// The longest one load, compare-and-set or audit read may take before
    /// it fails as [`SourceError::Unreachable`] (10 s unless set).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The `NOTIFY` channel: the state table's name (dots as `_`) and
    /// `_changed`, cut to PostgreSQL's 63 bytes.
    pub fn channel(&self) -> &str {
        self.client
            .as_ref()
            .map_or("", |(inner, _)| inner.channel.as_str())
    }

    /// Runs `task` on the source's runtime and waits for it, at most
    /// `timeout`.
    fn run<T, F>(
        &self,
        timeout: Duration,
        task: impl FnOnce(Arc<Inner>) -> F,
    ) -> Result<T, SourceError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, SourceError>> + Send + 'static,
    {
        let Some((inner, runtime)) = &self.client else {
            return Err(SourceError::Unreachable {
                reason: format!("postgres {}: the source is closed", self.shown),
            });
        };
        run_on(runtime, &self.shown, timeout, task(Arc::clone(inner)))
    }
}

impl Drop for PostgresPhaseSource {
    fn drop(&mut self) {
        if let Some((inner, runtime)) = self.client.take() {
            {
                // The pool and the listener close their connections on
                // drop, through the runtime they were made on.
                let _context = runtime.enter();
                drop(inner);
            }
            // `Runtime`'s own drop blocks, which panics inside another
            // runtime; its tasks hold nothing that must finish.
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PostgresPhaseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresPhaseSource")
            .field("url", &self.shown)
            .field("channel", &self.channel())
            .finish()
    }
}

/// Runs `task` on `runtime` from any thread and waits for its result.
fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    shown: &str,
    timeout: Duration,
    task: impl Future<Output = Result<T, SourceError>> + Send + 'static,
) -> Result<T, SourceError> {
    let (send, receive) = mpsc::sync_channel(1);
    let timed_out = format!("postgres {shown}: no answer within {timeout:?}");
    runtime.spawn(async move {
        let result = tokio::time::timeout(timeout, task)
            .await
            .unwrap_or(Err(SourceError::Unreachable { reason: timed_out }));
        // The caller waits for it; it is gone only if it panicked.
        let _ = send.send(result);
    });
    receive.recv().unwrap_or_else(|_| {
        Err(SourceError::Unreachable {
            reason: format!("postgres {shown}: the client runtime stopped"),
        })
    })
}

/// `postgres://user:secret@host/db` shown as `postgres://user:***@host/db`.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The `NOTIFY` channel of a set of tables.
fn channel_of(tables: &PhaseTables) -> String {
    let mut channel = format!("{}_changed", tables.state.replace('.', "_"));
    // Identifiers are ASCII (checked), so any byte is a char boundary.
    channel.truncate(63);
    channel
}

/// Maps an sqlx error: connection and authentication failures are
/// unreachable, a bad URL is a configuration error, the rest are storage
/// errors.
fn pg_error(shown: &str, error: sqlx::Error) -> SourceError {
    let reason = format!("postgres {shown}: {error}");
    match &error {
        sqlx::Error::Configuration(_) => SourceError::InvalidConfig { reason },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => SourceError::Unreachable { reason },
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exception; 28: authorization; 3D000: no such
            // database; 57P: the server is shutting down.
            if code.starts_with("08")
                || code.starts_with("28")
                || code == "3D000"
                || code.starts_with("57P")
            {
                SourceError::Unreachable { reason }
            } else {
                SourceError::Storage { reason }
            }
        }
        _ => SourceError::Storage { reason },
    }
}

async fn create_tables(pool: &PgPool, tables: &PhaseTables) -> Result<(), sqlx::Error> {
    let PhaseTables {
        state,
        overrides,
        rollouts,
        audit,
    } = tables;
    let mut tx = pool.begin().await?;
    // Concurrent `CREATE TABLE IF NOT EXISTS` of one name can fail on the
    // catalog's unique index: instances starting together take turns.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(state)
        .execute(&mut *tx)
        .await?;
    for statement in [
        format!(
            "CREATE TABLE IF NOT EXISTS {state} (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 version BIGINT NOT NULL,
                 global_phase TEXT NOT NULL
             )"
        ),
        format!(
            "INSERT INTO {state} (id, version, global_phase) VALUES (1, 0, 'prepare')
                 ON CONFLICT (id) DO NOTHING"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {overrides} (
                 routing_key TEXT PRIMARY KEY,
                 phase TEXT NOT NULL
             )"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {rollouts} (
                 phase TEXT PRIMARY KEY,
                 basis_points INTEGER NOT NULL
             )"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {audit} (
                 version BIGINT PRIMARY KEY,
                 at_us BIGINT NOT NULL,
                 actor TEXT NOT NULL,
                 scope TEXT NOT NULL,
                 routing_key TEXT,
                 basis_points INTEGER,
                 from_phase TEXT NOT NULL,
                 to_phase TEXT NOT NULL,
                 reason TEXT,
                 forced BOOLEAN NOT NULL,
                 gate TEXT
             )"
        ),
    ] {
        // Table names are checked identifiers (`PhaseTables::validate`).
        sqlx::query(AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Reads the whole state inside `tx`.
async fn read_state(
    tx: &mut Transaction<'static, Postgres>,
    tables: &PhaseTables,
    shown: &str,
) -> Result<PhaseState, SourceError> {
    let err = |e| pg_error(shown, e);
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT version, global_phase FROM {} WHERE id = 1",
        tables.state
    )))
    .fetch_optional(&mut **tx)
    .await
    .map_err(err)?;
    let mut state = PhaseState::new(crate::phase::Phase::Prepare);
    if let Some(row) = row {
        state.version = stored_version(row.try_get("version").map_err(err)?)?;
        state.global = stored_phase(row.try_get("global_phase").map_err(err)?)?;
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT routing_key, phase FROM {}",
        tables.overrides
    )))
    .fetch_all(&mut **tx)
    .await
    .map_err(err)?;
    for row in rows {
        let key: String = row.try_get("routing_key").map_err(err)?;
        let phase: &str = row.try_get("phase").map_err(err)?;
        state.overrides.insert(key, stored_phase(phase)?);
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT phase, basis_points FROM {}",
        tables.rollouts
    )))
    .fetch_all(&mut **tx)
    .await
    .map_err(err)?;
    for row in rows {
        let phase: &str = row.try_get("phase").map_err(err)?;
        let basis_points: i32 = row.try_get("basis_points").map_err(err)?;
        state.rollouts.push(Rollout {
            phase: stored_phase(phase)?,
            basis_points: stored_basis_points(i64::from(basis_points))?,
        });
    }
    Ok(state.normalized())
}

impl Inner {
    async fn load(&self) -> Result<PhaseState, SourceError> {
        let err = |e| pg_error(&self.shown, e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        // One snapshot for the three tables.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let state = read_state(&mut tx, &self.tables, &self.shown).await?;
        tx.commit().await.map_err(err)?;
        Ok(state)
    }

    async fn version(&self) -> Result<u64, SourceError> {
        let version: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT version FROM {} WHERE id = 1",
            self.tables.state
        )))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| pg_error(&self.shown, e))?;
        stored_version(version.unwrap_or(0))
    }

    async fn compare_and_set(
        &self,
        expected_version: u64,
        next: PhaseState,
        record: AuditRecord,
    ) -> Result<u64, SourceError> {
        let err = |e| pg_error(&self.shown, e);
        let tables = &self.tables;
        let mut tx = self.pool.begin().await.map_err(err)?;
        // Locks the state row: concurrent compare-and-sets take turns, and
        // the loser sees the winner's version.
        sqlx::query(AssertSqlSafe(format!(
            "SELECT version FROM {} WHERE id = 1 FOR UPDATE",
            tables.state
        )))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        let stored = read_state(&mut tx, tables, &self.shown).await?;
        if stored.version != expected_version {
            return Err(SourceError::Conflict {
                current: Box::new(stored),
            });
        }
        let version = expected_version + 1;
        let version_sql = i64::try_from(version).map_err(|_| SourceError::Storage {
            reason: "the phase state's version overflowed".to_owned(),
        })?;
        let next = next.normalized();
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET version = $1, global_phase = $2 WHERE id = 1",
            tables.state
        )))
        .bind(version_sql)
        .bind(next.global.as_str())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", tables.overrides)))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let (keys, phases): (Vec<String>, Vec<String>) = next
            .overrides
            .iter()
            .map(|(key, phase)| (key.clone(), phase.as_str().to_owned()))
            .unzip();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (routing_key, phase) SELECT * FROM UNNEST($1::text[], $2::text[])",
            tables.overrides
        )))
        .bind(keys)
        .bind(phases)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", tables.rollouts)))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let (phases, shares): (Vec<String>, Vec<i32>) = next
            .rollouts
            .iter()
            .map(|r| (r.phase.as_str().to_owned(), i32::from(r.basis_points)))
            .unzip();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (phase, basis_points) SELECT * FROM UNNEST($1::text[], $2::int4[])",
            tables.rollouts
        )))
        .bind(phases)
        .bind(shares)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        let (scope, key, basis_points) = scope_columns(&record.scope);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (version, at_us, actor, scope, routing_key, basis_points,
                 from_phase, to_phase, reason, forced, gate)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            tables.audit
        )))
        .bind(version_sql)
        .bind(record.at_micros())
        .bind(&record.actor)
        .bind(scope)
        .bind(key)
        .bind(basis_points.and_then(|bp| i32::try_from(bp).ok()))
        .bind(record.from.as_str())
        .bind(record.to.as_str())
        .bind(&record.reason)
        .bind(record.forced)
        .bind(&record.gate)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        // Delivered at commit, to every listener of the channel.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(version.to_string())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(version)
    }

    async fn audit(
        &self,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, SourceError> {
        let err = |e| pg_error(&self.shown, e);
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT version, at_us, actor, scope, routing_key, basis_points, from_phase,
                    to_phase, reason, forced, gate
             FROM {} WHERE version > $1 ORDER BY version DESC LIMIT $2",
            self.tables.audit
        )))
        .bind(i64::try_from(after_version).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            let scope: &str = row.try_get("scope").map_err(err)?;
            let basis_points: Option<i32> = row.try_get("basis_points").map_err(err)?;
            records.push(AuditRecord {
                version: stored_version(row.try_get("version").map_err(err)?)?,
                at: AuditRecord::time_from_micros(row.try_get("at_us").map_err(err)?),
                actor: row.try_get("actor").map_err(err)?,
                scope: stored_scope(
                    scope,
                    row.try_get("routing_key").map_err(err)?,
                    basis_points.map(i64::from),
                )?,
                from: stored_phase(row.try_get("from_phase").map_err(err)?)?,
                to: stored_phase(row.try_get("to_phase").map_err(err)?)?,
                reason: row.try_get("reason").map_err(err)?,
                forced: row.try_get("forced").map_err(err)?,
                gate: row.try_get("gate").map_err(err)?,
            });
        }
        Ok(records)
    }

    async fn wait_for_change(
        &self,
        known_version: u64,
        timeout: Duration,
    ) -> Result<Option<PhaseState>, SourceError> {
        let deadline = tokio::time::Instant::from_std(Instant::now() + timeout);
        let mut listener = self.listener.lock().await;
        // The listener has been listening since the source was made, so a
        // change committed after this read comes as a notice below.
        if self.version().await? > known_version {
            return self.load().await.map(Some);
        }
        loop {
            let notice = match tokio::time::timeout_at(deadline, listener.try_recv()).await {
                Err(_elapsed) => return Ok(None),
                Ok(notice) => notice.map_err(|e| pg_error(&self.shown, e))?,
            };
            let newer = match notice {
                // The payload is the new version; a stale notice is skipped.
                Some(notice) => notice
                    .payload()
                    .parse::<u64>()
                    .map_or(true, |version| version > known_version),
                // The connection was lost (and is being re-made): notices
                // sent meanwhile are gone, so read the version.
                None => self.version().await? > known_version,
            };
            if newer {
                let state = self.load().await?;
                if state.version > known_version {
                    return Ok(Some(state));
                }
            }
        }
    }
}

impl PhaseSource for PostgresPhaseSource {
    fn describe(&self) -> String {
        format!("postgres {}", self.shown)
    }

    fn load(&self) -> Result<PhaseState, SourceError> {
        self.run(self.timeout, |inner| async move { inner.load().await })
    }

    fn compare_and_set(
        &self,
        expected_version: u64,
        next: &PhaseState,
        record: &AuditRecord,
    ) -> Result<u64, SourceError> {
        let (next, record) = (next.clone(), record.clone());
        self.run(self.timeout, move |inner| async move {
            inner.compare_and_set(expected_version, next, record).await
        })
    }

    fn audit(&self, after_version: u64, limit: usize) -> Result<Vec<AuditRecord>, SourceError> {
        self.run(self.timeout, move |inner| async move {
            inner.audit(after_version, limit).await
        })
    }

    fn wait_for_change(
        &self,
        known_version: u64,
        timeout: Duration,
    ) -> Result<Option<PhaseState>, SourceError> {
        self.run(timeout + self.timeout, move |inner| async move {
            inner.wait_for_change(known_version, timeout).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            hide_password("postgres://app:s3cret@db.internal:5432/main"),
            "postgres://app:***@db.internal:5432/main"
        );
        assert_eq!(
            hide_password("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(hide_password("not a url"), "not a url");
    }

    #[test]
    fn channel_names_fit_an_identifier() {
        assert_eq!(
            channel_of(&PhaseTables::default()),
            "dualwrite_phase_state_changed"
        );
        assert_eq!(
            channel_of(&PhaseTables::with_prefix("ops.orders")),
            "ops_orders_state_changed"
        );
        let long = PhaseTables::with_prefix(&"x".repeat(60));
        assert_eq!(channel_of(&long).len(), 63);
    }
}

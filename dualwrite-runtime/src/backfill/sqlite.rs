//! Backfill sources, sinks and checkpoints over rusqlite tables (feature
//! `sqlite`).
//!
//! A [`SqliteSource`] reads `key, columns..` of a table in key order with a
//! keyset query (`WHERE key > ? ORDER BY key LIMIT ?`, so each batch is an
//! index range scan, not an offset); a [`SqliteSink`] inserts a batch in
//! one transaction with `ON CONFLICT (key) DO NOTHING`, so a row a live
//! write put there first is kept; a [`SqliteCheckpoint`] keeps the job's
//! position in a table of its own, committed after each batch; a
//! [`SqliteRepair`] upserts and deletes rows for reconciliation, and
//! [`column_diff`] names the columns in which two rows differ.

use std::marker::PhantomData;

use rusqlite::types::{FromSql, ToSql, Value};
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::{BackfillError, BackfillKey, BackfillSink, BackfillSource, Checkpoint};

/// A row as read: the values of the source's columns, in order.
pub type SqliteRow = Vec<Value>;

/// `"name"`, with embedded quotes doubled.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"key", "a", "b"` and `?1, ?2, ?3`: the column list and placeholders of
/// an insert of `key` and `columns`.
fn insert_lists(key: &str, columns: &[&str]) -> (String, String) {
    let names = std::iter::once(key)
        .chain(columns.iter().copied())
        .map(quoted)
        .collect::<Vec<_>>()
        .join(", ");
    let marks = (1..=columns.len() + 1)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    (names, marks)
}

fn source_error(error: rusqlite::Error) -> BackfillError {
    BackfillError::Source(error.to_string())
}

fn sink_error(error: rusqlite::Error) -> BackfillError {
    BackfillError::Sink(error.to_string())
}

/// Reads a table in key order.
pub struct SqliteSource<K> {
    conn: Connection,
    select: String,
    select_first: String,
    select_range: String,
    count: String,
    columns: usize,
    key: PhantomData<fn() -> K>,
}

impl<K> SqliteSource<K> {
    /// Reads `columns` of `table` (with `key` as the ordering key, which
    /// should be its primary key or indexed) through `conn`.
    pub fn new(conn: Connection, table: &str, key: &str, columns: &[&str]) -> Self {
        let list = std::iter::once(key)
            .chain(columns.iter().copied())
            .map(quoted)
            .collect::<Vec<_>>()
            .join(", ");
        let (table, key) = (quoted(table), quoted(key));
        SqliteSource {
            conn,
            select: format!("SELECT {list} FROM {table} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2"),
            select_first: format!("SELECT {list} FROM {table} ORDER BY {key} LIMIT ?1"),
            select_range: format!(
                "SELECT {list} FROM {table} WHERE {key} >= ?1 AND {key} <= ?2 ORDER BY {key}"
            ),
            count: format!("SELECT COUNT(*) FROM {table}"),
            columns: columns.len(),
            key: PhantomData,
        }
    }

    fn rows(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<(K, SqliteRow)>, BackfillError>
    where
        K: FromSql,
    {
        let mut statement = self.conn.prepare_cached(sql).map_err(source_error)?;
        let rows = statement
            .query_map(params, |row| {
                let key = row.get::<_, K>(0)?;
                let values = (1..=self.columns)
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((key, values))
            })
            .map_err(source_error)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(source_error)
    }
}

impl<K: BackfillKey + FromSql + ToSql> BackfillSource for SqliteSource<K> {
    type Key = K;
    type Row = SqliteRow;

    fn scan(
        &mut self,
        after: Option<&K>,
        limit: usize,
    ) -> Result<Vec<(K, SqliteRow)>, BackfillError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match after {
            Some(after) => self.rows(&self.select, &[after, &limit]),
            None => self.rows(&self.select_first, &[&limit]),
        }
    }

    fn reread(
        &mut self,
        after: Option<&K>,
        keys: &[K],
    ) -> Result<Vec<(K, SqliteRow)>, BackfillError> {
        let Some(last) = keys.last() else {
            return Ok(Vec::new());
        };
        // The range of the keys asked for (an index range scan), whatever
        // `after` says.
        let _ = after;
        let first = &keys[0];
        let rows = self.rows(&self.select_range, &[first, last])?;
        Ok(rows
            .into_iter()
            .filter(|(key, _)| keys.binary_search(key).is_ok())
            .collect())
    }

    fn count(&mut self) -> Result<Option<u64>, BackfillError> {
        let count: i64 = self
            .conn
            .query_row(&self.count, [], |row| row.get(0))
            .map_err(source_error)?;
        Ok(Some(u64::try_from(count).unwrap_or(0)))
    }
}

/// Inserts rows that are not in a table yet.
pub struct SqliteSink<K> {
    conn: Connection,
    insert: String,
    key: PhantomData<fn(K)>,
}

impl<K> SqliteSink<K> {
    /// Writes `columns` of `table` (`key` must be its primary key or carry
    /// a unique index, for the conflict clause) through `conn`.
    pub fn new(conn: Connection, table: &str, key: &str, columns: &[&str]) -> Self {
        let (names, marks) = insert_lists(key, columns);
        SqliteSink {
            conn,
            insert: format!(
                "INSERT INTO {} ({names}) VALUES ({marks}) ON CONFLICT ({}) DO NOTHING",
                quoted(table),
                quoted(key)
            ),
            key: PhantomData,
        }
    }
}

impl<K: ToSql> BackfillSink for SqliteSink<K> {
    type Key = K;
    type Row = SqliteRow;

    fn write_if_absent(&mut self, rows: &[(K, SqliteRow)]) -> Result<u64, BackfillError> {
        let transaction = self.conn.transaction().map_err(sink_error)?;
        let mut written = 0;
        {
            let mut statement = transaction
                .prepare_cached(&self.insert)
                .map_err(sink_error)?;
            for (key, values) in rows {
                let params = std::iter::once(key as &dyn ToSql)
                    .chain(values.iter().map(|value| value as &dyn ToSql));
                written += statement
                    .execute(params_from_iter(params))
                    .map_err(sink_error)? as u64;
            }
        }
        transaction.commit().map_err(sink_error)?;
        Ok(written)
    }
}

/// A backfill's position, in table `dualwrite_backfill_checkpoint` of a
/// SQLite database (the new store's, or a file of its own), one row per job.
pub struct SqliteCheckpoint {
    conn: Connection,
    job: String,
}

impl SqliteCheckpoint {
    /// The checkpoint of job `job`; creates its table if needed.
    pub fn new(conn: Connection, job: impl Into<String>) -> Result<Self, BackfillError> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS dualwrite_backfill_checkpoint (
                job TEXT PRIMARY KEY,
                last_key TEXT NOT NULL,
                rows INTEGER NOT NULL
            )",
            [],
        )
        .map_err(|error| BackfillError::Checkpoint(error.to_string()))?;
        Ok(SqliteCheckpoint {
            conn,
            job: job.into(),
        })
    }
}

impl Checkpoint for SqliteCheckpoint {
    fn load(&mut self) -> Result<Option<(String, u64)>, BackfillError> {
        self.conn
            .query_row(
                "SELECT last_key, rows FROM dualwrite_backfill_checkpoint WHERE job = ?1",
                [&self.job],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
            )
            .optional()
            .map(|found| found.map(|(key, rows)| (key, u64::try_from(rows).unwrap_or(0))))
            .map_err(|error| BackfillError::Checkpoint(error.to_string()))
    }

    fn save(&mut self, key: &str, rows: u64) -> Result<(), BackfillError> {
        self.conn
            // dualwrite-lint: allow(DW002) the backfill's own checkpoint table, in one store on purpose
            .execute(
                "INSERT INTO dualwrite_backfill_checkpoint (job, last_key, rows) VALUES (?1, ?2, ?3)
                 ON CONFLICT (job) DO UPDATE SET last_key = excluded.last_key, rows = excluded.rows",
                (&self.job, key, i64::try_from(rows).unwrap_or(i64::MAX)),
            )
            .map(drop)
            .map_err(|error| BackfillError::Checkpoint(error.to_string()))
    }
}

/// Repairs a table for reconciliation ([`crate::reconcile::RepairSink`]):
/// upserts rows and deletes keys, one transaction per batch.
pub struct SqliteRepair<K> {
    conn: Connection,
    upsert: String,
    delete: String,
    key: PhantomData<fn(K)>,
}

impl<K> SqliteRepair<K> {
    /// Repairs `columns` of `table` (`key` is its primary key) through
    /// `conn`.
    pub fn new(conn: Connection, table: &str, key: &str, columns: &[&str]) -> Self {
        let (names, marks) = insert_lists(key, columns);
        let updates = if columns.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!(
                "UPDATE SET {}",
                columns
                    .iter()
                    .map(|c| format!("{} = excluded.{}", quoted(c), quoted(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let (table, key) = (quoted(table), quoted(key));
        SqliteRepair {
            conn,
            upsert: format!(
                "INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({key}) DO {updates}"
            ),
            delete: format!("DELETE FROM {table} WHERE {key} = ?1"),
            key: PhantomData,
        }
    }
}

impl<K: ToSql> crate::reconcile::RepairSink for SqliteRepair<K> {
    type Key = K;
    type Row = SqliteRow;

    fn upsert(&mut self, rows: &[(K, SqliteRow)]) -> Result<(), BackfillError> {
        let transaction = self.conn.transaction().map_err(sink_error)?;
        {
            let mut statement = transaction
                .prepare_cached(&self.upsert)
                .map_err(sink_error)?;
            for (key, values) in rows {
                let params = std::iter::once(key as &dyn ToSql)
                    .chain(values.iter().map(|value| value as &dyn ToSql));
                statement
                    .execute(params_from_iter(params))
                    .map_err(sink_error)?;
            }
        }
        transaction.commit().map_err(sink_error)
    }

    fn delete(&mut self, keys: &[K]) -> Result<(), BackfillError> {
        let transaction = self.conn.transaction().map_err(sink_error)?;
        {
            let mut statement = transaction
                .prepare_cached(&self.delete)
                .map_err(sink_error)?;
            for key in keys {
                statement.execute([key]).map_err(sink_error)?;
            }
        }
        transaction.commit().map_err(sink_error)
    }
}

/// A reconciliation comparator for rows of these columns: `None` when
/// equal, else the names of the columns that differ.
pub fn column_diff(
    columns: &[&str],
) -> impl FnMut(&SqliteRow, &SqliteRow) -> Option<Vec<String>> + use<> {
    let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    move |a: &SqliteRow, b: &SqliteRow| {
        let differ: Vec<String> = columns
            .iter()
            .enumerate()
            .filter(|(i, _)| a.get(*i) != b.get(*i))
            .map(|(_, name)| name.clone())
            .collect();
        (!differ.is_empty() || a.len() != b.len()).then_some(differ)
    }
}

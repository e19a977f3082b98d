//! PostgreSQL tables as backfill sources and sinks, checkpoints, repair
//! sinks and range digests (feature `postgres`); see the [parent
//! module](super) for the design.
//!
//! A [`PgSink`] writes a whole batch with one statement: each column's
//! values go as one text array, and the statement casts them to the
//! column's type (read from the catalog) as it inserts:
//!
//! ```sql
//! INSERT INTO "users" ("id", "full_name") SELECT CAST(u.c0 AS bigint), CAST(u.c1 AS text)
//!   FROM UNNEST($1::text[], $2::text[]) AS u(c0, c1) ON CONFLICT ("id") DO NOTHING
//! ```
//!
//! one round trip and one implicit transaction per batch, whatever its
//! size; a row whose key is there already (a live write) is left alone.

use std::marker::PhantomData;
use std::sync::Arc;

use ::sqlx::postgres::{PgConnection, PgRow, PgTypeInfo, Postgres};
use ::sqlx::{
    AssertSqlSafe, Column, Connection, Decode, Encode, Executor, Row, SqlSafeStr, Statement, Type,
    TypeInfo,
};

use super::{Driver, SqlRow, SqlTable, SqlValue, bounds, where_clause};
use crate::backfill::{
    BackfillError, BackfillKey, BackfillSink, BackfillSource, Checkpoint, KeyRange,
};
use crate::reconcile::RepairSink;
use crate::reconcile::digest::{self, DigestKind, DigestSource, RangeDigest};

/// Keys a PostgreSQL source reads and binds (`i64`, `i32`, `String`, ..).
pub trait PgKey:
    BackfillKey
    + for<'r> Decode<'r, Postgres>
    + for<'q> Encode<'q, Postgres>
    + Type<Postgres>
    + Sync
    + Unpin
{
}

impl<T> PgKey for T where
    T: BackfillKey
        + for<'r> Decode<'r, Postgres>
        + for<'q> Encode<'q, Postgres>
        + Type<Postgres>
        + Sync
        + Unpin
{
}

/// `"name"`, with embedded quotes doubled.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn dollar(i: usize) -> String {
    format!("${i}")
}

fn sql(text: &Arc<str>) -> ::sqlx::SqlStr {
    AssertSqlSafe(Arc::clone(text)).into_sql_str()
}

fn source_error(error: ::sqlx::Error) -> BackfillError {
    BackfillError::Source(format!("PostgreSQL: {error}"))
}

fn sink_error(error: ::sqlx::Error) -> BackfillError {
    BackfillError::Sink(format!("PostgreSQL: {error}"))
}

fn checkpoint_error(error: ::sqlx::Error) -> BackfillError {
    BackfillError::Checkpoint(format!("PostgreSQL: {error}"))
}

fn connect(
    url: &str,
    error: fn(::sqlx::Error) -> BackfillError,
    setup: fn(String) -> BackfillError,
) -> Result<(Driver, PgConnection), BackfillError> {
    let driver = Driver::new(setup)?;
    let conn = driver.run(PgConnection::connect(url)).map_err(error)?;
    Ok((driver, conn))
}

/// How a column's values are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    I16,
    I32,
    I64,
    F32,
    F64,
    Text,
    Bytes,
}

/// The kind of a column of this type, `None` for a type read as text.
fn kind_of(ty: &PgTypeInfo) -> Option<Kind> {
    Some(if <bool as Type<Postgres>>::compatible(ty) {
        Kind::Bool
    } else if <i16 as Type<Postgres>>::compatible(ty) {
        Kind::I16
    } else if <i32 as Type<Postgres>>::compatible(ty) {
        Kind::I32
    } else if <i64 as Type<Postgres>>::compatible(ty) {
        Kind::I64
    } else if <f32 as Type<Postgres>>::compatible(ty) {
        Kind::F32
    } else if <f64 as Type<Postgres>>::compatible(ty) {
        Kind::F64
    } else if <String as Type<Postgres>>::compatible(ty) {
        Kind::Text
    } else if <Vec<u8> as Type<Postgres>>::compatible(ty) {
        Kind::Bytes
    } else {
        return None;
    })
}

fn decode_value(row: &PgRow, index: usize, kind: Kind) -> Result<SqlValue, ::sqlx::Error> {
    Ok(match kind {
        Kind::Bool => row.try_get::<Option<bool>, _>(index)?.map(SqlValue::Bool),
        Kind::I16 => row
            .try_get::<Option<i16>, _>(index)?
            .map(|v| SqlValue::Int(v.into())),
        Kind::I32 => row
            .try_get::<Option<i32>, _>(index)?
            .map(|v| SqlValue::Int(v.into())),
        Kind::I64 => row.try_get::<Option<i64>, _>(index)?.map(SqlValue::Int),
        Kind::F32 => row
            .try_get::<Option<f32>, _>(index)?
            .map(|v| SqlValue::Float(v.into())),
        Kind::F64 => row.try_get::<Option<f64>, _>(index)?.map(SqlValue::Float),
        Kind::Text => row.try_get::<Option<String>, _>(index)?.map(SqlValue::Text),
        Kind::Bytes => row
            .try_get::<Option<Vec<u8>>, _>(index)?
            .map(SqlValue::Bytes),
    }
    .unwrap_or(SqlValue::Null))
}

/// Reads a PostgreSQL table in key order, with keyset pagination
/// (`WHERE key > $1 ORDER BY key LIMIT $2`: each batch is an index range
/// scan).
pub struct PgSource<K> {
    driver: Driver,
    conn: PgConnection,
    /// Indexed by [`bounds`]; placeholders: after, upto, limit.
    scans: [Arc<str>; 4],
    select_range: Arc<str>,
    count: Arc<str>,
    boundary: [Arc<str>; 2],
    digests: Option<[Arc<str>; 4]>,
    digest_kind: DigestKind,
    table: String,
    key_column: String,
    kinds: Vec<Kind>,
    key: PhantomData<fn() -> K>,
}

impl<K: PgKey> PgSource<K> {
    /// Connects to `url` and reads `table`'s key and columns. Columns of
    /// types a [`SqlValue`] does not carry are read as text; a key column
    /// whose type `K` cannot read is cast to `K`'s type in the query (an
    /// `integer` key read as `i64`).
    pub fn connect(url: &str, table: &SqlTable) -> Result<Self, BackfillError> {
        let (driver, mut conn) = connect(url, source_error, BackfillError::Source)?;
        let name = table.quoted_name(quote);
        let key = quote(table.key());
        let raw: Vec<String> = std::iter::once(key.clone())
            .chain(table.columns().iter().map(|c| quote(c)))
            .collect();
        let probe = format!("SELECT {} FROM {name} LIMIT 0", raw.join(", "));
        let statement = driver
            .run((&mut conn).prepare(AssertSqlSafe(probe).into_sql_str()))
            .map_err(source_error)?;
        let types: Vec<PgTypeInfo> = statement
            .columns()
            .iter()
            .map(|c| c.type_info().clone())
            .collect();
        let key_select = if K::compatible(&types[0]) {
            key.clone()
        } else {
            format!("CAST({key} AS {})", K::type_info().name())
        };
        let mut list = vec![key_select.clone()];
        let mut kinds = Vec::with_capacity(table.columns().len());
        for (column, ty) in raw[1..].iter().zip(&types[1..]) {
            match kind_of(ty) {
                Some(kind) => {
                    list.push(column.clone());
                    kinds.push(kind);
                }
                None => {
                    list.push(format!("CAST({column} AS text)"));
                    kinds.push(Kind::Text);
                }
            }
        }
        let list = list.join(", ");
        Ok(PgSource {
            scans: std::array::from_fn(|variant| {
                let (clause, next) = where_clause(&key, variant, dollar);
                format!("SELECT {list} FROM {name}{clause} ORDER BY {key} LIMIT ${next}").into()
            }),
            select_range: format!(
                "SELECT {list} FROM {name} WHERE {key} >= $1 AND {key} <= $2 ORDER BY {key}"
            )
            .into(),
            count: format!("SELECT count(*) FROM {name}").into(),
            boundary: [
                format!("SELECT {key_select} FROM {name} ORDER BY {key} LIMIT 1 OFFSET $1").into(),
                format!(
                    "SELECT {key_select} FROM {name} WHERE {key} > $1 ORDER BY {key} LIMIT 1 OFFSET $2"
                )
                .into(),
            ],
            digests: None,
            digest_kind: DigestKind::Md5Text,
            driver,
            conn,
            table: name,
            key_column: key,
            kinds,
            key: PhantomData,
        })
    }

    /// Gives the source range digests ([`crate::reconcile::digest`]) over
    /// these SQL expressions, one per compared column, in the form both
    /// stores share (`first || ' ' || last`, `email`): SQL from the
    /// program, not user input.
    pub fn with_digest(self, expressions: &[&str]) -> Result<Self, BackfillError> {
        self.digested(expressions, DigestKind::Md5Text)
    }

    /// Like [`PgSource::with_digest`], with [`DigestKind::PostgresFast`]
    /// digests (the server's `hashtextextended` of the same row text):
    /// several times faster, comparable only with another PostgreSQL
    /// source's fast digests (servers of one major version and byte order).
    pub fn with_fast_digest(self, expressions: &[&str]) -> Result<Self, BackfillError> {
        self.digested(expressions, DigestKind::PostgresFast)
    }

    fn digested(mut self, expressions: &[&str], kind: DigestKind) -> Result<Self, BackfillError> {
        digest::check_expressions(expressions)?;
        let fields = std::iter::once(format!("CAST({} AS text)", self.key_column))
            .chain(
                expressions
                    .iter()
                    .map(|e| format!("COALESCE(CAST(({e}) AS text), chr(30))")),
            )
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!("concat_ws(chr(31), {fields})");
        let hash = match kind {
            DigestKind::PostgresFast => {
                // The bytes, whatever the columns' collation (a
                // case-insensitive one hashes `Alice` and `alice` alike);
                // 60 bits, non-negative, so that a sum is exact in `numeric`.
                format!("(hashtextextended({text} COLLATE \"C\", 0) & 1152921504606846975)")
            }
            DigestKind::Md5Text | DigestKind::SqliteFast => {
                format!("CAST(CAST('x' || substr(md5({text}), 1, 15) AS bit(60)) AS bigint)")
            }
        };
        self.digest_kind = kind;
        let (table, key) = (&self.table, &self.key_column);
        self.digests = Some(std::array::from_fn(|variant| {
            let (clause, _) = where_clause(key, variant, dollar);
            format!("SELECT count(*), CAST(COALESCE(sum({hash}), 0) AS text) FROM {table}{clause}")
                .into()
        }));
        // Fail now, not in the middle of a reconciliation, if an
        // expression does not compile.
        let check = self.digests.as_ref().map(|d| Arc::clone(&d[0]));
        if let Some(check) = check {
            self.driver
                .run((&mut self.conn).prepare(sql(&check)))
                .map_err(source_error)?;
        }
        Ok(self)
    }

    fn fetch(
        &mut self,
        statement: &Arc<str>,
        keys: &[Option<&K>],
        limit: Option<usize>,
    ) -> Result<Vec<(K, SqlRow)>, BackfillError> {
        let mut query = ::sqlx::query(sql(statement));
        for key in keys.iter().flatten() {
            query = query.bind((*key).clone());
        }
        if let Some(limit) = limit {
            query = query.bind(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let rows = self
            .driver
            .run(query.fetch_all(&mut self.conn))
            .map_err(source_error)?;
        rows.iter()
            .map(|row| {
                let key = row.try_get::<K, _>(0)?;
                let values = self
                    .kinds
                    .iter()
                    .enumerate()
                    .map(|(i, kind)| decode_value(row, i + 1, *kind))
                    .collect::<Result<SqlRow, _>>()?;
                Ok((key, values))
            })
            .collect::<Result<_, ::sqlx::Error>>()
            .map_err(source_error)
    }
}

impl<K: PgKey> BackfillSource for PgSource<K> {
    type Key = K;
    type Row = SqlRow;

    fn scan(&mut self, after: Option<&K>, limit: usize) -> Result<Vec<(K, SqlRow)>, BackfillError> {
        self.scan_until(after, None, limit)
    }

    fn scan_until(
        &mut self,
        after: Option<&K>,
        upto: Option<&K>,
        limit: usize,
    ) -> Result<Vec<(K, SqlRow)>, BackfillError> {
        let statement = Arc::clone(&self.scans[bounds(after.is_some(), upto.is_some())]);
        self.fetch(&statement, &[after, upto], Some(limit))
    }

    fn reread(
        &mut self,
        _after: Option<&K>,
        keys: &[K],
    ) -> Result<Vec<(K, SqlRow)>, BackfillError> {
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            return Ok(Vec::new());
        };
        let statement = Arc::clone(&self.select_range);
        let rows = self.fetch(&statement, &[Some(first), Some(last)], None)?;
        Ok(rows
            .into_iter()
            .filter(|(key, _)| keys.binary_search(key).is_ok())
            .collect())
    }

    fn count(&mut self) -> Result<Option<u64>, BackfillError> {
        let count: i64 = self
            .driver
            .run(::sqlx::query_scalar(sql(&self.count)).fetch_one(&mut self.conn))
            .map_err(source_error)?;
        Ok(Some(u64::try_from(count).unwrap_or(0)))
    }

    fn boundaries(&mut self, every: usize) -> Result<Vec<K>, BackfillError> {
        let offset = i64::try_from(every.max(1) - 1).unwrap_or(i64::MAX);
        let mut keys: Vec<K> = Vec::new();
        loop {
            let query = match keys.last() {
                None => ::sqlx::query_scalar(sql(&self.boundary[0])).bind(offset),
                Some(after) => ::sqlx::query_scalar(sql(&self.boundary[1]))
                    .bind(after.clone())
                    .bind(offset),
            };
            let found: Option<K> = self
                .driver
                .run(query.fetch_optional(&mut self.conn))
                .map_err(source_error)?;
            match found {
                Some(key) => keys.push(key),
                None => return Ok(keys),
            }
        }
    }
}

impl<K: PgKey> DigestSource for PgSource<K> {
    fn has_digests(&self) -> bool {
        self.digests.is_some()
    }

    fn digest(
        &mut self,
        after: Option<&K>,
        upto: Option<&K>,
    ) -> Result<RangeDigest, BackfillError> {
        let Some(digests) = &self.digests else {
            return Err(BackfillError::Source(
                "this PostgreSQL source has no digest expressions (PgSource::with_digest)"
                    .to_owned(),
            ));
        };
        let mut query = ::sqlx::query(sql(&digests[bounds(after.is_some(), upto.is_some())]));
        for key in [after, upto].into_iter().flatten() {
            query = query.bind(key.clone());
        }
        let row = self
            .driver
            .run(query.fetch_one(&mut self.conn))
            .map_err(source_error)?;
        let rows: i64 = row.try_get(0).map_err(source_error)?;
        let sum: String = row.try_get(1).map_err(source_error)?;
        Ok(RangeDigest {
            kind: self.digest_kind,
            ..RangeDigest::parse(rows, &sum)?
        })
    }
}

/// Reads the types of `columns` of `table` from the catalog, as
/// `format_type` prints them (`bigint`, `character varying(100)`,
/// `timestamp with time zone`): SQL the catalog wrote, safe to put in a
/// cast.
fn column_types(
    driver: &Driver,
    conn: &mut PgConnection,
    table: &SqlTable,
    columns: &[&str],
) -> Result<Vec<String>, ::sqlx::Error> {
    let found: Vec<(String, String)> = driver.run(
        ::sqlx::query_as(
            "SELECT CAST(a.attname AS text), format_type(a.atttypid, a.atttypmod)
             FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = CAST($1 AS regclass) AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(table.quoted_name(quote))
        .fetch_all(conn),
    )?;
    columns
        .iter()
        .map(|column| {
            found
                .iter()
                .find(|(name, _)| name == column)
                .map(|(_, ty)| ty.clone())
                .ok_or_else(|| {
                    ::sqlx::Error::Protocol(format!(
                        "table `{}` has no column `{column}`",
                        table.name()
                    ))
                })
        })
        .collect()
}

/// `INSERT INTO table (key, columns..) SELECT CAST(u.c0 AS type), .. FROM
/// UNNEST($1::text[], ..) AS u(c0, ..)`: the insert of one batch, values as
/// text arrays.
fn unnest_insert(table: &SqlTable, types: &[String]) -> String {
    let names: Vec<String> = std::iter::once(table.key())
        .chain(table.columns().iter().map(String::as_str))
        .map(quote)
        .collect();
    let casts: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("CAST(u.c{i} AS {ty})"))
        .collect();
    let arrays: Vec<String> = (1..=types.len()).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..types.len()).map(|i| format!("c{i}")).collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM UNNEST({}) AS u({})",
        table.quoted_name(quote),
        names.join(", "),
        casts.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

/// The rows as one text array per column (the key's first).
fn text_columns<K: ToString>(rows: &[(K, SqlRow)], columns: usize) -> Vec<Vec<Option<String>>> {
    let mut arrays: Vec<Vec<Option<String>>> = (0..=columns)
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    for (key, values) in rows {
        arrays[0].push(Some(key.to_string()));
        for (i, array) in arrays[1..].iter_mut().enumerate() {
            array.push(values.get(i).and_then(SqlValue::to_text));
        }
    }
    arrays
}

fn check_widths<K>(rows: &[(K, SqlRow)], columns: usize) -> Result<(), BackfillError> {
    match rows.iter().find(|(_, values)| values.len() != columns) {
        Some((_, values)) => Err(BackfillError::Sink(format!(
            "a row has {} value(s) for {columns} column(s): the mapping must give one per column",
            values.len()
        ))),
        None => Ok(()),
    }
}

/// Inserts the rows a PostgreSQL table does not have yet, one statement
/// per batch (see the module docs).
pub struct PgSink<K> {
    driver: Driver,
    conn: PgConnection,
    insert: Arc<str>,
    columns: usize,
    key: PhantomData<fn(K)>,
}

impl<K: BackfillKey> PgSink<K> {
    /// Connects to `url` and writes `table` (its key column must be the
    /// primary key or carry a unique index, for the conflict clause).
    pub fn connect(url: &str, table: &SqlTable) -> Result<Self, BackfillError> {
        let (driver, mut conn) = connect(url, sink_error, BackfillError::Sink)?;
        let names: Vec<&str> = std::iter::once(table.key())
            .chain(table.columns().iter().map(String::as_str))
            .collect();
        let types = column_types(&driver, &mut conn, table, &names).map_err(sink_error)?;
        let insert = format!(
            "{} ON CONFLICT ({}) DO NOTHING",
            unnest_insert(table, &types),
            quote(table.key())
        );
        Ok(PgSink {
            driver,
            conn,
            insert: insert.into(),
            columns: table.columns().len(),
            key: PhantomData,
        })
    }
}

impl<K: BackfillKey> BackfillSink for PgSink<K> {
    type Key = K;
    type Row = SqlRow;

    fn write_if_absent(&mut self, rows: &[(K, SqlRow)]) -> Result<u64, BackfillError> {
        if rows.is_empty() {
            return Ok(0);
        }
        check_widths(rows, self.columns)?;
        let mut query = ::sqlx::query(sql(&self.insert));
        for array in text_columns(rows, self.columns) {
            query = query.bind(array);
        }
        let result = self
            .driver
            .run(query.execute(&mut self.conn))
            .map_err(sink_error)?;
        Ok(result.rows_affected())
    }
}

/// The SQL of the checkpoint table, shared with MariaDB's but for types.
const CHECKPOINT_TABLE: &str = "CREATE TABLE IF NOT EXISTS dualwrite_backfill_checkpoint (
    job TEXT PRIMARY KEY,
    last_key TEXT NOT NULL,
    rows_done BIGINT NOT NULL
)";

/// A backfill's position in table `dualwrite_backfill_checkpoint` of a
/// PostgreSQL database, one row per job (per range, in a parallel
/// backfill), saved after each batch.
pub struct PgCheckpoint {
    driver: Driver,
    conn: PgConnection,
    job: String,
}

impl PgCheckpoint {
    /// Connects to `url` for the checkpoint of `job`; creates the table if
    /// needed. The connection commits without waiting for the WAL flush
    /// (`synchronous_commit = off`): a save lost in a crash only makes the
    /// job copy its last batch again (the sink skips rows that are there),
    /// and the batch's own commit no longer pays for a second flush.
    pub fn connect(url: &str, job: impl Into<String>) -> Result<Self, BackfillError> {
        let (driver, mut conn) = connect(url, checkpoint_error, BackfillError::Checkpoint)?;
        driver
            .run(::sqlx::query("SET synchronous_commit = off").execute(&mut conn))
            .map_err(checkpoint_error)?;
        if let Err(error) = driver.run(::sqlx::query(CHECKPOINT_TABLE).execute(&mut conn)) {
            // Two jobs creating the table at once: one of them fails, and
            // the table is there.
            let exists: bool = driver
                .run(
                    ::sqlx::query_scalar(
                        "SELECT to_regclass('dualwrite_backfill_checkpoint') IS NOT NULL",
                    )
                    .fetch_one(&mut conn),
                )
                .map_err(checkpoint_error)?;
            if !exists {
                return Err(checkpoint_error(error));
            }
        }
        Ok(PgCheckpoint {
            driver,
            conn,
            job: job.into(),
        })
    }
}

impl Checkpoint for PgCheckpoint {
    fn load(&mut self) -> Result<Option<(String, u64)>, BackfillError> {
        let found: Option<(String, i64)> = self
            .driver
            .run(
                ::sqlx::query_as(
                    "SELECT last_key, rows_done FROM dualwrite_backfill_checkpoint WHERE job = $1",
                )
                .bind(&self.job)
                .fetch_optional(&mut self.conn),
            )
            .map_err(checkpoint_error)?;
        Ok(found.map(|(key, rows)| (key, u64::try_from(rows).unwrap_or(0))))
    }

    fn save(&mut self, key: &str, rows: u64) -> Result<(), BackfillError> {
        self.driver
            .run(
                // dualwrite-lint: allow(DW002) the backfill's own checkpoint table, in one store on purpose
                ::sqlx::query(
                    "INSERT INTO dualwrite_backfill_checkpoint (job, last_key, rows_done) VALUES ($1, $2, $3)
                     ON CONFLICT (job) DO UPDATE SET last_key = EXCLUDED.last_key, rows_done = EXCLUDED.rows_done",
                )
                .bind(&self.job)
                .bind(key)
                .bind(i64::try_from(rows).unwrap_or(i64::MAX))
                .execute(&mut self.conn),
            )
            .map(drop)
            .map_err(checkpoint_error)
    }

    fn clear(&mut self) -> Result<(), BackfillError> {
        self.driver
            .run(
                // dualwrite-lint: allow(DW002) the backfill's own checkpoint table, in one store on purpose
                ::sqlx::query("DELETE FROM dualwrite_backfill_checkpoint WHERE job = $1")
                    .bind(&self.job)
                    .execute(&mut self.conn),
            )
            .map(drop)
            .map_err(checkpoint_error)
    }
}

/// Repairs a PostgreSQL table for reconciliation
/// ([`crate::reconcile::RepairSink`]): upserts rows and deletes keys, one
/// statement per batch.
pub struct PgRepair<K> {
    driver: Driver,
    conn: PgConnection,
    upsert: Arc<str>,
    delete: Arc<str>,
    columns: usize,
    key: PhantomData<fn(K)>,
}

impl<K: BackfillKey> PgRepair<K> {
    /// Connects to `url` and repairs `table` (keyed by its primary key).
    pub fn connect(url: &str, table: &SqlTable) -> Result<Self, BackfillError> {
        let (driver, mut conn) = connect(url, sink_error, BackfillError::Sink)?;
        let names: Vec<&str> = std::iter::once(table.key())
            .chain(table.columns().iter().map(String::as_str))
            .collect();
        let types = column_types(&driver, &mut conn, table, &names).map_err(sink_error)?;
        let key = quote(table.key());
        let updates = if table.columns().is_empty() {
            "NOTHING".to_owned()
        } else {
            format!(
                "UPDATE SET {}",
                table
                    .columns()
                    .iter()
                    .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Ok(PgRepair {
            upsert: format!(
                "{} ON CONFLICT ({key}) DO {updates}",
                unnest_insert(table, &types)
            )
            .into(),
            delete: format!(
                "DELETE FROM {} WHERE {key} IN (SELECT CAST(u.k AS {}) FROM UNNEST($1::text[]) AS u(k))",
                table.quoted_name(quote),
                types[0]
            )
            .into(),
            driver,
            conn,
            columns: table.columns().len(),
            key: PhantomData,
        })
    }
}

impl<K: BackfillKey> RepairSink for PgRepair<K> {
    type Key = K;
    type Row = SqlRow;

    fn upsert(&mut self, rows: &[(K, SqlRow)]) -> Result<(), BackfillError> {
        if rows.is_empty() {
            return Ok(());
        }
        check_widths(rows, self.columns)?;
        let mut query = ::sqlx::query(sql(&self.upsert));
        for array in text_columns(rows, self.columns) {
            query = query.bind(array);
        }
        self.driver
            .run(query.execute(&mut self.conn))
            .map(drop)
            .map_err(sink_error)
    }

    fn delete(&mut self, keys: &[K]) -> Result<(), BackfillError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
        self.driver
            .run(
                ::sqlx::query(sql(&self.delete))
                    .bind(keys)
                    .execute(&mut self.conn),
            )
            .map(drop)
            .map_err(sink_error)
    }
}

/// The lease table's SQL.
const LEASE_TABLE: &str = "CREATE TABLE IF NOT EXISTS dualwrite_backfill_leases (
    job TEXT NOT NULL,
    range_label TEXT NOT NULL,
    after_key TEXT,
    upto_key TEXT,
    owner TEXT,
    expires_at TIMESTAMPTZ,
    done BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (job, range_label)
)";

/// Key ranges of a parallel backfill shared by several processes through
/// table `dualwrite_backfill_leases` of a PostgreSQL database: each
/// process claims a range nobody holds (`FOR UPDATE SKIP LOCKED`, so two
/// claims never wait on each other or get the same range), holds it for a
/// time to live renewed at every checkpoint ([`LeasedCheckpoint`]), and
/// marks it done. A range whose holder died is claimed again once its
/// lease expired, and resumes from its checkpoint entry.
///
/// ```text
/// every process: leases.register(ranges); while let Some(lease) = leases.claim()? {
///     Backfill(Ranged(source, lease.range()), sink, LeasedCheckpoint(checkpoint "job (a..b]", lease)).run()?;
///     checkpoint.finish()?; }
/// ```
pub struct PgLeases {
    driver: Driver,
    conn: PgConnection,
    url: String,
    job: String,
    owner: String,
    ttl: std::time::Duration,
}

impl PgLeases {
    /// Connects to `url` for the leases of `job`, claiming as `owner` (a
    /// name unique to the process: host and pid) for `ttl` at a time;
    /// creates the table if needed.
    pub fn connect(
        url: &str,
        job: impl Into<String>,
        owner: impl Into<String>,
        ttl: std::time::Duration,
    ) -> Result<Self, BackfillError> {
        let (driver, mut conn) = connect(url, checkpoint_error, BackfillError::Checkpoint)?;
        if let Err(error) = driver.run(::sqlx::query(LEASE_TABLE).execute(&mut conn)) {
            let exists: bool = driver
                .run(
                    ::sqlx::query_scalar(
                        "SELECT to_regclass('dualwrite_backfill_leases') IS NOT NULL",
                    )
                    .fetch_one(&mut conn),
                )
                .map_err(checkpoint_error)?;
            if !exists {
                return Err(checkpoint_error(error));
            }
        }
        Ok(PgLeases {
            driver,
            conn,
            url: url.to_owned(),
            job: job.into(),
            owner: owner.into(),
            ttl,
        })
    }

    /// Records the job's ranges (those already recorded stay as they are:
    /// every process may register the same list).
    pub fn register<K: BackfillKey>(
        &mut self,
        ranges: &[KeyRange<K>],
    ) -> Result<(), BackfillError> {
        let labels: Vec<String> = ranges.iter().map(KeyRange::label).collect();
        let afters: Vec<Option<String>> = ranges
            .iter()
            .map(|r| r.after.as_ref().map(ToString::to_string))
            .collect();
        let uptos: Vec<Option<String>> = ranges
            .iter()
            .map(|r| r.upto.as_ref().map(ToString::to_string))
            .collect();
        self.driver
            .run(
                // dualwrite-lint: allow(DW002) the backfill's own lease table, in one store on purpose
                ::sqlx::query(
                    "INSERT INTO dualwrite_backfill_leases (job, range_label, after_key, upto_key)
                     SELECT $1, u.label, u.after_key, u.upto_key
                     FROM UNNEST($2::text[], $3::text[], $4::text[]) AS u(label, after_key, upto_key)
                     ON CONFLICT (job, range_label) DO NOTHING",
                )
                .bind(&self.job)
                .bind(labels)
                .bind(afters)
                .bind(uptos)
                .execute(&mut self.conn),
            )
            .map(drop)
            .map_err(checkpoint_error)
    }

    /// Claims a range that is not done and not held (never held, or its
    /// lease expired), or `None` when there is none left.
    pub fn claim<K: BackfillKey>(&mut self) -> Result<Option<Lease<K>>, BackfillError> {
        let claimed: Option<(String, Option<String>, Option<String>)> = self
            .driver
            .run(
                // dualwrite-lint: allow(DW002) the backfill's own lease table, in one store on purpose
                ::sqlx::query_as(
                    "UPDATE dualwrite_backfill_leases l
                     SET owner = $2, expires_at = now() + make_interval(secs => $3)
                     FROM (SELECT job, range_label FROM dualwrite_backfill_leases
                           WHERE job = $1 AND NOT done AND (owner IS NULL OR expires_at < now())
                           ORDER BY range_label LIMIT 1
                           FOR UPDATE SKIP LOCKED) c
                     WHERE l.job = c.job AND l.range_label = c.range_label
                     RETURNING l.range_label, l.after_key, l.upto_key",
                )
                .bind(&self.job)
                .bind(&self.owner)
                .bind(self.ttl.as_secs_f64())
                .fetch_optional(&mut self.conn),
            )
            .map_err(checkpoint_error)?;
        let Some((label, after, upto)) = claimed else {
            return Ok(None);
        };
        let parse = |text: Option<String>| -> Result<Option<K>, BackfillError> {
            text.map(|text| {
                text.parse::<K>()
                    .map_err(|_| BackfillError::BadCheckpoint { found: text })
            })
            .transpose()
        };
        let range = KeyRange {
            after: parse(after)?,
            upto: parse(upto)?,
        };
        Ok(Some(Lease {
            leases: PgLeases::connect(&self.url, &self.job, &self.owner, self.ttl)?,
            label,
            range,
        }))
    }

    /// Ranges of the job not done yet.
    pub fn remaining(&mut self) -> Result<u64, BackfillError> {
        let count: i64 = self
            .driver
            .run(
                ::sqlx::query_scalar(
                    "SELECT count(*) FROM dualwrite_backfill_leases WHERE job = $1 AND NOT done",
                )
                .bind(&self.job)
                .fetch_one(&mut self.conn),
            )
            .map_err(checkpoint_error)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Runs `sql` with the job, `label`, the owner and (with `ttl`) the
    /// time to live in seconds as `$1` to `$4`; an error when it touched no
    /// row (the lease is no longer this owner's).
    fn update(&mut self, sql: &'static str, label: &str, ttl: bool) -> Result<(), BackfillError> {
        let mut query = ::sqlx::query(sql)
            .bind(&self.job)
            .bind(label)
            .bind(&self.owner);
        if ttl {
            query = query.bind(self.ttl.as_secs_f64());
        }
        let result = self
            .driver
            .run(query.execute(&mut self.conn))
            .map_err(checkpoint_error)?;
        if result.rows_affected() == 0 {
            return Err(BackfillError::Checkpoint(format!(
                "the lease of range {label} of job `{}` is no longer held by `{}` (it expired and another process claimed it)",
                self.job, self.owner
            )));
        }
        Ok(())
    }
}

/// One claimed range ([`PgLeases::claim`]), with its own connection.
pub struct Lease<K> {
    leases: PgLeases,
    label: String,
    range: KeyRange<K>,
}

impl<K: BackfillKey> Lease<K> {
    /// The range held.
    pub fn range(&self) -> &KeyRange<K> {
        &self.range
    }

    /// The range's label ([`KeyRange::label`]), to name its checkpoint.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Extends the lease by its time to live; an error if it was lost.
    pub fn renew(&mut self) -> Result<(), BackfillError> {
        self.leases.update(
            "UPDATE dualwrite_backfill_leases SET expires_at = now() + make_interval(secs => $4)
             WHERE job = $1 AND range_label = $2 AND owner = $3 AND NOT done",
            &self.label,
            true,
        )
    }

    /// Marks the range done; an error if the lease was lost meanwhile.
    pub fn finish(mut self) -> Result<(), BackfillError> {
        self.leases.update(
            "UPDATE dualwrite_backfill_leases SET done = true, expires_at = NULL
             WHERE job = $1 AND range_label = $2 AND owner = $3 AND NOT done",
            &self.label,
            false,
        )
    }

    /// A checkpoint that renews this lease at every save (and fails the
    /// job when the lease was lost, so two processes never copy one range
    /// at once for longer than a batch).
    pub fn checkpoint<C: Checkpoint>(self, checkpoint: C) -> LeasedCheckpoint<K, C> {
        LeasedCheckpoint {
            lease: self,
            checkpoint,
        }
    }
}

/// A checkpoint that renews a [`Lease`] at every save.
pub struct LeasedCheckpoint<K, C> {
    lease: Lease<K>,
    checkpoint: C,
}

impl<K: BackfillKey, C: Checkpoint> LeasedCheckpoint<K, C> {
    /// Marks the range done (after its job finished).
    pub fn finish(self) -> Result<(), BackfillError> {
        self.lease.finish()
    }
}

impl<K: BackfillKey, C: Checkpoint> Checkpoint for LeasedCheckpoint<K, C> {
    fn load(&mut self) -> Result<Option<(String, u64)>, BackfillError> {
        self.checkpoint.load()
    }

    fn save(&mut self, key: &str, rows: u64) -> Result<(), BackfillError> {
        self.lease.renew()?;
        self.checkpoint.save(key, rows)
    }

    fn clear(&mut self) -> Result<(), BackfillError> {
        self.checkpoint.clear()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_insert_casts_text_arrays_to_the_column_types() {
        let table = SqlTable::new("app.users", "id", &["full name"]).unwrap();
        let sql = unnest_insert(&table, &["bigint".to_owned(), "text".to_owned()]);
        assert_eq!(
            sql,
            "INSERT INTO \"app\".\"users\" (\"id\", \"full name\") SELECT CAST(u.c0 AS bigint), CAST(u.c1 AS text) FROM UNNEST($1::text[], $2::text[]) AS u(c0, c1)"
        );
    }

    #[test]
    fn rows_become_one_text_array_per_column() {
        let rows = vec![
            (1_i64, vec![SqlValue::from("a"), SqlValue::Null]),
            (2, vec![SqlValue::Int(5), SqlValue::Bool(false)]),
        ];
        assert_eq!(
            text_columns(&rows, 2),
            vec![
                vec![Some("1".to_owned()), Some("2".to_owned())],
                vec![Some("a".to_owned()), Some("5".to_owned())],
                vec![None, Some("false".to_owned())],
            ]
        );
        assert!(check_widths(&rows, 3).is_err());
    }
}

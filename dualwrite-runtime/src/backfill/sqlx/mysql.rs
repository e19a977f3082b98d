//! MariaDB / MySQL tables as backfill sources and sinks, checkpoints,
//! repair sinks and range digests (feature `mysql`); see the [parent
//! module](super) for the design.
//!
//! A [`MySqlSink`] writes a batch in one transaction with multi-row
//! `INSERT IGNORE` statements (up to 65 535 placeholders each). `IGNORE`
//! skips a row whose key is there already (a live write: it wins), but it
//! also turns other errors into warnings (a NULL into a `NOT NULL` column
//! becomes the column's default, a value too long is cut). So after each
//! statement the sink counts the warnings (`SELECT @@warning_count`,
//! which does not clear them): more warnings than rows skipped means some
//! row was changed on the way in, and the batch is rolled back and refused
//! with the first such warning. (`ON DUPLICATE KEY UPDATE key = key`
//! keeps errors as errors, but its affected-row count cannot tell the rows
//! written from the rows skipped under sqlx's `CLIENT_FOUND_ROWS`.)

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use ::sqlx::mysql::{MySql, MySqlArguments, MySqlConnection, MySqlRow, MySqlTypeInfo};
use ::sqlx::query::Query;
use ::sqlx::{
    AssertSqlSafe, Column, Connection, Decode, Encode, Executor, Row, SqlSafeStr, Statement, Type,
    TypeInfo,
};

use super::{Driver, SqlRow, SqlTable, SqlValue, bounds, where_clause};
use crate::backfill::{BackfillError, BackfillKey, BackfillSink, BackfillSource, Checkpoint};
use crate::reconcile::RepairSink;
use crate::reconcile::digest::{self, DigestSource, RangeDigest};

/// Keys a MariaDB source reads and binds (`i64`, `String`, ..).
pub trait MySqlKey:
    BackfillKey + for<'r> Decode<'r, MySql> + for<'q> Encode<'q, MySql> + Type<MySql> + Sync + Unpin
{
}

impl<T> MySqlKey for T where
    T: BackfillKey
        + for<'r> Decode<'r, MySql>
        + for<'q> Encode<'q, MySql>
        + Type<MySql>
        + Sync
        + Unpin
{
}

/// A batch's statements, each with the rows it binds.
type Statements<'a, K> = Vec<(Arc<str>, &'a [(K, SqlRow)])>;

/// The most placeholders one MariaDB statement takes.
const MAX_PLACEHOLDERS: usize = 65_535;

/// `` `name` ``, with embedded backticks doubled.
fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn question(_: usize) -> String {
    "?".to_owned()
}

fn sql(text: &Arc<str>) -> ::sqlx::SqlStr {
    AssertSqlSafe(Arc::clone(text)).into_sql_str()
}

fn source_error(error: ::sqlx::Error) -> BackfillError {
    BackfillError::Source(format!("MariaDB: {error}"))
}

fn sink_error(error: ::sqlx::Error) -> BackfillError {
    BackfillError::Sink(format!("MariaDB: {error}"))
}

fn checkpoint_error(error: ::sqlx::Error) -> BackfillError {
    BackfillError::Checkpoint(format!("MariaDB: {error}"))
}

fn connect(
    url: &str,
    error: fn(::sqlx::Error) -> BackfillError,
    setup: fn(String) -> BackfillError,
) -> Result<(Driver, MySqlConnection), BackfillError> {
    let driver = Driver::new(setup)?;
    let conn = driver.run(MySqlConnection::connect(url)).map_err(error)?;
    Ok((driver, conn))
}

/// How a column's values are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Unsigned,
    F32,
    F64,
    Text,
    Bytes,
}

/// The kind of a column of this type, `None` for a type read as text.
fn kind_of(ty: &MySqlTypeInfo) -> Option<Kind> {
    Some(if <i64 as Type<MySql>>::compatible(ty) {
        Kind::Int
    } else if <u64 as Type<MySql>>::compatible(ty) {
        Kind::Unsigned
    } else if <f32 as Type<MySql>>::compatible(ty) && ty.name() == "FLOAT" {
        Kind::F32
    } else if <f64 as Type<MySql>>::compatible(ty) {
        Kind::F64
    } else if <String as Type<MySql>>::compatible(ty) {
        Kind::Text
    } else if <Vec<u8> as Type<MySql>>::compatible(ty) {
        Kind::Bytes
    } else {
        return None;
    })
}

fn decode_value(row: &MySqlRow, index: usize, kind: Kind) -> Result<SqlValue, ::sqlx::Error> {
    Ok(match kind {
        Kind::Int => row.try_get::<Option<i64>, _>(index)?.map(SqlValue::Int),
        // An unsigned BIGINT above i64::MAX goes as text.
        Kind::Unsigned => row.try_get::<Option<u64>, _>(index)?.map(|v| {
            i64::try_from(v).map_or_else(|_| SqlValue::Text(v.to_string()), SqlValue::Int)
        }),
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

/// Binds one value with its own type (MariaDB converts on the way in).
fn bind_value<'q>(
    query: Query<'q, MySql, MySqlArguments>,
    value: &SqlValue,
) -> Query<'q, MySql, MySqlArguments> {
    match value {
        SqlValue::Null => query.bind(None::<String>),
        SqlValue::Bool(value) => query.bind(*value),
        SqlValue::Int(value) => query.bind(*value),
        SqlValue::Float(value) => query.bind(*value),
        SqlValue::Text(value) => query.bind(value.clone()),
        SqlValue::Bytes(value) => query.bind(value.clone()),
    }
}

/// Reads a MariaDB table in key order, with keyset pagination (`WHERE key
/// > ? ORDER BY key LIMIT ?`: each batch is an index range scan).
pub struct MySqlSource<K> {
    driver: Driver,
    conn: MySqlConnection,
    scans: [Arc<str>; 4],
    select_range: Arc<str>,
    count: Arc<str>,
    boundary: [Arc<str>; 2],
    digests: Option<[Arc<str>; 4]>,
    table: String,
    key_column: String,
    kinds: Vec<Kind>,
    key: PhantomData<fn() -> K>,
}

impl<K: MySqlKey> MySqlSource<K> {
    /// Connects to `url` and reads `table`'s key and columns. Columns of
    /// types a [`SqlValue`] does not carry (decimals, dates, ..) are read
    /// as text (`CAST(.. AS CHAR)`).
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
        let types: Vec<MySqlTypeInfo> = statement
            .columns()
            .iter()
            .map(|c| c.type_info().clone())
            .collect();
        if !K::compatible(&types[0]) {
            return Err(BackfillError::Source(format!(
                "the key column `{}` of `{}` is {}, which the source's key type cannot read",
                table.key(),
                table.name(),
                types[0].name()
            )));
        }
        let mut list = vec![key.clone()];
        let mut kinds = Vec::with_capacity(table.columns().len());
        for (column, ty) in raw[1..].iter().zip(&types[1..]) {
            match kind_of(ty) {
                Some(kind) => {
                    list.push(column.clone());
                    kinds.push(kind);
                }
                None => {
                    list.push(format!("CAST({column} AS CHAR)"));
                    kinds.push(Kind::Text);
                }
            }
        }
        let list = list.join(", ");
        Ok(MySqlSource {
            scans: std::array::from_fn(|variant| {
                let (clause, _) = where_clause(&key, variant, question);
                format!("SELECT {list} FROM {name}{clause} ORDER BY {key} LIMIT ?").into()
            }),
            select_range: format!(
                "SELECT {list} FROM {name} WHERE {key} >= ? AND {key} <= ? ORDER BY {key}"
            )
            .into(),
            count: format!("SELECT COUNT(*) FROM {name}").into(),
            boundary: [
                format!("SELECT {key} FROM {name} ORDER BY {key} LIMIT 1 OFFSET ?").into(),
                format!("SELECT {key} FROM {name} WHERE {key} > ? ORDER BY {key} LIMIT 1 OFFSET ?")
                    .into(),
            ],
            digests: None,
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
    /// stores share (`CONCAT(first, ' ', last)`, `email`): SQL from the
    /// program, not user input.
    pub fn with_digest(mut self, expressions: &[&str]) -> Result<Self, BackfillError> {
        digest::check_expressions(expressions)?;
        let fields = std::iter::once(format!("CAST({} AS CHAR)", self.key_column))
            .chain(
                expressions
                    .iter()
                    .map(|e| format!("COALESCE(CAST(({e}) AS CHAR), CHAR(30 USING utf8mb4))")),
            )
            .collect::<Vec<_>>()
            .join(", ");
        let hash = format!(
            "CAST(CONV(SUBSTRING(MD5(CONCAT_WS(CHAR(31 USING utf8mb4), {fields})), 1, 15), 16, 10) AS UNSIGNED)"
        );
        let (table, key) = (&self.table, &self.key_column);
        self.digests = Some(std::array::from_fn(|variant| {
            let (clause, _) = where_clause(key, variant, question);
            format!("SELECT COUNT(*), CAST(COALESCE(SUM({hash}), 0) AS CHAR) FROM {table}{clause}")
                .into()
        }));
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

impl<K: MySqlKey> BackfillSource for MySqlSource<K> {
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

impl<K: MySqlKey> DigestSource for MySqlSource<K> {
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
                "this MariaDB source has no digest expressions (MySqlSource::with_digest)"
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
        RangeDigest::parse(rows, &sum)
    }
}

/// Multi-row statements for batches of any size: `prefix (?, ?), (?, ?)
/// suffix`, built once per row count.
struct MultiRow {
    prefix: String,
    suffix: String,
    width: usize,
    built: HashMap<usize, Arc<str>>,
}

impl MultiRow {
    fn new(prefix: String, suffix: String, width: usize) -> Self {
        MultiRow {
            prefix,
            suffix,
            width,
            built: HashMap::new(),
        }
    }

    /// Rows per statement, within MariaDB's placeholder limit.
    fn rows_per_statement(&self) -> usize {
        (MAX_PLACEHOLDERS / self.width.max(1)).max(1)
    }

    fn statement(&mut self, rows: usize) -> Arc<str> {
        let (prefix, suffix, width) = (&self.prefix, &self.suffix, self.width);
        Arc::clone(self.built.entry(rows).or_insert_with(|| {
            let tuple = format!("({})", vec!["?"; width].join(", "));
            format!("{prefix} VALUES {}{suffix}", vec![tuple; rows].join(", ")).into()
        }))
    }
}

fn insert_prefix(verb: &str, table: &SqlTable) -> String {
    let names: Vec<String> = std::iter::once(table.key())
        .chain(table.columns().iter().map(String::as_str))
        .map(quote)
        .collect();
    format!(
        "{verb} INTO {} ({})",
        table.quoted_name(quote),
        names.join(", ")
    )
}

fn bind_rows<'q, K: MySqlKey>(
    mut query: Query<'q, MySql, MySqlArguments>,
    rows: &[(K, SqlRow)],
) -> Query<'q, MySql, MySqlArguments> {
    for (key, values) in rows {
        query = query.bind(key.clone());
        for value in values {
            query = bind_value(query, value);
        }
    }
    query
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

/// Inserts the rows a MariaDB table does not have yet, one transaction
/// per batch (see the module docs).
pub struct MySqlSink<K> {
    driver: Driver,
    conn: MySqlConnection,
    insert: MultiRow,
    columns: usize,
    key: PhantomData<fn(K)>,
}

impl<K: MySqlKey> MySqlSink<K> {
    /// Connects to `url` and writes `table` (its key column must be the
    /// primary key, or the only unique index: `INSERT IGNORE` skips a row
    /// that collides on any unique index).
    pub fn connect(url: &str, table: &SqlTable) -> Result<Self, BackfillError> {
        let (driver, conn) = connect(url, sink_error, BackfillError::Sink)?;
        Ok(MySqlSink {
            driver,
            conn,
            insert: MultiRow::new(
                insert_prefix("INSERT IGNORE", table),
                String::new(),
                table.columns().len() + 1,
            ),
            columns: table.columns().len(),
            key: PhantomData,
        })
    }
}

/// The warnings of the last statement that are not a skipped duplicate.
async fn first_other_warning(conn: &mut MySqlConnection) -> Result<String, ::sqlx::Error> {
    let rows = ::sqlx::raw_sql("SHOW WARNINGS").fetch_all(conn).await?;
    for row in rows {
        let code: i64 = row
            .try_get::<u32, _>(1)
            .map(i64::from)
            .or_else(|_| row.try_get::<i64, _>(1))
            .unwrap_or(0);
        if code != 1062 {
            let message: String = row.try_get(2).unwrap_or_default();
            return Ok(format!("warning {code}: {message}"));
        }
    }
    Ok("a warning other than a duplicate key".to_owned())
}

async fn warning_count(conn: &mut MySqlConnection) -> Result<u64, ::sqlx::Error> {
    let row = ::sqlx::raw_sql("SELECT @@warning_count")
        .fetch_one(conn)
        .await?;
    row.try_get::<u64, _>(0).or_else(|_| {
        row.try_get::<i64, _>(0)
            .map(|n| u64::try_from(n).unwrap_or(0))
    })
}

impl<K: MySqlKey> BackfillSink for MySqlSink<K> {
    type Key = K;
    type Row = SqlRow;

    fn write_if_absent(&mut self, rows: &[(K, SqlRow)]) -> Result<u64, BackfillError> {
        if rows.is_empty() {
            return Ok(0);
        }
        check_widths(rows, self.columns)?;
        let per = self.insert.rows_per_statement();
        let statements: Statements<'_, K> = rows
            .chunks(per)
            .map(|chunk| (self.insert.statement(chunk.len()), chunk))
            .collect();
        let conn = &mut self.conn;
        let outcome = self.driver.run(async move {
            let mut tx = conn.begin().await?;
            let mut written = 0;
            for (statement, chunk) in statements {
                let query = bind_rows(::sqlx::query(sql(&statement)), chunk);
                let inserted = query.execute(&mut *tx).await?.rows_affected();
                let skipped = chunk.len() as u64 - inserted.min(chunk.len() as u64);
                if warning_count(&mut tx).await? > skipped {
                    let warning = first_other_warning(&mut tx).await?;
                    tx.rollback().await?;
                    return Ok(Err(warning));
                }
                written += inserted;
            }
            tx.commit().await?;
            Ok(Ok(written))
        });
        match outcome.map_err(sink_error)? {
            Ok(written) => Ok(written),
            Err(warning) => Err(BackfillError::Sink(format!(
                "MariaDB changed a row on the way in ({warning}); the batch was rolled back"
            ))),
        }
    }
}

/// A backfill's position in table `dualwrite_backfill_checkpoint` of a
/// MariaDB database, one row per job (per range, in a parallel backfill),
/// saved after each batch.
pub struct MySqlCheckpoint {
    driver: Driver,
    conn: MySqlConnection,
    job: String,
}

impl MySqlCheckpoint {
    /// Connects to `url` for the checkpoint of `job`; creates the table if
    /// needed.
    pub fn connect(url: &str, job: impl Into<String>) -> Result<Self, BackfillError> {
        let (driver, mut conn) = connect(url, checkpoint_error, BackfillError::Checkpoint)?;
        driver
            .run(
                ::sqlx::query(
                    "CREATE TABLE IF NOT EXISTS dualwrite_backfill_checkpoint (
                        job VARCHAR(191) PRIMARY KEY,
                        last_key TEXT NOT NULL,
                        rows_done BIGINT NOT NULL
                    )",
                )
                .execute(&mut conn),
            )
            .map_err(checkpoint_error)?;
        Ok(MySqlCheckpoint {
            driver,
            conn,
            job: job.into(),
        })
    }
}

impl Checkpoint for MySqlCheckpoint {
    fn load(&mut self) -> Result<Option<(String, u64)>, BackfillError> {
        let found: Option<(String, i64)> = self
            .driver
            .run(
                ::sqlx::query_as(
                    "SELECT last_key, rows_done FROM dualwrite_backfill_checkpoint WHERE job = ?",
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
                    "INSERT INTO dualwrite_backfill_checkpoint (job, last_key, rows_done) VALUES (?, ?, ?)
                     ON DUPLICATE KEY UPDATE last_key = VALUES(last_key), rows_done = VALUES(rows_done)",
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
                ::sqlx::query("DELETE FROM dualwrite_backfill_checkpoint WHERE job = ?")
                    .bind(&self.job)
                    .execute(&mut self.conn),
            )
            .map(drop)
            .map_err(checkpoint_error)
    }
}

/// Repairs a MariaDB table for reconciliation
/// ([`crate::reconcile::RepairSink`]): upserts rows (`ON DUPLICATE KEY
/// UPDATE`) and deletes keys, one transaction per batch.
pub struct MySqlRepair<K> {
    driver: Driver,
    conn: MySqlConnection,
    upsert: MultiRow,
    delete: String,
    columns: usize,
    key: PhantomData<fn(K)>,
}

impl<K: MySqlKey> MySqlRepair<K> {
    /// Connects to `url` and repairs `table` (keyed by its primary key).
    pub fn connect(url: &str, table: &SqlTable) -> Result<Self, BackfillError> {
        let (driver, conn) = connect(url, sink_error, BackfillError::Sink)?;
        let key = quote(table.key());
        let updates = if table.columns().is_empty() {
            format!("{key} = {key}")
        } else {
            table
                .columns()
                .iter()
                .map(|c| format!("{0} = VALUES({0})", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Ok(MySqlRepair {
            driver,
            conn,
            upsert: MultiRow::new(
                insert_prefix("INSERT", table),
                format!(" ON DUPLICATE KEY UPDATE {updates}"),
                table.columns().len() + 1,
            ),
            delete: format!("DELETE FROM {} WHERE {key} IN ", table.quoted_name(quote)),
            columns: table.columns().len(),
            key: PhantomData,
        })
    }
}

impl<K: MySqlKey> RepairSink for MySqlRepair<K> {
    type Key = K;
    type Row = SqlRow;

    fn upsert(&mut self, rows: &[(K, SqlRow)]) -> Result<(), BackfillError> {
        if rows.is_empty() {
            return Ok(());
        }
        check_widths(rows, self.columns)?;
        let per = self.upsert.rows_per_statement();
        let statements: Statements<'_, K> = rows
            .chunks(per)
            .map(|chunk| (self.upsert.statement(chunk.len()), chunk))
            .collect();
        let conn = &mut self.conn;
        self.driver
            .run(async move {
                let mut tx = conn.begin().await?;
                for (statement, chunk) in statements {
                    bind_rows(::sqlx::query(sql(&statement)), chunk)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            })
            .map_err(sink_error)
    }

    fn delete(&mut self, keys: &[K]) -> Result<(), BackfillError> {
        if keys.is_empty() {
            return Ok(());
        }
        let statements: Vec<(Arc<str>, &[K])> = keys
            .chunks(1_000)
            .map(|chunk| {
                let marks = vec!["?"; chunk.len()].join(", ");
                (format!("{}({marks})", self.delete).into(), chunk)
            })
            .collect();
        let conn = &mut self.conn;
        self.driver
            .run(async move {
                let mut tx = conn.begin().await?;
                for (statement, chunk) in statements {
                    let mut query = ::sqlx::query(sql(&statement));
                    for key in chunk {
                        query = query.bind(key.clone());
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await
            })
            .map_err(sink_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_statements_stay_under_the_placeholder_limit() {
        let table = SqlTable::new("users", "id", &["na`me"]).unwrap();
        let mut insert = MultiRow::new(insert_prefix("INSERT IGNORE", &table), String::new(), 2);
        assert_eq!(
            &*insert.statement(2),
            "INSERT IGNORE INTO `users` (`id`, `na``me`) VALUES (?, ?), (?, ?)"
        );
        assert_eq!(insert.rows_per_statement(), 32_767);
    }
}

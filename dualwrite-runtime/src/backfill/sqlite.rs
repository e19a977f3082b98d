//! Backfill sources, sinks and checkpoints over rusqlite tables (feature
//! `sqlite`).
//!
//! A [`SqliteSource`] reads `key, columns..` of a table in key order with a
//! keyset query (`WHERE key > ? ORDER BY key LIMIT ?`, so each batch is an
//! index range scan, not an offset); a [`SqliteSink`] inserts a batch in
//! one transaction with multi-row `INSERT`s and `ON CONFLICT (key) DO
//! NOTHING`, so a row a live write put there first is kept; a [`SqliteCheckpoint`] keeps the job's
//! position in a table of its own, committed after each batch; a
//! [`SqliteRepair`] upserts and deletes rows for reconciliation, and
//! [`column_diff`] names the columns in which two rows differ.

use std::marker::PhantomData;

use md5::{Digest as _, Md5};
use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::types::{FromSql, ToSql, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::{BackfillError, BackfillKey, BackfillSink, BackfillSource, Checkpoint, EncodedBatch};
use crate::reconcile::digest::{self, DigestKind, DigestSource, RangeDigest};

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
    /// `SELECT key, columns.. FROM table [WHERE ..] ORDER BY key LIMIT `,
    /// indexed by [`bounds`]; the limit is written in the statement, not
    /// bound: SQLite prepares a statement again each time a `LIMIT`
    /// parameter is bound (to plan for its value), a parse per batch.
    scans: [String; 4],
    select_range: String,
    count: String,
    /// `SELECT key FROM table [WHERE key > ?1] ORDER BY key LIMIT 1 OFFSET ?`.
    boundary: [String; 2],
    /// `SELECT count(*), dualwrite_digest(key, expressions..) FROM table [WHERE ..]`,
    /// when the source was given digest expressions.
    digests: Option<[String; 4]>,
    digest_kind: DigestKind,
    table: String,
    key_column: String,
    columns: usize,
    key: PhantomData<fn() -> K>,
}

/// The index of a statement variant: bit 0 for a lower bound (`key > ?`),
/// bit 1 for an upper bound (`key <= ?`).
fn bounds(after: bool, upto: bool) -> usize {
    usize::from(after) | (usize::from(upto) << 1)
}

/// The `WHERE` clause of variant `variant` (see [`bounds`]), with
/// numbered placeholders from `?1`, and the next placeholder's number.
fn where_clause(key: &str, variant: usize) -> (String, usize) {
    let mut conditions = Vec::new();
    let mut next = 1;
    if variant & 1 != 0 {
        conditions.push(format!("{key} > ?{next}"));
        next += 1;
    }
    if variant & 2 != 0 {
        conditions.push(format!("{key} <= ?{next}"));
        next += 1;
    }
    if conditions.is_empty() {
        (String::new(), next)
    } else {
        (format!(" WHERE {}", conditions.join(" AND ")), next)
    }
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
        let scans = std::array::from_fn(|variant| {
            let (clause, _) = where_clause(&key, variant);
            format!("SELECT {list} FROM {table}{clause} ORDER BY {key} LIMIT ")
        });
        SqliteSource {
            conn,
            scans,
            select_range: format!(
                "SELECT {list} FROM {table} WHERE {key} >= ?1 AND {key} <= ?2 ORDER BY {key}"
            ),
            count: format!("SELECT COUNT(*) FROM {table}"),
            boundary: [
                format!("SELECT {key} FROM {table} ORDER BY {key} LIMIT 1 OFFSET ?1"),
                format!(
                    "SELECT {key} FROM {table} WHERE {key} > ?1 ORDER BY {key} LIMIT 1 OFFSET ?2"
                ),
            ],
            digests: None,
            digest_kind: DigestKind::Md5Text,
            table,
            key_column: key,
            columns: columns.len(),
            key: PhantomData,
        }
    }

    /// Gives the source range digests ([`crate::reconcile::digest`]) over
    /// these SQL expressions, one per compared column in the new store's
    /// form (`first || ' ' || last`, `email`): SQL from the program, not
    /// user input. The digests are [`DigestKind::Md5Text`], comparable
    /// with PostgreSQL's and MariaDB's. Registers the aggregate function
    /// `dualwrite_digest` on the connection.
    pub fn with_digest(self, expressions: &[&str]) -> Result<Self, BackfillError> {
        self.digested(expressions, false)
    }

    /// Like [`SqliteSource::with_digest`], with [`DigestKind::SqliteFast`]
    /// digests (aggregate `dualwrite_digest_fast`): several times faster,
    /// comparable only with another SQLite source's fast digests.
    pub fn with_fast_digest(self, expressions: &[&str]) -> Result<Self, BackfillError> {
        self.digested(expressions, true)
    }

    /// Registers the digest aggregate: [`DigestKind::SqliteFast`] when
    /// `fast`, else [`DigestKind::Md5Text`].
    fn digested(mut self, expressions: &[&str], fast: bool) -> Result<Self, BackfillError> {
        crate::reconcile::digest::check_expressions(expressions)?;
        let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
        let function = if !fast {
            self.conn
                .create_aggregate_function("dualwrite_digest", -1, flags, RowDigest)
                .map_err(source_error)?;
            "dualwrite_digest"
        } else {
            self.conn
                .create_aggregate_function("dualwrite_digest_fast", -1, flags, FastDigest)
                .map_err(source_error)?;
            "dualwrite_digest_fast"
        };
        let arguments = std::iter::once(self.key_column.clone())
            .chain(expressions.iter().map(|e| format!("({e})")))
            .collect::<Vec<_>>()
            .join(", ");
        let (table, key) = (&self.table, &self.key_column);
        self.digests = Some(std::array::from_fn(|variant| {
            let (clause, _) = where_clause(key, variant);
            format!("SELECT COUNT(*), {function}({arguments}) FROM {table}{clause}")
        }));
        self.digest_kind = if fast {
            DigestKind::SqliteFast
        } else {
            DigestKind::Md5Text
        };
        // Fail now, not in the middle of a reconciliation, if an
        // expression does not compile.
        if let Some(digests) = &self.digests {
            self.conn
                .prepare_cached(&digests[0])
                .map_err(source_error)?;
        }
        Ok(self)
    }

    fn rows(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        expected: usize,
    ) -> Result<Vec<(K, SqliteRow)>, BackfillError>
    where
        K: FromSql,
    {
        let mut out = Vec::with_capacity(expected.min(16_384));
        self.rows_into(sql, params, &mut out)?;
        Ok(out)
    }

    /// Appends the rows of `sql` to `out`; returns how many.
    fn rows_into(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        out: &mut Vec<(K, SqliteRow)>,
    ) -> Result<usize, BackfillError>
    where
        K: FromSql,
    {
        let mut statement = self.conn.prepare_cached(sql).map_err(source_error)?;
        let mut rows = statement.query(params).map_err(source_error)?;
        let before = out.len();
        while let Some(row) = rows.next().map_err(source_error)? {
            let key = row.get::<_, K>(0).map_err(source_error)?;
            let mut values = Vec::with_capacity(self.columns);
            for i in 1..=self.columns {
                values.push(owned_value(row, i)?);
            }
            out.push((key, values));
        }
        Ok(out.len() - before)
    }

    /// Appends the rows of `sql` to `out` in [`SQLITE_ROW_ENCODING`];
    /// returns how many.
    fn rows_encoded_into(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        out: &mut EncodedBatch<K>,
    ) -> Result<usize, BackfillError>
    where
        K: FromSql,
    {
        let mut statement = self.conn.prepare_cached(sql).map_err(source_error)?;
        let mut rows = statement.query(params).map_err(source_error)?;
        let before = out.len();
        while let Some(row) = rows.next().map_err(source_error)? {
            let key = row.get::<_, K>(0).map_err(source_error)?;
            for i in 1..=self.columns {
                if let Err(error) = encode_value(row, i, out.bytes_mut()) {
                    out.abandon_row();
                    return Err(error);
                }
            }
            out.end_row(key);
        }
        Ok(out.len() - before)
    }

    /// The statement and its parameters of a scan above `after`, up to
    /// `upto`, of at most `limit` rows (the same text for the same limit,
    /// so the prepared statement is cached).
    fn scan_statement<'a>(
        &self,
        after: Option<&'a K>,
        upto: Option<&'a K>,
        limit: usize,
    ) -> (String, Vec<&'a dyn ToSql>)
    where
        K: ToSql,
    {
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(2);
        params.extend(after.map(|key| key as &dyn ToSql));
        params.extend(upto.map(|key| key as &dyn ToSql));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "{}{limit}",
            self.scans[bounds(after.is_some(), upto.is_some())]
        );
        (sql, params)
    }
}

/// The name of [`SqliteSource`]'s row encoding
/// ([`BackfillSource::row_encoding`]): each value a type byte (0 NULL, 1
/// integer, 2 real, 3 text, 4 blob), then an integer or a real's bits as 8
/// little-endian bytes (a real's zero without its sign, as `==` sees it),
/// a text or a blob as its length in 8 little-endian bytes and its bytes.
pub const SQLITE_ROW_ENCODING: &str = "dualwrite-sqlite-values-1";

/// Appends the encoding of column `index` of `row` ([`SQLITE_ROW_ENCODING`]).
fn encode_value(
    row: &rusqlite::Row<'_>,
    index: usize,
    out: &mut Vec<u8>,
) -> Result<(), BackfillError> {
    match row.get_ref(index).map_err(source_error)? {
        ValueRef::Null => out.push(0),
        ValueRef::Integer(value) => {
            out.push(1);
            out.extend_from_slice(&value.to_le_bytes());
        }
        ValueRef::Real(value) => {
            out.push(2);
            // `-0.0 + 0.0` is `0.0`: the two zeros are `==`.
            out.extend_from_slice(&(value + 0.0).to_bits().to_le_bytes());
        }
        ValueRef::Text(text) => {
            // A row read as values fails on text that is not UTF-8: so
            // does its encoding.
            std::str::from_utf8(text)
                .map_err(|error| source_error(rusqlite::Error::Utf8Error(index, error)))?;
            out.push(3);
            out.extend_from_slice(&(text.len() as u64).to_le_bytes());
            out.extend_from_slice(text);
        }
        ValueRef::Blob(bytes) => {
            out.push(4);
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
    Ok(())
}

/// Column `index` of `row` as an owned value: what `row.get::<_, Value>`
/// gives, read once through the borrowed value.
fn owned_value(row: &rusqlite::Row<'_>, index: usize) -> Result<Value, BackfillError> {
    Ok(match row.get_ref(index).map_err(source_error)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(value) => Value::Integer(value),
        ValueRef::Real(value) => Value::Real(value),
        ValueRef::Text(text) => Value::Text(
            std::str::from_utf8(text)
                .map_err(|error| source_error(rusqlite::Error::Utf8Error(index, error)))?
                .to_owned(),
        ),
        ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
    })
}

impl<K: BackfillKey + FromSql + ToSql> BackfillSource for SqliteSource<K> {
    type Key = K;
    type Row = SqliteRow;

    fn scan(
        &mut self,
        after: Option<&K>,
        limit: usize,
    ) -> Result<Vec<(K, SqliteRow)>, BackfillError> {
        self.scan_until(after, None, limit)
    }

    fn scan_until(
        &mut self,
        after: Option<&K>,
        upto: Option<&K>,
        limit: usize,
    ) -> Result<Vec<(K, SqliteRow)>, BackfillError> {
        let mut out = Vec::with_capacity(limit.min(16_384));
        self.scan_until_into(after, upto, limit, &mut out)?;
        Ok(out)
    }

    fn scan_until_into(
        &mut self,
        after: Option<&K>,
        upto: Option<&K>,
        limit: usize,
        into: &mut Vec<(K, SqliteRow)>,
    ) -> Result<usize, BackfillError> {
        let (sql, params) = self.scan_statement(after, upto, limit);
        self.rows_into(&sql, &params, into)
    }

    fn row_encoding(&self) -> Option<&'static str> {
        Some(SQLITE_ROW_ENCODING)
    }

    fn scan_encoded_until(
        &mut self,
        after: Option<&K>,
        upto: Option<&K>,
        limit: usize,
        into: &mut EncodedBatch<K>,
    ) -> Result<usize, BackfillError> {
        let (sql, params) = self.scan_statement(after, upto, limit);
        self.rows_encoded_into(&sql, &params, into)
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
        let rows = self.rows(&self.select_range, &[first, last], keys.len())?;
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

    fn boundaries(&mut self, every: usize) -> Result<Vec<K>, BackfillError> {
        let offset = i64::try_from(every.max(1) - 1).unwrap_or(i64::MAX);
        let mut keys: Vec<K> = Vec::new();
        loop {
            let found = match keys.last() {
                None => self
                    .conn
                    .prepare_cached(&self.boundary[0])
                    .and_then(|mut s| s.query_row([offset], |row| row.get::<_, K>(0)).optional()),
                Some(after) => self
                    .conn
                    .prepare_cached(&self.boundary[1])
                    .and_then(|mut s| {
                        s.query_row((after, offset), |row| row.get::<_, K>(0))
                            .optional()
                    }),
            }
            .map_err(source_error)?;
            match found {
                Some(key) => keys.push(key),
                None => return Ok(keys),
            }
        }
    }
}

impl<K: BackfillKey + FromSql + ToSql> DigestSource for SqliteSource<K> {
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
                "this SQLite source has no digest expressions (SqliteSource::with_digest)"
                    .to_owned(),
            ));
        };
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(2);
        params.extend(after.map(|key| key as &dyn ToSql));
        params.extend(upto.map(|key| key as &dyn ToSql));
        let (rows, sum) = self
            .conn
            .prepare_cached(&digests[bounds(after.is_some(), upto.is_some())])
            .and_then(|mut statement| {
                statement.query_row(params.as_slice(), |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
            })
            .map_err(source_error)?;
        Ok(RangeDigest {
            kind: self.digest_kind,
            ..RangeDigest::parse(rows, &sum)?
        })
    }
}

/// The first 60 bits of the MD5 of a row's text, as PostgreSQL's
/// `('x' || substr(md5(t), 1, 15))::bit(60)::bigint` and MariaDB's
/// `CONV(SUBSTRING(MD5(t), 1, 15), 16, 10)` compute them.
pub fn row_hash(text: &[u8]) -> u64 {
    let digest = Md5::digest(text);
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) >> 4
}

/// Appends `value` in decimal, as `write!(text, "{value}")` does, without
/// the formatting machinery (three of the benchmark's six fields a row).
fn push_decimal(text: &mut Vec<u8>, value: i64) {
    let mut digits = [0_u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        // `rest % 10` is below 10.
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        text.push(b'-');
    }
    text.extend_from_slice(&digits[at..]);
}

/// The aggregate `dualwrite_digest(key, e1, ..)`: the sum of the row
/// hashes of the row texts (see [`crate::reconcile::digest`]), as text.
struct RowDigest;

impl Aggregate<(u128, Vec<u8>), String> for RowDigest {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<(u128, Vec<u8>)> {
        Ok((0, Vec::with_capacity(128)))
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut (u128, Vec<u8>)) -> rusqlite::Result<()> {
        use std::io::Write as _;
        let (sum, text) = acc;
        text.clear();
        for i in 0..ctx.len() {
            if i > 0 {
                text.push(digest::FIELD_SEPARATOR as u8);
            }
            match ctx.get_raw(i) {
                ValueRef::Null => text.push(digest::NULL_TEXT as u8),
                ValueRef::Integer(value) => push_decimal(text, value),
                // Writing into a `Vec` cannot fail.
                ValueRef::Real(value) => drop(write!(text, "{value}")),
                ValueRef::Text(value) => text.extend_from_slice(value),
                ValueRef::Blob(value) => {
                    // PostgreSQL's text form of a bytea.
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    text.extend_from_slice(b"\\x");
                    for byte in value {
                        text.push(HEX[usize::from(byte >> 4)]);
                        text.push(HEX[usize::from(byte & 0xf)]);
                    }
                }
            }
        }
        *sum = sum.wrapping_add(u128::from(row_hash(text)));
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<(u128, Vec<u8>)>,
    ) -> rusqlite::Result<String> {
        Ok(acc.map_or(0, |(sum, _)| sum).to_string())
    }
}

/// Rows per multi-row `INSERT` of a [`SqliteSink`]: few enough that a
/// statement stays small, many enough that the per-statement cost (reset,
/// step, changes) is spread thin.
const ROWS_PER_INSERT: usize = 64;

/// The most parameters one SQLite statement takes (since 3.32).
const MAX_PARAMETERS: usize = 32_766;

/// The aggregate `dualwrite_digest_fast(key, e1, ..)`: the sum of a fast
/// hash of each row's values with their types ([`DigestKind::SqliteFast`]).
struct FastDigest;

impl Aggregate<u128, String> for FastDigest {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<u128> {
        Ok(0)
    }

    fn step(&self, ctx: &mut Context<'_>, sum: &mut u128) -> rusqlite::Result<()> {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher =
            foldhash::fast::FixedState::with_seed(0x6477_6469_6765_7374).build_hasher();
        for i in 0..ctx.len() {
            match ctx.get_raw(i) {
                ValueRef::Null => hasher.write_u8(0),
                ValueRef::Integer(value) => {
                    hasher.write_u8(1);
                    hasher.write_i64(value);
                }
                ValueRef::Real(value) => {
                    hasher.write_u8(2);
                    hasher.write_u64(value.to_bits());
                }
                ValueRef::Text(value) => {
                    hasher.write_u8(3);
                    hasher.write_usize(value.len());
                    hasher.write(value);
                }
                ValueRef::Blob(value) => {
                    hasher.write_u8(4);
                    hasher.write_usize(value.len());
                    hasher.write(value);
                }
            }
        }
        *sum = sum.wrapping_add(u128::from(hasher.finish()));
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, sum: Option<u128>) -> rusqlite::Result<String> {
        Ok(sum.unwrap_or(0).to_string())
    }
}

/// Inserts rows that are not in a table yet: each batch in one
/// transaction, in multi-row `INSERT .. VALUES (..), (..) .. ON CONFLICT
/// (key) DO NOTHING` statements, prepared once and cached.
pub struct SqliteSink<K> {
    conn: Connection,
    /// `INSERT INTO table (names) VALUES`.
    prefix: String,
    /// ` ON CONFLICT (key) DO NOTHING`.
    suffix: String,
    width: usize,
    /// The statement for a chunk of `n` rows, built once per `n`.
    statements: std::collections::HashMap<usize, String>,
    key: PhantomData<fn(K)>,
}

impl<K> SqliteSink<K> {
    /// Writes `columns` of `table` (`key` must be its primary key or carry
    /// a unique index, for the conflict clause) through `conn`.
    pub fn new(conn: Connection, table: &str, key: &str, columns: &[&str]) -> Self {
        let (names, _) = insert_lists(key, columns);
        SqliteSink {
            conn,
            prefix: format!("INSERT INTO {} ({names}) VALUES ", quoted(table)),
            suffix: format!(" ON CONFLICT ({}) DO NOTHING", quoted(key)),
            width: columns.len() + 1,
            statements: std::collections::HashMap::new(),
            key: PhantomData,
        }
    }

    fn rows_per_statement(&self) -> usize {
        ROWS_PER_INSERT.min(MAX_PARAMETERS / self.width).max(1)
    }

    fn statement(&mut self, rows: usize) -> &str {
        let (prefix, suffix, width) = (&self.prefix, &self.suffix, self.width);
        self.statements.entry(rows).or_insert_with(|| {
            let tuple = format!("({})", vec!["?"; width].join(", "));
            format!("{prefix}{}{suffix}", vec![tuple; rows].join(", "))
        })
    }
}

impl<K: ToSql> BackfillSink for SqliteSink<K> {
    type Key = K;
    type Row = SqliteRow;

    fn write_if_absent(&mut self, rows: &[(K, SqliteRow)]) -> Result<u64, BackfillError> {
        if let Some((_, values)) = rows.iter().find(|(_, v)| v.len() + 1 != self.width) {
            return Err(BackfillError::Sink(format!(
                "a row has {} value(s) for {} column(s): the mapping must give one per column",
                values.len(),
                self.width - 1
            )));
        }
        let per = self.rows_per_statement();
        for chunk in rows.chunks(per) {
            self.statement(chunk.len());
        }
        let transaction = self.conn.transaction().map_err(sink_error)?;
        let mut written = 0;
        for chunk in rows.chunks(per) {
            let sql = &self.statements[&chunk.len()];
            let mut statement = transaction.prepare_cached(sql).map_err(sink_error)?;
            let mut index = 1;
            for (key, values) in chunk {
                statement
                    .raw_bind_parameter(index, key)
                    .map_err(sink_error)?;
                index += 1;
                for value in values {
                    statement
                        .raw_bind_parameter(index, value)
                        .map_err(sink_error)?;
                    index += 1;
                }
            }
            written += statement.raw_execute().map_err(sink_error)? as u64;
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

    fn clear(&mut self) -> Result<(), BackfillError> {
        self.conn
            // dualwrite-lint: allow(DW002) the backfill's own checkpoint table, in one store on purpose
            .execute(
                "DELETE FROM dualwrite_backfill_checkpoint WHERE job = ?1",
                [&self.job],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{Reconcile, ReconcileReport};

    /// Rows of table `t`: key, `a`, `b`.
    type Rows = Vec<(i64, Value, Value)>;

    /// Creates table `t` holding `rows`.
    fn fill(conn: &Connection, rows: &[(i64, Value, Value)]) {
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a, b)")
            .unwrap();
        for (id, a, b) in rows {
            // dualwrite-lint: allow(DW002) a test's fixture table, one store on purpose
            conn.execute("INSERT INTO t VALUES (?1, ?2, ?3)", (id, a, b))
                .unwrap();
        }
    }

    fn store(rows: &[(i64, Value, Value)]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        fill(&conn, rows);
        conn
    }

    fn source(rows: &[(i64, Value, Value)]) -> SqliteSource<i64> {
        SqliteSource::new(store(rows), "t", "id", &["a", "b"])
    }

    fn text(value: &str) -> Value {
        Value::Text(value.to_owned())
    }

    /// Old and new with every kind of difference, and equal rows of every
    /// type (the two zeros are `==`).
    fn drifted() -> (Rows, Rows) {
        use Value::{Blob, Integer, Null, Real};
        let old = vec![
            (1, text("a"), Integer(1)),
            (2, text("gone"), Null),
            (3, text("x"), Real(1.5)),
            (4, Blob(b"ab".to_vec()), Real(-0.0)),
            (5, text("ab"), Null),
            (6, Integer(7), text("same")),
            (8, Null, Null),
            (9, text(""), Integer(0)),
        ];
        let new = vec![
            (1, text("a"), Integer(1)),
            (3, text("x"), Real(2.5)),
            (4, Blob(b"ab".to_vec()), Real(0.0)),
            (5, Blob(b"ab".to_vec()), Null),
            (6, Integer(7), text("same")),
            (7, text("extra"), Null),
            (8, Null, Null),
            (9, Null, Integer(0)),
        ];
        (old, new)
    }

    fn counts(report: &ReconcileReport) -> [u64; 7] {
        [
            report.old_rows,
            report.new_rows,
            report.equal,
            report.settled,
            report.missing_in_new,
            report.extra_in_new,
            report.different,
        ]
    }

    /// Comparing encoded rows finds what comparing decoded rows finds,
    /// batch boundaries anywhere, concurrent reads or not.
    #[test]
    fn encoded_rows_compare_as_decoded_rows_do() {
        let (old, new) = drifted();
        for batch in [1, 2, 3, 100] {
            let decoded = Reconcile::mapped(
                source(&old),
                source(&new),
                |row| row,
                |a: &SqliteRow, b: &SqliteRow| (a != b).then(Vec::new),
            )
            .with_batch(batch)
            .run()
            .unwrap();
            assert_eq!(counts(&decoded), [8, 8, 4, 0, 1, 1, 3], "{decoded}");
            let encoded = Reconcile::new(source(&old), source(&new))
                .with_batch(batch)
                .run()
                .unwrap();
            assert_eq!(encoded, decoded, "batch {batch}");
            let concurrent = Reconcile::new(source(&old), source(&new))
                .with_batch(batch)
                .with_concurrent_reads()
                .run()
                .unwrap();
            assert_eq!(concurrent, decoded, "batch {batch}, concurrent");
        }
    }

    /// The encoded comparison repairs and resumes from a checkpoint as the
    /// decoded one does.
    #[test]
    fn encoded_rows_repair_and_resume() {
        let (old, new) = drifted();
        let path = std::env::temp_dir().join(format!(
            "dualwrite-encoded-repair-{}.db",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let new_conn = Connection::open(&path).unwrap();
        fill(&new_conn, &new);
        let mut sink =
            SqliteRepair::<i64>::new(Connection::open(&path).unwrap(), "t", "id", &["a", "b"]);
        let checkpoint = SqliteCheckpoint::new(Connection::open(&path).unwrap(), "job").unwrap();
        let report = Reconcile::new(
            source(&old),
            SqliteSource::new(Connection::open(&path).unwrap(), "t", "id", &["a", "b"]),
        )
        .with_batch(2)
        .with_checkpoint(checkpoint)
        .repair_into(&mut sink)
        .unwrap();
        assert_eq!((report.found(), report.repaired), (5, 5), "{report}");
        let again = Reconcile::new(
            source(&old),
            SqliteSource::new(new_conn, "t", "id", &["a", "b"]),
        )
        .run()
        .unwrap();
        assert_eq!((again.found(), again.equal), (0, 8), "{again}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn text_that_is_not_utf8_fails_the_encoded_scan() {
        let conn = store(&[]);
        // dualwrite-lint: allow(DW002) a test's fixture row, one store on purpose
        conn.execute("INSERT INTO t VALUES (1, CAST(x'ff' AS TEXT), NULL)", [])
            .unwrap();
        let mut source = SqliteSource::<i64>::new(conn, "t", "id", &["a", "b"]);
        let mut batch = EncodedBatch::new();
        let error = source
            .scan_encoded_until(None, None, 10, &mut batch)
            .unwrap_err();
        assert!(error.to_string().contains("utf-8"), "{error}");
        assert!(batch.is_empty() && batch.bytes_mut().is_empty());
        assert!(source.scan(None, 10).is_err());
    }

    #[test]
    fn decimals_print_as_the_formatter_does() {
        for value in [0, 1, -1, 9, 10, -10, 123_456_789, i64::MAX, i64::MIN] {
            let mut text = b"x".to_vec();
            push_decimal(&mut text, value);
            assert_eq!(text, format!("x{value}").into_bytes());
        }
    }
}

//! Backfill and reconciliation over PostgreSQL (feature `postgres`) and
//! MariaDB / MySQL (feature `mysql`) tables, through sqlx: sources, sinks,
//! checkpoints, repair sinks and range digests, as
//! [`super::sqlite`] offers them over SQLite.
//!
//! | | PostgreSQL | MariaDB / MySQL |
//! |---|---|---|
//! | source | [`postgres::PgSource`] | [`mysql::MySqlSource`] |
//! | sink (insert if absent) | [`postgres::PgSink`]: `INSERT .. SELECT .. FROM UNNEST(..) ON CONFLICT (key) DO NOTHING` | [`mysql::MySqlSink`]: multi-row `INSERT IGNORE`, refused when a row warns for anything but its key being there |
//! | checkpoint | [`postgres::PgCheckpoint`] | [`mysql::MySqlCheckpoint`] |
//! | repair (upsert, delete) | [`postgres::PgRepair`] | [`mysql::MySqlRepair`] |
//! | range digests | `md5`, `sum` into `numeric` | `MD5`, `CONV`, `SUM` into `DECIMAL` |
//! | ranges shared by processes | [`postgres::PgLeases`] (`FOR UPDATE SKIP LOCKED`, expiry) | |
//!
//! **Why synchronous, on a runtime of their own.** [`BackfillSource`],
//! [`BackfillSink`], [`Checkpoint`] and [`RepairSink`] are synchronous, and
//! so are the jobs that drive them ([`super::Backfill`],
//! [`super::ParallelBackfill`], [`crate::reconcile::Reconcile`]): a job is
//! a long loop of batches with a key guard held across a read and a write,
//! which suits a thread. Async variants of every trait and job would double
//! that machinery for no gain: a batch is one or two round trips, and the
//! `block_on` around them costs nothing next to the network. So each value
//! here owns one connection and a current-thread tokio runtime, connects on
//! it, and runs each call to completion on it. Run jobs on a thread of
//! their own (`std::thread::spawn`, or tokio's `spawn_blocking`), never on
//! an async task: blocking inside an async task would stall its executor,
//! and tokio refuses it.
//!
//! **Rows.** A row is a [`SqlRow`]: the values of the columns given, as
//! [`SqlValue`]s (null, boolean, integer, float, text, bytes). A column of
//! another type (numeric, date, timestamp, uuid, json, ..) is read as text
//! (the database's cast), and a sink writes each value as text cast to its
//! column's type, so such values cross databases in their text form.
//!
//! **Names.** Table, key and column names are quoted (`"name"` in
//! PostgreSQL, `` `name` `` in MariaDB, quotes inside doubled), so no name
//! can inject SQL; [`SqlTable::new`] refuses empty names and NUL. A table
//! name `schema.table` is the table in that schema. Digest expressions are
//! SQL given by the program (see [`crate::reconcile::digest`]).
//!
//! **Keys.** Rows are read in the database's key order; a text key must
//! sort there as Rust sorts strings (bytewise: PostgreSQL `COLLATE "C"`,
//! MariaDB a `_bin` collation), else the job stops with
//! [`BackfillError::OutOfOrder`].

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::fmt;
use std::future::Future;

use super::BackfillError;
#[cfg(doc)]
use super::{BackfillSink, BackfillSource, Checkpoint};
#[cfg(doc)]
use crate::reconcile::RepairSink;

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// A boolean (PostgreSQL `boolean`; MariaDB has none: its `BOOLEAN` is
    /// a `TINYINT`, read as [`SqlValue::Int`]).
    Bool(bool),
    /// An integer of any width (unsigned 64-bit MariaDB integers are read
    /// as text: they may not fit).
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// Text, and every type read as text.
    Text(String),
    /// Bytes (`bytea`, `BLOB`, `VARBINARY`).
    Bytes(Vec<u8>),
}

impl SqlValue {
    /// The text a sink writes for the value, `None` for NULL: what the
    /// database's input function for the column's type reads.
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            SqlValue::Null => return None,
            SqlValue::Bool(value) => value.to_string(),
            SqlValue::Int(value) => value.to_string(),
            SqlValue::Float(value) if value.is_nan() => "NaN".to_owned(),
            SqlValue::Float(value) if value.is_infinite() => if *value > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
            .to_owned(),
            SqlValue::Float(value) => value.to_string(),
            SqlValue::Text(value) => value.clone(),
            SqlValue::Bytes(value) => {
                let mut text = String::with_capacity(2 + 2 * value.len());
                text.push_str("\\x");
                for byte in value {
                    text.push_str(&format!("{byte:02x}"));
                }
                text
            }
        })
    }

    /// The text, if the value is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            SqlValue::Text(text) => Some(text),
            _ => None,
        }
    }

    /// The integer, if the value is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            SqlValue::Int(value) => Some(*value),
            _ => None,
        }
    }
}

impl fmt::Display for SqlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_text() {
            Some(text) => f.write_str(&text),
            None => f.write_str("NULL"),
        }
    }
}

impl From<&str> for SqlValue {
    fn from(value: &str) -> Self {
        SqlValue::Text(value.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(value: String) -> Self {
        SqlValue::Text(value)
    }
}

impl From<i64> for SqlValue {
    fn from(value: i64) -> Self {
        SqlValue::Int(value)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(value: Option<T>) -> Self {
        value.map_or(SqlValue::Null, Into::into)
    }
}

/// A row as read: the values of the table's columns, in order (the key
/// travels beside it).
pub type SqlRow = Vec<SqlValue>;

/// A table as a source, sink or repair sink sees it: its name, its key
/// column (the primary key, or one with a unique index) and the columns
/// read or written, all checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlTable {
    path: Vec<String>,
    key: String,
    columns: Vec<String>,
}

impl SqlTable {
    /// `table` (`name` or `schema.name`), keyed by `key`, with `columns`
    /// (not including the key). Refuses empty names, NUL, a column given
    /// twice or the key among the columns.
    pub fn new(table: &str, key: &str, columns: &[&str]) -> Result<Self, BackfillError> {
        let path: Vec<String> = table.split('.').map(str::to_owned).collect();
        for part in &path {
            check_name("table", part)?;
        }
        check_name("key column", key)?;
        for (i, column) in columns.iter().enumerate() {
            check_name("column", column)?;
            if *column == key || columns[..i].contains(column) {
                return Err(BackfillError::Source(format!(
                    "column `{column}` of table `{table}` is given twice (the key is not among the columns)"
                )));
            }
        }
        Ok(SqlTable {
            path,
            key: key.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        })
    }

    /// The table's name as given.
    pub fn name(&self) -> String {
        self.path.join(".")
    }

    /// The key column.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The columns besides the key.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The table's name quoted with `quote`.
    fn quoted_name(&self, quote: fn(&str) -> String) -> String {
        self.path
            .iter()
            .map(|part| quote(part))
            .collect::<Vec<_>>()
            .join(".")
    }
}

fn check_name(what: &str, name: &str) -> Result<(), BackfillError> {
    if name.trim().is_empty() || name.contains('\0') || name.len() > 128 {
        return Err(BackfillError::Source(format!(
            "{what} name `{}` is empty, too long or holds NUL",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// The statement variant for a range's bounds: bit 0 for a lower bound
/// (`key > ..`), bit 1 for an upper one (`key <= ..`).
fn bounds(after: bool, upto: bool) -> usize {
    usize::from(after) | (usize::from(upto) << 1)
}

/// The `WHERE` clause of a variant (see [`bounds`]), with placeholders from
/// `placeholder(1)`, and the number of the next placeholder.
fn where_clause(key: &str, variant: usize, placeholder: fn(usize) -> String) -> (String, usize) {
    let mut conditions = Vec::new();
    let mut next = 1;
    if variant & 1 != 0 {
        conditions.push(format!("{key} > {}", placeholder(next)));
        next += 1;
    }
    if variant & 2 != 0 {
        conditions.push(format!("{key} <= {}", placeholder(next)));
        next += 1;
    }
    if conditions.is_empty() {
        (String::new(), next)
    } else {
        (format!(" WHERE {}", conditions.join(" AND ")), next)
    }
}

/// The current-thread runtime each connection of this module runs on.
struct Driver(tokio::runtime::Runtime);

impl Driver {
    fn new(error: fn(String) -> BackfillError) -> Result<Self, BackfillError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(Driver)
            .map_err(|e| error(format!("cannot start the connection's runtime: {e}")))
    }

    fn run<F: Future>(&self, future: F) -> F::Output {
        self.0.block_on(future)
    }
}

/// A reconciliation comparator for rows of these columns: `None` when
/// equal, else the names of the columns that differ.
pub fn column_diff(
    columns: &[&str],
) -> impl FnMut(&SqlRow, &SqlRow) -> Option<Vec<String>> + use<> {
    let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    move |a: &SqlRow, b: &SqlRow| {
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

    #[test]
    fn tables_are_checked() {
        let table = SqlTable::new("public.users", "id", &["name", "email"]).unwrap();
        assert_eq!(table.name(), "public.users");
        assert_eq!(
            table.quoted_name(|n| format!("\"{}\"", n.replace('"', "\"\""))),
            "\"public\".\"users\""
        );
        assert!(SqlTable::new("users", "id", &["id"]).is_err());
        assert!(SqlTable::new("users", "id", &["a", "a"]).is_err());
        assert!(SqlTable::new("users", "", &["a"]).is_err());
        assert!(SqlTable::new("us\0ers", "id", &["a"]).is_err());
        assert!(SqlTable::new("public.", "id", &["a"]).is_err());
        // Quotes are data, not syntax: they are doubled when quoted.
        assert!(SqlTable::new("x\" ; DROP TABLE t; --", "id", &[]).is_ok());
    }

    #[test]
    fn values_print_as_the_databases_read_them() {
        assert_eq!(SqlValue::Null.to_text(), None);
        assert_eq!(SqlValue::Bool(true).to_text().unwrap(), "true");
        assert_eq!(SqlValue::Int(-7).to_text().unwrap(), "-7");
        assert_eq!(SqlValue::Float(1.5).to_text().unwrap(), "1.5");
        assert_eq!(
            SqlValue::Float(f64::NEG_INFINITY).to_text().unwrap(),
            "-Infinity"
        );
        assert_eq!(SqlValue::Bytes(vec![0, 255]).to_text().unwrap(), "\\x00ff");
    }

    #[test]
    fn where_clauses_number_their_placeholders() {
        let dollar = |i: usize| format!("${i}");
        assert_eq!(where_clause("k", 0, dollar), (String::new(), 1));
        assert_eq!(where_clause("k", 3, dollar).0, " WHERE k > $1 AND k <= $2");
        assert_eq!(
            where_clause("k", 2, dollar),
            (" WHERE k <= $1".to_owned(), 2)
        );
    }
}

//! Range digests: an aggregate hash of the rows in a key range, computed in
//! the database, so that reconciliation reads only the ranges that differ.
//!
//! ```text
//! old: SELECT count(*), sum(h(row text)) WHERE key > a AND key <= b   ┐ equal: the range's rows count as equal, unread
//! new: SELECT count(*), sum(h(row text)) WHERE key > a AND key <= b   ┘ different: the range is merge-joined row by row
//! ```
//!
//! Both stores must hash the *same* text for equal rows, although their
//! schemas differ: each store is given the list of SQL expressions that
//! yield the comparable columns in its own schema (old: `first || ' ' ||
//! last`, new: `full_name`), and a store without such a list has no
//! digests ([`DigestSource::has_digests`]), which makes reconciliation go
//! row by row.
//!
//! The row text, the same in every store: the key, then each expression,
//! as the database casts it to text, joined by U+001F (unit separator); a
//! NULL is U+001E (record separator). The row hash `h` is the first 60 bits
//! (15 hex digits) of the MD5 of that text, as an unsigned integer, and a
//! range's digest is the row count and the exact sum of the row hashes
//! ([`RangeDigest`]): PostgreSQL (`md5`, `sum` into `numeric`), MariaDB
//! (`MD5`, `CONV`, `SUM` into `DECIMAL`) and SQLite (an aggregate function
//! the source registers) compute the same digest for the same rows, so any
//! two of them can be compared. A sum does not depend on the rows' order
//! and needs no memory per row in the database.
//!
//! What the database's cast to text gives must agree between the stores:
//! integers and text do; floating-point numbers, booleans, dates and
//! decimals print differently in different databases, so give expressions
//! that print them alike (`CAST(price * 100 AS BIGINT)`, `CASE WHEN flag
//! THEN 1 ELSE 0 END`, `to_char(..)` / `DATE_FORMAT(..)`).

use super::BackfillError;
use crate::backfill::BackfillSource;

/// How a digest hashes its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DigestKind {
    /// The first 60 bits of the MD5 of the row's text (see the module
    /// docs): the same in SQLite, PostgreSQL and MariaDB, so any two of
    /// them can be compared.
    #[default]
    Md5Text,
    /// A fast non-cryptographic hash (foldhash, fixed seed) of the row's
    /// SQLite values with their types, computed in the process: only
    /// comparable with another SQLite source's fast digest in the same
    /// program. An integer and the same number as text hash differently,
    /// which makes their range go row by row (never a missed difference).
    SqliteFast,
    /// PostgreSQL's `hashtextextended` (seed 0) of the row's text (the
    /// same text as [`DigestKind::Md5Text`]), its low 60 bits: computed by
    /// the server, several times cheaper than MD5, comparable only with
    /// another PostgreSQL source's fast digest on a server of the same
    /// major version and byte order (the function is the server's
    /// internal hash, not a documented format).
    PostgresFast,
}

/// The digest of a key range: how many rows, and the sum of their row
/// hashes (see the module docs). Equal rows give equal digests in any of
/// the supported databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RangeDigest {
    /// Rows in the range.
    pub rows: u64,
    /// The sum of the row hashes (exact: 60-bit hashes cannot overflow
    /// below 2^68 rows, 64-bit ones below 2^64).
    pub sum: u128,
    /// How the rows were hashed; digests of different kinds are not
    /// comparable.
    pub kind: DigestKind,
}

impl RangeDigest {
    /// Parses the digest columns a database returns: the count and the sum
    /// as text (a `numeric` or `DECIMAL` sum exceeds 64 bits).
    pub fn parse(rows: i64, sum: &str) -> Result<Self, BackfillError> {
        let bad = || {
            BackfillError::Source(format!(
                "the database returned a bad digest: {rows} row(s), sum `{sum}`"
            ))
        };
        Ok(RangeDigest {
            rows: u64::try_from(rows).map_err(|_| bad())?,
            sum: sum.trim().parse().map_err(|_| bad())?,
            kind: DigestKind::Md5Text,
        })
    }
}

/// A source that can digest its key ranges in the database.
pub trait DigestSource: BackfillSource {
    /// Whether the source was given digest expressions; without them,
    /// [`DigestSource::digest`] is not called.
    fn has_digests(&self) -> bool;

    /// The digest of the rows with keys above `after` and at most `upto`
    /// (no bound when `None`).
    fn digest(
        &mut self,
        after: Option<&Self::Key>,
        upto: Option<&Self::Key>,
    ) -> Result<RangeDigest, BackfillError>;
}

/// The unit separator between the fields of a row's text.
pub const FIELD_SEPARATOR: char = '\u{1f}';
/// The text of a NULL field.
pub const NULL_TEXT: char = '\u{1e}';

/// Checks a digest expression list: not empty, no empty expression, no
/// `;` (one expression each, never a second statement). The expressions
/// are SQL from the program (like a view's definition), not user input.
pub fn check_expressions(expressions: &[&str]) -> Result<(), BackfillError> {
    if expressions.is_empty() {
        return Err(BackfillError::Source(
            "a digest needs at least one expression".to_owned(),
        ));
    }
    for expression in expressions {
        if expression.trim().is_empty() || expression.contains(';') || expression.contains('\0') {
            return Err(BackfillError::Source(format!(
                "digest expression `{expression}` is empty or holds `;` or NUL: give one SQL expression per column"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_from_database_text() {
        let digest = RangeDigest::parse(3, " 3458764513820540928 ").unwrap();
        assert_eq!(digest.rows, 3);
        assert_eq!(digest.sum, 3_458_764_513_820_540_928);
        assert!(RangeDigest::parse(-1, "0").is_err());
        assert!(RangeDigest::parse(1, "1.5").is_err());
    }

    #[test]
    fn expressions_are_checked() {
        assert!(check_expressions(&["first || ' ' || last"]).is_ok());
        assert!(check_expressions(&[]).is_err());
        assert!(check_expressions(&["a; DROP TABLE t"]).is_err());
        assert!(check_expressions(&[" "]).is_err());
    }
}

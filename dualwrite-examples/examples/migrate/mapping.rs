//! The schema change, field by field, written once for every backend.
//!
//! | old (`users`, `orders`)            | new (`accounts`, `purchases`)                    |
//! |------------------------------------|--------------------------------------------------|
//! | `users.id`                         | `accounts.account_id` (renamed)                  |
//! | `users.full_name`                  | `given_name` + `family_name` (split at the first space) |
//! | `users.email` NULL                 | `accounts.email` NOT NULL DEFAULT `''`           |
//! | `users.signup_ts` (seconds)        | `accounts.created_ms` (milliseconds)             |
//! | `orders.id`, `user_id`             | `purchases.purchase_id`, `account_id` (renamed)  |
//! | `orders.amount_cents`              | `purchases.total_cents` (renamed)                |
//! | `orders.status` TEXT               | `purchases.state` INTEGER (0 new .. 3 cancelled) |
//! | `orders.note` NULL                 | `purchases.note` NOT NULL DEFAULT `''`           |
//!
//! Every row carries a `version`; a write replaces a row only if its version
//! is not older, so a late or replayed write never clobbers a newer one.
//! The history in Old never holds an empty email or note (only NULL), so
//! NULL ↔ `''` maps both ways without loss; a shadow read would catch an
//! old `''` coming back as NULL.
//!
//! The backfill and reconciliation move rows, not domain values: the row
//! mappings below work on any backend's values through [`Cell`] (SQLite's
//! `rusqlite::types::Value`, the sqlx sources' `SqlValue`).

use crate::model::{Order, Status, StoreError, User};

/// The columns each side's backfill and reconciliation read (after the key).
pub const OLD_USER_COLUMNS: [&str; 4] = ["full_name", "email", "signup_ts", "version"];
pub const NEW_USER_COLUMNS: [&str; 5] = [
    "given_name",
    "family_name",
    "email",
    "created_ms",
    "version",
];
pub const OLD_ORDER_COLUMNS: [&str; 5] = ["user_id", "amount_cents", "status", "note", "version"];
pub const NEW_ORDER_COLUMNS: [&str; 5] = ["account_id", "total_cents", "state", "note", "version"];

/// "Grace Brewster Hopper" -> ("Grace", "Brewster Hopper"); "Cher" ->
/// ("Cher", "").
pub fn split_name(full_name: &str) -> (&str, &str) {
    full_name.split_once(' ').unwrap_or((full_name, ""))
}

/// Exactly undoes [`split_name`].
pub fn join_name(given: &str, family: &str) -> String {
    if family.is_empty() {
        given.to_owned()
    } else {
        format!("{given} {family}")
    }
}

/// One value of a row, whatever the backend.
pub trait Cell: Sized {
    fn text(&self) -> Option<&str>;
    fn int(&self) -> Option<i64>;
    fn is_null(&self) -> bool;
    fn from_text(text: String) -> Self;
    fn from_int(n: i64) -> Self;
    fn null() -> Self;
}

impl Cell for rusqlite::types::Value {
    fn text(&self) -> Option<&str> {
        match self {
            rusqlite::types::Value::Text(text) => Some(text),
            _ => None,
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            rusqlite::types::Value::Integer(n) => Some(*n),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, rusqlite::types::Value::Null)
    }

    fn from_text(text: String) -> Self {
        rusqlite::types::Value::Text(text)
    }

    fn from_int(n: i64) -> Self {
        rusqlite::types::Value::Integer(n)
    }

    fn null() -> Self {
        rusqlite::types::Value::Null
    }
}

impl Cell for dualwrite_runtime::backfill::sqlx::SqlValue {
    fn text(&self) -> Option<&str> {
        self.as_str()
    }

    fn int(&self) -> Option<i64> {
        self.as_i64()
    }

    fn is_null(&self) -> bool {
        matches!(self, dualwrite_runtime::backfill::sqlx::SqlValue::Null)
    }

    fn from_text(text: String) -> Self {
        dualwrite_runtime::backfill::sqlx::SqlValue::Text(text)
    }

    fn from_int(n: i64) -> Self {
        dualwrite_runtime::backfill::sqlx::SqlValue::Int(n)
    }

    fn null() -> Self {
        dualwrite_runtime::backfill::sqlx::SqlValue::Null
    }
}

fn text<V: Cell>(value: &V) -> Result<&str, StoreError> {
    value
        .text()
        .ok_or_else(|| StoreError::BadRow("expected text".to_owned()))
}

fn opt_text<V: Cell>(value: &V) -> Result<Option<&str>, StoreError> {
    if value.is_null() {
        Ok(None)
    } else {
        text(value).map(Some)
    }
}

fn int<V: Cell>(value: &V) -> Result<i64, StoreError> {
    value
        .int()
        .ok_or_else(|| StoreError::BadRow("expected an integer".to_owned()))
}

fn columns<const N: usize, V>(row: &[V]) -> Result<&[V; N], StoreError> {
    row.try_into()
        .map_err(|_| StoreError::BadRow(format!("{} columns, expected {N}", row.len())))
}

fn text_or_null<V: Cell>(text: &str) -> V {
    if text.is_empty() {
        V::null()
    } else {
        V::from_text(text.to_owned())
    }
}

/// An old `users` row (without its key) in New's `accounts` form.
pub fn old_user_to_new<V: Cell>(row: &[V]) -> Result<Vec<V>, StoreError> {
    let [full_name, email, signup_ts, version] = columns::<4, V>(row)?;
    let (given, family) = split_name(text(full_name)?);
    Ok(vec![
        V::from_text(given.to_owned()),
        V::from_text(family.to_owned()),
        V::from_text(opt_text(email)?.unwrap_or("").to_owned()),
        V::from_int(int(signup_ts)? * 1000),
        V::from_int(int(version)?),
    ])
}

/// A New `accounts` row in Old's `users` form (repairs after cutover).
pub fn new_user_to_old<V: Cell>(row: &[V]) -> Result<Vec<V>, StoreError> {
    let [given, family, email, created_ms, version] = columns::<5, V>(row)?;
    Ok(vec![
        V::from_text(join_name(text(given)?, text(family)?)),
        text_or_null(text(email)?),
        V::from_int(int(created_ms)? / 1000),
        V::from_int(int(version)?),
    ])
}

/// An old `orders` row in New's `purchases` form.
pub fn old_order_to_new<V: Cell>(row: &[V]) -> Result<Vec<V>, StoreError> {
    let [user_id, amount, status, note, version] = columns::<5, V>(row)?;
    let status = text(status)?;
    let state = Status::from_text(status)
        .ok_or_else(|| StoreError::BadRow(format!("unknown status `{status}`")))?;
    Ok(vec![
        V::from_int(int(user_id)?),
        V::from_int(int(amount)?),
        V::from_int(state.code()),
        V::from_text(opt_text(note)?.unwrap_or("").to_owned()),
        V::from_int(int(version)?),
    ])
}

/// A New `purchases` row in Old's `orders` form.
pub fn new_order_to_old<V: Cell>(row: &[V]) -> Result<Vec<V>, StoreError> {
    let [account_id, total, state, note, version] = columns::<5, V>(row)?;
    let code = int(state)?;
    let status = Status::from_code(code)
        .ok_or_else(|| StoreError::BadRow(format!("unknown state {code}")))?;
    Ok(vec![
        V::from_int(int(account_id)?),
        V::from_int(int(total)?),
        V::from_text(status.as_text().to_owned()),
        text_or_null(text(note)?),
        V::from_int(int(version)?),
    ])
}

/// The history's user `id` (the same on every backend).
pub fn history_user(id: i64) -> User {
    let full_name = match id % 7 {
        0 => format!("Mononym{id}"),
        1 => format!("Ada Byron Lovelace{id}"),
        _ => format!("Given{id} Family{}", id % 1000),
    };
    User {
        id,
        full_name,
        email: (id % 5 != 0).then(|| format!("user{id}@example.com")),
        signup_ts: 1_600_000_000 + id * 60,
        version: 1,
    }
}

/// The history's order `id` of user `user_id`.
pub fn history_order(id: i64, user_id: i64) -> Order {
    Order {
        id,
        user_id,
        amount_cents: 100 + (id * 37) % 50_000,
        status: Status::ALL[(id % 4) as usize],
        note: (id % 3 == 0).then(|| format!("gift wrap #{id}")),
        version: 1,
    }
}

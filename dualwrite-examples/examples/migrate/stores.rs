//! The two stores, SQLite files with different schemas, and the explicit
//! mapping between them.
//!
//! | old (`old.db`)                     | new (`new.db`)                                   |
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

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use dualwrite_runtime::backfill::sqlite::SqliteRow;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};

use crate::model::{Order, OrderRepo, Status, StoreError, User, UserRepo};

pub const OLD_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS users (
        id        INTEGER PRIMARY KEY,
        full_name TEXT NOT NULL,
        email     TEXT NULL,
        signup_ts INTEGER NOT NULL,
        version   INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS orders (
        id           INTEGER PRIMARY KEY,
        user_id      INTEGER NOT NULL,
        amount_cents INTEGER NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
        note         TEXT NULL,
        version      INTEGER NOT NULL
    );";

pub const NEW_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS accounts (
        account_id  INTEGER PRIMARY KEY,
        given_name  TEXT NOT NULL CHECK (length(given_name) > 0),
        family_name TEXT NOT NULL DEFAULT '',
        email       TEXT NOT NULL DEFAULT '',
        created_ms  INTEGER NOT NULL,
        version     INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS purchases (
        purchase_id INTEGER PRIMARY KEY,
        account_id  INTEGER NOT NULL,
        total_cents INTEGER NOT NULL,
        state       INTEGER NOT NULL CHECK (state BETWEEN 0 AND 3),
        note        TEXT NOT NULL DEFAULT '',
        version     INTEGER NOT NULL
    );";

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

/// Opens a database file for a store, backfill or reconciliation: WAL so
/// readers and the writer do not block each other, a busy timeout so
/// writers of several connections take turns.
pub fn connect(path: &Path, schema: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // WAL with synchronous=NORMAL: an fsync per checkpoint rather than per
    // commit, still crash-safe (the last commits may be lost on power loss).
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

// ---------------------------------------------------------------------------
// The mapping, field by field
// ---------------------------------------------------------------------------

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

fn text(value: &Value) -> Result<&str, StoreError> {
    match value {
        Value::Text(text) => Ok(text),
        other => Err(StoreError::BadRow(format!(
            "expected text, found {other:?}"
        ))),
    }
}

fn opt_text(value: &Value) -> Result<Option<&str>, StoreError> {
    match value {
        Value::Null => Ok(None),
        other => text(other).map(Some),
    }
}

fn int(value: &Value) -> Result<i64, StoreError> {
    match value {
        Value::Integer(n) => Ok(*n),
        other => Err(StoreError::BadRow(format!(
            "expected an integer, found {other:?}"
        ))),
    }
}

fn columns<const N: usize>(row: &SqliteRow) -> Result<&[Value; N], StoreError> {
    row.as_slice()
        .try_into()
        .map_err(|_| StoreError::BadRow(format!("{} columns, expected {N}", row.len())))
}

/// An old `users` row (without its key) in New's `accounts` form.
pub fn old_user_to_new(row: &SqliteRow) -> Result<SqliteRow, StoreError> {
    let [full_name, email, signup_ts, version] = columns::<4>(row)?;
    let (given, family) = split_name(text(full_name)?);
    Ok(vec![
        Value::Text(given.to_owned()),
        Value::Text(family.to_owned()),
        Value::Text(opt_text(email)?.unwrap_or("").to_owned()),
        Value::Integer(int(signup_ts)? * 1000),
        Value::Integer(int(version)?),
    ])
}

/// A New `accounts` row in Old's `users` form (repairs after cutover).
pub fn new_user_to_old(row: &SqliteRow) -> Result<SqliteRow, StoreError> {
    let [given, family, email, created_ms, version] = columns::<5>(row)?;
    let email = text(email)?;
    Ok(vec![
        Value::Text(join_name(text(given)?, text(family)?)),
        if email.is_empty() {
            Value::Null
        } else {
            Value::Text(email.to_owned())
        },
        Value::Integer(int(created_ms)? / 1000),
        Value::Integer(int(version)?),
    ])
}

/// An old `orders` row in New's `purchases` form.
pub fn old_order_to_new(row: &SqliteRow) -> Result<SqliteRow, StoreError> {
    let [user_id, amount, status, note, version] = columns::<5>(row)?;
    let status = text(status)?;
    let state = Status::from_text(status)
        .ok_or_else(|| StoreError::BadRow(format!("unknown status `{status}`")))?;
    Ok(vec![
        Value::Integer(int(user_id)?),
        Value::Integer(int(amount)?),
        Value::Integer(state.code()),
        Value::Text(opt_text(note)?.unwrap_or("").to_owned()),
        Value::Integer(int(version)?),
    ])
}

/// A New `purchases` row in Old's `orders` form.
pub fn new_order_to_old(row: &SqliteRow) -> Result<SqliteRow, StoreError> {
    let [account_id, total, state, note, version] = columns::<5>(row)?;
    let code = int(state)?;
    let status = Status::from_code(code)
        .ok_or_else(|| StoreError::BadRow(format!("unknown state {code}")))?;
    let note = text(note)?;
    Ok(vec![
        Value::Integer(int(account_id)?),
        Value::Integer(int(total)?),
        Value::Text(status.as_text().to_owned()),
        if note.is_empty() {
            Value::Null
        } else {
            Value::Text(note.to_owned())
        },
        Value::Integer(int(version)?),
    ])
}

// ---------------------------------------------------------------------------
// The stores
// ---------------------------------------------------------------------------

/// One connection behind a mutex.
struct Db(Mutex<Connection>);

impl Db {
    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.0.lock().map_err(|_| StoreError::Poisoned)
    }
}

/// The old store: `users` and `orders` in `old.db`.
pub struct OldStore(Db);

impl OldStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(OldStore(Db(Mutex::new(connect(path, OLD_SCHEMA)?))))
    }
}

impl UserRepo for OldStore {
    fn save_user(&self, user: &User) -> Result<(), StoreError> {
        self.0.lock()?.prepare_cached(
            "INSERT INTO users (id, full_name, email, signup_ts, version) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET
                 full_name = excluded.full_name, email = excluded.email,
                 signup_ts = excluded.signup_ts, version = excluded.version
             WHERE excluded.version >= users.version",
        )?
        .execute(params![user.id, user.full_name, user.email, user.signup_ts, user.version])?;
        Ok(())
    }

    fn get_user(&self, id: i64) -> Result<Option<User>, StoreError> {
        let conn = self.0.lock()?;
        let mut select = conn.prepare_cached(
            "SELECT full_name, email, signup_ts, version FROM users WHERE id = ?1",
        )?;
        let user = select
            .query_row([id], |row| {
                Ok(User {
                    id,
                    full_name: row.get(0)?,
                    email: row.get(1)?,
                    signup_ts: row.get(2)?,
                    version: row.get(3)?,
                })
            })
            .optional()?;
        Ok(user)
    }
}

impl OrderRepo for OldStore {
    fn save_order(&self, order: &Order) -> Result<(), StoreError> {
        self.0
            .lock()?
            .prepare_cached(
                "INSERT INTO orders (id, user_id, amount_cents, status, note, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET
                 user_id = excluded.user_id, amount_cents = excluded.amount_cents,
                 status = excluded.status, note = excluded.note, version = excluded.version
             WHERE excluded.version >= orders.version",
            )?
            .execute(params![
                order.id,
                order.user_id,
                order.amount_cents,
                order.status.as_text(),
                order.note,
                order.version
            ])?;
        Ok(())
    }

    fn delete_order(&self, id: i64) -> Result<bool, StoreError> {
        let deleted = self
            .0
            .lock()?
            .prepare_cached("DELETE FROM orders WHERE id = ?1")?
            .execute([id])?;
        Ok(deleted > 0)
    }

    fn get_order(&self, id: i64) -> Result<Option<Order>, StoreError> {
        let conn = self.0.lock()?;
        let mut select = conn.prepare_cached(
            "SELECT user_id, amount_cents, status, note, version FROM orders WHERE id = ?1",
        )?;
        let row = select
            .query_row([id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .optional()?;
        row.map(|(user_id, amount_cents, status, note, version)| {
            Ok(Order {
                id,
                user_id,
                amount_cents,
                status: Status::from_text(&status)
                    .ok_or_else(|| StoreError::BadRow(format!("unknown status `{status}`")))?,
                note,
                version,
            })
        })
        .transpose()
    }
}

/// The new store: `accounts` and `purchases` in `new.db`.
pub struct NewStore(Db);

impl NewStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(NewStore(Db(Mutex::new(connect(path, NEW_SCHEMA)?))))
    }
}

impl UserRepo for NewStore {
    fn save_user(&self, user: &User) -> Result<(), StoreError> {
        let (given, family) = split_name(&user.full_name);
        self.0.lock()?.prepare_cached(
            "INSERT INTO accounts (account_id, given_name, family_name, email, created_ms, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (account_id) DO UPDATE SET
                 given_name = excluded.given_name, family_name = excluded.family_name,
                 email = excluded.email, created_ms = excluded.created_ms,
                 version = excluded.version
             WHERE excluded.version >= accounts.version",
        )?
        .execute(params![
            user.id,
            given,
            family,
            user.email.as_deref().unwrap_or(""),
            user.signup_ts * 1000,
            user.version
        ])?;
        Ok(())
    }

    fn get_user(&self, id: i64) -> Result<Option<User>, StoreError> {
        let conn = self.0.lock()?;
        let mut select = conn.prepare_cached(
            "SELECT given_name, family_name, email, created_ms, version
             FROM accounts WHERE account_id = ?1",
        )?;
        let user = select
            .query_row([id], |row| {
                let email: String = row.get(2)?;
                Ok(User {
                    id,
                    full_name: join_name(&row.get::<_, String>(0)?, &row.get::<_, String>(1)?),
                    email: (!email.is_empty()).then_some(email),
                    signup_ts: row.get::<_, i64>(3)? / 1000,
                    version: row.get(4)?,
                })
            })
            .optional()?;
        Ok(user)
    }
}

impl OrderRepo for NewStore {
    fn save_order(&self, order: &Order) -> Result<(), StoreError> {
        self.0
            .lock()?
            .prepare_cached(
                "INSERT INTO purchases (purchase_id, account_id, total_cents, state, note, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (purchase_id) DO UPDATE SET
                 account_id = excluded.account_id, total_cents = excluded.total_cents,
                 state = excluded.state, note = excluded.note, version = excluded.version
             WHERE excluded.version >= purchases.version",
            )?
            .execute(params![
                order.id,
                order.user_id,
                order.amount_cents,
                order.status.code(),
                order.note.as_deref().unwrap_or(""),
                order.version
            ])?;
        Ok(())
    }

    fn delete_order(&self, id: i64) -> Result<bool, StoreError> {
        let deleted = self
            .0
            .lock()?
            .prepare_cached("DELETE FROM purchases WHERE purchase_id = ?1")?
            .execute([id])?;
        Ok(deleted > 0)
    }

    fn get_order(&self, id: i64) -> Result<Option<Order>, StoreError> {
        let conn = self.0.lock()?;
        let mut select = conn.prepare_cached(
            "SELECT account_id, total_cents, state, note, version
             FROM purchases WHERE purchase_id = ?1",
        )?;
        let row = select
            .query_row([id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .optional()?;
        row.map(|(user_id, amount_cents, state, note, version)| {
            Ok(Order {
                id,
                user_id,
                amount_cents,
                status: Status::from_code(state)
                    .ok_or_else(|| StoreError::BadRow(format!("unknown state {state}")))?,
                note: (!note.is_empty()).then_some(note),
                version,
            })
        })
        .transpose()
    }
}

/// Writes the history: `users` users and two orders per user, in one
/// transaction.
pub fn seed_history(path: &Path, users: i64) -> Result<(), StoreError> {
    let mut conn = connect(path, OLD_SCHEMA)?;
    let tx = conn.transaction()?;
    {
        // dualwrite-lint: allow(DW002) the history predates the migration: Old only
        let mut user = tx.prepare(
            "INSERT INTO users (id, full_name, email, signup_ts, version) VALUES (?1, ?2, ?3, ?4, 1)",
        )?;
        // dualwrite-lint: allow(DW002) the history predates the migration: Old only
        let mut order = tx.prepare(
            "INSERT INTO orders (id, user_id, amount_cents, status, note, version)
             VALUES (?1, ?2, ?3, ?4, ?5, 1)",
        )?;
        for id in 1..=users {
            let full_name = match id % 7 {
                0 => format!("Mononym{id}"),
                1 => format!("Ada Byron Lovelace{id}"),
                _ => format!("Given{id} Family{}", id % 1000),
            };
            let email = (id % 5 != 0).then(|| format!("user{id}@example.com"));
            user.execute(params![id, full_name, email, 1_600_000_000 + id * 60])?;
            for n in 0..2 {
                let order_id = id * 2 + n;
                let status = Status::ALL[(order_id % 4) as usize];
                let note = (order_id % 3 == 0).then(|| format!("gift wrap #{order_id}"));
                order.execute(params![
                    order_id,
                    id,
                    100 + (order_id * 37) % 50_000,
                    status.as_text(),
                    note
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

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

use rusqlite::{Connection, OptionalExtension, params};

use crate::mapping::{history_order, history_user, join_name, split_name};
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
// The stores
// ---------------------------------------------------------------------------

/// One connection behind a mutex.
struct Db(Mutex<Connection>);

impl Db {
    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.0.lock().map_err(|_| StoreError::Poisoned)
    }
}

/// The old store on SQLite: `users` and `orders` in `old.db`.
pub struct SqliteOld(Db);

impl SqliteOld {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(SqliteOld(Db(Mutex::new(connect(path, OLD_SCHEMA)?))))
    }
}

impl UserRepo for SqliteOld {
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

impl OrderRepo for SqliteOld {
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

/// The new store on SQLite: `accounts` and `purchases` in `new.db`.
pub struct SqliteNew(Db);

impl SqliteNew {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(SqliteNew(Db(Mutex::new(connect(path, NEW_SCHEMA)?))))
    }
}

impl UserRepo for SqliteNew {
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

impl OrderRepo for SqliteNew {
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
        let mut user_insert = tx.prepare(
            "INSERT INTO users (id, full_name, email, signup_ts, version) VALUES (?1, ?2, ?3, ?4, 1)",
        )?;
        // dualwrite-lint: allow(DW002) the history predates the migration: Old only
        let mut order_insert = tx.prepare(
            "INSERT INTO orders (id, user_id, amount_cents, status, note, version)
             VALUES (?1, ?2, ?3, ?4, ?5, 1)",
        )?;
        for id in 1..=users {
            let user = history_user(id);
            user_insert.execute(params![id, user.full_name, user.email, user.signup_ts])?;
            for order_id in [id * 2, id * 2 + 1] {
                let o = history_order(order_id, id);
                order_insert.execute(params![
                    order_id,
                    id,
                    o.amount_cents,
                    o.status.as_text(),
                    o.note
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

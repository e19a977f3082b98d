//! The same two stores on database servers: the old one on MariaDB, the new
//! one on PostgreSQL, through sqlx (`--old mysql://… --new postgres://…`).
//!
//! The repository traits are synchronous (the service's handlers are
//! threads), so each store runs its queries on a shared tokio runtime with
//! `Handle::block_on`, from the calling thread. Tables are prefixed `dw_`
//! and created afresh for each run.

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{QueryBuilder, Row};
use tokio::runtime::Handle;

use crate::mapping::{history_order, history_user, join_name, split_name};
use crate::model::{Order, OrderRepo, Status, StoreError, User, UserRepo};

pub const OLD_USERS: &str = "dw_users";
pub const OLD_ORDERS: &str = "dw_orders";
pub const NEW_USERS: &str = "dw_accounts";
pub const NEW_ORDERS: &str = "dw_purchases";

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Server(error.to_string())
    }
}

/// The old store on MariaDB.
pub struct MariaOld {
    pool: MySqlPool,
    rt: Handle,
}

/// The new store on PostgreSQL.
pub struct PgNew {
    pool: PgPool,
    rt: Handle,
}

impl MariaOld {
    /// Connects, drops the tables of an earlier run and creates them empty.
    pub fn create(url: &str, rt: Handle) -> Result<Self, StoreError> {
        let pool = rt.block_on(MySqlPoolOptions::new().max_connections(8).connect(url))?;
        rt.block_on(async {
            for statement in [
                "DROP TABLE IF EXISTS dw_users, dw_orders",
                "CREATE TABLE dw_users (
                    id        BIGINT PRIMARY KEY,
                    full_name VARCHAR(200) NOT NULL,
                    email     VARCHAR(200) NULL,
                    signup_ts BIGINT NOT NULL,
                    version   BIGINT NOT NULL
                 )",
                "CREATE TABLE dw_orders (
                    id           BIGINT PRIMARY KEY,
                    user_id      BIGINT NOT NULL,
                    amount_cents BIGINT NOT NULL,
                    status       VARCHAR(16) NOT NULL CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
                    note         VARCHAR(200) NULL,
                    version      BIGINT NOT NULL
                 )",
            ] {
                sqlx::query(statement).execute(&pool).await?;
            }
            Ok::<_, sqlx::Error>(())
        })?;
        Ok(MariaOld { pool, rt })
    }

    /// Writes the history (the same rows as the SQLite run), 1,000 rows a
    /// statement.
    pub fn seed(&self, users: i64) -> Result<(), StoreError> {
        self.rt.block_on(async {
            for start in (1..=users).step_by(1_000) {
                let ids = start..=(start + 999).min(users);
                // dualwrite-lint: allow(DW002) seeds the old store's history before the migration starts
                let mut insert = QueryBuilder::new(
                    "INSERT INTO dw_users (id, full_name, email, signup_ts, version) ",
                );
                insert.push_values(ids.clone().map(history_user), |mut row, user| {
                    row.push_bind(user.id)
                        .push_bind(user.full_name)
                        .push_bind(user.email)
                        .push_bind(user.signup_ts)
                        .push_bind(1_i64);
                });
                insert.build().execute(&self.pool).await?;
                // dualwrite-lint: allow(DW002) seeds the old store's history before the migration starts
                let mut insert = QueryBuilder::new(
                    "INSERT INTO dw_orders (id, user_id, amount_cents, status, note, version) ",
                );
                let orders =
                    ids.flat_map(|id| [history_order(id * 2, id), history_order(id * 2 + 1, id)]);
                insert.push_values(orders, |mut row, order| {
                    row.push_bind(order.id)
                        .push_bind(order.user_id)
                        .push_bind(order.amount_cents)
                        .push_bind(order.status.as_text())
                        .push_bind(order.note)
                        .push_bind(1_i64);
                });
                insert.build().execute(&self.pool).await?;
            }
            Ok::<_, sqlx::Error>(())
        })?;
        Ok(())
    }

    /// Rows in both tables.
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.rt.block_on(
            sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM dw_users) + (SELECT COUNT(*) FROM dw_orders)",
            )
            .fetch_one(&self.pool),
        )?;
        Ok(n.unsigned_abs())
    }
}

impl PgNew {
    /// Connects, drops the tables of an earlier run and creates them empty.
    pub fn create(url: &str, rt: Handle) -> Result<Self, StoreError> {
        let pool = rt.block_on(PgPoolOptions::new().max_connections(8).connect(url))?;
        rt.block_on(async {
            for statement in [
                "DROP TABLE IF EXISTS dw_accounts, dw_purchases",
                "CREATE TABLE dw_accounts (
                    account_id  BIGINT PRIMARY KEY,
                    given_name  TEXT NOT NULL CHECK (length(given_name) > 0),
                    family_name TEXT NOT NULL DEFAULT '',
                    email       TEXT NOT NULL DEFAULT '',
                    created_ms  BIGINT NOT NULL,
                    version     BIGINT NOT NULL
                 )",
                "CREATE TABLE dw_purchases (
                    purchase_id BIGINT PRIMARY KEY,
                    account_id  BIGINT NOT NULL,
                    total_cents BIGINT NOT NULL,
                    state       BIGINT NOT NULL CHECK (state BETWEEN 0 AND 3),
                    note        TEXT NOT NULL DEFAULT '',
                    version     BIGINT NOT NULL
                 )",
            ] {
                sqlx::query(statement).execute(&pool).await?;
            }
            Ok::<_, sqlx::Error>(())
        })?;
        Ok(PgNew { pool, rt })
    }
}

impl UserRepo for MariaOld {
    fn save_user(&self, user: &User) -> Result<(), StoreError> {
        // `version` is assigned last: MariaDB evaluates the assignments in
        // order, so the others still compare against the old version.
        let query = sqlx::query(
            "INSERT INTO dw_users (id, full_name, email, signup_ts, version) VALUES (?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE
                 full_name = IF(VALUES(version) >= version, VALUES(full_name), full_name),
                 email     = IF(VALUES(version) >= version, VALUES(email), email),
                 signup_ts = IF(VALUES(version) >= version, VALUES(signup_ts), signup_ts),
                 version   = GREATEST(version, VALUES(version))",
        )
        .bind(user.id)
        .bind(&user.full_name)
        .bind(&user.email)
        .bind(user.signup_ts)
        .bind(user.version);
        self.rt.block_on(query.execute(&self.pool))?;
        Ok(())
    }

    fn get_user(&self, id: i64) -> Result<Option<User>, StoreError> {
        let query =
            sqlx::query("SELECT full_name, email, signup_ts, version FROM dw_users WHERE id = ?")
                .bind(id);
        let row = self.rt.block_on(query.fetch_optional(&self.pool))?;
        row.map(|row| {
            Ok(User {
                id,
                full_name: row.try_get(0)?,
                email: row.try_get(1)?,
                signup_ts: row.try_get(2)?,
                version: row.try_get(3)?,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| e.into())
    }
}

impl OrderRepo for MariaOld {
    fn save_order(&self, order: &Order) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO dw_orders (id, user_id, amount_cents, status, note, version)
             VALUES (?, ?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE
                 user_id      = IF(VALUES(version) >= version, VALUES(user_id), user_id),
                 amount_cents = IF(VALUES(version) >= version, VALUES(amount_cents), amount_cents),
                 status       = IF(VALUES(version) >= version, VALUES(status), status),
                 note         = IF(VALUES(version) >= version, VALUES(note), note),
                 version      = GREATEST(version, VALUES(version))",
        )
        .bind(order.id)
        .bind(order.user_id)
        .bind(order.amount_cents)
        .bind(order.status.as_text())
        .bind(&order.note)
        .bind(order.version);
        self.rt.block_on(query.execute(&self.pool))?;
        Ok(())
    }

    fn delete_order(&self, id: i64) -> Result<bool, StoreError> {
        let query = sqlx::query("DELETE FROM dw_orders WHERE id = ?").bind(id);
        let done = self.rt.block_on(query.execute(&self.pool))?;
        Ok(done.rows_affected() > 0)
    }

    fn get_order(&self, id: i64) -> Result<Option<Order>, StoreError> {
        let query = sqlx::query(
            "SELECT user_id, amount_cents, status, note, version FROM dw_orders WHERE id = ?",
        )
        .bind(id);
        let Some(row) = self.rt.block_on(query.fetch_optional(&self.pool))? else {
            return Ok(None);
        };
        let status: String = row.try_get(2)?;
        Ok(Some(Order {
            id,
            user_id: row.try_get(0)?,
            amount_cents: row.try_get(1)?,
            status: Status::from_text(&status)
                .ok_or_else(|| StoreError::BadRow(format!("unknown status `{status}`")))?,
            note: row.try_get(3)?,
            version: row.try_get(4)?,
        }))
    }
}

impl UserRepo for PgNew {
    fn save_user(&self, user: &User) -> Result<(), StoreError> {
        let (given, family) = split_name(&user.full_name);
        let query = sqlx::query(
            "INSERT INTO dw_accounts (account_id, given_name, family_name, email, created_ms, version)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (account_id) DO UPDATE SET
                 given_name = excluded.given_name, family_name = excluded.family_name,
                 email = excluded.email, created_ms = excluded.created_ms,
                 version = excluded.version
             WHERE excluded.version >= dw_accounts.version",
        )
        .bind(user.id)
        .bind(given)
        .bind(family)
        .bind(user.email.as_deref().unwrap_or(""))
        .bind(user.signup_ts * 1000)
        .bind(user.version);
        self.rt.block_on(query.execute(&self.pool))?;
        Ok(())
    }

    fn get_user(&self, id: i64) -> Result<Option<User>, StoreError> {
        let query = sqlx::query(
            "SELECT given_name, family_name, email, created_ms, version
             FROM dw_accounts WHERE account_id = $1",
        )
        .bind(id);
        let Some(row) = self.rt.block_on(query.fetch_optional(&self.pool))? else {
            return Ok(None);
        };
        let email: String = row.try_get(2)?;
        Ok(Some(User {
            id,
            full_name: join_name(&row.try_get::<String, _>(0)?, &row.try_get::<String, _>(1)?),
            email: (!email.is_empty()).then_some(email),
            signup_ts: row.try_get::<i64, _>(3)? / 1000,
            version: row.try_get(4)?,
        }))
    }
}

impl OrderRepo for PgNew {
    fn save_order(&self, order: &Order) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO dw_purchases (purchase_id, account_id, total_cents, state, note, version)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (purchase_id) DO UPDATE SET
                 account_id = excluded.account_id, total_cents = excluded.total_cents,
                 state = excluded.state, note = excluded.note, version = excluded.version
             WHERE excluded.version >= dw_purchases.version",
        )
        .bind(order.id)
        .bind(order.user_id)
        .bind(order.amount_cents)
        .bind(order.status.code())
        .bind(order.note.as_deref().unwrap_or(""))
        .bind(order.version);
        self.rt.block_on(query.execute(&self.pool))?;
        Ok(())
    }

    fn delete_order(&self, id: i64) -> Result<bool, StoreError> {
        let query = sqlx::query("DELETE FROM dw_purchases WHERE purchase_id = $1").bind(id);
        let done = self.rt.block_on(query.execute(&self.pool))?;
        Ok(done.rows_affected() > 0)
    }

    fn get_order(&self, id: i64) -> Result<Option<Order>, StoreError> {
        let query = sqlx::query(
            "SELECT account_id, total_cents, state, note, version
             FROM dw_purchases WHERE purchase_id = $1",
        )
        .bind(id);
        let Some(row) = self.rt.block_on(query.fetch_optional(&self.pool))? else {
            return Ok(None);
        };
        let state: i64 = row.try_get(2)?;
        let note: String = row.try_get(3)?;
        Ok(Some(Order {
            id,
            user_id: row.try_get(0)?,
            amount_cents: row.try_get(1)?,
            status: Status::from_code(state)
                .ok_or_else(|| StoreError::BadRow(format!("unknown state {state}")))?,
            note: (!note.is_empty()).then_some(note),
            version: row.try_get(4)?,
        }))
    }
}

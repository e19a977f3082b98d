//! The headline migration on real servers: orders move from MariaDB to
//! PostgreSQL (different schemas, mapped explicitly) through a native
//! `async fn` repository trait and async-secondary lanes.
//!
//! Needs `DUALWRITE_MARIADB_URL` and `DUALWRITE_POSTGRES_URL` (`.ci/run` starts
//! the servers and sets both). Without them the test says so and returns,
//! except under CI, where a missing server is a failure.

use std::time::Duration;

use dualwrite_runtime::{LaneConfig, Migration, Phase, Store, SyncMode, dual_write};
use sqlx::{AssertSqlSafe, MySqlPool, PgPool, Row};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: i64,
    pub customer: String,
    pub total_cents: i64,
    /// `NEW`, `PAID` or `SHIPPED` in the old system.
    pub status: String,
}

// Native `async fn` without `Send` bounds is the shape under test.
#[allow(async_fn_in_trait)]
#[dual_write]
pub trait OrderStore {
    #[dual_write(key = order.id)]
    async fn save(&self, order: &Order) -> Result<(), sqlx::Error>;
    #[dual_write(key = id)]
    async fn delete(&self, id: i64) -> Result<bool, sqlx::Error>;
    #[dual_write(key = id)]
    async fn get(&self, id: i64) -> Result<Option<Order>, sqlx::Error>;
}

/// Old: MariaDB, upper-case status, `total_cents`.
pub struct MariaOrders {
    pool: MySqlPool,
    table: String,
}

impl OrderStore for MariaOrders {
    async fn save(&self, o: &Order) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (id, customer, total_cents, status) VALUES (?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE customer = VALUES(customer), total_cents = VALUES(total_cents), status = VALUES(status)",
            self.table
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(o.id)
            .bind(&o.customer)
            .bind(o.total_cents)
            .bind(&o.status)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
    async fn delete(&self, id: i64) -> Result<bool, sqlx::Error> {
        let sql = format!("DELETE FROM {} WHERE id = ?", self.table);
        Ok(sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }
    async fn get(&self, id: i64) -> Result<Option<Order>, sqlx::Error> {
        let sql = format!(
            "SELECT id, customer, total_cents, status FROM {} WHERE id = ?",
            self.table
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Order {
                id: r.try_get(0)?,
                customer: r.try_get(1)?,
                total_cents: r.try_get(2)?,
                status: r.try_get(3)?,
            })
        })
        .transpose()
    }
}

/// New: PostgreSQL, `amount_cents`, lower-case status with a CHECK, and an
/// `updated_at` the old schema does not have.
pub struct PgOrders {
    pool: PgPool,
    table: String,
}

impl OrderStore for PgOrders {
    async fn save(&self, o: &Order) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (order_id, customer, amount_cents, status, updated_at) VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (order_id) DO UPDATE SET customer = EXCLUDED.customer,
                 amount_cents = EXCLUDED.amount_cents, status = EXCLUDED.status, updated_at = now()",
            self.table
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(o.id)
            .bind(&o.customer)
            .bind(o.total_cents)
            .bind(o.status.to_lowercase())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
    async fn delete(&self, id: i64) -> Result<bool, sqlx::Error> {
        let sql = format!("DELETE FROM {} WHERE order_id = $1", self.table);
        Ok(sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }
    async fn get(&self, id: i64) -> Result<Option<Order>, sqlx::Error> {
        let sql = format!(
            "SELECT order_id, customer, amount_cents, status FROM {} WHERE order_id = $1",
            self.table
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let status: String = r.try_get(3)?;
            Ok(Order {
                id: r.try_get(0)?,
                customer: r.try_get(1)?,
                total_cents: r.try_get(2)?,
                status: status.to_uppercase(),
            })
        })
        .transpose()
    }
}

/// Backfill: copies an old row unless New already has it (a live dual write
/// is newer and wins).
async fn backfill_one(pg: &PgOrders, o: &Order) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "INSERT INTO {} (order_id, customer, amount_cents, status, updated_at) VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (order_id) DO NOTHING",
        pg.table
    );
    Ok(sqlx::query(AssertSqlSafe(sql))
        .bind(o.id)
        .bind(&o.customer)
        .bind(o.total_cents)
        .bind(o.status.to_lowercase())
        .execute(&pg.pool)
        .await?
        .rows_affected())
}

fn servers() -> Option<(String, String)> {
    let maria = std::env::var("DUALWRITE_MARIADB_URL").ok();
    let pg = std::env::var("DUALWRITE_POSTGRES_URL").ok();
    match (maria, pg) {
        (Some(maria), Some(pg)) => Some((maria, pg)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must set DUALWRITE_MARIADB_URL and DUALWRITE_POSTGRES_URL (.ci/run does)")
        }
        _ => None,
    }
}

fn order(id: i64, customer: &str, total_cents: i64, status: &str) -> Order {
    Order {
        id,
        customer: customer.to_owned(),
        total_cents,
        status: status.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_move_from_mariadb_to_postgres() {
    let Some((maria_url, pg_url)) = servers() else {
        eprintln!(
            "skipped: set DUALWRITE_MARIADB_URL and DUALWRITE_POSTGRES_URL to run against real servers"
        );
        return;
    };
    let table = format!("dw_orders_{}", std::process::id());
    let maria = MySqlPool::connect(&maria_url)
        .await
        .expect("connect to MariaDB");
    let pg = PgPool::connect(&pg_url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&maria)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&pg)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, customer VARCHAR(100) NOT NULL, total_cents BIGINT NOT NULL, status VARCHAR(16) NOT NULL)"
    )))
    .execute(&maria)
    .await
    .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (order_id BIGINT PRIMARY KEY, customer TEXT NOT NULL, amount_cents BIGINT NOT NULL,
         status TEXT NOT NULL CHECK (status IN ('new', 'paid', 'shipped')), updated_at TIMESTAMPTZ NOT NULL)"
    )))
    .execute(&pg)
    .await
    .unwrap();

    let migration = Migration::new(Phase::Prepare);
    let store = OrderStoreDualWrite::new(
        MariaOrders {
            pool: maria.clone(),
            table: table.clone(),
        },
        PgOrders {
            pool: pg.clone(),
            table: table.clone(),
        },
        migration.clone(),
    )
    .with_async_secondary(
        LaneConfig::default()
            .with_lanes(2)
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(2)),
    );

    // History in the old system.
    for id in 1..=5 {
        store
            .save(&order(id, &format!("customer-{id}"), id * 1000, "NEW"))
            .await
            .unwrap();
    }
    assert_eq!(
        store.new_store().get(1).await.unwrap(),
        None,
        "prepare writes MariaDB only"
    );

    // Dual write: New follows asynchronously; a status the new schema rejects
    // ends as a dead letter after its retries.
    migration.set_phase(Phase::DualWrite).unwrap();
    store
        .save(&order(2, "customer-2", 2500, "PAID"))
        .await
        .unwrap();
    store
        .save(&order(6, "customer-6", 600, "SHIPPED"))
        .await
        .unwrap();
    store
        .save(&order(7, "customer-7", 700, "LOST"))
        .await
        .unwrap();
    store
        .flush_async(Duration::from_secs(60))
        .await
        .expect("flushed");
    assert_eq!(
        store.new_store().get(6).await.unwrap(),
        Some(order(6, "customer-6", 600, "SHIPPED"))
    );
    let dead = store.take_dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].target, Store::New);
    assert_eq!(dead[0].attempts, 3);
    assert!(dead[0].error.contains("check"), "{}", dead[0].error);

    // Backfill: history is copied; the live write to order 2 is kept.
    migration.set_phase(Phase::Backfill).unwrap();
    let mut copied = 0;
    for id in 1..=7 {
        if let Some(o) = store.old_store().get(id).await.unwrap()
            && o.status != "LOST"
        {
            copied += backfill_one(store.new_store(), &o).await.unwrap();
        }
    }
    assert_eq!(copied, 4, "orders 1, 3, 4, 5");
    assert_eq!(
        store.new_store().get(2).await.unwrap().unwrap().status,
        "PAID"
    );

    // Shadow read: every order compared; order 7 exists only in MariaDB.
    migration.set_phase(Phase::ShadowRead).unwrap();
    for id in 1..=7 {
        assert!(store.get(id).await.unwrap().is_some(), "MariaDB answers");
    }
    let stats = store.stats();
    assert_eq!((stats.reads_matched, stats.reads_mismatched), (6, 1));

    // Reconcile the drift, then cut over: PostgreSQL first, MariaDB kept in sync.
    store.delete(7).await.unwrap();
    store
        .flush_async(Duration::from_secs(60))
        .await
        .expect("flushed");
    migration.set_phase(Phase::Cutover).unwrap();
    let store = store.with_sync_mode(SyncMode::Strong);
    store
        .save(&order(8, "customer-8", 800, "NEW"))
        .await
        .unwrap();
    for id in 1..=8 {
        assert_eq!(
            store.old_store().get(id).await.unwrap(),
            store.new_store().get(id).await.unwrap(),
            "order {id}"
        );
    }

    migration.set_phase(Phase::Cleanup).unwrap();
    store.delete(1).await.unwrap();
    assert!(
        store.old_store().get(1).await.unwrap().is_some(),
        "cleanup no longer writes MariaDB"
    );
    assert!(store.get(1).await.unwrap().is_none());

    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&maria)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pg)
        .await
        .unwrap();
}

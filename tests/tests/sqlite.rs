//! End to end on real stores: two SQLite databases with different schemas,
//! mapped explicitly, migrated phase by phase through the generated adapter.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use dualwrite_runtime::{LaneConfig, Migration, Phase, SyncMode, dual_write};
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub email: Option<String>,
}

#[derive(Debug)]
pub struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError(e.to_string())
    }
}

#[dual_write]
pub trait CustomerStore {
    #[dual_write(key = customer.id)]
    fn upsert(&self, customer: &Customer) -> Result<(), DbError>;
    #[dual_write(key = id)]
    fn delete(&self, id: i64) -> Result<bool, DbError>;
    #[dual_write(key = id)]
    fn get(&self, id: i64) -> Result<Option<Customer>, DbError>;
    fn list(&self) -> Result<Vec<Customer>, DbError>;
}

/// Old schema: one `name` column, nullable email.
pub struct LegacyDb(Mutex<Connection>);

impl LegacyDb {
    fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT)",
        )?;
        Ok(Self(Mutex::new(conn)))
    }
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CustomerStore for LegacyDb {
    fn upsert(&self, c: &Customer) -> Result<(), DbError> {
        self.conn().execute(
            "INSERT INTO customers (id, name, email) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, email = excluded.email",
            params![c.id, c.name, c.email],
        )?;
        Ok(())
    }
    fn delete(&self, id: i64) -> Result<bool, DbError> {
        Ok(self
            .conn()
            .execute("DELETE FROM customers WHERE id = ?1", [id])?
            > 0)
    }
    fn get(&self, id: i64) -> Result<Option<Customer>, DbError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, name, email FROM customers WHERE id = ?1",
                [id],
                |r| {
                    Ok(Customer {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        email: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }
    fn list(&self) -> Result<Vec<Customer>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, name, email FROM customers ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(Customer {
                id: r.get(0)?,
                name: r.get(1)?,
                email: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// New schema: split names, email NOT NULL with '' for "none", and a CHECK
/// that rejects empty first names (used to inject secondary failures).
pub struct AccountsDb(Mutex<Connection>);

impl AccountsDb {
    fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS accounts (
                account_id INTEGER PRIMARY KEY,
                first_name TEXT NOT NULL CHECK (first_name <> ''),
                last_name TEXT NOT NULL,
                email TEXT NOT NULL DEFAULT '')",
        )?;
        Ok(Self(Mutex::new(conn)))
    }
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Customer> {
        let first: String = r.get(1)?;
        let last: String = r.get(2)?;
        let email: String = r.get(3)?;
        Ok(Customer {
            id: r.get(0)?,
            name: if last.is_empty() {
                first
            } else {
                format!("{first} {last}")
            },
            email: (!email.is_empty()).then_some(email),
        })
    }
}

impl CustomerStore for AccountsDb {
    fn upsert(&self, c: &Customer) -> Result<(), DbError> {
        let (first, last) = c.name.split_once(' ').unwrap_or((c.name.as_str(), ""));
        self.conn().execute(
            "INSERT INTO accounts (account_id, first_name, last_name, email) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(account_id) DO UPDATE SET first_name = excluded.first_name,
                 last_name = excluded.last_name, email = excluded.email",
            params![c.id, first, last, c.email.as_deref().unwrap_or("")],
        )?;
        Ok(())
    }
    fn delete(&self, id: i64) -> Result<bool, DbError> {
        Ok(self
            .conn()
            .execute("DELETE FROM accounts WHERE account_id = ?1", [id])?
            > 0)
    }
    fn get(&self, id: i64) -> Result<Option<Customer>, DbError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT account_id, first_name, last_name, email FROM accounts WHERE account_id = ?1",
                [id],
                Self::row,
            )
            .optional()?)
    }
    fn list(&self) -> Result<Vec<Customer>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT account_id, first_name, last_name, email FROM accounts ORDER BY account_id",
        )?;
        let rows = stmt.query_map([], Self::row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dualwrite-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn customer(id: i64, name: &str, email: Option<&str>) -> Customer {
    Customer {
        id,
        name: name.to_owned(),
        email: email.map(str::to_owned),
    }
}

#[test]
fn migrates_between_two_sqlite_schemas() {
    let dir = TempDir::new("sqlite-migrate");
    let migration = Migration::new(Phase::Prepare);
    let store = CustomerStoreDualWrite::new(
        LegacyDb::open(&dir.0.join("legacy.db")).unwrap(),
        AccountsDb::open(&dir.0.join("accounts.db")).unwrap(),
        migration.clone(),
    )
    .with_async_secondary(
        LaneConfig::default()
            .with_lanes(2)
            .with_max_attempts(2)
            .with_initial_backoff(Duration::from_millis(1)),
    );

    // History written before the migration starts.
    store
        .upsert(&customer(1, "Ada Lovelace", Some("ada@example.com")))
        .unwrap();
    store.upsert(&customer(2, "Grace Hopper", None)).unwrap();
    assert!(store.new_store().list().unwrap().is_empty());

    // Dual write: live writes reach both; one violates the new schema's CHECK.
    migration.set_phase(Phase::DualWrite).unwrap();
    store
        .upsert(&customer(3, "Alan Turing", Some("alan@example.com")))
        .unwrap();
    store.upsert(&customer(4, "", None)).unwrap();
    store.flush(Duration::from_secs(60)).expect("flushed");
    assert_eq!(
        store.new_store().get(3).unwrap(),
        Some(customer(3, "Alan Turing", Some("alan@example.com")))
    );
    let dead = store.take_dead_letters();
    assert_eq!(dead.len(), 1, "the CHECK violation is a dead letter");
    assert!(
        dead[0].error.contains("CHECK constraint failed"),
        "{}",
        dead[0].error
    );
    assert_eq!(dead[0].attempts, 2);

    // Backfill: copy history; a live write during backfill wins.
    migration.set_phase(Phase::Backfill).unwrap();
    store
        .upsert(&customer(2, "Grace B. Hopper", Some("grace@example.com")))
        .unwrap();
    store.flush(Duration::from_secs(60)).expect("flushed");
    for c in store.old_store().list().unwrap() {
        if store.new_store().get(c.id).unwrap().is_none() && !c.name.is_empty() {
            store.new_store().upsert(&c).unwrap();
        }
    }
    assert_eq!(
        store.new_store().get(2).unwrap(),
        Some(customer(2, "Grace B. Hopper", Some("grace@example.com")))
    );

    // Shadow read: the stores agree except for the row the new schema rejects.
    migration.set_phase(Phase::ShadowRead).unwrap();
    for id in 1..=4 {
        store.get(id).unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.reads_compared, 4);
    assert_eq!(stats.reads_matched, 3);
    assert_eq!(stats.reads_mismatched, 1);

    // Repair the drift, then cut over with strong consistency.
    store.delete(4).unwrap();
    store.flush(Duration::from_secs(60)).expect("flushed");
    migration.set_phase(Phase::Cutover).unwrap();
    let store = store.with_sync_mode(SyncMode::Strong);
    store.upsert(&customer(5, "Edsger Dijkstra", None)).unwrap();
    assert_eq!(DbError("x".into()).to_string(), "x");
    assert_eq!(
        store.old_store().get(5).unwrap(),
        store.new_store().get(5).unwrap()
    );
    assert_eq!(
        store.old_store().list().unwrap(),
        store.new_store().list().unwrap()
    );

    migration.set_phase(Phase::Cleanup).unwrap();
    store.delete(1).unwrap();
    assert!(
        store.old_store().get(1).unwrap().is_some(),
        "cleanup leaves Old alone"
    );
    assert!(store.get(1).unwrap().is_none());
}

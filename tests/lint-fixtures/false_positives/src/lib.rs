//! Nothing in this crate is a finding: every call here is one the lint must
//! leave alone.
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use dualwrite_runtime::dual_write;

pub const FIND_USER: &str = "SELECT * FROM users WHERE id = $1";
pub const COUNT_USERS: &str = "-- how many\n  select count(*) from users";

#[dual_write]
pub trait UserStore {
    #[dual_write(key = id)]
    async fn insert(&self, id: i64, name: String) -> Result<(), Error>;
    #[dual_write(key = id)]
    async fn get(&self, id: i64) -> Result<Option<String>, Error>;

    /// A default body runs through the adapter's own methods.
    async fn insert_default(&self, id: i64) -> Result<(), Error> {
        self.insert(id, String::new()).await
    }
}

pub struct PgUserStore {
    pool: sqlx::PgPool,
}

impl UserStore for PgUserStore {
    async fn insert(&self, id: i64, name: String) -> Result<(), Error> {
        // Raw SQL and even calls on other raw stores are the store's business.
        sqlx::query("INSERT INTO users (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        let mirror = PgUserStore { pool: self.pool.clone() };
        Box::pin(mirror.insert(id, String::new())).await?;
        Ok(())
    }
    async fn get(&self, id: i64) -> Result<Option<String>, Error> {
        let row = sqlx::query(FIND_USER).bind(id).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// Same method names on types that are not raw stores.
pub struct Cache {
    entries: HashMap<i64, String>,
}

impl Cache {
    pub fn insert(&mut self, id: i64, name: String) {
        self.entries.insert(id, name);
    }
}

type Users = UserStoreDualWrite<PgUserStore, MongoUserStore>;

async fn through_the_adapter(users: &UserStoreDualWrite<PgUserStore, MongoUserStore>, shared: Arc<Users>) {
    users.insert(1, "a".into()).await.unwrap();
    shared.insert(2, "b".into()).await.unwrap();
    let built = UserStoreDualWrite::new(PgUserStore::new(), MongoUserStore, migration());
    built.insert(3, "c".into()).await.unwrap();
}

fn same_names_elsewhere(cache: &mut Cache, ids: &mut Vec<i64>, set: &mut BTreeSet<i64>) {
    cache.insert(1, "a".into());
    ids.insert(0, 1);
    set.insert(1);
    let mut map = HashMap::new();
    map.insert(1, 2);
    let mut other = Cache { entries: HashMap::new() };
    other.insert(2, "b".into());
}

async fn reads(store: &PgUserStore, pool: &sqlx::PgPool, conn: &rusqlite::Connection) {
    store.get(1).await.unwrap();
    sqlx::query("SELECT * FROM users").fetch_all(pool).await.unwrap();
    sqlx::query(FIND_USER).fetch_all(pool).await.unwrap();
    sqlx::query(COUNT_USERS).fetch_one(pool).await.unwrap();
    sqlx::query(&format!("select {} from users", "id")).fetch_all(pool).await.unwrap();
    conn.execute("SELECT 1", []).unwrap();
    conn.prepare("-- INSERT is only in the comment\nSELECT 1").unwrap();
    sqlx::query("WITH x AS (SELECT 1) SELECT * FROM x").fetch_all(pool).await.unwrap();
}

async fn unknown_receivers(store: impl UserStore, boxed: Box<dyn UserStore>, pool: &sqlx::PgPool) {
    // The receiver type is not evident: no guessing.
    store.insert(1, "a".into()).await.unwrap();
    boxed.insert(2, "b".into()).await.unwrap();
    let fetched = registry().store();
    fetched.insert(3, "c".into()).await.unwrap();
    // `execute` with a query, not SQL text.
    sqlx::query(FIND_USER).execute(pool).await.unwrap();
    // Not a redis receiver; not an ActiveModel.
    settings.set("k", "v");
    form.save();
    // Not diesel's `update` (not imported from diesel).
    update(1);
    // A local function that happens to be called `query`.
    query("INSERT INTO t VALUES (1)");
}

fn shadowed(store: PgUserStore) {
    let store = Cache { entries: HashMap::new() };
    let mut store = store;
    store.insert(1, "a".into());
}

fn inherent_methods_of_a_raw_store(store: &PgUserStore) {
    // Methods that are not writes of the annotated trait.
    store.refresh_pool();
    store.get(2);
}

mod generated_adapter_lookalike {
    // A hand-written impl of the annotated trait for a wrapper is a store too,
    // and calls inside it are allowed.
    impl super::UserStore for super::Wrapper {
        async fn insert(&self, id: i64, name: String) -> Result<(), Error> {
            self.inner.insert(id, name).await
        }
        async fn get(&self, id: i64) -> Result<Option<String>, Error> {
            self.inner.get(id).await
        }
    }
}

/// A project type whose methods share names with database clients
/// (`insert_many`, `execute`): its own API, not a raw write.
pub struct Batcher {
    pending: Vec<i64>,
}

impl Batcher {
    pub fn insert_many(&mut self, ids: &[i64]) {
        self.pending.extend_from_slice(ids);
    }
    pub fn execute(&mut self, _sql: &str) -> usize {
        self.pending.len()
    }
}

pub fn project_types_named_like_clients(batcher: &mut Batcher) -> usize {
    batcher.insert_many(&[1, 2]);
    batcher.execute("INSERT INTO audit VALUES (1)")
}

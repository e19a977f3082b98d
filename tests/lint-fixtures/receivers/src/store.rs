//! The repository trait, its two raw stores and nothing else.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(key = id)]
    fn insert(&self, id: u64, name: String) -> Result<(), String>;
    #[dual_write(key = id)]
    fn delete(&self, id: u64) -> Result<(), String>;
    #[dual_write(key = id)]
    fn get(&self, id: u64) -> Result<Option<String>, String>;
}

#[derive(Default, Clone)]
pub struct PgUserStore {
    pub pool: Pool,
}

impl PgUserStore {
    pub fn new(pool: Pool) -> Self {
        PgUserStore { pool }
    }

    pub async fn connect(url: &str) -> Result<Self, String> {
        Ok(PgUserStore { pool: Pool::open(url) })
    }
}

impl UserStore for PgUserStore {
    fn insert(&self, id: u64, name: String) -> Result<(), String> {
        self.pool.run(id, name)
    }
    fn delete(&self, id: u64) -> Result<(), String> {
        self.pool.run(id, String::new())
    }
    fn get(&self, id: u64) -> Result<Option<String>, String> {
        self.pool.fetch(id)
    }
}

pub struct MongoUserStore;

impl UserStore for MongoUserStore {
    fn insert(&self, _id: u64, _name: String) -> Result<(), String> {
        Ok(())
    }
    fn delete(&self, _id: u64) -> Result<(), String> {
        Ok(())
    }
    fn get(&self, _id: u64) -> Result<Option<String>, String> {
        Ok(None)
    }
}

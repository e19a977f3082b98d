//! Test code is checked (the driver may skip it): findings carry `in_test`.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(key = id)]
    fn insert(&self, id: u64) -> Result<(), String>;
}

#[derive(Default)]
pub struct PgUserStore;

impl UserStore for PgUserStore {
    fn insert(&self, _id: u64) -> Result<(), String> {
        Ok(())
    }
}

pub fn production(store: &PgUserStore) {
    store.insert(1).unwrap();
}

#[cfg(not(test))]
pub fn not_test(store: &PgUserStore) {
    store.insert(2).unwrap();
}

#[test]
fn a_test() {
    PgUserStore::default().insert(3).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper(store: &PgUserStore) {
        store.insert(4).unwrap();
    }

    #[tokio::test]
    async fn async_test() {
        let store = PgUserStore;
        helper(&store);
        sqlx::query("DELETE FROM users").execute(&pool()).await.unwrap();
    }
}

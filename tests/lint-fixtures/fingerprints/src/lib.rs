//! Fingerprints: rule + file + enclosing item + callee + occurrence.
use dualwrite_runtime::dual_write;

static WARM_UP: Lazy<Query> = Lazy::new(|| sqlx::query("INSERT INTO warm VALUES (1)"));

#[dual_write]
pub trait UserStore {
    #[dual_write(key = id)]
    fn insert(&self, id: u64) -> Result<(), String>;
}

pub struct PgUserStore;

impl UserStore for PgUserStore {
    fn insert(&self, _id: u64) -> Result<(), String> {
        Ok(())
    }
}

fn twice(store: &PgUserStore) {
    store.insert(1).unwrap();
    sqlx::query("DELETE FROM t");
    store.insert(2).unwrap();
}

mod jobs {
    use super::PgUserStore;

    fn run(store: PgUserStore) {
        store.insert(3).unwrap();
    }
}

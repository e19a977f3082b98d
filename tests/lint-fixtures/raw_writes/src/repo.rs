//! The one repository trait; its implementation may write raw SQL.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(key = id)]
    async fn insert(&self, id: i64) -> Result<(), Error>;
}

pub struct PgUserStore {
    pool: sqlx::PgPool,
}

impl UserStore for PgUserStore {
    async fn insert(&self, id: i64) -> Result<(), Error> {
        sqlx::query("INSERT INTO users (id) VALUES ($1)")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

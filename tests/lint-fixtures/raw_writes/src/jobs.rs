//! Writes that go straight to a client, one library family per function.
use diesel::update;
use redis::Commands;
use sea_orm::{ActiveModelTrait, EntityTrait};
use sqlx::query_as;

use crate::queries::{ARCHIVE, INSERT_AUDIT, PURGE};

async fn sqlx_family(pool: &sqlx::PgPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET name = $1").execute(pool).await?;
    let _: (i64,) = query_as("insert into t (a) values (1) returning a")
        .fetch_one(pool)
        .await?;
    sqlx::query_scalar::<_, i64>("/* bump */ update counters set n = n + 1 returning n")
        .fetch_one(pool)
        .await?;
    sqlx::query!("DELETE FROM users WHERE id = $1", id)
        .execute(pool)
        .await?;
    sqlx::query_as!(User, "SELECT * FROM users").fetch_all(pool).await?; // a read
    sqlx::query_as!(User, "UPDATE users SET a = 1 RETURNING *").fetch_all(pool).await?;
    pool.execute("TRUNCATE users").await?;
    Ok(())
}

fn sql_in_consts_and_format(pool: &sqlx::PgPool, table: &str) {
    sqlx::query(INSERT_AUDIT);
    sqlx::query(&PURGE);
    sqlx::query(ARCHIVE.as_str());
    sqlx::query(crate::queries::INSERT_AUDIT);
    sqlx::query(&format!("DELETE FROM {table} WHERE stale"));
    let sql = format!("MERGE INTO {table} USING src ON true");
    sqlx::query(&sql);
    let cte = "WITH gone AS (SELECT id FROM users) DELETE FROM users USING gone";
    sqlx::query(cte);
}

fn rusqlite_family(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute("INSERT INTO users (name) VALUES (?1)", ["a"])?;
    conn.execute_batch("BEGIN; DELETE FROM users; COMMIT;")?;
    let mut stmt = conn.prepare("REPLACE INTO users (id) VALUES (?1)")?;
    let mut cached = conn.prepare_cached("SELECT * FROM users")?; // a read
    drop((stmt, cached));
    Ok(())
}

async fn postgres_family(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client.execute("UPSERT INTO users (id) VALUES ($1)", &[&1]).await?;
    client.query("INSERT INTO t VALUES (1) RETURNING id", &[]).await?;
    client.query_one("SELECT 1", &[]).await?; // a read
    client.batch_execute("UPDATE a SET b = 1; UPDATE c SET d = 2").await?;
    Ok(())
}

fn diesel_family(conn: &mut PgConnection) {
    diesel::insert_into(users::table).values(&new_user).execute(conn);
    update(users::table).set(name.eq("x")).execute(conn);
    diesel::delete(users::table.filter(id.eq(1))).execute(conn);
    diesel::replace_into(users::table).values(&row).execute(conn);
}

async fn sea_orm_family(db: &DatabaseConnection) -> Result<(), DbErr> {
    let am = user::ActiveModel {
        name: Set("a".to_owned()),
        ..Default::default()
    };
    am.insert(db).await?;
    let edited: user::ActiveModel = model.into();
    edited.update(db).await?;
    user::Entity::insert(row).exec(db).await?;
    user::Entity::update_many().exec(db).await?;
    user::Entity::delete_by_id(1).exec(db).await?;
    user::Entity::find().all(db).await?; // a read
    Ok(())
}

fn redis_family(con: &mut redis::Connection, manager: ConnectionManager) -> redis::RedisResult<()> {
    redis::cmd("SET").arg("k").arg("v").query(con)?;
    redis::cmd("get").arg("k").query::<String>(con)?; // a read
    con.set("k", "v")?;
    con.del("k")?;
    manager.hset("h", "f", "v")?;
    Ok(())
}

async fn mongodb_family(users: &mongodb::Collection<Document>) -> mongodb::error::Result<()> {
    users.insert_one(doc! { "name": "a" }).await?;
    users.update_one(doc! {}, doc! { "$set": { "a": 1 } }).await?;
    users.delete_many(doc! {}).await?;
    users.find_one(doc! {}).await?; // a read
    Ok(())
}

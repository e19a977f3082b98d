//! SQL and command forms that write; each function has exactly the DW002
//! findings its comments say.
use diesel::RunQueryDsl;
use sqlx::{PgPool, QueryBuilder};

const ADD_ORDER: &str = include_str!("queries/insert_order.sql");

pub async fn data_modifying_ctes(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query( // DW002: a CTE that inserts
        "WITH new_order AS (INSERT INTO orders (customer) VALUES ($1) RETURNING id) \
         SELECT id FROM new_order",
    )
    .bind(7)
    .fetch_one(pool)
    .await?;
    sqlx::query_scalar::<_, i64>( // DW002: a CTE two levels down
        "WITH a AS (SELECT 1), b AS (SELECT * FROM (WITH gone AS (DELETE FROM carts RETURNING id) SELECT id FROM gone) g) SELECT count(*) FROM b",
    )
    .fetch_one(pool)
    .await?;
    sqlx::query("SELECT * FROM orders WHERE id = $1 FOR UPDATE") // a locking read: fine
        .fetch_one(pool)
        .await?;
    sqlx::query("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent") // a read: fine
        .fetch_all(pool)
        .await?;
    Ok(())
}

pub fn diesel_raw(conn: &mut diesel::PgConnection) -> diesel::QueryResult<usize> {
    diesel::sql_query("UPDATE orders SET total = 0 WHERE id = $1").execute(conn)?; // DW002
    diesel::sql_query("SELECT * FROM orders").execute(conn) // a read: fine
}

pub async fn query_builder(pool: &PgPool, ids: &[i64]) -> sqlx::Result<()> {
    let mut insert = QueryBuilder::new("INSERT INTO orders (id) "); // DW002
    insert.push_values(ids, |mut b, id| {
        b.push_bind(id);
    });
    insert.build().execute(pool).await?;
    let mut select = sqlx::QueryBuilder::<sqlx::Postgres>::new("SELECT * FROM orders WHERE id = "); // a read: fine
    select.push_bind(1);
    Ok(())
}

pub async fn included_files(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query(include_str!("queries/insert_order.sql")) // DW002: the file inserts
        .execute(pool)
        .await?;
    sqlx::query(ADD_ORDER).execute(pool).await?; // DW002: a const from the file
    sqlx::query(include_str!("queries/find_order.sql")) // a read: fine
        .fetch_one(pool)
        .await?;
    Ok(())
}

pub fn redis_pipelines(con: &mut kv::Connection) -> kv::RedisResult<()> {
    kv::pipe()
        .atomic()
        .set("order:1", 1) // DW002: a pipeline
        .ignore()
        .del("cart:1") // DW002
        .query::<()>(con)?;
    let mut pipe = kv::pipe();
    pipe.hset("order:1", "total", 0) // DW002
        .cmd("INCR") // DW002: a command on the pipeline
        .arg("orders")
        .cmd("GET") // a read: fine
        .arg("orders");
    pipe.query::<()>(con)?;
    kv::cmd("SET").arg("order:2").arg(0).query::<()>(con)?; // DW002: the renamed crate's `cmd`
    kv::cmd("GET").arg("order:2").query::<i64>(con)?; // a read: fine
    kv::transaction(con, &["order:1"], |con, pipe| {
        pipe.incr("order:1", 1) // DW002: the transaction's pipeline
            .query(con)
    })?;
    Ok(())
}

//! Statements built with sqlx's `QueryBuilder`: a statement writes when its
//! initial text or any text pushed to it writes; the finding is reported at
//! the builder's constructor.
use sqlx::{PgPool, Postgres, QueryBuilder};

const MARK_SHIPPED: &str = " UPDATE orders SET shipped = true";
const ORDER_BY: &str = " ORDER BY id";

pub async fn pushed_after_a_read(pool: &PgPool) -> sqlx::Result<()> {
    let mut qb = QueryBuilder::new("SELECT 1;"); // DW002: an `UPDATE` is pushed
    qb.push(" UPDATE t SET a = 1");
    qb.build().execute(pool).await?;
    Ok(())
}

pub async fn typed_and_empty(pool: &PgPool) -> sqlx::Result<()> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(""); // DW002: a `DELETE` is pushed
    qb.push("DELETE FROM orders WHERE id = ");
    qb.push_bind(7_i64);
    qb.build().execute(pool).await?;
    Ok(())
}

pub fn chained() {
    let _ = sqlx::QueryBuilder::<Postgres>::new("SELECT 1;") // DW002: pushed in the chain
        .push(" INSERT INTO t (a) VALUES (1)")
        .build();
}

pub fn formatted_and_local(table: &str) {
    let mut first = QueryBuilder::<Postgres>::new(String::new()); // DW002: `format!` pushed
    first.push(format!("UPDATE {table} SET a = "));
    let statement = "DELETE FROM t";
    let mut second = QueryBuilder::<Postgres>::new(""); // DW002: a local's text pushed
    second.push(statement);
}

pub fn constant_pushed() {
    let mut qb = QueryBuilder::<Postgres>::new(""); // DW002: a `const` that updates
    qb.push(MARK_SHIPPED);
}

pub fn separated(ids: &[i64]) {
    let mut qb = QueryBuilder::<Postgres>::new("SELECT * FROM t WHERE id IN ("); // DW002: pushed through `separated`
    let mut list = qb.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    list.push_unseparated(") ; TRUNCATE audit");
}

pub fn reads_stay_clean(pool: &PgPool, name: &str) {
    let mut qb = QueryBuilder::<Postgres>::new("SELECT * FROM orders WHERE "); // a read: fine
    qb.push("customer = ");
    qb.push_bind(name);
    qb.push(" AND note <> 'DELETE' FOR UPDATE");
    qb.push(ORDER_BY);
    let _ = qb.build().fetch_all(pool);
}

pub fn other_pushes_stay_clean() {
    let mut text = String::new();
    text.push_str("UPDATE t SET a = 1"); // not a query builder: fine
    let mut list = Vec::new();
    list.push("DELETE FROM t"); // not a query builder: fine
    let qb = QueryBuilder::<Postgres>::new("SELECT 1"); // a read: fine
    {
        let mut qb = Vec::new();
        qb.push("INSERT INTO t VALUES (1)"); // a `Vec` shadowing the builder: fine
    }
    drop(qb);
}

pub fn with_arguments(args: sqlx::postgres::PgArguments) {
    let mut qb = QueryBuilder::<Postgres>::with_arguments("SELECT 1;", args); // DW002: an `UPDATE` is pushed
    qb.push(" UPDATE t SET a = 2");
}

pub fn with_arguments_read(args: sqlx::postgres::PgArguments) {
    let mut qb = QueryBuilder::<Postgres>::with_arguments("SELECT * FROM t WHERE a = ", args); // a read: fine
    qb.push_bind(1_i64);
}

pub fn add_filter(qb: &mut QueryBuilder<'_, Postgres>) { // DW002: a `DELETE` is pushed to the builder passed in
    qb.push("; DELETE FROM audit");
}

pub fn add_order(qb: &mut sqlx::QueryBuilder<'_, Postgres>, mut owned: QueryBuilder<'_, Postgres>) { // reads pushed: fine
    qb.push(ORDER_BY);
    owned.push_bind(1_i64);
}

pub fn shadowed(qb: &mut QueryBuilder<'_, Postgres>) { // a `Vec` shadowing the parameter: fine
    let mut qb = Vec::new();
    qb.push("UPDATE t SET a = 3");
}

//! The `mysql` and `mysql_async` clients (their `Queryable` methods take the
//! statement first): writes are reported, reads are not.
use mysql::prelude::Queryable;
use mysql::{Conn, TxOpts};

pub fn sync_writes(conn: &mut Conn, id: u64) -> mysql::Result<()> {
    conn.exec_drop("UPDATE users SET name = ? WHERE id = ?", ("Ada", id))?; // DW002: `exec_drop`
    conn.query_drop("DELETE FROM sessions")?; // DW002: `query_drop`
    conn.exec_batch("INSERT INTO users (id) VALUES (?)", [(1,), (2,)])?; // DW002: `exec_batch`
    let mut tx = conn.start_transaction(TxOpts::default())?;
    tx.exec_drop("REPLACE INTO users (id) VALUES (?)", (id,))?; // DW002: in a transaction
    tx.commit()?;
    let _: Option<u64> = conn.query_first("SELECT count(*) FROM users")?; // a read: fine
    let _: Vec<u64> = conn.exec("SELECT id FROM users WHERE id > ?", (id,))?; // a read: fine
    conn.query_drop("SET SESSION sql_log_bin = 0") // not a write: fine
}

pub async fn async_writes(conn: &mut mysql_async::Conn) -> mysql_async::Result<()> {
    use mysql_async::prelude::Queryable as _;
    conn.exec_drop("INSERT INTO audit (at) VALUES (NOW())", ()).await?; // DW002: `mysql_async`
    let _: Option<u64> = conn.query_first("SELECT 1").await?; // a read: fine
    Ok(())
}

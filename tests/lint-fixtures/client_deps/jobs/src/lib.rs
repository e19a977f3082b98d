//! tokio-postgres reached through deadpool-postgres (Cargo.lock): its rules apply.
pub async fn purge(client: &deadpool_postgres::Client) {
    client.execute("DELETE FROM jobs WHERE done", &[]).await.unwrap(); // DW002
    client.query("SELECT * FROM jobs", &[]).await.unwrap(); // a read: fine
}

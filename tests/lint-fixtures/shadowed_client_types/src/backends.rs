//! A module of the crate's own named like the client it wraps: in this
//! file, `rusqlite::Transaction` is that module's type, not the client's.

mod rusqlite {
    pub struct Transaction {
        pub statements: Vec<String>,
    }

    impl Transaction {
        pub fn execute(&self, sql: &str) -> usize {
            sql.len() + self.statements.len()
        }
    }
}

pub fn local(log: &rusqlite::Transaction) -> usize {
    log.execute("DELETE FROM entries") // the crate's own module: fine
}

//! A crate with types of its own named like a client's (`Transaction`,
//! `Connection`): a receiver written as the client's type is still the
//! client's, wherever the crate's own type of that name lives.
pub mod backends;
pub mod journal;

use rusqlite::{Connection, Transaction};

fn begin(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction()
}

fn immediate(conn: &mut rusqlite::Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction()
}

pub fn imported(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = begin(conn)?;
    tx.execute("DELETE FROM users WHERE id = 1", [])?; // DW002: `use rusqlite::Transaction`
    tx.commit()
}

pub fn qualified(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = immediate(conn)?;
    tx.execute("UPDATE users SET name = 'x'", [])?; // DW002: returns `rusqlite::Transaction`
    tx.commit()
}

pub fn parameter(tx: &Transaction<'_>) -> rusqlite::Result<usize> {
    tx.execute("INSERT INTO users (id) VALUES (2)", []) // DW002: a parameter of the imported type
}

/// Holds a rusqlite connection; the crate also has a `journal::Connection`.
pub struct Db {
    conn: Connection,
}

impl Db {
    fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn through_a_method(&mut self) -> rusqlite::Result<usize> {
        self.conn().execute("DELETE FROM users", []) // DW002: a method returning the imported type
    }
}

/// A sibling crate's `Transaction` (a dependency, but not a client): the
/// crate's own name for it stays clean too.
pub fn sibling(log: &storage::Transaction) -> usize {
    log.execute("DELETE FROM entries") // a sibling crate's type: fine
}

pub fn own_type() {
    let log = journal::Transaction::default();
    log.execute("DELETE FROM entries"); // the crate's own type: fine
    let own = journal::open();
    own.execute("DELETE FROM entries"); // returns the crate's own type: fine
}

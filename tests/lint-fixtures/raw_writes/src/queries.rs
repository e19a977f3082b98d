//! SQL kept in constants, in another file than its use.
pub const INSERT_AUDIT: &str = "INSERT INTO audit (what) VALUES ($1)";
pub const PURGE: &str = concat!("DELETE FROM sessions ", "WHERE expired");
pub static ARCHIVE: &str = "-- move old rows\nUPDATE orders SET archived = true";

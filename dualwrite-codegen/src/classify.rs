//! Name-based classification of repository methods.
//!
//! One source of truth for the macro and the lint: a method is a write or a
//! read by its explicit attribute, else by its conventional name, else by a
//! `&mut self` receiver.

/// Verbs whose methods mutate the store.
pub const WRITE_VERBS: &[&str] = &[
    "insert", "create", "update", "upsert", "delete", "remove", "put", "set", "save",
];

/// Verbs whose methods only read the store.
pub const READ_VERBS: &[&str] = &[
    "get", "find", "list", "count", "exists", "load", "fetch", "query", "search",
];

/// What a method name says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameClass {
    /// `insert`, `save_by_id`, ...
    Write,
    /// `get`, `find_by_email`, ...
    Read,
    /// The name follows neither convention.
    Unknown,
}

/// Classifies a method by its name: a verb alone, or the verb followed by
/// `_` and more words (`insert_many`, `find_by_email`, `delete_all`).
pub fn classify_name(name: &str) -> NameClass {
    let name = name.strip_prefix("r#").unwrap_or(name);
    let verb = name.split('_').next().unwrap_or(name);
    if WRITE_VERBS.contains(&verb) {
        NameClass::Write
    } else if READ_VERBS.contains(&verb) {
        NameClass::Read
    } else {
        NameClass::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_and_their_by_forms() {
        for name in ["insert", "save_by_id", "delete_all", "upsert_user", "set"] {
            assert_eq!(classify_name(name), NameClass::Write, "{name}");
        }
        for name in ["get", "find_by_email", "list", "exists", "r#load"] {
            assert_eq!(classify_name(name), NameClass::Read, "{name}");
        }
        for name in ["insertion", "getter", "compute", "reset", "settle"] {
            assert_eq!(classify_name(name), NameClass::Unknown, "{name}");
        }
    }
}

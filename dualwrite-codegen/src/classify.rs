//! Name-based classification of repository methods.
//!
//! One source of truth for the macro and the lint: a method is a write or a
//! read by its explicit attribute, else by its conventional name, else by a
//! `&mut self` receiver.
//!
//! The vocabulary, the first word of the name (`insert`, `insert_many`,
//! `find_by_email`):
//!
//! | Kind | Verbs |
//! |---|---|
//! | write | `insert`, `create`, `update`, `upsert`, `delete`, `remove`, `put`, `set`, `save`, `upload`, `add`, `append`, `store`, `write`, `replace`, `patch`, `merge`, `incr`, `decr`, `purge`, `clear` |
//! | read | `get`, `find`, `list`, `count`, `exists`, `load`, `fetch`, `query`, `search`, `download`, `read`, `scan`, `lookup`, `contains` |
//!
//! Any other name needs `#[dual_write(write)]`, `read` or `passthrough`
//! (or a `&mut self` receiver, which makes it a write).

/// Verbs whose methods mutate the store.
pub const WRITE_VERBS: &[&str] = &[
    "insert", "create", "update", "upsert", "delete", "remove", "put", "set", "save", "upload",
    "add", "append", "store", "write", "replace", "patch", "merge", "incr", "decr", "purge",
    "clear",
];

/// Verbs whose methods only read the store.
pub const READ_VERBS: &[&str] = &[
    "get", "find", "list", "count", "exists", "load", "fetch", "query", "search", "download",
    "read", "scan", "lookup", "contains",
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

    /// Each verb of the vocabulary, alone and as the first word.
    #[test]
    fn every_verb_of_the_vocabulary() {
        let cases: &[(&str, NameClass)] = &[
            ("upload", NameClass::Write),
            ("download", NameClass::Read),
            ("add", NameClass::Write),
            ("append", NameClass::Write),
            ("store", NameClass::Write),
            ("write", NameClass::Write),
            ("read", NameClass::Read),
            ("replace", NameClass::Write),
            ("patch", NameClass::Write),
            ("merge", NameClass::Write),
            ("incr", NameClass::Write),
            ("decr", NameClass::Write),
            ("purge", NameClass::Write),
            ("clear", NameClass::Write),
            ("scan", NameClass::Read),
            ("lookup", NameClass::Read),
            ("contains", NameClass::Read),
        ];
        for &(verb, class) in cases {
            assert_eq!(classify_name(verb), class, "{verb}");
            assert_eq!(
                classify_name(&format!("{verb}_by_id")),
                class,
                "{verb}_by_id"
            );
        }
        // The table covers both lists, no more.
        assert_eq!(
            WRITE_VERBS.len() + READ_VERBS.len(),
            cases.len() + 18,
            "the vocabulary table and this test list every verb"
        );
    }

    #[test]
    fn verbs_and_their_by_forms() {
        for name in ["insert", "save_by_id", "delete_all", "upsert_user", "set"] {
            assert_eq!(classify_name(name), NameClass::Write, "{name}");
        }
        for name in ["get", "find_by_email", "list", "exists", "r#load"] {
            assert_eq!(classify_name(name), NameClass::Read, "{name}");
        }
        for name in [
            "insertion",
            "getter",
            "compute",
            "reset",
            "settle",
            "address",
            "stored",
            "reader",
            "scanner",
            "patches",
        ] {
            assert_eq!(classify_name(name), NameClass::Unknown, "{name}");
        }
    }
}

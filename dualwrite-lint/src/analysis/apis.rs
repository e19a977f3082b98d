//! The raw-write APIs DW002 knows: data that the configuration extends or
//! trims.
//!
//! Matching rules (applied in `rules::raw_write`):
//! - a `Function` spec matches a path call when the last segments are equal
//!   and the spec's other segments appear, in order, in the called path after
//!   the file's `use` imports are applied (`sqlx::query` matches
//!   `sqlx::query(..)` and `query(..)` under `use sqlx::query;`;
//!   `Entity::insert` matches `user::Entity::insert(..)`);
//! - a `Macro` spec (its name may end in `!`) matches a macro's path the same way;
//! - a `Method` spec matches by method name;
//! - `receiver`, when set, is a `|`-separated list of texts one of which must
//!   occur in the receiver's inferred type path, in the receiver's own text
//!   (`self.redis`), in a method called to get the receiver
//!   (`db.collection(..)`), or for functions in the called path;
//! - a called path's type segment imported under another name anywhere in
//!   the checked files (`pub use user::Entity as User;`) also matches under
//!   its original name.

use serde::{Deserialize, Serialize};

/// What makes a call a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKind {
    /// The call's SQL text (first string argument, a `const` or a `format!`)
    /// starts with INSERT, UPDATE, DELETE, MERGE, REPLACE, UPSERT or TRUNCATE.
    Sql,
    /// Every call is a write (builders such as `diesel::insert_into`).
    Write,
    /// The first argument is a string whose first word is one of the spec's
    /// `commands` (redis `cmd("SET")`), compared case-insensitively.
    Command,
}

/// How the API is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallForm {
    /// `path::to::function(..)` (matched by its last segments).
    Function,
    /// `receiver.method(..)`.
    Method,
    /// `macro!(..)`.
    Macro,
    /// Any of the above.
    #[default]
    Any,
}

/// One raw-write API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSpec {
    /// The name: a method name (`execute`), a function path (`sqlx::query`,
    /// matched as a suffix of the called path), or a macro (`query!`).
    pub name: String,
    /// SQL text, builder or command.
    pub kind: ApiKind,
    /// Function, method, macro or any.
    #[serde(default)]
    pub call: CallForm,
    /// The library, for messages (`sqlx`, `diesel`...).
    #[serde(default)]
    pub library: Option<String>,
    /// If set, a call matches only when the receiver's inferred type, the
    /// receiver's text or the called path contains one of these `|`-separated
    /// texts (e.g. `ActiveModel`, `redis|Connection`).
    #[serde(default)]
    pub receiver: Option<String>,
    /// For [`ApiKind::Command`]: the command words that write (`SET`, `DEL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// If set, the spec applies only in crates that depend (directly, or
    /// through `Cargo.lock`) on one of these packages; files of no known
    /// crate are always checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crates: Vec<String>,
}

impl ApiSpec {
    /// A spec with no receiver constraint and no commands.
    pub fn new(name: &str, kind: ApiKind, call: CallForm, library: &str) -> Self {
        ApiSpec {
            name: name.to_owned(),
            kind,
            call,
            library: Some(library.to_owned()),
            receiver: None,
            commands: Vec::new(),
            crates: Vec::new(),
        }
    }

    /// The name a call must carry to match: the last segment of `name`, or
    /// for an associated constructor (`QueryBuilder::new`) the type's, so
    /// that `new` alone does not make every constructor call interesting.
    pub fn interest_name(&self) -> Option<&str> {
        let mut segments = self.name.trim_end_matches('!').rsplit("::");
        let last = segments.next()?;
        match segments.next() {
            Some(owner) if last == "new" => Some(owner),
            _ => Some(last),
        }
    }

    /// The same spec, applied only in crates that depend on one of `crates`.
    pub fn in_crates(mut self, crates: &[&str]) -> Self {
        self.crates = crates.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// The same spec, matching only receivers that contain `receiver`.
    pub fn on_receiver(mut self, receiver: &str) -> Self {
        self.receiver = Some(receiver.to_owned());
        self
    }
}

/// The set of raw-write APIs in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTable {
    /// Every API, in order.
    pub specs: Vec<ApiSpec>,
}

/// Redis commands that modify data.
pub const REDIS_WRITE_COMMANDS: &[&str] = &[
    "SET", "SETEX", "SETNX", "PSETEX", "MSET", "MSETNX", "DEL", "UNLINK", "HSET", "HMSET",
    "HSETNX", "HDEL", "HINCRBY", "LPUSH", "RPUSH", "LPOP", "RPOP", "LSET", "LREM", "SADD", "SREM",
    "SPOP", "ZADD", "ZREM", "ZINCRBY", "INCR", "INCRBY", "DECR", "DECRBY", "EXPIRE", "PEXPIRE",
    "APPEND", "GETSET", "GETDEL", "XADD", "XDEL", "RENAME", "FLUSHDB", "FLUSHALL",
];

impl ApiTable {
    /// The built-in table: sqlx, rusqlite, postgres/tokio-postgres, mysql/
    /// mysql_async, diesel, sea-orm, redis and mongodb.
    pub fn default_table() -> ApiTable {
        use ApiKind::{Command, Sql, Write};
        use CallForm::{Function, Macro, Method};
        // The packages through which each client is used (pools and async
        // wrappers re-export it).
        const SQLX: &[&str] = &["sqlx", "sqlx-core", "sea-orm"];
        const POSTGRES: &[&str] = &[
            "postgres",
            "tokio-postgres",
            "deadpool-postgres",
            "bb8-postgres",
            "r2d2_postgres",
        ];
        const RUSQLITE: &[&str] = &[
            "rusqlite",
            "r2d2_sqlite",
            "deadpool-sqlite",
            "tokio-rusqlite",
            "async-sqlite",
        ];
        const DIESEL: &[&str] = &["diesel", "diesel-async"];
        const SEA_ORM: &[&str] = &["sea-orm"];
        const REDIS: &[&str] = &[
            "redis",
            "deadpool-redis",
            "bb8-redis",
            "r2d2_redis",
            "redis-async",
        ];
        const MONGODB: &[&str] = &["mongodb"];
        const MYSQL: &[&str] = &["mysql", "mysql_async", "r2d2_mysql"];
        let mut specs = Vec::new();
        for name in [
            "sqlx::query",
            "sqlx::query_as",
            "sqlx::query_scalar",
            "sqlx::query_with",
            "sqlx::query_as_with",
            "sqlx::query_scalar_with",
            "sqlx::raw_sql",
        ] {
            specs.push(ApiSpec::new(name, Sql, Function, "sqlx").in_crates(SQLX));
        }
        // `QueryBuilder::new("INSERT INTO t (a, b) ")`,
        // `QueryBuilder::with_arguments("INSERT ..", args)`, and a
        // `QueryBuilder` parameter, whose function pushes text.
        for name in [
            "QueryBuilder::new",
            "QueryBuilder::with_arguments",
            "QueryBuilder",
        ] {
            specs.push(ApiSpec::new(name, Sql, Function, "sqlx").in_crates(SQLX));
        }
        for name in [
            "query!",
            "query_as!",
            "query_scalar!",
            "query_unchecked!",
            "query_as_unchecked!",
        ] {
            specs.push(ApiSpec::new(name, Sql, Macro, "sqlx").in_crates(SQLX));
        }
        // Method names shared by several clients: one spec each, naming them all.
        let shared = "sqlx, rusqlite or postgres";
        let shared_crates: Vec<&str> = [SQLX, POSTGRES, RUSQLITE, DIESEL].concat();
        specs.push(ApiSpec::new("execute", Sql, Method, shared).in_crates(&shared_crates));
        for name in ["execute_batch", "prepare", "prepare_cached"] {
            specs.push(ApiSpec::new(name, Sql, Method, "rusqlite").in_crates(RUSQLITE));
        }
        for name in [
            "query",
            "query_one",
            "query_opt",
            "query_raw",
            "batch_execute",
            "simple_query",
        ] {
            specs.push(ApiSpec::new(name, Sql, Method, "postgres").in_crates(POSTGRES));
        }
        // mysql / mysql_async `Queryable`: the statement is the first
        // argument (`conn.exec_drop("UPDATE ..", params)`). Names only these
        // clients use, on any receiver; names other clients use too, on a
        // connection, pool or transaction.
        for name in ["query_drop", "exec_drop", "exec_batch"] {
            specs.push(ApiSpec::new(name, Sql, Method, "mysql").in_crates(MYSQL));
        }
        for name in [
            "query",
            "query_iter",
            "query_first",
            "query_map",
            "query_fold",
            "exec",
            "exec_iter",
            "exec_first",
            "exec_map",
            "exec_fold",
        ] {
            specs.push(
                ApiSpec::new(name, Sql, Method, "mysql")
                    .on_receiver("Conn|conn|Pool|pool|Transaction|tx|Queryable")
                    .in_crates(MYSQL),
            );
        }
        for name in [
            "diesel::insert_into",
            "diesel::update",
            "diesel::delete",
            "diesel::replace_into",
            "diesel::insert_or_ignore_into",
        ] {
            specs.push(ApiSpec::new(name, Write, Function, "diesel").in_crates(DIESEL));
        }
        // `diesel::sql_query("UPDATE ..")`.
        specs.push(ApiSpec::new("diesel::sql_query", Sql, Function, "diesel").in_crates(DIESEL));
        for name in ["insert", "update", "delete", "save"] {
            specs.push(
                ApiSpec::new(name, Write, Method, "sea-orm")
                    .on_receiver("ActiveModel")
                    .in_crates(SEA_ORM),
            );
        }
        // Associated functions of an entity: `user::Entity::update_many()`,
        // `Users::delete_many()` under `use user::Entity as Users;` (also
        // re-exported from another file), never a type of the crate's own.
        for name in [
            "Entity::insert",
            "Entity::insert_many",
            "Entity::update",
            "Entity::update_many",
            "Entity::delete",
            "Entity::delete_many",
            "Entity::delete_by_id",
        ] {
            specs.push(ApiSpec::new(name, Write, Function, "sea-orm").in_crates(SEA_ORM));
        }
        let commands: Vec<String> = REDIS_WRITE_COMMANDS
            .iter()
            .map(|c| (*c).to_owned())
            .collect();
        let mut cmd = ApiSpec::new("redis::cmd", Command, Function, "redis").in_crates(REDIS);
        cmd.commands = commands.clone();
        specs.push(cmd);
        // `redis::pipe().cmd("SET")`.
        let mut pipe_cmd = ApiSpec::new("cmd", Command, Method, "redis")
            .on_receiver("redis|pipe|Pipeline")
            .in_crates(REDIS);
        pipe_cmd.commands = commands;
        specs.push(pipe_cmd);
        for name in [
            "set",
            "set_ex",
            "set_nx",
            "set_multiple",
            "del",
            "hset",
            "hset_multiple",
            "hset_nx",
            "hdel",
            "lpush",
            "rpush",
            "sadd",
            "srem",
            "zadd",
            "zrem",
            "incr",
            "decr",
            "expire",
            "xadd",
        ] {
            // On connections, and on pipelines and transactions
            // (`redis::pipe().atomic().set(..)`, `Pipeline::new()`, the
            // `pipe` of `redis::transaction`).
            specs.push(
                ApiSpec::new(name, Write, Method, "redis")
                    .on_receiver(
                        "redis|Connection|ConnectionManager|MultiplexedConnection|Pipeline|pipe",
                    )
                    .in_crates(REDIS),
            );
        }
        for name in [
            "insert_one",
            "insert_many",
            "update_one",
            "update_many",
            "replace_one",
            "delete_one",
            "delete_many",
            "find_one_and_update",
            "find_one_and_replace",
            "find_one_and_delete",
            "bulk_write",
        ] {
            // On a `Collection<T>` (typed, or from `db.collection(..)`).
            specs.push(
                ApiSpec::new(name, Write, Method, "mongodb")
                    .on_receiver("Collection|collection")
                    .in_crates(MONGODB),
            );
        }
        ApiTable { specs }
    }

    /// This table without the specs whose name is in `remove` (exactly as
    /// written in the table: `sqlx::query`, `query!`, `execute`), followed by
    /// `add`.
    pub fn with_changes(mut self, add: Vec<ApiSpec>, remove: &[String]) -> ApiTable {
        self.specs.retain(|spec| !remove.contains(&spec.name));
        self.specs.extend(add);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_remove_by_name_and_append() {
        let table = ApiTable::default_table().with_changes(
            vec![ApiSpec::new(
                "my_exec",
                ApiKind::Sql,
                CallForm::Method,
                "mine",
            )],
            &["sqlx::query".to_owned(), "query!".to_owned()],
        );
        assert!(!table.specs.iter().any(|s| s.name == "sqlx::query"));
        assert!(!table.specs.iter().any(|s| s.name == "query!"));
        assert!(table.specs.iter().any(|s| s.name == "query"));
        assert!(table.specs.iter().any(|s| s.name == "sqlx::query_as"));
        assert_eq!(table.specs.last().map(|s| s.name.as_str()), Some("my_exec"));
    }

    #[test]
    fn specs_deserialize_from_config_data() {
        let spec: ApiSpec = serde_json::from_value(serde_json::json!({
            "name": "cmd", "kind": "command", "call": "function", "commands": ["SET"]
        }))
        .unwrap();
        assert_eq!(spec.kind, ApiKind::Command);
        assert_eq!(spec.commands, vec!["SET".to_owned()]);
        assert_eq!(spec.receiver, None);
    }
}

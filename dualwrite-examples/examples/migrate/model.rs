//! The application's side: its domain types and its repository traits,
//! annotated once with `#[dual_write]`.

use std::fmt;

use dualwrite_runtime::dual_write;

/// A user as the application sees it (the old store's shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub full_name: String,
    /// Optional in the old schema; the new schema has no NULL emails.
    pub email: Option<String>,
    /// Sign-up time, in seconds since the epoch (milliseconds in New).
    pub signup_ts: i64,
    /// Bumped on every change; both stores refuse to replace a newer row.
    pub version: i64,
}

/// The state of an order: text in the old schema, a small integer in New.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    New,
    Paid,
    Shipped,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::New,
        Status::Paid,
        Status::Shipped,
        Status::Cancelled,
    ];

    pub fn as_text(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Paid => "paid",
            Status::Shipped => "shipped",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn from_text(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_text() == text)
    }

    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: i64,
    pub user_id: i64,
    pub amount_cents: i64,
    pub status: Status,
    /// Optional in the old schema; `''` in New.
    pub note: Option<String>,
    pub version: i64,
}

/// The error of every store.
#[derive(Debug)]
pub enum StoreError {
    /// SQLite refused (a constraint, a busy database, a closed file...).
    Sqlite(rusqlite::Error),
    /// A database server refused or could not be reached.
    Server(String),
    /// A row that does not map (an unknown status code, say).
    BadRow(String),
    /// A failure injected by the run's fault plan.
    Injected(&'static str),
    /// A thread panicked while holding the connection.
    Poisoned,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sqlite(error) => write!(f, "sqlite: {error}"),
            StoreError::Server(error) => write!(f, "database server: {error}"),
            StoreError::BadRow(what) => write!(f, "row does not map: {what}"),
            StoreError::Injected(what) => write!(f, "injected fault: {what}"),
            StoreError::Poisoned => f.write_str("connection mutex poisoned"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Sqlite(error) => Some(error),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Sqlite(error)
    }
}

/// The users repository. `#[dual_write]` generates `UserRepoDualWrite<Old,
/// New>` (the adapter) and `UserRepoWrite` (its write commands).
#[dual_write]
pub trait UserRepo {
    #[dual_write(key = user.id)]
    fn save_user(&self, user: &User) -> Result<(), StoreError>;
    #[dual_write(key = id)]
    fn get_user(&self, id: i64) -> Result<Option<User>, StoreError>;
}

/// The orders repository.
#[dual_write]
pub trait OrderRepo {
    #[dual_write(key = order.id)]
    fn save_order(&self, order: &Order) -> Result<(), StoreError>;
    #[dual_write(key = id)]
    fn delete_order(&self, id: i64) -> Result<bool, StoreError>;
    #[dual_write(key = id)]
    fn get_order(&self, id: i64) -> Result<Option<Order>, StoreError>;
}

//! Aliases declared in one file and used in another.
use std::sync::Arc;

use crate::store::PgUserStore;

pub type Db = PgUserStore;
pub type SharedDb = Arc<PgUserStore>;

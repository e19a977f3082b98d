//! Where the two stores live: SQLite files (the default) or a MariaDB and a
//! PostgreSQL server (`--old mysql://… --new postgres://…`). The phases do
//! not care: the adapters see [`OldStore`] and [`NewStore`], and the
//! backfill and reconciliation jobs come from [`Backend`], built from the
//! runtime's ready sources and sinks for each database.

use std::path::PathBuf;

use dualwrite_runtime::backfill::sqlite::{
    SqliteCheckpoint, SqliteRepair, SqliteSink, SqliteSource,
};
use dualwrite_runtime::backfill::sqlx::mysql::{MySqlRepair, MySqlSource};
use dualwrite_runtime::backfill::sqlx::postgres::{PgCheckpoint, PgRepair, PgSink, PgSource};
use dualwrite_runtime::backfill::sqlx::{SqlTable, SqlValue};
use dualwrite_runtime::backfill::{
    Backfill, BackfillControl, BackfillError, BackfillProgress, BackfillReport, BackfillSink,
    BackfillSource, Checkpoint,
};
use dualwrite_runtime::reconcile::{Reconcile, ReconcileReport, RepairSink};
use dualwrite_runtime::{KeyGuard, Store};

use crate::mapping::{
    Cell, NEW_ORDER_COLUMNS, NEW_USER_COLUMNS, OLD_ORDER_COLUMNS, OLD_USER_COLUMNS,
    new_order_to_old, new_user_to_old, old_order_to_new, old_user_to_new,
};
use crate::model::{Order, OrderRepo, StoreError, User, UserRepo};
use crate::servers::{self, MariaOld, PgNew};
use crate::stores::{self, NEW_SCHEMA, OLD_SCHEMA, SqliteNew, SqliteOld};

pub type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// The old store, on whichever backend.
pub enum OldStore {
    Sqlite(SqliteOld),
    Maria(MariaOld),
}

/// The new store, on whichever backend.
pub enum NewStore {
    Sqlite(SqliteNew),
    Pg(PgNew),
}

/// Implements a repository trait for a store enum by calling the variant.
macro_rules! delegate {
    ($store:ident { $($variant:ident),* }) => {
        impl UserRepo for $store {
            fn save_user(&self, user: &User) -> Result<(), StoreError> {
                match self { $($store::$variant(s) => s.save_user(user),)* }
            }
            fn get_user(&self, id: i64) -> Result<Option<User>, StoreError> {
                match self { $($store::$variant(s) => s.get_user(id),)* }
            }
        }
        impl OrderRepo for $store {
            fn save_order(&self, order: &Order) -> Result<(), StoreError> {
                match self { $($store::$variant(s) => s.save_order(order),)* }
            }
            fn delete_order(&self, id: i64) -> Result<bool, StoreError> {
                match self { $($store::$variant(s) => s.delete_order(id),)* }
            }
            fn get_order(&self, id: i64) -> Result<Option<Order>, StoreError> {
                match self { $($store::$variant(s) => s.get_order(id),)* }
            }
        }
    };
}

delegate!(OldStore { Sqlite, Maria });
delegate!(NewStore { Sqlite, Pg });

/// The two tables the migration moves.
#[derive(Clone, Copy, Debug)]
pub enum Table {
    Users,
    Orders,
}

impl Table {
    /// (old table, old key, old columns), on SQLite.
    fn sqlite_old(self) -> (&'static str, &'static str, &'static [&'static str]) {
        match self {
            Table::Users => ("users", "id", &OLD_USER_COLUMNS),
            Table::Orders => ("orders", "id", &OLD_ORDER_COLUMNS),
        }
    }

    /// (new table, new key, new columns), on SQLite.
    fn sqlite_new(self) -> (&'static str, &'static str, &'static [&'static str]) {
        match self {
            Table::Users => ("accounts", "account_id", &NEW_USER_COLUMNS),
            Table::Orders => ("purchases", "purchase_id", &NEW_ORDER_COLUMNS),
        }
    }

    /// The old table on the server.
    fn server_old(self) -> Result<SqlTable, BackfillError> {
        match self {
            Table::Users => SqlTable::new(servers::OLD_USERS, "id", &OLD_USER_COLUMNS),
            Table::Orders => SqlTable::new(servers::OLD_ORDERS, "id", &OLD_ORDER_COLUMNS),
        }
    }

    /// The new table on the server.
    fn server_new(self) -> Result<SqlTable, BackfillError> {
        match self {
            Table::Users => SqlTable::new(servers::NEW_USERS, "account_id", &NEW_USER_COLUMNS),
            Table::Orders => SqlTable::new(servers::NEW_ORDERS, "purchase_id", &NEW_ORDER_COLUMNS),
        }
    }

    fn new_columns(self) -> &'static [&'static str] {
        self.sqlite_new().2
    }

    fn checkpoint_name(self) -> &'static str {
        match self {
            Table::Users => "migrate-users",
            Table::Orders => "migrate-orders",
        }
    }

    /// The schema change as a row mapping, Old's form to New's. A row that
    /// cannot be mapped becomes a row no store accepts and no row equals:
    /// the sink reports it, reconciliation lists it.
    fn to_new<V: Cell>(self) -> impl FnMut(Vec<V>) -> Vec<V> + Send + 'static {
        move |row: Vec<V>| {
            let mapped = match self {
                Table::Users => old_user_to_new(&row),
                Table::Orders => old_order_to_new(&row),
            };
            mapped.unwrap_or_else(|error| vec![V::from_text(format!("unmappable row: {error}"))])
        }
    }

    /// And back, New's form to Old's, for repairs of Old after cutover.
    fn to_old<V: Cell>(self) -> fn(&[V]) -> Result<Vec<V>, StoreError> {
        match self {
            Table::Users => new_user_to_old::<V>,
            Table::Orders => new_order_to_old::<V>,
        }
    }
}

/// Repairs Old from New's rows (after cutover), mapped back to Old's form.
struct RepairOld<R, V> {
    inner: R,
    to_old: fn(&[V]) -> Result<Vec<V>, StoreError>,
}

impl<R: RepairSink<Key = i64, Row = Vec<V>>, V> RepairSink for RepairOld<R, V> {
    type Key = i64;
    type Row = Vec<V>;

    fn upsert(&mut self, rows: &[(i64, Vec<V>)]) -> Result<(), BackfillError> {
        let mapped = rows
            .iter()
            .map(|(key, row)| {
                (self.to_old)(row)
                    .map(|row| (*key, row))
                    .map_err(|e| BackfillError::Sink(format!("row {key}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.upsert(&mapped)
    }

    fn delete(&mut self, keys: &[i64]) -> Result<(), BackfillError> {
        self.inner.delete(keys)
    }
}

/// A backfill ready to run on a thread of its own.
pub struct BackfillRun {
    pub progress: BackfillProgress,
    pub control: BackfillControl,
    run: Box<dyn FnOnce() -> Result<BackfillReport, BackfillError> + Send>,
}

impl BackfillRun {
    fn new<S, K, C, V>(source: S, sink: K, checkpoint: C, table: Table, guard: KeyGuard) -> Self
    where
        V: Cell + 'static,
        S: BackfillSource<Key = i64, Row = Vec<V>> + Send + 'static,
        K: BackfillSink<Key = i64, Row = Vec<V>> + Send + 'static,
        C: Checkpoint + Send + 'static,
    {
        let mut job = Backfill::mapped(source, sink, table.to_new::<V>())
            .with_checkpoint(checkpoint)
            .with_batch(1_000)
            .guarded_by(guard);
        BackfillRun {
            progress: job.progress(),
            control: job.control(),
            run: Box::new(move || job.run()),
        }
    }

    pub fn run(self) -> Result<BackfillReport, BackfillError> {
        (self.run)()
    }
}

/// What a reconciliation writes.
pub enum Mode<'a> {
    /// Nothing: a dry run.
    DryRun,
    /// Repairs from this side.
    Repair(Store),
    /// Re-checks (and repairs from Old) only these keys.
    Recheck(&'a [i64]),
}

fn reconcile_rows<V, O, N, RN, RO, D>(
    (old, new): (O, N),
    diff: D,
    table: Table,
    guard: KeyGuard,
    mode: Mode<'_>,
    repair_new: impl FnOnce() -> Result<RN, BackfillError>,
    repair_old: impl FnOnce() -> Result<RO, BackfillError>,
) -> Result<ReconcileReport, BackfillError>
where
    V: Cell + 'static,
    O: BackfillSource<Key = i64, Row = Vec<V>>,
    N: BackfillSource<Key = i64, Row = Vec<V>>,
    RN: RepairSink<Key = i64, Row = Vec<V>>,
    RO: RepairSink<Key = i64, Row = Vec<V>>,
    D: FnMut(&Vec<V>, &Vec<V>) -> Option<Vec<String>>,
{
    let authoritative = match mode {
        Mode::Repair(store) => store,
        _ => Store::Old,
    };
    let mut job = Reconcile::mapped(old, new, table.to_new::<V>(), diff)
        .with_batch(2_000)
        .guarded_by(guard)
        .authoritative(authoritative)
        .with_max_listed(20);
    match mode {
        Mode::DryRun => job.run(),
        Mode::Repair(Store::Old) => job.repair_into(&mut repair_new()?),
        Mode::Repair(Store::New) => job.repair_into(&mut RepairOld {
            inner: repair_old()?,
            to_old: table.to_old::<V>(),
        }),
        Mode::Recheck(keys) => job.recheck_into(keys, &mut repair_new()?),
    }
}

/// Where the stores live.
pub enum Backend {
    Sqlite {
        old: PathBuf,
        new: PathBuf,
    },
    Servers {
        old: String,
        new: String,
        rt: tokio::runtime::Runtime,
    },
}

impl Backend {
    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite { old, new } => format!("{} to {}", old.display(), new.display()),
            Backend::Servers { old, new, .. } => {
                format!("MariaDB ({}) to PostgreSQL ({})", redact(old), redact(new))
            }
        }
    }

    /// Creates both schemas, writes the history into Old, opens the stores.
    pub fn prepare(&self, users: i64) -> Result<(OldStore, NewStore), StoreError> {
        match self {
            Backend::Sqlite { old, new } => {
                stores::seed_history(old, users)?;
                Ok((
                    OldStore::Sqlite(SqliteOld::open(old)?),
                    NewStore::Sqlite(SqliteNew::open(new)?),
                ))
            }
            Backend::Servers { old, new, rt } => {
                let old = MariaOld::create(old, rt.handle().clone())?;
                old.seed(users)?;
                let new = PgNew::create(new, rt.handle().clone())?;
                Ok((OldStore::Maria(old), NewStore::Pg(new)))
            }
        }
    }

    /// Rows in the old tables now.
    pub fn old_rows(&self, old_store: &OldStore) -> Result<u64, AnyError> {
        Ok(match (self, old_store) {
            (Backend::Sqlite { old, .. }, _) => {
                let conn = stores::connect(old, OLD_SCHEMA)?;
                let n: i64 = conn.query_row(
                    "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM orders)",
                    [],
                    |r| r.get(0),
                )?;
                n.unsigned_abs()
            }
            (Backend::Servers { .. }, OldStore::Maria(store)) => store.count()?,
            (Backend::Servers { .. }, OldStore::Sqlite(_)) => {
                return Err("the old store does not match the backend".into());
            }
        })
    }

    /// The backfill of one table: Old's rows in key order, mapped to New's
    /// form, inserted where New has no row yet, checkpointed in New's
    /// database per batch, each batch re-read and written with its keys held
    /// in the live adapter.
    pub fn backfill(&self, table: Table, guard: KeyGuard) -> Result<BackfillRun, AnyError> {
        Ok(match self {
            Backend::Sqlite { old, new } => {
                let ((ot, ok, oc), (nt, nk, nc)) = (table.sqlite_old(), table.sqlite_new());
                BackfillRun::new(
                    SqliteSource::<i64>::new(stores::connect(old, OLD_SCHEMA)?, ot, ok, oc),
                    SqliteSink::<i64>::new(stores::connect(new, NEW_SCHEMA)?, nt, nk, nc),
                    SqliteCheckpoint::new(
                        stores::connect(new, NEW_SCHEMA)?,
                        table.checkpoint_name(),
                    )?,
                    table,
                    guard,
                )
            }
            Backend::Servers { old, new, .. } => {
                let mut checkpoint = PgCheckpoint::connect(new, table.checkpoint_name())?;
                // The tables were created afresh for this run.
                checkpoint.clear()?;
                BackfillRun::new::<_, _, _, SqlValue>(
                    MySqlSource::<i64>::connect(old, &table.server_old()?)?,
                    PgSink::<i64>::connect(new, &table.server_new()?)?,
                    checkpoint,
                    table,
                    guard,
                )
            }
        })
    }

    /// Reconciles one table (see [`Mode`]).
    pub fn reconcile(
        &self,
        table: Table,
        guard: KeyGuard,
        mode: Mode<'_>,
    ) -> Result<ReconcileReport, AnyError> {
        Ok(match self {
            Backend::Sqlite { old, new } => {
                let ((ot, ok, oc), (nt, nk, nc)) = (table.sqlite_old(), table.sqlite_new());
                reconcile_rows(
                    (
                        SqliteSource::<i64>::new(stores::connect(old, OLD_SCHEMA)?, ot, ok, oc),
                        SqliteSource::<i64>::new(stores::connect(new, NEW_SCHEMA)?, nt, nk, nc),
                    ),
                    dualwrite_runtime::backfill::sqlite::column_diff(table.new_columns()),
                    table,
                    guard,
                    mode,
                    || sqlite_repair(new, NEW_SCHEMA, nt, nk, nc),
                    || sqlite_repair(old, OLD_SCHEMA, ot, ok, oc),
                )?
            }
            Backend::Servers { old, new, .. } => reconcile_rows::<SqlValue, _, _, _, _, _>(
                (
                    MySqlSource::<i64>::connect(old, &table.server_old()?)?,
                    PgSource::<i64>::connect(new, &table.server_new()?)?,
                ),
                dualwrite_runtime::backfill::sqlx::column_diff(table.new_columns()),
                table,
                guard,
                mode,
                || PgRepair::<i64>::connect(new, &table.server_new()?),
                || MySqlRepair::<i64>::connect(old, &table.server_old()?),
            )?,
        })
    }
}

fn sqlite_repair(
    path: &std::path::Path,
    schema: &str,
    table: &str,
    key: &str,
    columns: &[&str],
) -> Result<SqliteRepair<i64>, BackfillError> {
    let conn = stores::connect(path, schema).map_err(|e| BackfillError::Sink(e.to_string()))?;
    Ok(SqliteRepair::new(conn, table, key, columns))
}

/// A URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

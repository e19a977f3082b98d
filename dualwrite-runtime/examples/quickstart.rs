//! Quickstart: migrate a small user store between two SQLite databases with
//! `#[dual_write]`, walking every phase of the dual-write specification.
//!
//! ```text
//! cargo run -p dualwrite-runtime --example quickstart
//! ```
//!
//! * Old schema: `users(id, full_name, email NULL, version)`.
//! * New schema: `accounts(account_id, first_name, last_name, email NOT NULL
//!   DEFAULT '', version)`, with a CHECK that a first name is not empty.
//!
//! The mapping between the two is written out in [`NewStore`]: the full name
//! is split at its first space and joined back, and a missing email (`NULL`)
//! is stored as `''`. Every row carries a `version`; both stores only let a
//! write replace a row whose version is not newer, so a late or replayed
//! write never clobbers a newer one, and the backfill only inserts rows New
//! does not have yet, so a live write always wins over the backfill.
//!
//! The two databases are files in a fresh directory under the system temp
//! directory, removed at the end (also when the example fails).

use std::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dualwrite_runtime::{LaneConfig, Migration, Phase, StatsSnapshot, dual_write};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

// ---------------------------------------------------------------------------
// The domain model and the repository trait
// ---------------------------------------------------------------------------

/// A user as the application sees it (the old store's shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    pub full_name: String,
    /// Optional in the old schema; the new schema has no NULL emails.
    pub email: Option<String>,
    /// Bumped on every change; the stores refuse to replace a newer row.
    pub version: u64,
}

impl User {
    fn new(id: u64, full_name: &str, email: Option<&str>) -> Self {
        User {
            id,
            full_name: full_name.to_owned(),
            email: email.map(str::to_owned),
            version: 1,
        }
    }

    /// The next version of this user, changed by `change`.
    fn updated(&self, change: impl FnOnce(&mut User)) -> User {
        let mut next = self.clone();
        next.version += 1;
        change(&mut next);
        next
    }
}

/// The error of both stores.
#[derive(Debug)]
pub enum StoreError {
    /// A constraint of the schema refused the row (permanent: retrying
    /// cannot help, the data must be repaired).
    Constraint(String),
    /// Any other SQLite error.
    Sqlite(rusqlite::Error),
    /// A failure injected by the example (transient: a retry succeeds).
    Injected(&'static str),
    /// A value does not fit the column (e.g. an id above `i64::MAX`).
    OutOfRange(&'static str, u64),
    /// A thread panicked while holding the connection.
    Poisoned,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Constraint(message) => write!(f, "constraint violated: {message}"),
            StoreError::Sqlite(error) => write!(f, "sqlite: {error}"),
            StoreError::Injected(what) => write!(f, "injected failure: {what}"),
            StoreError::OutOfRange(column, value) => {
                write!(f, "{value} does not fit column `{column}`")
            }
            StoreError::Poisoned => f.write_str("connection mutex poisoned"),
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StoreError::Sqlite(error) => Some(error),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match &error {
            rusqlite::Error::SqliteFailure(code, message)
                if code.code == ErrorCode::ConstraintViolation =>
            {
                StoreError::Constraint(message.clone().unwrap_or_else(|| code.to_string()))
            }
            _ => StoreError::Sqlite(error),
        }
    }
}

/// The repository both stores implement. The macro generates
/// `UserRepoDualWrite<Old, New>` (the adapter) and `UserRepoWrite` (one
/// variant per write method, replayable by lanes and dead letters).
#[dual_write]
pub trait UserRepo {
    #[dual_write(key = user.id)]
    fn save(&self, user: &User) -> Result<(), StoreError>;
    #[dual_write(key = id)]
    fn delete(&self, id: u64) -> Result<bool, StoreError>;
    #[dual_write(key = id)]
    fn get(&self, id: u64) -> Result<Option<User>, StoreError>;
    fn count(&self) -> Result<u64, StoreError>;
}

// ---------------------------------------------------------------------------
// SQLite plumbing shared by both stores
// ---------------------------------------------------------------------------

fn sql_int(column: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange(column, value))
}

fn from_sql_int(value: i64) -> u64 {
    // Only values written through `sql_int` are stored: never negative.
    value.unsigned_abs()
}

/// One connection behind a mutex, plus a "fail the next N writes" switch.
struct Db {
    conn: Mutex<Connection>,
    fail_next: AtomicU32,
}

impl Db {
    fn open(path: &Path, schema: &str) -> Result<Db, StoreError> {
        let conn = Connection::open(path)?;
        // WAL keeps readers and the writer apart; NORMAL skips an fsync per
        // commit (fine for a demo, and still crash-safe in WAL mode).
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        conn.execute_batch(schema)?;
        Ok(Db {
            conn: Mutex::new(conn),
            fail_next: AtomicU32::new(0),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// The connection for a write, or the injected failure.
    fn lock_for_write(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        let injected = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if injected {
            return Err(StoreError::Injected("connection reset by peer"));
        }
        self.lock()
    }
}

// ---------------------------------------------------------------------------
// The old store: `users`
// ---------------------------------------------------------------------------

const OLD_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS users (
        id        INTEGER PRIMARY KEY,
        full_name TEXT NOT NULL,
        email     TEXT NULL,
        version   INTEGER NOT NULL
    );";

pub struct OldStore {
    db: Db,
}

impl OldStore {
    fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(OldStore {
            db: Db::open(path, OLD_SCHEMA)?,
        })
    }

    /// One page of rows with `id > after`, by id: what the backfill copies.
    fn page_after(&self, after: u64, limit: u32) -> Result<Vec<User>, StoreError> {
        let conn = self.db.lock()?;
        let mut statement = conn.prepare_cached(
            "SELECT id, full_name, email, version FROM users
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = statement.query_map(params![sql_int("id", after)?, limit], |row| {
            Ok(User {
                id: from_sql_int(row.get(0)?),
                full_name: row.get(1)?,
                email: row.get(2)?,
                version: from_sql_int(row.get(3)?),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl UserRepo for OldStore {
    fn save(&self, user: &User) -> Result<(), StoreError> {
        let conn = self.db.lock_for_write()?;
        conn.execute(
            "INSERT INTO users (id, full_name, email, version) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET
                 full_name = excluded.full_name,
                 email     = excluded.email,
                 version   = excluded.version
             WHERE excluded.version >= users.version",
            params![
                sql_int("id", user.id)?,
                user.full_name,
                user.email,
                sql_int("version", user.version)?
            ],
        )?;
        Ok(())
    }

    fn delete(&self, id: u64) -> Result<bool, StoreError> {
        let conn = self.db.lock_for_write()?;
        let deleted = conn.execute("DELETE FROM users WHERE id = ?1", [sql_int("id", id)?])?;
        Ok(deleted > 0)
    }

    fn get(&self, id: u64) -> Result<Option<User>, StoreError> {
        let conn = self.db.lock()?;
        let user = conn
            .query_row(
                "SELECT full_name, email, version FROM users WHERE id = ?1",
                [sql_int("id", id)?],
                |row| {
                    Ok(User {
                        id,
                        full_name: row.get(0)?,
                        email: row.get(1)?,
                        version: from_sql_int(row.get(2)?),
                    })
                },
            )
            .optional()?;
        Ok(user)
    }

    fn count(&self) -> Result<u64, StoreError> {
        let conn = self.db.lock()?;
        let count: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))?;
        Ok(from_sql_int(count))
    }
}

// ---------------------------------------------------------------------------
// The new store: `accounts`, with the field mapping
// ---------------------------------------------------------------------------

const NEW_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS accounts (
        account_id INTEGER PRIMARY KEY,
        first_name TEXT NOT NULL CHECK (length(first_name) > 0),
        last_name  TEXT NOT NULL,
        email      TEXT NOT NULL DEFAULT '',
        version    INTEGER NOT NULL
    );";

/// The field mapping from the old shape to the new one.
struct AccountRow<'a> {
    first_name: &'a str,
    last_name: &'a str,
    email: &'a str,
}

impl<'a> AccountRow<'a> {
    /// `full_name` is split at its first space ("Grace Brewster Hopper" ->
    /// "Grace" + "Brewster Hopper"; "Cher" -> "Cher" + ""). A NULL email
    /// becomes `''`, the new column's default.
    fn from_user(user: &'a User) -> Self {
        let (first_name, last_name) = user
            .full_name
            .split_once(' ')
            .unwrap_or((user.full_name.as_str(), ""));
        AccountRow {
            first_name,
            last_name,
            email: user.email.as_deref().unwrap_or(""),
        }
    }
}

/// The mapping back: names joined with one space (exactly undoing the split),
/// and `''` read as "no email". An old row whose email is `''` rather than
/// NULL therefore reads back as `None`: the shadow reads catch that.
fn user_from_account(
    id: u64,
    first_name: String,
    last_name: String,
    email: String,
    version: i64,
) -> User {
    let full_name = if last_name.is_empty() {
        first_name
    } else {
        format!("{first_name} {last_name}")
    };
    User {
        id,
        full_name,
        email: (!email.is_empty()).then_some(email),
        version: from_sql_int(version),
    }
}

pub struct NewStore {
    db: Db,
}

impl NewStore {
    fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(NewStore {
            db: Db::open(path, NEW_SCHEMA)?,
        })
    }

    /// The next `n` writes fail with a transient error.
    fn fail_next(&self, n: u32) {
        self.db.fail_next.store(n, Ordering::SeqCst);
    }

    /// Backfill write: inserts the row only if New has no row for this id.
    /// A row already there came from a live dual write, which is at least as
    /// new as the backfill's copy, so the live write wins. Returns whether
    /// the row was inserted.
    fn backfill_row(&self, user: &User) -> Result<bool, StoreError> {
        let row = AccountRow::from_user(user);
        let conn = self.db.lock()?;
        // dualwrite-lint: allow(DW002) the backfill copies history into the new store only
        let inserted = conn.execute(
            "INSERT INTO accounts (account_id, first_name, last_name, email, version)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account_id) DO NOTHING",
            params![
                sql_int("id", user.id)?,
                row.first_name,
                row.last_name,
                row.email,
                sql_int("version", user.version)?
            ],
        )?;
        Ok(inserted > 0)
    }
}

impl UserRepo for NewStore {
    fn save(&self, user: &User) -> Result<(), StoreError> {
        let row = AccountRow::from_user(user);
        let conn = self.db.lock_for_write()?;
        // Idempotent and ordered by version: a replayed or late write never
        // replaces a newer row.
        conn.execute(
            "INSERT INTO accounts (account_id, first_name, last_name, email, version)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account_id) DO UPDATE SET
                 first_name = excluded.first_name,
                 last_name  = excluded.last_name,
                 email      = excluded.email,
                 version    = excluded.version
             WHERE excluded.version >= accounts.version",
            params![
                sql_int("id", user.id)?,
                row.first_name,
                row.last_name,
                row.email,
                sql_int("version", user.version)?
            ],
        )?;
        Ok(())
    }

    fn delete(&self, id: u64) -> Result<bool, StoreError> {
        let conn = self.db.lock_for_write()?;
        let deleted = conn.execute(
            "DELETE FROM accounts WHERE account_id = ?1",
            [sql_int("id", id)?],
        )?;
        Ok(deleted > 0)
    }

    fn get(&self, id: u64) -> Result<Option<User>, StoreError> {
        let conn = self.db.lock()?;
        let user = conn
            .query_row(
                "SELECT first_name, last_name, email, version FROM accounts
                 WHERE account_id = ?1",
                [sql_int("id", id)?],
                |row| {
                    Ok(user_from_account(
                        id,
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(user)
    }

    fn count(&self) -> Result<u64, StoreError> {
        let conn = self.db.lock()?;
        let count: i64 = conn.query_row("SELECT COUNT(*) FROM accounts", [], |row| row.get(0))?;
        Ok(from_sql_int(count))
    }
}

// ---------------------------------------------------------------------------
// The walk-through
// ---------------------------------------------------------------------------

type Repo = UserRepoDualWrite<OldStore, NewStore>;
type AnyError = Box<dyn Error>;

/// The longest the example waits for the lanes to apply the writes handed to
/// them (a few milliseconds here).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// A directory removed when dropped, so the databases go away even when the
/// example stops on an error.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<Self, AnyError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "dualwrite-quickstart-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {error}", self.0.display());
        }
    }
}

fn main() -> Result<(), AnyError> {
    let dir = TempDir::create()?;
    println!("databases in {}", dir.0.display());
    let result = walk_through(&dir.0);
    // `dir` is dropped (and removed) after the stores are closed.
    result?;
    println!("\nremoved {}", dir.0.display());
    Ok(())
}

fn walk_through(dir: &Path) -> Result<(), AnyError> {
    let old = OldStore::open(&dir.join("old.db"))?;
    let new = NewStore::open(&dir.join("new.db"))?;
    let migration = Migration::new(Phase::Prepare);
    // Secondary writes go to two background lanes (same key, same lane, so
    // per-user order holds), with up to 4 attempts and short backoff.
    let lanes = LaneConfig::default()
        .with_lanes(2)
        .with_max_attempts(4)
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(50));
    let repo: Repo =
        UserRepoDualWrite::new(old, new, migration.clone()).with_async_secondary(lanes);

    // -- 1. Prepare -------------------------------------------------------
    heading(&migration, "reads Old, writes Old only");
    let history = [
        User::new(1, "Ada Lovelace", Some("ada@example.org")),
        User::new(2, "Grace Brewster Hopper", None),
        User::new(3, "Alan Turing", Some("alan@example.org")),
        User::new(4, "Cher", Some("cher@example.org")),
        // A legacy row: email stored as '' rather than NULL.
        User::new(5, "Edsger Dijkstra", Some("")),
        User::new(6, "Barbara Liskov", Some("barbara@example.org")),
    ];
    for user in &history {
        repo.save(user)?;
    }
    repo.flush(FLUSH_TIMEOUT)?;
    counts(&repo)?;
    stats("after seeding 6 users", &repo.stats());

    // -- 2. Dual write (async secondary) ------------------------------------
    migration.set_phase(Phase::DualWrite)?;
    heading(
        &migration,
        "reads Old, writes Old (primary) + New (async lanes)",
    );
    println!("  injecting: the next 3 writes on New fail with a transient error");
    repo.new_store().fail_next(3);
    let margaret = User::new(7, "Margaret Hamilton", Some("margaret@example.org"));
    let ken = User::new(8, "Ken Thompson", None);
    repo.save(&margaret)?;
    repo.save(&ken)?;
    let ada_v2 = history[0].updated(|u| u.email = Some("ada@analytical.engine".into()));
    repo.save(&ada_v2)?;
    println!("  writing user 9 with an empty name: New's CHECK refuses it on every attempt");
    let nameless = User::new(9, "", Some("anon@example.org"));
    repo.save(&nameless)?;
    println!("  every call returned Ok at once; the lanes retry in the background");
    repo.flush(FLUSH_TIMEOUT)?;
    counts(&repo)?;
    stats("after 4 writes, 3 injected failures", &repo.stats());
    let dead = repo.dead_letters();
    for letter in &dead {
        println!(
            "  dead letter: {}(key {}) -> {} after {} attempts: {}",
            letter.method,
            letter.key.as_deref().unwrap_or("-"),
            letter.target,
            letter.attempts,
            letter.error
        );
    }

    // -- 3. Backfill --------------------------------------------------------
    migration.set_phase(Phase::Backfill)?;
    heading(
        &migration,
        "writes still dual; historical rows copied Old -> New",
    );
    let (mut inserted, mut skipped, mut failed, mut after) = (0, 0, 0, 0);
    loop {
        let page = repo.old_store().page_after(after, 4)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        if let Some(alan) = page.iter().find(|u| u.id == 3) {
            // A live write lands between reading the page and writing it:
            // New gets version 2, and the backfill's stale version 1 of
            // user 3 must not overwrite it.
            let alan_v2 = alan.updated(|u| u.email = Some("turing@bletchley.uk".into()));
            println!("  live write during backfill: user 3 -> version 2");
            repo.save(&alan_v2)?;
            repo.flush(FLUSH_TIMEOUT)?;
        }
        for user in &page {
            match repo.new_store().backfill_row(user) {
                Ok(true) => inserted += 1,
                Ok(false) => skipped += 1,
                Err(error) => {
                    failed += 1;
                    println!("  backfill of user {} failed: {error}", user.id);
                }
            }
        }
    }
    println!(
        "  backfill: {inserted} rows inserted, {skipped} skipped (New already had them from live writes), {failed} failed"
    );
    let alan_in_new = repo.new_store().get(3)?;
    println!(
        "  user 3 in New: version {} (the live write won over the backfill)",
        alan_in_new.map_or(0, |u| u.version)
    );
    println!("  reconciling the dead letters:");
    for letter in repo.take_dead_letters() {
        let UserRepoWrite::Save { user } = &letter.command else {
            letter.command.apply(repo.new_store())?;
            continue;
        };
        if letter.error.starts_with("Constraint") {
            // Permanent: replaying cannot help, the record must be repaired.
            // Repair it at the source, through the adapter, so both stores
            // get the fixed version.
            let repaired = user.updated(|u| u.full_name = "Anonymous".into());
            println!(
                "    user {}: repaired name -> {:?} (version {})",
                user.id, repaired.full_name, repaired.version
            );
            repo.save(&repaired)?;
        } else {
            letter.command.apply(repo.new_store())?;
            println!("    user {}: replayed", user.id);
        }
    }
    repo.flush(FLUSH_TIMEOUT)?;
    counts(&repo)?;
    stats("after backfill and reconciliation", &repo.stats());

    // -- 4. Shadow read -----------------------------------------------------
    migration.set_phase(Phase::ShadowRead)?;
    heading(&migration, "reads Old (answer) + New (compared)");
    let before = repo.stats();
    shadow_pass(&repo)?;
    let first = repo.stats();
    let (matched, mismatched, skipped) = (
        first.reads_matched - before.reads_matched,
        first.reads_mismatched - before.reads_mismatched,
        first.reads_skipped_pending - before.reads_skipped_pending,
    );
    println!(
        "  pass 1: {matched} matched, {mismatched} mismatched, {skipped} not compared (write pending)"
    );
    for id in 1..=9 {
        let (in_old, in_new) = (repo.old_store().get(id)?, repo.new_store().get(id)?);
        if in_old != in_new {
            println!("    user {id}: Old {in_old:?}\n            New {in_new:?}");
            if let Some(user) = in_old {
                // The legacy '' email is really "no email": normalise it in
                // the primary, and the dual write carries it to New.
                let fixed = user.updated(|u| {
                    if u.email.as_deref() == Some("") {
                        u.email = None;
                    }
                });
                repo.save(&fixed)?;
                println!(
                    "    -> normalised email '' to NULL (version {})",
                    fixed.version
                );
            }
        }
    }
    repo.flush(FLUSH_TIMEOUT)?;
    shadow_pass(&repo)?;
    let second = repo.stats();
    let (matched, mismatched, skipped) = (
        second.reads_matched - first.reads_matched,
        second.reads_mismatched - first.reads_mismatched,
        second.reads_skipped_pending - first.reads_skipped_pending,
    );
    println!(
        "  pass 2: {matched} matched, {mismatched} mismatched, {skipped} not compared (write pending)"
    );
    stats("after two shadow passes", &second);
    let last_pass = match matched + mismatched {
        0 => 0.0,
        compared => matched as f64 / compared as f64 * 100.0,
    };
    let success = second.secondary_success_rate().unwrap_or(1.0) * 100.0;
    println!(
        "  cutover criteria: last pass {last_pass:.1}% match (> 99.9%), backfill 100%, dead letters open: {}, secondary success rate {success:.1}% (incl. injected failures)",
        repo.core().dead_letter_count()
    );

    // -- 5. Cutover ---------------------------------------------------------
    migration.set_phase(Phase::Cutover)?;
    heading(&migration, "reads New, writes New (primary) + Old (async)");
    let linus = User::new(10, "Linus Torvalds", Some("linus@example.org"));
    repo.save(&linus)?;
    println!(
        "  read user 10 -> {:?} (answered by New)",
        repo.get(10)?.map(|u| u.full_name)
    );
    repo.flush(FLUSH_TIMEOUT)?;
    println!(
        "  user 10 also in Old (rollback still possible): {}",
        repo.old_store().get(10)?.is_some()
    );
    counts(&repo)?;
    stats("after cutover", &repo.stats());

    // -- 6. Cleanup ---------------------------------------------------------
    migration.set_phase(Phase::Cleanup)?;
    heading(&migration, "reads New, writes New only");
    repo.delete(8)?;
    repo.save(&User::new(11, "Frances Allen", None))?;
    repo.flush(FLUSH_TIMEOUT)?;
    println!(
        "  user 11 in Old: {}, user 8 still in Old: {} (Old is no longer written)",
        repo.old_store().get(11)?.is_some(),
        repo.old_store().get(8)?.is_some()
    );
    match migration.set_phase(Phase::DualWrite) {
        Ok(_) => println!("  unexpected: cleanup rolled back"),
        Err(error) => println!("  rollback refused: {error}"),
    }
    counts(&repo)?;
    stats("final", &repo.stats());
    Ok(())
}

/// Reads every user and the count through the adapter.
fn shadow_pass(repo: &Repo) -> Result<(), StoreError> {
    for id in 1..=9 {
        repo.get(id)?;
    }
    repo.count()?;
    Ok(())
}

fn heading(migration: &Migration, what: &str) {
    println!("\n== phase {}: {what}", migration.phase());
}

fn counts(repo: &Repo) -> Result<(), StoreError> {
    println!(
        "  rows: Old users = {}, New accounts = {}",
        repo.old_store().count()?,
        repo.new_store().count()?
    );
    Ok(())
}

fn stats(label: &str, s: &StatsSnapshot) {
    println!("  stats ({label}):");
    println!(
        "    primary ok/failed {}/{}  secondary ok/failed {}/{}  retries {}  dead letters {}  pending {}",
        s.primary_writes_ok,
        s.primary_writes_failed,
        s.secondary_writes_ok,
        s.secondary_writes_failed,
        s.secondary_retries,
        s.dead_letters,
        s.secondary_pending
    );
    println!(
        "    old ok/failed {}/{}  new ok/failed {}/{}  shadow reads matched/mismatched/skipped {}/{}/{}",
        s.old_writes_ok,
        s.old_writes_failed,
        s.new_writes_ok,
        s.new_writes_failed,
        s.reads_matched,
        s.reads_mismatched,
        s.reads_skipped_pending
    );
}

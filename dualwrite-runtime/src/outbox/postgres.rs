//! The outbox journal in PostgreSQL tables (feature `outbox-postgres`),
//! drained by any number of application instances.
//!
//! **Tables** (created if missing; `T` is the journal table's name,
//! `dualwrite_outbox` unless [`PgJournalOptions::table`] says otherwise):
//!
//! ```text
//! T           id BIGSERIAL PRIMARY KEY (journal order), stream, idempotency_id UNIQUE,
//!             seq BIGINT, key_text, key_hash BIGINT (the route hash's bits),
//!             part INTEGER (key_hash as unsigned mod the partition count; 0 without a key),
//!             method, target ('old'/'new'), payload (the command, serde_json),
//!             state SMALLINT (0 pending, 1 done, 2 dead), attempts, last_error,
//!             claimed_by, claim_epoch (the lease a record was last claimed under),
//!             created_at, updated_at (timestamptz)
//! T_meta      format, partitions: one row; the partition count is fixed when the
//!             journal is created
//! T_leases    (stream, part) PRIMARY KEY, owner, epoch (the fencing token: raised on
//!             every acquisition), expires_at, acquired_at
//! T_members   owner PRIMARY KEY, started_at, heartbeat_at: the instances, with
//!             [`PgJournal::members`] showing which holds what
//! ```
//!
//! **Partitions and leases.** A record's partition is its key's route hash
//! modulo the partition count, so every record of a key is in one
//! partition. An instance drains a partition only while it holds the
//! partition's lease (per stream). A background task of each journal
//! handle renews its leases every third of [`PgJournalOptions::lease_ttl`],
//! takes free or expired leases up to its fair share (partitions divided by
//! the live instances, rounded up), and gives back leases above its share
//! (it stops claiming from them, and releases each once nothing claimed
//! under it is in flight), so instances share the partitions, a joining
//! instance gets its part, and a killed instance's partitions move to the
//! others once their leases expire. Claims lock the claimer's lease rows and read
//! pending records with `FOR UPDATE SKIP LOCKED`: a lease cannot change
//! hands during a claim, so a new owner sees every record its predecessor
//! claimed and resumes the partition in journal order.
//!
//! **Fencing.** Each claimed record is marked with the lease epoch it was
//! claimed under, and outcomes (done, retrying, dead) are written only
//! while the instance still holds that lease with that epoch. An instance
//! that lost a lease (paused past its expiry, cut off from the database)
//! writes nothing for it: its records stay pending and the new owner
//! applies them again. A claim is not made twice under one lease epoch,
//! except when nothing of the stream is in flight in the instance: then
//! every pending record under its leases is claimed again, so a record
//! whose claim never reached the instance (an answer lost with its
//! connection, a claim timed out after the server committed it) is not
//! stranded. Delivery is at least once, across instances as
//! within one: give the secondary [`mark_applied`] or a version guard
//! ([`WriteContext::version`]).
//!
//! **Order.** Per key, records are applied in journal order by one
//! instance at a time. Records of one key appended by one instance are
//! journaled in the order its primary committed them (the key's stripe is
//! held through the append). Two instances writing the same key at once
//! journal in the order their appends commit.
//!
//! **Durability** ([`Durability`], for the appends the runtime makes after
//! the primary write; set on the journal's connections):
//!
//! | policy | `synchronous_commit` | commits | a caller returns when |
//! |---|---|---|---|
//! | `PerWrite` | `on` | one per append (concurrent appends commit on their own connections) | its record is flushed on the server |
//! | `Grouped` | `on` | one per batch of concurrent appends (one insert of the batch) | its batch is flushed |
//! | `None` | `off` | one per append, not waited for | the server has it in memory (a server crash may lose the last ones) |
//!
//! **Transactional outbox**: a primary store in the same PostgreSQL
//! database inserts the record in the transaction of its write with
//! [`append_in`]; it commits with the write or not at all.
//!
//! **Pending counts.** A journal shared by instances does not count the
//! stream's pending records when an adapter starts (another instance may
//! drain them): a record is counted when this instance claims it, or when
//! it journals it. A record this instance journaled and another one
//! applied is released when the journal shows it done ([`Journal::settled`]),
//! so a flush waits for the writes of this instance wherever they are
//! applied.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, ConnectOptions, Row};

use super::{
    Claimed, Durability, IdempotencyId, Journal, JournalListener, JournalRecord, NewRecord,
    OutboxError, Outcome, RecordState, Side, Unreadable, WriteContext, clock_sequence_with,
};
use crate::phase::Store;

/// The default journal table.
pub const TABLE: &str = "dualwrite_outbox";

/// The table [`mark_applied`] keeps applied idempotency ids in.
pub const APPLIED_TABLE: &str = "dualwrite_applied";

/// The format version this runtime writes and reads.
const FORMAT: &str = "pg-1";

/// 2^64, to read a key hash's bits as an unsigned number in SQL.
const TWO_TO_64: &str = "18446744073709551616";

/// How a [`PgJournal`] is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct PgJournalOptions {
    /// When appends are durable; default [`Durability::PerWrite`].
    pub durability: Durability,
    /// The schema of the tables; default: the connection's search path
    /// (`public`).
    pub schema: Option<String>,
    /// The journal table; the others are named after it (`_meta`,
    /// `_leases`, `_members`). Default [`TABLE`]. Lowercase letters,
    /// digits and `_`, at most 40 bytes.
    pub table: String,
    /// Partitions of a new journal; default 16, 1 to 4096. An existing
    /// journal keeps the count it was created with.
    pub partitions: u32,
    /// How long a lease lasts without renewal: how long a killed instance's
    /// partitions wait before another instance takes them. Default 10 s,
    /// at least 300 ms.
    pub lease_ttl: Duration,
    /// The instance's name in the leases and members tables; default
    /// `<host>-<pid>-<random>`. Unique per journal handle.
    pub owner: Option<String>,
    /// Create the tables when missing; default true. When false, a missing
    /// journal is [`OutboxError::Missing`].
    pub create: bool,
    /// Connections of the journal's pool; default 8.
    pub max_connections: u32,
    /// The longest one journal operation may take; default 30 s.
    pub timeout: Duration,
    /// Added to this process's clock (microseconds), as if it were that far
    /// off: for tests of the sequence's clock. Default 0.
    #[doc(hidden)]
    pub local_clock_skew_micros: i64,
}

impl Default for PgJournalOptions {
    fn default() -> Self {
        PgJournalOptions {
            durability: Durability::PerWrite,
            schema: None,
            table: TABLE.to_owned(),
            partitions: 16,
            lease_ttl: Duration::from_secs(10),
            owner: None,
            create: true,
            max_connections: 8,
            timeout: Duration::from_secs(30),
            local_clock_skew_micros: 0,
        }
    }
}

impl PgJournalOptions {
    /// The defaults with this durability.
    pub fn new(durability: Durability) -> Self {
        PgJournalOptions {
            durability,
            ..Self::default()
        }
    }

    /// Sets [`PgJournalOptions::schema`].
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Sets [`PgJournalOptions::table`].
    #[must_use]
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Sets [`PgJournalOptions::partitions`].
    #[must_use]
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets [`PgJournalOptions::lease_ttl`].
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets [`PgJournalOptions::owner`].
    #[must_use]
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets [`PgJournalOptions::create`].
    #[must_use]
    pub fn with_create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Sets [`PgJournalOptions::max_connections`].
    #[must_use]
    pub fn with_max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets [`PgJournalOptions::timeout`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn validate(&self) -> Result<(), OutboxError> {
        let bad = |detail: String| OutboxError::Format {
            path: self.table.clone(),
            detail,
        };
        if let Some(schema) = &self.schema {
            check_identifier(schema, 63).map_err(bad)?;
        }
        check_identifier(&self.table, 40).map_err(bad)?;
        if !(1..=4096).contains(&self.partitions) {
            return Err(bad(format!(
                "{} partitions: a journal has 1 to 4096",
                self.partitions
            )));
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(bad(format!(
                "a lease of {:?} is too short: at least 300 ms",
                self.lease_ttl
            )));
        }
        Ok(())
    }
}

/// An identifier the journal accepts: lowercase ASCII letters, digits and
/// `_`, not starting with a digit.
fn check_identifier(name: &str, max: usize) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a usable name: lowercase letters, digits and `_`, not starting with a digit, at most {max} bytes"
        ))
    }
}

/// How many records the journal holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalCounts {
    /// Waiting to be applied.
    pub pending: u64,
    /// Applied, not pruned yet.
    pub done: u64,
    /// Dead letters.
    pub dead: u64,
}

/// A partition lease, as [`PgJournal::members`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The stream it is for.
    pub stream: String,
    /// The partition.
    pub partition: u32,
    /// The fencing token of the holder's acquisition.
    pub epoch: i64,
    /// Whether it is still valid (not expired).
    pub valid: bool,
}

/// An instance draining the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name ([`PgJournalOptions::owner`]).
    pub owner: String,
    /// Whether it renewed its presence within a lease's lifetime.
    pub alive: bool,
    /// The leases it holds (valid or expired and not taken over yet).
    pub leases: Vec<Lease>,
}

/// The SQL of one journal, with its table names filled in.
struct Sql {
    qualified: String,
    meta: String,
    leases: String,
    members: String,
    columns: String,
    insert_one: String,
    insert_many: String,
    claim: String,
    outcomes: String,
}

impl Sql {
    fn new(schema: Option<&str>, table: &str) -> Self {
        let name = |suffix: &str| match schema {
            Some(schema) => format!("\"{schema}\".\"{table}{suffix}\""),
            None => format!("\"{table}{suffix}\""),
        };
        let qualified = name("");
        let meta = name("_meta");
        let leases = name("_leases");
        let members = name("_members");
        let columns = "j.id, j.stream, j.idempotency_id, j.seq, j.key_text, j.key_hash, j.method, \
                       j.target, j.payload, j.state, j.attempts, j.last_error, \
                       extract(epoch from j.created_at)::float8 AS created, \
                       extract(epoch from j.updated_at)::float8 AS updated, j.part"
            .to_owned();
        let part = |hash: &str| {
            format!(
                "CASE WHEN {hash} IS NULL THEN 0 ELSE ((({hash})::numeric + CASE WHEN {hash} < 0 THEN {TWO_TO_64} ELSE 0 END) % m.partitions)::int END"
            )
        };
        let insert_one = format!(
            "INSERT INTO {qualified} (stream, idempotency_id, seq, key_text, key_hash, part, method, target, payload) \
             SELECT $1, $2, $3, $4, $5::bigint, {}, $6, $7, $8 FROM {meta} m",
            part("$5::bigint")
        );
        let insert_many = format!(
            "INSERT INTO {qualified} (stream, idempotency_id, seq, key_text, key_hash, part, method, target, payload) \
             SELECT r.stream, r.idempotency_id, r.seq, r.key_text, r.key_hash, {}, r.method, r.target, r.payload \
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[]) \
               WITH ORDINALITY AS r(stream, idempotency_id, seq, key_text, key_hash, method, target, payload, n) \
             CROSS JOIN {meta} m ORDER BY r.n",
            part("r.key_hash")
        );
        // The held leases' epochs as one array indexed by partition (NULL
        // where not held; $6 is the partition count the journal was opened
        // with, read from its one meta row): a row's lease is one subscript
        // away, where a join re-read every held lease for each row walked
        // (32 ms a claim over 20 000 pending rows, against 6 ms). The
        // claimed rows are updated through the primary key, not a hash of
        // the whole table.
        let claim = format!(
            "WITH held AS ( \
               SELECT part, epoch FROM {leases} \
               WHERE stream = $1 AND owner = $2 AND expires_at > now() \
                 AND NOT (part = ANY($4::int[])) FOR UPDATE \
             ), h AS ( \
               SELECT array_agg(held.epoch ORDER BY g.part) AS epochs \
               FROM generate_series(0, $6::int - 1) AS g(part) \
               LEFT JOIN held ON held.part = g.part \
             ), picked AS ( \
               SELECT j.id FROM {qualified} j CROSS JOIN h \
               WHERE j.stream = $1 AND j.state = 0 AND h.epochs[j.part + 1] IS NOT NULL \
                 AND (j.claim_epoch IS DISTINCT FROM h.epochs[j.part + 1] OR $5) \
               ORDER BY j.id LIMIT $3 FOR UPDATE OF j SKIP LOCKED \
             ) \
             UPDATE {qualified} j SET claimed_by = $2, claim_epoch = h.epochs[j.part + 1] \
             FROM h WHERE j.id = ANY(ARRAY(SELECT id FROM picked)) \
             RETURNING {columns}, h.epochs[j.part + 1] AS lease_epoch"
        );
        // Each outcome carries the stream, partition and lease epoch its
        // record was claimed under, so the lease is found by its key (a
        // join on the epoch alone matched every lease with every outcome:
        // 70 ms for 1 024 outcomes over 64 leases, against 7.5 ms).
        let outcomes = format!(
            "UPDATE {qualified} j SET state = o.state, attempts = o.attempts, \
               last_error = coalesce(o.error, j.last_error), updated_at = now() \
             FROM unnest($1::bigint[], $2::smallint[], $3::int[], $4::text[], $5::bigint[], \
                         $7::text[], $8::int[]) \
               AS o(id, state, attempts, error, epoch, stream, part), {leases} l \
             WHERE j.id = o.id AND j.state = 0 AND j.stream = o.stream AND j.part = o.part \
               AND l.stream = o.stream AND l.part = o.part \
               AND l.owner = $6 AND l.epoch = o.epoch"
        );
        Sql {
            qualified,
            meta,
            leases,
            members,
            columns,
            insert_one,
            insert_many,
            claim,
            outcomes,
        }
    }
}

/// A claimed record not finished yet: the lease it was claimed under.
#[derive(Debug, Clone)]
struct Outstanding {
    stream: String,
    part: i32,
    epoch: i64,
}

/// What the lease task and the claims share.
#[derive(Default)]
struct LeaseState {
    /// Streams this handle drains, with their adapters.
    streams: HashMap<String, Weak<dyn JournalListener>>,
    /// Streams whose lease rows exist.
    seeded: HashSet<String>,
    /// Leases held: (stream, part) -> epoch.
    held: HashMap<(String, i32), i64>,
    /// Claimed records without a final outcome, by id.
    outstanding: HashMap<i64, Outstanding>,
    /// Leases above the fair share, not claimed from any more and given
    /// back once nothing claimed under them is in flight.
    releasing: HashSet<(String, i32)>,
}

struct Inner {
    pool: PgPool,
    sql: Sql,
    owner: String,
    partitions: u32,
    lease_ttl: Duration,
    leases: Mutex<LeaseState>,
    /// The group-commit queue (`Durability::Grouped`).
    group: Option<tokio::sync::mpsc::UnboundedSender<GroupItem>>,
    stop: AtomicBool,
    shown: String,
    /// The database server's clock minus this process's, in microseconds,
    /// as last measured: sequences (record versions) follow the server's
    /// clock, so instances whose clocks disagree still number one key's
    /// records in the order they were made (to the measurement's error, a
    /// round trip at most).
    clock_offset: AtomicI64,
    /// See [`PgJournalOptions::local_clock_skew_micros`].
    local_skew: i64,
}

impl Inner {
    fn leases(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type GroupItem = (NewRecord, mpsc::SyncSender<Result<(), OutboxError>>);

/// The outbox journal in PostgreSQL tables; see the module docs.
pub struct PgJournal {
    /// The client and the runtime it runs on; `None` only while dropping.
    client: Option<(Arc<Inner>, tokio::runtime::Runtime)>,
    location: String,
    durability: Durability,
    timeout: Duration,
    sequence: AtomicU64,
}

impl PgJournal {
    /// Opens (creating if needed) the journal in the database at `url`
    /// (`postgres://user@host/db`) with the default table names.
    pub fn open(url: &str, durability: Durability) -> Result<Self, OutboxError> {
        Self::open_with(url, PgJournalOptions::new(durability))
    }

    /// Opens the journal with these options: connects, checks the tables
    /// (creating them if allowed and missing), registers the instance and
    /// starts its lease task. A table of another shape is
    /// [`OutboxError::Format`], nothing is changed in it.
    pub fn open_with(url: &str, options: PgJournalOptions) -> Result<Self, OutboxError> {
        options.validate()?;
        let shown = hide_password(url);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dualwrite-outbox-pg")
            .enable_all()
            .build()
            .map_err(|error| OutboxError::Storage {
                during: "starting the journal's client runtime",
                error: error.to_string(),
            })?;
        let owner = options.owner.clone().unwrap_or_else(default_owner);
        let sql = Sql::new(options.schema.as_deref(), &options.table);
        let location = format!(
            "{shown}#{}",
            match &options.schema {
                Some(schema) => format!("{schema}.{}", options.table),
                None => options.table.clone(),
            }
        );
        let connect = {
            let url = url.to_owned();
            let options = options.clone();
            let shown = shown.clone();
            async move {
                let synchronous = match options.durability {
                    Durability::PerWrite | Durability::Grouped => "on",
                    Durability::None => "off",
                };
                let connect: PgConnectOptions = url.parse().map_err(storage("parsing the URL"))?;
                let connect = connect
                    .application_name("dualwrite-outbox")
                    .options([("synchronous_commit", synchronous)])
                    .disable_statement_logging();
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections.max(2))
                    .acquire_timeout(options.timeout)
                    .connect_with(connect)
                    .await
                    .map_err(|error| OutboxError::Storage {
                        during: "connecting",
                        error: format!("{shown}: {error}"),
                    })?;
                let partitions = ensure_schema(&pool, &sql, &options).await?;
                Ok((pool, sql, partitions))
            }
        };
        let (pool, sql, partitions) = run_on(&runtime, options.timeout, connect)?;
        let high = run_on(&runtime, options.timeout, {
            let pool = pool.clone();
            let query = format!("SELECT coalesce(max(seq), 0) FROM {}", sql.qualified);
            async move {
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(query))
                    .fetch_one(&pool)
                    .await
                    .map_err(storage("reading the sequence"))
            }
        })?;
        let (group, group_rx) = if options.durability == Durability::Grouped {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let inner = Arc::new(Inner {
            pool,
            sql,
            owner,
            partitions,
            lease_ttl: options.lease_ttl,
            leases: Mutex::new(LeaseState::default()),
            group,
            stop: AtomicBool::new(false),
            shown,
            clock_offset: AtomicI64::new(0),
            local_skew: options.local_clock_skew_micros,
        });
        // Sequences follow the server's clock from the first append on.
        run_on(&runtime, options.timeout, {
            let inner = Arc::clone(&inner);
            async move { measure_clock(&inner).await }
        })?;
        if let Some(rx) = group_rx {
            runtime.spawn(group_commit(Arc::clone(&inner), rx));
        }
        runtime.spawn(lease_task(Arc::clone(&inner)));
        Ok(PgJournal {
            client: Some((inner, runtime)),
            location,
            durability: options.durability,
            timeout: options.timeout,
            sequence: AtomicU64::new(u64::try_from(high).unwrap_or(0)),
        })
    }

    /// The durability of the runtime's appends.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// This instance's name in the leases and members tables.
    pub fn owner(&self) -> &str {
        self.inner().map_or("", |inner| inner.owner.as_str())
    }

    /// The journal's partition count (fixed when it was created).
    pub fn partitions(&self) -> u32 {
        self.inner().map_or(0, |inner| inner.partitions)
    }

    /// The journal table, schema-qualified and quoted as in SQL.
    pub fn table(&self) -> &str {
        self.inner()
            .map_or("", |inner| inner.sql.qualified.as_str())
    }

    /// The partitions of `stream` this handle holds the lease of, sorted.
    pub fn held_partitions(&self, stream: &str) -> Vec<u32> {
        let Some(inner) = self.inner() else {
            return Vec::new();
        };
        let mut held: Vec<u32> = inner
            .leases()
            .held
            .keys()
            .filter(|(s, _)| s == stream)
            .map(|(_, part)| u32::try_from(*part).unwrap_or(0))
            .collect();
        held.sort_unstable();
        held
    }

    fn inner(&self) -> Option<&Arc<Inner>> {
        self.client.as_ref().map(|(inner, _)| inner)
    }

    /// Runs `task` on the journal's runtime and waits for it.
    fn run<T, F>(&self, task: impl FnOnce(Arc<Inner>) -> F) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, OutboxError>> + Send + 'static,
    {
        self.run_within(self.timeout, task)
    }

    /// Like [`PgJournal::run`], waiting at most `timeout`.
    fn run_within<T, F>(
        &self,
        timeout: Duration,
        task: impl FnOnce(Arc<Inner>) -> F,
    ) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, OutboxError>> + Send + 'static,
    {
        let Some((inner, runtime)) = &self.client else {
            return Err(OutboxError::Storage {
                during: "using the journal",
                error: "the journal is closed".to_owned(),
            });
        };
        run_on(runtime, timeout, task(Arc::clone(inner)))
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<JournalRecord>, OutboxError> {
        self.select("listing dead letters", "j.state = 2", None)
    }

    /// Every record of a stream (pending, done and dead), in journal order.
    pub fn records(&self, stream: &str) -> Result<Vec<JournalRecord>, OutboxError> {
        self.select("listing records", "j.stream = $1", Some(stream.to_owned()))
    }

    fn select(
        &self,
        during: &'static str,
        filter: &str,
        stream: Option<String>,
    ) -> Result<Vec<JournalRecord>, OutboxError> {
        let filter = filter.to_owned();
        self.run(move |inner| async move {
            let query = format!(
                "SELECT {} FROM {} j WHERE {filter} ORDER BY j.id",
                inner.sql.columns, inner.sql.qualified
            );
            let mut query = sqlx::query(AssertSqlSafe(query));
            if let Some(stream) = stream {
                query = query.bind(stream);
            }
            let rows = query
                .fetch_all(&inner.pool)
                .await
                .map_err(storage(during))?;
            rows.iter().map(read_record).collect()
        })
    }

    /// How many records the journal holds, by state, over every stream.
    pub fn counts(&self) -> Result<JournalCounts, OutboxError> {
        self.run(|inner| async move {
            let query = format!(
                "SELECT state::int8, count(*) FROM {} GROUP BY state",
                inner.sql.qualified
            );
            let rows: Vec<(i64, i64)> = sqlx::query_as(AssertSqlSafe(query))
                .fetch_all(&inner.pool)
                .await
                .map_err(storage("counting records"))?;
            let mut counts = JournalCounts::default();
            for (state, count) in rows {
                let count = u64::try_from(count).unwrap_or(0);
                match RecordState::from_code(state) {
                    Some(RecordState::Pending) => counts.pending += count,
                    Some(RecordState::Done) => counts.done += count,
                    Some(RecordState::Dead) => counts.dead += count,
                    None => {
                        return Err(OutboxError::Format {
                            path: inner.sql.qualified.clone(),
                            detail: format!("{count} rows in an unknown state {state}"),
                        });
                    }
                }
            }
            Ok(counts)
        })
    }

    /// The instances that registered on the journal and the leases they
    /// hold: which instance drains which partitions.
    pub fn members(&self) -> Result<Vec<Member>, OutboxError> {
        self.run(|inner| async move {
            let ttl = inner.lease_ttl.as_secs_f64();
            let query = format!(
                "SELECT m.owner, m.heartbeat_at > now() - make_interval(secs => $1) AS alive, \
                        l.stream, l.part, l.epoch, l.expires_at > now() AS valid \
                 FROM {} m LEFT JOIN {} l ON l.owner = m.owner \
                 ORDER BY m.owner, l.stream, l.part",
                inner.sql.members, inner.sql.leases
            );
            let rows = sqlx::query(AssertSqlSafe(query))
                .bind(ttl)
                .fetch_all(&inner.pool)
                .await
                .map_err(storage("listing members"))?;
            let mut members: Vec<Member> = Vec::new();
            for row in rows {
                let owner: String = row.try_get(0).map_err(storage("listing members"))?;
                let alive: bool = row.try_get(1).map_err(storage("listing members"))?;
                if members.last().is_none_or(|m| m.owner != owner) {
                    members.push(Member {
                        owner,
                        alive,
                        leases: Vec::new(),
                    });
                }
                let stream: Option<String> = row.try_get(2).map_err(storage("listing members"))?;
                if let (Some(stream), Some(member)) = (stream, members.last_mut()) {
                    let part: i32 = row.try_get(3).map_err(storage("listing members"))?;
                    member.leases.push(Lease {
                        stream,
                        partition: u32::try_from(part).unwrap_or(0),
                        epoch: row.try_get(4).map_err(storage("listing members"))?,
                        valid: row.try_get(5).map_err(storage("listing members"))?,
                    });
                }
            }
            Ok(members)
        })
    }

    /// Makes a dead letter pending again, at the end of the journal: a new
    /// id, the same idempotency id and sequence, attempts from zero.
    /// Returns the new id.
    pub fn replay(&self, id: i64) -> Result<i64, OutboxError> {
        let moved = self.requeue(
            "replaying a dead letter",
            "j.id = $1 AND j.state = 2",
            RequeueBy::Id(id),
        )?;
        match moved.first() {
            Some(new_id) => Ok(*new_id),
            None => Err(self.not_dead(id)),
        }
    }

    /// Makes every done record of `stream` (not pruned yet) pending again,
    /// at the end of the journal in their order: a redelivery drill. A
    /// secondary that applies records idempotently shows no change
    /// afterwards. Returns how many records were requeued.
    pub fn requeue_done(&self, stream: &str) -> Result<u64, OutboxError> {
        let moved = self.requeue(
            "requeueing done records",
            "j.stream = $1 AND j.state = 1",
            RequeueBy::Stream(stream.to_owned()),
        )?;
        Ok(moved.len() as u64)
    }

    /// Moves the rows matching `filter` to the end of the journal as
    /// pending records (new ids) in one transaction, telling the adapters
    /// of their streams.
    fn requeue(
        &self,
        during: &'static str,
        filter: &'static str,
        by: RequeueBy,
    ) -> Result<Vec<i64>, OutboxError> {
        self.run(move |inner| async move {
            let mut tx = inner.pool.begin().await.map_err(storage(during))?;
            let select = format!(
                "SELECT j.stream, j.key_hash, j.idempotency_id FROM {} j WHERE {filter} ORDER BY j.id FOR UPDATE",
                inner.sql.qualified
            );
            let rows: Vec<(String, Option<i64>, String)> = by
                .bind_as(sqlx::query_as(AssertSqlSafe(select)))
                .fetch_all(&mut *tx)
                .await
                .map_err(storage(during))?;
            let announced: Vec<(Arc<dyn JournalListener>, IdempotencyId, Option<u64>)> = {
                let leases = inner.leases();
                rows.iter()
                    .filter_map(|(stream, hash, id)| {
                        let listener = leases.streams.get(stream)?.upgrade()?;
                        Some((listener, id.parse().ok()?, hash.map(unsigned)))
                    })
                    .collect()
            };
            for (listener, id, hash) in &announced {
                listener.requeuing(*id, *hash);
            }
            let moved = format!(
                "WITH old AS (DELETE FROM {t} j WHERE {filter} RETURNING j.*) \
                 INSERT INTO {t} (stream, idempotency_id, seq, key_text, key_hash, part, method, target, payload, created_at) \
                 SELECT stream, idempotency_id, seq, key_text, key_hash, part, method, target, payload, created_at \
                 FROM old ORDER BY id RETURNING id",
                t = inner.sql.qualified
            );
            let result = async {
                let ids: Vec<i64> = by
                    .bind_scalar(sqlx::query_scalar(AssertSqlSafe(moved)))
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(ids)
            }
            .await;
            match result {
                Ok(mut ids) => {
                    ids.sort_unstable();
                    for (listener, _, _) in &announced {
                        listener.wake();
                    }
                    Ok(ids)
                }
                Err(error) => {
                    for (listener, id, hash) in &announced {
                        listener.requeue_failed(*id, *hash);
                    }
                    Err(storage(during)(error))
                }
            }
        })
    }

    /// The error for a record that could not be replayed or discarded.
    fn not_dead(&self, id: i64) -> OutboxError {
        let state = self.run(move |inner| async move {
            let query = format!(
                "SELECT state::int8 FROM {} WHERE id = $1",
                inner.sql.qualified
            );
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(query))
                .bind(id)
                .fetch_optional(&inner.pool)
                .await
                .map_err(storage("looking a record up"))
        });
        match state {
            Ok(None) => OutboxError::NotFound { id },
            Ok(Some(code)) => match RecordState::from_code(code) {
                Some(state) => OutboxError::NotDead { id, state },
                None => OutboxError::BadRecord {
                    id,
                    detail: format!("unknown state {code}"),
                },
            },
            Err(error) => error,
        }
    }

    /// Deletes a dead letter (after repairing its write by other means).
    pub fn discard(&self, id: i64) -> Result<(), OutboxError> {
        let deleted = self.run(move |inner| async move {
            let query = format!(
                "DELETE FROM {} WHERE id = $1 AND state = 2",
                inner.sql.qualified
            );
            sqlx::query(AssertSqlSafe(query))
                .bind(id)
                .execute(&inner.pool)
                .await
                .map(|done| done.rows_affected())
                .map_err(storage("discarding a dead letter"))
        })?;
        if deleted == 1 {
            Ok(())
        } else {
            Err(self.not_dead(id))
        }
    }

    /// Deletes done records last changed more than `older_than` ago;
    /// how many it deleted.
    pub fn prune_done(&self, older_than: Duration) -> Result<u64, OutboxError> {
        let before = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(UNIX_EPOCH);
        let mut total = 0;
        loop {
            let deleted = Journal::prune(self, before, 10_000)?;
            total += deleted;
            if deleted < 10_000 {
                return Ok(total);
            }
        }
    }

    /// Drops the journal's tables (all records with them). For tests and
    /// tear-down; other handles on the tables fail afterwards.
    pub fn drop_tables(&self) -> Result<(), OutboxError> {
        self.run(|inner| async move {
            let query = format!(
                "DROP TABLE IF EXISTS {}, {}, {}, {}",
                inner.sql.qualified, inner.sql.meta, inner.sql.leases, inner.sql.members
            );
            sqlx::raw_sql(AssertSqlSafe(query))
                .execute(&inner.pool)
                .await
                .map(drop)
                .map_err(storage("dropping the journal"))
        })
    }
}

/// What [`PgJournal::requeue`] binds as `$1`.
#[derive(Clone)]
enum RequeueBy {
    Id(i64),
    Stream(String),
}

impl RequeueBy {
    fn bind_as<'q, O>(
        &self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        match self {
            RequeueBy::Id(id) => query.bind(*id),
            RequeueBy::Stream(stream) => query.bind(stream.clone()),
        }
    }

    fn bind_scalar<'q, O>(
        &self,
        query: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        match self {
            RequeueBy::Id(id) => query.bind(*id),
            RequeueBy::Stream(stream) => query.bind(stream.clone()),
        }
    }
}

impl Drop for PgJournal {
    fn drop(&mut self) {
        if let Some((inner, runtime)) = self.client.take() {
            inner.stop.store(true, Ordering::SeqCst);
            // Leases given back, so another instance resumes the
            // partitions at once rather than after they expire.
            let release = {
                let inner = Arc::clone(&inner);
                async move { release_all(&inner).await }
            };
            let _ = run_on(&runtime, Duration::from_secs(2), release);
            {
                let _context = runtime.enter();
                drop(inner);
            }
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PgJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgJournal")
            .field("location", &self.location)
            .field("owner", &self.owner())
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl Journal for PgJournal {
    fn location(&self) -> &str {
        &self.location
    }

    fn next_sequence(&self) -> u64 {
        let offset = self.inner().map_or(0, |inner| {
            inner.local_skew + inner.clock_offset.load(Ordering::Relaxed)
        });
        clock_sequence_with(&self.sequence, offset)
    }

    fn append(&self, record: &NewRecord) -> Result<(), OutboxError> {
        let record = record.clone();
        if self.durability == Durability::Grouped {
            let Some(inner) = self.inner() else {
                return Err(OutboxError::Storage {
                    during: "appending a record",
                    error: "the journal is closed".to_owned(),
                });
            };
            let (reply, answer) = mpsc::sync_channel(1);
            if let Some(group) = &inner.group
                && group.send((record, reply)).is_ok()
            {
                return answer.recv_timeout(self.timeout).unwrap_or_else(|_| {
                    Err(OutboxError::Storage {
                        during: "appending a record",
                        error: format!("no commit within {:?}", self.timeout),
                    })
                });
            }
            return Err(OutboxError::Storage {
                during: "appending a record",
                error: "the group commit task stopped".to_owned(),
            });
        }
        self.run(move |inner| async move {
            bind_record(
                sqlx::query(AssertSqlSafe(inner.sql.insert_one.as_str())),
                &record,
            )
            .execute(&inner.pool)
            .await
            .map(drop)
            .map_err(storage("appending a record"))
        })
    }

    /// One statement, so one commit: the records are journaled together
    /// or not at all (the change-data-capture follower journals a batch of
    /// changes at a time).
    fn append_many(&self, records: &[NewRecord]) -> Result<(), OutboxError> {
        if records.is_empty() {
            return Ok(());
        }
        let records = records.to_vec();
        self.run(move |inner| async move {
            let records: Vec<&NewRecord> = records.iter().collect();
            insert_many(&inner, &records)
                .await
                .map_err(storage("appending records"))
        })
    }

    fn contains(&self, id: &IdempotencyId) -> Result<bool, OutboxError> {
        let id = id.to_string();
        self.run(move |inner| async move {
            let query = format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE idempotency_id = $1)",
                inner.sql.qualified
            );
            sqlx::query_scalar::<_, bool>(AssertSqlSafe(query))
                .bind(id)
                .fetch_one(&inner.pool)
                .await
                .map_err(storage("looking a record up"))
        })
    }

    /// None: records are counted when claimed (see the module docs).
    fn pending_keys(&self, _stream: &str) -> Result<Vec<(i64, Option<u64>)>, OutboxError> {
        Ok(Vec::new())
    }

    fn claim(&self, stream: &str, _after: i64, limit: usize) -> Result<Claimed, OutboxError> {
        const DURING: &str = "claiming records";
        let stream = stream.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |inner| async move {
            // Claims are made one at a time (by the stream's coordinator),
            // so with nothing of the stream outstanding, a pending record
            // claimed under a lease still held is one whose claim was lost.
            let (releasing, idle) = {
                let leases = inner.leases();
                let releasing: Vec<i32> = leases
                    .releasing
                    .iter()
                    .filter(|(s, _)| *s == stream)
                    .map(|(_, part)| *part)
                    .collect();
                let idle = !leases.outstanding.values().any(|o| o.stream == stream);
                (releasing, idle)
            };
            let rows = sqlx::query(AssertSqlSafe(inner.sql.claim.as_str()))
                .bind(&stream)
                .bind(&inner.owner)
                .bind(limit)
                .bind(&releasing)
                .bind(idle)
                .bind(i32::try_from(inner.partitions).unwrap_or(i32::MAX))
                .fetch_all(&inner.pool)
                .await
                .map_err(storage(DURING))?;
            let mut claimed = Claimed::default();
            let mut outstanding = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: i64 = row.try_get("id").map_err(storage(DURING))?;
                let part: i32 = row.try_get("part").map_err(storage(DURING))?;
                let epoch: i64 = row.try_get("lease_epoch").map_err(storage(DURING))?;
                outstanding.push((
                    id,
                    Outstanding {
                        stream: stream.clone(),
                        part,
                        epoch,
                    },
                ));
                match read_record(row) {
                    Ok(record) => claimed.records.push(record),
                    Err(error) => claimed.unreadable.push(Unreadable {
                        id,
                        key_hash: row
                            .try_get::<Option<i64>, _>("key_hash")
                            .ok()
                            .flatten()
                            .map(unsigned),
                        idempotency_id: row
                            .try_get::<String, _>("idempotency_id")
                            .ok()
                            .and_then(|id| id.parse().ok()),
                        error: error.to_string(),
                    }),
                }
            }
            inner.leases().outstanding.extend(outstanding);
            claimed.records.sort_by_key(|record| record.id);
            claimed.unreadable.sort_by_key(|row| row.id);
            Ok(claimed)
        })
    }

    fn record_outcomes(&self, outcomes: &[Outcome]) -> Result<(), OutboxError> {
        const DURING: &str = "recording applied records";
        if outcomes.is_empty() {
            return Ok(());
        }
        // One UPDATE joins every outcome to its row, and PostgreSQL updates
        // a row once with an unspecified one of several matches: only the
        // last outcome of each record is sent (a failed attempt and the
        // success after it can share a batch).
        let mut seen = HashSet::with_capacity(outcomes.len());
        let mut last: Vec<&Outcome> = outcomes
            .iter()
            .rev()
            .filter(|outcome| seen.insert(outcome_id(outcome)))
            .collect();
        last.reverse();
        let mut ids = Vec::with_capacity(last.len());
        let mut states = Vec::with_capacity(last.len());
        let mut attempts = Vec::with_capacity(last.len());
        let mut errors: Vec<Option<String>> = Vec::with_capacity(last.len());
        for outcome in last {
            let (id, state, tries, error) = match outcome {
                Outcome::Done { id, attempts } => (*id, 1_i16, *attempts, None),
                Outcome::Retrying {
                    id,
                    attempts,
                    error,
                } => (*id, 0, *attempts, Some(error.clone())),
                Outcome::Dead {
                    id,
                    attempts,
                    error,
                } => (*id, 2, *attempts, Some(error.clone())),
            };
            ids.push(id);
            states.push(state);
            attempts.push(i32::try_from(tries).unwrap_or(i32::MAX));
            errors.push(error);
        }
        let finals: Vec<i64> = ids
            .iter()
            .zip(&states)
            .filter(|(_, state)| **state != 0)
            .map(|(id, _)| *id)
            .collect();
        self.run(move |inner| async move {
            // The lease each record was claimed under: unknown ones get an
            // epoch no lease has, so they are not written.
            let (mut epochs, mut streams, mut parts) = (
                Vec::with_capacity(ids.len()),
                Vec::with_capacity(ids.len()),
                Vec::with_capacity(ids.len()),
            );
            {
                let leases = inner.leases();
                for id in &ids {
                    let (epoch, stream, part) = leases
                        .outstanding
                        .get(id)
                        .map_or((-1, "", -1), |o| (o.epoch, o.stream.as_str(), o.part));
                    epochs.push(epoch);
                    streams.push(stream.to_owned());
                    parts.push(part);
                }
            }
            let written = sqlx::query(AssertSqlSafe(inner.sql.outcomes.as_str()))
                .bind(&ids)
                .bind(&states)
                .bind(&attempts)
                .bind(&errors)
                .bind(&epochs)
                .bind(&inner.owner)
                .bind(&streams)
                .bind(&parts)
                .execute(&inner.pool)
                .await
                .map_err(storage(DURING))?
                .rows_affected();
            if written < ids.len() as u64 {
                tracing::warn!(
                    journal = inner.shown,
                    outcomes = ids.len(),
                    written,
                    "outbox: outcomes of records whose partition lease this instance lost were not written; the new owner applies those records again"
                );
            }
            let mut leases = inner.leases();
            for id in finals {
                leases.outstanding.remove(&id);
            }
            Ok(())
        })
    }

    fn prune(&self, before: SystemTime, limit: usize) -> Result<u64, OutboxError> {
        let before = before
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |inner| async move {
            let query = format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE state = 1 AND updated_at <= to_timestamp($1) ORDER BY id LIMIT $2)",
                t = inner.sql.qualified
            );
            sqlx::query(AssertSqlSafe(query))
                .bind(before)
                .bind(limit)
                .execute(&inner.pool)
                .await
                .map(|done| done.rows_affected())
                .map_err(storage("pruning done records"))
        })
    }

    fn attach(&self, stream: &str, listener: Weak<dyn JournalListener>) -> Result<(), OutboxError> {
        if let Some(inner) = self.inner() {
            super::attach_listener(&mut inner.leases().streams, stream, listener)?;
        }
        // Leases for the stream at once, not at the next tick.
        let _ = self.run(|inner| async move {
            maintain_leases(&inner).await;
            Ok(())
        });
        Ok(())
    }

    fn dead_letters(&self) -> Result<Vec<JournalRecord>, OutboxError> {
        PgJournal::dead_letters(self)
    }

    fn replay(&self, id: i64) -> Result<i64, OutboxError> {
        PgJournal::replay(self, id)
    }

    fn discard(&self, id: i64) -> Result<(), OutboxError> {
        PgJournal::discard(self, id)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn barrier(&self, stream: &str, deadline: std::time::Instant) -> Result<bool, OutboxError> {
        const DURING: &str = "waiting for the records journaled before a flush";
        let stream = stream.to_owned();
        // The journal's own timeout bounds one query, the deadline the wait.
        let timeout = deadline
            .saturating_duration_since(std::time::Instant::now())
            .saturating_add(self.timeout);
        self.run_within(timeout, move |inner| async move {
            let high = format!(
                "SELECT max(id) FROM {} WHERE stream = $1 AND state = 0",
                inner.sql.qualified
            );
            let Some(high): Option<i64> = sqlx::query_scalar(AssertSqlSafe(high))
                .bind(&stream)
                .fetch_one(&inner.pool)
                .await
                .map_err(storage(DURING))?
            else {
                return Ok(true);
            };
            let left = format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE stream = $1 AND state = 0 AND id <= $2)",
                inner.sql.qualified
            );
            let mut nap = Duration::from_millis(1);
            loop {
                let pending: bool = sqlx::query_scalar(AssertSqlSafe(left.as_str()))
                    .bind(&stream)
                    .bind(high)
                    .fetch_one(&inner.pool)
                    .await
                    .map_err(storage(DURING))?;
                if !pending {
                    return Ok(true);
                }
                let now = std::time::Instant::now();
                if now >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(nap.min(deadline - now)).await;
                nap = (nap * 2).min(Duration::from_millis(20));
            }
        })
    }

    fn settled(
        &self,
        _stream: &str,
        ids: &[IdempotencyId],
    ) -> Result<Vec<(IdempotencyId, Option<u64>)>, OutboxError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        self.run(move |inner| async move {
            let query = format!(
                "SELECT idempotency_id, key_hash FROM {} WHERE idempotency_id = ANY($1) AND state <> 0",
                inner.sql.qualified
            );
            let rows: Vec<(String, Option<i64>)> = sqlx::query_as(AssertSqlSafe(query))
                .bind(&ids)
                .fetch_all(&inner.pool)
                .await
                .map_err(storage("looking up records applied elsewhere"))?;
            Ok(rows
                .into_iter()
                .filter_map(|(id, hash)| Some((id.parse().ok()?, hash.map(unsigned))))
                .collect())
        })
    }
}

/// Binds a record's columns to [`Sql::insert_one`].
fn bind_record<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    record: &NewRecord,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(record.stream.clone())
        .bind(record.idempotency_id.to_string())
        .bind(i64::try_from(record.sequence).unwrap_or(i64::MAX))
        .bind(record.key_text.clone())
        .bind(record.key_hash.map(signed))
        .bind(record.method.clone())
        .bind(target_name(record.target))
        .bind(record.payload.clone())
}

fn outcome_id(outcome: &Outcome) -> i64 {
    match outcome {
        Outcome::Done { id, .. } | Outcome::Retrying { id, .. } | Outcome::Dead { id, .. } => *id,
    }
}

fn target_name(target: Store) -> &'static str {
    match target {
        Store::Old => "old",
        Store::New => "new",
    }
}

/// A route hash as the journal keeps it (its bits as a signed integer).
fn signed(hash: u64) -> i64 {
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// A route hash read back.
fn unsigned(hash: i64) -> u64 {
    u64::from_ne_bytes(hash.to_ne_bytes())
}

/// Commits the queued appends of concurrent callers together.
async fn group_commit(
    inner: Arc<Inner>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<GroupItem>,
) {
    let mut batch: Vec<GroupItem> = Vec::new();
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < 4096 {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let records: Vec<&NewRecord> = batch.iter().map(|(record, _)| record).collect();
        let result = insert_many(&inner, &records)
            .await
            .map_err(storage("appending records (group commit)"));
        for (_, reply) in batch.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
}

async fn insert_many(inner: &Inner, records: &[&NewRecord]) -> Result<(), sqlx::Error> {
    let streams: Vec<&str> = records.iter().map(|r| r.stream.as_str()).collect();
    let ids: Vec<String> = records
        .iter()
        .map(|r| r.idempotency_id.to_string())
        .collect();
    let seqs: Vec<i64> = records
        .iter()
        .map(|r| i64::try_from(r.sequence).unwrap_or(i64::MAX))
        .collect();
    let keys: Vec<Option<&str>> = records.iter().map(|r| r.key_text.as_deref()).collect();
    let hashes: Vec<Option<i64>> = records.iter().map(|r| r.key_hash.map(signed)).collect();
    let methods: Vec<&str> = records.iter().map(|r| r.method.as_str()).collect();
    let targets: Vec<&str> = records.iter().map(|r| target_name(r.target)).collect();
    let payloads: Vec<&str> = records.iter().map(|r| r.payload.as_str()).collect();
    sqlx::query(AssertSqlSafe(inner.sql.insert_many.as_str()))
        .bind(&streams)
        .bind(&ids)
        .bind(&seqs)
        .bind(&keys)
        .bind(&hashes)
        .bind(&methods)
        .bind(&targets)
        .bind(&payloads)
        .execute(&inner.pool)
        .await
        .map(drop)
}

/// Renews, takes and gives back leases every third of the lease's life.
async fn lease_task(inner: Arc<Inner>) {
    let period = inner.lease_ttl / 3;
    loop {
        tokio::time::sleep(period).await;
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Err(error) = measure_clock(&inner).await {
            tracing::warn!(journal = inner.shown, %error, "outbox: reading the database's clock failed; the last offset stays");
        }
        maintain_leases(&inner).await;
    }
}

/// Measures the database server's clock against this process's (halfway
/// through the round trip) and keeps the offset.
async fn measure_clock(inner: &Inner) -> Result<(), OutboxError> {
    let local = |skew: i64| {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
            });
        micros.saturating_add(skew)
    };
    let before = local(inner.local_skew);
    let server: i64 =
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
            .fetch_one(&inner.pool)
            .await
            .map_err(storage("reading the database's clock"))?;
    let after = local(inner.local_skew);
    let midpoint = before + (after - before) / 2;
    inner
        .clock_offset
        .store(server - midpoint, Ordering::Relaxed);
    Ok(())
}

/// One round of lease upkeep; failures are logged and retried next round
/// (leases not renewed then expire, which is what fencing is for).
async fn maintain_leases(inner: &Inner) {
    if let Err(error) = lease_round(inner).await {
        tracing::warn!(journal = inner.shown, owner = inner.owner, %error, "outbox: lease upkeep failed; retrying");
    }
}

async fn heartbeat(inner: &Inner) -> Result<(), OutboxError> {
    let query = format!(
        "INSERT INTO {} (owner) VALUES ($1) ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now()",
        inner.sql.members
    );
    sqlx::query(AssertSqlSafe(query))
        .bind(&inner.owner)
        .execute(&inner.pool)
        .await
        .map(drop)
        .map_err(storage("registering the instance"))
}

async fn lease_round(inner: &Inner) -> Result<(), OutboxError> {
    const DURING: &str = "renewing leases";
    // Only a handle that drains a stream is a member: one that only
    // appends or lists takes no share of the partitions.
    let (attached, holding) = {
        let mut leases = inner.leases();
        leases
            .streams
            .retain(|_, listener| listener.strong_count() > 0);
        let attached: Vec<String> = leases.streams.keys().cloned().collect();
        (attached, !leases.held.is_empty())
    };
    if !attached.is_empty() {
        heartbeat(inner).await?;
    }
    if attached.is_empty() && !holding {
        return Ok(());
    }
    let ttl = inner.lease_ttl.as_secs_f64();
    // Leases of streams no adapter drains any more are given back.
    let release = format!(
        "UPDATE {} SET owner = NULL, expires_at = now() WHERE owner = $1 AND NOT (stream = ANY($2))",
        inner.sql.leases
    );
    sqlx::query(AssertSqlSafe(release))
        .bind(&inner.owner)
        .bind(&attached)
        .execute(&inner.pool)
        .await
        .map_err(storage("giving leases back"))?;
    // Renewal: a lease still ours (no one took it since, expired or not)
    // keeps its epoch, so what was claimed under it stays valid.
    let renew = format!(
        "UPDATE {} SET expires_at = now() + make_interval(secs => $2) WHERE owner = $1 RETURNING stream, part, epoch",
        inner.sql.leases
    );
    let renewed: Vec<(String, i32, i64)> = sqlx::query_as(AssertSqlSafe(renew))
        .bind(&inner.owner)
        .bind(ttl)
        .fetch_all(&inner.pool)
        .await
        .map_err(storage(DURING))?;
    let (streams, unseeded) = {
        let mut leases = inner.leases();
        let lost: Vec<(String, i32)> = leases
            .held
            .keys()
            .filter(|key| !renewed.iter().any(|(s, p, _)| s == &key.0 && p == &key.1))
            .cloned()
            .collect();
        for key in &lost {
            tracing::warn!(
                journal = inner.shown,
                owner = inner.owner,
                stream = key.0,
                partition = key.1,
                "outbox: partition lease lost to another instance"
            );
        }
        leases.held = renewed
            .into_iter()
            .map(|(stream, part, epoch)| ((stream, part), epoch))
            .collect();
        leases
            .streams
            .retain(|_, listener| listener.strong_count() > 0);
        let streams: Vec<String> = leases.streams.keys().cloned().collect();
        let unseeded: Vec<String> = streams
            .iter()
            .filter(|s| !leases.seeded.contains(*s))
            .cloned()
            .collect();
        (streams, unseeded)
    };
    for stream in &unseeded {
        let seed = format!(
            "INSERT INTO {} (stream, part) SELECT $1, g FROM generate_series(0, $2 - 1) g ON CONFLICT DO NOTHING",
            inner.sql.leases
        );
        sqlx::query(AssertSqlSafe(seed))
            .bind(stream)
            .bind(i32::try_from(inner.partitions).unwrap_or(i32::MAX))
            .execute(&inner.pool)
            .await
            .map_err(storage("creating leases"))?;
        inner.leases().seeded.insert(stream.clone());
    }
    let alive_query = format!(
        "SELECT count(*) FROM {} WHERE heartbeat_at > now() - make_interval(secs => $1)",
        inner.sql.members
    );
    let alive: i64 = sqlx::query_scalar(AssertSqlSafe(alive_query))
        .bind(ttl)
        .fetch_one(&inner.pool)
        .await
        .map_err(storage(DURING))?;
    let alive = u32::try_from(alive.max(1)).unwrap_or(1);
    let share = inner.partitions.div_ceil(alive);
    for stream in streams {
        let held = inner
            .leases()
            .held
            .keys()
            .filter(|(s, _)| *s == stream)
            .count() as u32;
        if held < share {
            inner.leases().releasing.retain(|(s, _)| *s != stream);
            let acquire = format!(
                "UPDATE {l} SET owner = $2, epoch = epoch + 1, acquired_at = now(), \
                   expires_at = now() + make_interval(secs => $3) \
                 WHERE (stream, part) IN ( \
                   SELECT stream, part FROM {l} WHERE stream = $1 AND (owner IS NULL OR expires_at <= now()) \
                   ORDER BY part LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 RETURNING part, epoch",
                l = inner.sql.leases
            );
            let taken: Vec<(i32, i64)> = sqlx::query_as(AssertSqlSafe(acquire))
                .bind(&stream)
                .bind(&inner.owner)
                .bind(ttl)
                .bind(i64::from(share - held))
                .fetch_all(&inner.pool)
                .await
                .map_err(storage("taking leases"))?;
            if !taken.is_empty() {
                let listener = {
                    let mut leases = inner.leases();
                    for (part, epoch) in &taken {
                        leases.held.insert((stream.clone(), *part), *epoch);
                    }
                    leases.streams.get(&stream).and_then(Weak::upgrade)
                };
                tracing::info!(journal = inner.shown, owner = inner.owner, stream, partitions = ?taken.iter().map(|(p, _)| *p).collect::<Vec<_>>(), "outbox: partition leases taken");
                if let Some(listener) = listener {
                    listener.wake();
                }
            }
        } else {
            // Leases above the share are claimed from no more, and given
            // back once nothing claimed under them is in flight, so a
            // joining instance gets its part even under load.
            let idle: Vec<(i32, i64)> = {
                let mut leases = inner.leases();
                let LeaseState {
                    held: held_leases,
                    releasing,
                    outstanding,
                    ..
                } = &mut *leases;
                releasing.retain(|key| held_leases.contains_key(key));
                let mut mine: Vec<i32> = held_leases
                    .keys()
                    .filter(|(s, _)| *s == stream)
                    .map(|(_, p)| *p)
                    .collect();
                mine.sort_unstable_by(|a, b| b.cmp(a));
                let surplus = held.saturating_sub(share) as usize;
                for (index, part) in mine.iter().enumerate() {
                    let key = (stream.clone(), *part);
                    if index < surplus {
                        releasing.insert(key);
                    } else {
                        releasing.remove(&key);
                    }
                }
                let busy: HashSet<(&str, i32)> = outstanding
                    .values()
                    .map(|o| (o.stream.as_str(), o.part))
                    .collect();
                releasing
                    .iter()
                    .filter(|(s, p)| *s == stream && !busy.contains(&(s.as_str(), *p)))
                    .filter_map(|key| held_leases.get(key).map(|epoch| (key.1, *epoch)))
                    .collect()
            };
            for (part, epoch) in idle {
                {
                    let mut leases = inner.leases();
                    leases.held.remove(&(stream.clone(), part));
                    leases.releasing.remove(&(stream.clone(), part));
                }
                let release = format!(
                    "UPDATE {} SET owner = NULL, expires_at = now() WHERE stream = $1 AND part = $2 AND owner = $3 AND epoch = $4",
                    inner.sql.leases
                );
                sqlx::query(AssertSqlSafe(release))
                    .bind(&stream)
                    .bind(part)
                    .bind(&inner.owner)
                    .bind(epoch)
                    .execute(&inner.pool)
                    .await
                    .map_err(storage("giving leases back"))?;
            }
        }
    }
    Ok(())
}

/// Gives back every lease of this instance and leaves the members table.
async fn release_all(inner: &Inner) -> Result<(), OutboxError> {
    inner.leases().held.clear();
    let release = format!(
        "UPDATE {} SET owner = NULL, expires_at = now() WHERE owner = $1",
        inner.sql.leases
    );
    sqlx::query(AssertSqlSafe(release))
        .bind(&inner.owner)
        .execute(&inner.pool)
        .await
        .map_err(storage("giving leases back"))?;
    let leave = format!("DELETE FROM {} WHERE owner = $1", inner.sql.members);
    sqlx::query(AssertSqlSafe(leave))
        .bind(&inner.owner)
        .execute(&inner.pool)
        .await
        .map(drop)
        .map_err(storage("leaving the members table"))
}

/// The columns of each table and their types (`information_schema`'s
/// `data_type`), as this runtime creates them.
const EXPECTED: [(&str, &[(&str, &str)]); 4] = [
    (
        "",
        &[
            ("id", "bigint"),
            ("stream", "text"),
            ("idempotency_id", "text"),
            ("seq", "bigint"),
            ("key_text", "text"),
            ("key_hash", "bigint"),
            ("part", "integer"),
            ("method", "text"),
            ("target", "text"),
            ("payload", "text"),
            ("state", "smallint"),
            ("attempts", "integer"),
            ("last_error", "text"),
            ("claimed_by", "text"),
            ("claim_epoch", "bigint"),
            ("created_at", "timestamp with time zone"),
            ("updated_at", "timestamp with time zone"),
        ],
    ),
    ("_meta", &[("format", "text"), ("partitions", "integer")]),
    (
        "_leases",
        &[
            ("stream", "text"),
            ("part", "integer"),
            ("owner", "text"),
            ("epoch", "bigint"),
            ("expires_at", "timestamp with time zone"),
            ("acquired_at", "timestamp with time zone"),
        ],
    ),
    (
        "_members",
        &[
            ("owner", "text"),
            ("started_at", "timestamp with time zone"),
            ("heartbeat_at", "timestamp with time zone"),
        ],
    ),
];

/// Checks the journal's tables, creating them when missing (and allowed);
/// returns the partition count.
async fn ensure_schema(
    pool: &PgPool,
    sql: &Sql,
    options: &PgJournalOptions,
) -> Result<u32, OutboxError> {
    const DURING: &str = "checking the journal's tables";
    let mut conn = pool.acquire().await.map_err(storage(DURING))?;
    // One opener at a time creates or checks the tables.
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(&sql.qualified)
        .execute(&mut *conn)
        .await
        .map_err(storage(DURING))?;
    let result = ensure_schema_locked(&mut conn, sql, options).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(&sql.qualified)
        .execute(&mut *conn)
        .await;
    result
}

async fn ensure_schema_locked(
    conn: &mut PgConnection,
    sql: &Sql,
    options: &PgJournalOptions,
) -> Result<u32, OutboxError> {
    const DURING: &str = "checking the journal's tables";
    let shown = sql.qualified.clone();
    let format_error = |detail: String| OutboxError::Format {
        path: shown.clone(),
        detail,
    };
    let schema: String = match &options.schema {
        Some(schema) => schema.clone(),
        None => sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&mut *conn)
            .await
            .map_err(storage(DURING))?,
    };
    let mut present = Vec::new();
    for (suffix, expected) in EXPECTED {
        let table = format!("{}{suffix}", options.table);
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(&mut *conn)
        .await
        .map_err(storage(DURING))?;
        if columns.is_empty() {
            continue;
        }
        present.push(table.clone());
        for (name, kind) in expected {
            match columns.iter().find(|(column, _)| column == name) {
                None => {
                    return Err(format_error(format!(
                        "table {schema}.{table} has no column `{name}`"
                    )));
                }
                Some((_, actual)) if actual != kind => {
                    return Err(format_error(format!(
                        "column {schema}.{table}.{name} is {actual}, expected {kind}"
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some((extra, _)) = columns
            .iter()
            .find(|(column, _)| !expected.iter().any(|(name, _)| name == column))
        {
            return Err(format_error(format!(
                "table {schema}.{table} has a column `{extra}` this runtime does not know"
            )));
        }
    }
    if present.is_empty() {
        if !options.create {
            return Err(OutboxError::Missing { path: shown });
        }
        create_tables(conn, sql, options.partitions).await?;
        return Ok(options.partitions);
    }
    if present.len() < EXPECTED.len() {
        return Err(format_error(format!(
            "only some of the journal's tables exist ({})",
            present.join(", ")
        )));
    }
    let meta: Vec<(String, i32)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT format, partitions FROM {}",
        sql.meta
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(storage(DURING))?;
    match meta.as_slice() {
        [(format, partitions)] if format == FORMAT && (1..=4096).contains(partitions) => {
            Ok(u32::try_from(*partitions).unwrap_or(1))
        }
        [(format, _)] if format != FORMAT => Err(format_error(format!(
            "journal format `{format}`, this runtime reads `{FORMAT}`"
        ))),
        [(_, partitions)] => Err(format_error(format!(
            "{partitions} partitions recorded: a journal has 1 to 4096"
        ))),
        rows => Err(format_error(format!(
            "{} rows in the meta table, expected one",
            rows.len()
        ))),
    }
}

async fn create_tables(
    conn: &mut PgConnection,
    sql: &Sql,
    partitions: u32,
) -> Result<(), OutboxError> {
    let Sql {
        qualified: t,
        meta,
        leases,
        members,
        ..
    } = sql;
    let index = |suffix: &str| {
        // Index names take the table's schema: unqualified, quoted.
        let base = t.rsplit('.').next().unwrap_or(t).trim_matches('"');
        format!("\"{base}{suffix}\"")
    };
    let pending = index("_pending");
    let done = index("_done");
    let script = format!(
        "CREATE TABLE {t} (
            id BIGSERIAL PRIMARY KEY,
            stream TEXT NOT NULL,
            idempotency_id TEXT NOT NULL UNIQUE,
            seq BIGINT NOT NULL,
            key_text TEXT,
            key_hash BIGINT,
            part INTEGER NOT NULL,
            method TEXT NOT NULL,
            target TEXT NOT NULL,
            payload TEXT NOT NULL,
            state SMALLINT NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            claimed_by TEXT,
            claim_epoch BIGINT,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX {pending} ON {t} (stream, part, id) WHERE state = 0;
        CREATE INDEX {done} ON {t} (updated_at) WHERE state = 1;
        CREATE TABLE {meta} (format TEXT NOT NULL, partitions INTEGER NOT NULL);
        INSERT INTO {meta} (format, partitions) VALUES ('{FORMAT}', {partitions});
        CREATE TABLE {leases} (
            stream TEXT NOT NULL,
            part INTEGER NOT NULL,
            owner TEXT,
            epoch BIGINT NOT NULL DEFAULT 0,
            expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
            acquired_at TIMESTAMPTZ,
            PRIMARY KEY (stream, part)
        );
        CREATE TABLE {members} (
            owner TEXT PRIMARY KEY,
            started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );"
    );
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(storage("creating the journal's tables"))?;
    sqlx::raw_sql(AssertSqlSafe(script))
        .execute(&mut *tx)
        .await
        .map_err(storage("creating the journal's tables"))?;
    tx.commit()
        .await
        .map_err(storage("creating the journal's tables"))
}

/// A record from a row of [`Sql::columns`].
fn read_record(row: &PgRow) -> Result<JournalRecord, OutboxError> {
    let id: i64 = row.try_get("id").map_err(storage("reading a record"))?;
    let bad = |detail: String| OutboxError::BadRecord { id, detail };
    let column = |error: sqlx::Error| bad(error.to_string());
    let idempotency_id: String = row.try_get("idempotency_id").map_err(column)?;
    let target: String = row.try_get("target").map_err(column)?;
    let state: i16 = row.try_get("state").map_err(column)?;
    let sequence: i64 = row.try_get("seq").map_err(column)?;
    let attempts: i32 = row.try_get("attempts").map_err(column)?;
    let created: f64 = row.try_get("created").map_err(column)?;
    let updated: f64 = row.try_get("updated").map_err(column)?;
    Ok(JournalRecord {
        id,
        record: NewRecord {
            stream: row.try_get("stream").map_err(column)?,
            idempotency_id: idempotency_id
                .parse()
                .map_err(|error: super::ids::ParseIdError| bad(error.to_string()))?,
            sequence: u64::try_from(sequence)
                .map_err(|_| bad(format!("negative sequence {sequence}")))?,
            key_text: row.try_get("key_text").map_err(column)?,
            key_hash: row
                .try_get::<Option<i64>, _>("key_hash")
                .map_err(column)?
                .map(unsigned),
            method: row.try_get("method").map_err(column)?,
            target: match target.as_str() {
                "old" => Store::Old,
                "new" => Store::New,
                other => return Err(bad(format!("unknown target `{other}`"))),
            },
            payload: row.try_get("payload").map_err(column)?,
        },
        state: RecordState::from_code(i64::from(state))
            .ok_or_else(|| bad(format!("unknown state {state}")))?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_error: row.try_get("last_error").map_err(column)?,
        created_at: from_unix_seconds(created),
        updated_at: from_unix_seconds(updated),
    })
}

fn from_unix_seconds(seconds: f64) -> SystemTime {
    if seconds.is_finite() && seconds > 0.0 {
        UNIX_EPOCH + Duration::from_secs_f64(seconds)
    } else {
        UNIX_EPOCH
    }
}

/// Maps a storage error of an operation.
fn storage(during: &'static str) -> impl Fn(sqlx::Error) -> OutboxError {
    move |error| OutboxError::Storage {
        during,
        error: error.to_string(),
    }
}

/// Runs `task` on `runtime` from any thread (one of another tokio runtime
/// included) and waits for its result, at most `timeout`.
fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    timeout: Duration,
    task: impl Future<Output = Result<T, OutboxError>> + Send + 'static,
) -> Result<T, OutboxError> {
    let (send, receive) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let result = tokio::time::timeout(timeout, task)
            .await
            .unwrap_or_else(|_| {
                Err(OutboxError::Storage {
                    during: "a journal operation",
                    error: format!("no answer within {timeout:?}"),
                })
            });
        let _ = send.send(result);
    });
    receive.recv().unwrap_or_else(|_| {
        Err(OutboxError::Storage {
            during: "a journal operation",
            error: "the journal's client runtime stopped".to_owned(),
        })
    })
}

/// `<host>-<pid>-<random>`.
fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    // The id's per-process random bits and its counter.
    let random = (IdempotencyId::generate().as_u128() >> 32) as u32;
    format!("{host}-{}-{random:08x}", std::process::id())
}

/// The URL with its password hidden, for messages.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Inserts the record of the write in progress into the journal table, in
/// the transaction the primary store has open on `conn`: the transactional
/// outbox. The record commits with the store's write or not at all, and the
/// runtime does not append it again (the context is marked journaled).
///
/// ```ignore
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name")
///     .bind(id).bind(name).execute(&mut *tx).await?;
/// if let Some(ctx) = WriteContext::current() {
///     dualwrite_runtime::outbox::postgres::append_in(&mut tx, &ctx).await?;
/// }
/// tx.commit().await?;
/// ```
///
/// The journal's tables must be in `conn`'s database; fails (so the
/// caller's transaction should roll back, and the write fail) when they are
/// not, or when the context is an applier's (a secondary call journals
/// nothing). Capture the context before the first `.await` of the store's
/// method: it is a thread-local of the primary call.
pub async fn append_in(conn: &mut PgConnection, ctx: &WriteContext) -> Result<(), sqlx::Error> {
    if ctx.side() != Side::Primary {
        return Err(sqlx::Error::Protocol(
            "dualwrite outbox: append_in is for the primary store's write; this is an applier's secondary call"
                .to_owned(),
        ));
    }
    let location = ctx.journal_location();
    let (url, table) = location.rsplit_once('#').ok_or_else(|| {
        sqlx::Error::Protocol(format!(
            "dualwrite outbox: append_in with a journal that is not a PostgreSQL journal ({location}): the record would never be applied"
        ))
    })?;
    let database = url
        .rsplit_once('/')
        .map(|(_, db)| db.split('?').next().unwrap_or(db))
        .unwrap_or("");
    let (schema, table) = match table.split_once('.') {
        Some((schema, table)) => (Some(schema), table),
        None => (None, table),
    };
    if check_identifier(table, 40).is_err()
        || schema.is_some_and(|s| check_identifier(s, 63).is_err())
    {
        return Err(sqlx::Error::Protocol(format!(
            "dualwrite outbox: `{location}` does not name a journal table"
        )));
    }
    let sql = Sql::new(schema, table);
    // The insert checks the database: a record written anywhere else would
    // never be applied.
    let query = format!(
        "{} WHERE current_database() = $9 OR $9 = ''",
        sql.insert_one
    );
    let inserted = bind_record(sqlx::query(AssertSqlSafe(query)), ctx.record())
        .bind(database)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if inserted != 1 {
        return Err(sqlx::Error::Protocol(format!(
            "dualwrite outbox: append_in on another database than the journal's ({location}): the record would never be applied"
        )));
    }
    ctx.mark_journaled();
    Ok(())
}

/// Creates the table of applied idempotency ids ([`mark_applied`]) in a
/// secondary store's database, if it is missing.
pub async fn create_applied_table(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS dualwrite_applied (
            idempotency_id TEXT PRIMARY KEY,
            seq BIGINT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .execute(conn)
    .await
    .map(drop)
}

/// Records that the journal record being applied (`ctx`, the applier's
/// [`WriteContext`]) is applied, in the transaction the secondary store has
/// open on `conn`; whether it is the first time. Run the write only when it
/// returns `true`, in the same transaction: a record applied before a crash
/// or replayed then changes nothing.
///
/// ```ignore
/// let ctx = WriteContext::current().filter(|c| c.side() == Side::Apply);
/// let mut tx = pool.begin().await?;
/// if ctx.is_none() || mark_applied(&mut tx, ctx.as_ref().unwrap()).await? {
///     sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
///         .bind(id).bind(by).execute(&mut *tx).await?;
/// }
/// tx.commit().await?;
/// ```
///
/// For writes that are not idempotent in themselves (counters, appends).
/// For upserts a version guard is cheaper and also keeps an older replayed
/// record from overwriting a newer one ([`apply_if_newer_sql`]).
pub async fn mark_applied(
    conn: &mut PgConnection,
    ctx: &WriteContext,
) -> Result<bool, sqlx::Error> {
    // dualwrite-lint: allow(DW002) the secondary store's table of applied idempotency ids, inside the store's own write
    let inserted = sqlx::query(
        "INSERT INTO dualwrite_applied (idempotency_id, seq) VALUES ($1, $2) ON CONFLICT (idempotency_id) DO NOTHING",
    )
    .bind(ctx.idempotency_id().to_string())
    .bind(ctx.version())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The SQL of a version-guarded upsert for a secondary store in
/// PostgreSQL: `table (key_column, value columns.., version_column)`,
/// binding `$1` the key, `$2..` the values in order and the last parameter
/// the version ([`WriteContext::version`]). The row changes only when the
/// record is newer than what it holds, so a record applied twice, or an
/// older one replayed after a newer one, changes nothing. Names are
/// checked (lowercase letters, digits, `_`; a `schema.table` is accepted).
///
/// ```ignore
/// let sql = apply_if_newer_sql("accounts", "id", &["balance"], "version")?;
/// sqlx::query(AssertSqlSafe(sql)).bind(id).bind(balance).bind(ctx.version()).execute(&mut *tx).await?;
/// ```
pub fn apply_if_newer_sql(
    table: &str,
    key_column: &str,
    value_columns: &[&str],
    version_column: &str,
) -> Result<String, String> {
    for part in table.split('.') {
        check_identifier(part, 63)?;
    }
    check_identifier(key_column, 63)?;
    check_identifier(version_column, 63)?;
    for column in value_columns {
        check_identifier(column, 63)?;
    }
    let columns: Vec<&str> = std::iter::once(key_column)
        .chain(value_columns.iter().copied())
        .chain(std::iter::once(version_column))
        .collect();
    let params: Vec<String> = (1..=columns.len()).map(|n| format!("${n}")).collect();
    let updates: Vec<String> = value_columns
        .iter()
        .chain(std::iter::once(&version_column))
        .map(|column| format!("{column} = excluded.{column}"))
        .collect();
    let target = table.rsplit('.').next().unwrap_or(table);
    Ok(format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({key_column}) DO UPDATE SET {} WHERE {target}.{version_column} < excluded.{version_column}",
        columns.join(", "),
        params.join(", "),
        updates.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("dualwrite_outbox", 40).is_ok());
        assert!(check_identifier("Outbox", 40).is_err());
        assert!(check_identifier("a;drop", 40).is_err());
        assert!(check_identifier("1abc", 40).is_err());
        assert!(check_identifier("", 40).is_err());
    }

    #[test]
    fn the_version_guard_sql_names_its_columns() {
        let sql = apply_if_newer_sql("kv", "id", &["value"], "version").unwrap();
        assert_eq!(
            sql,
            "INSERT INTO kv (id, value, version) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET value = excluded.value, version = excluded.version WHERE kv.version < excluded.version"
        );
        assert!(apply_if_newer_sql("kv; drop", "id", &[], "v").is_err());
    }

    #[test]
    fn options_are_validated() {
        assert!(PgJournalOptions::default().validate().is_ok());
        assert!(
            PgJournalOptions::default()
                .with_partitions(0)
                .validate()
                .is_err()
        );
        assert!(
            PgJournalOptions::default()
                .with_table("x\"y")
                .validate()
                .is_err()
        );
        assert!(
            PgJournalOptions::default()
                .with_lease_ttl(Duration::from_millis(10))
                .validate()
                .is_err()
        );
    }
}

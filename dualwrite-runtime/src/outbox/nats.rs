//! A relay of the outbox journal to NATS JetStream, and its consumers
//! (feature `outbox-nats`).
//!
//! ```text
//! caller:     primary write -> journal record (durable) -> return
//! relay:      claim records not yet relayed, in id order -> publish each to
//!             `<prefix>.<partition>` (Nats-Msg-Id = idempotency id) -> on the
//!             JetStream ack, mark it relayed in the journal
//! consumer p: pull one message of `<prefix>.<p>` (max_ack_pending = 1) ->
//!             skip it if the journal says it is done or dead -> apply it as
//!             an applier does (WriteContext, retries, dead letter in the
//!             journal) -> record the outcome in the journal -> ack
//! ```
//!
//! - **Order per key.** A key's records go to one partition (the key's route
//!   hash modulo [`NatsConfig::partitions`]); the relay publishes a
//!   partition's records one at a time, each after the previous one's ack,
//!   so the stream holds them in journal order even across failed
//!   publishes; each partition has one durable pull consumer with
//!   `max_ack_pending = 1`, so a record is delivered (or redelivered) only
//!   after the previous one was acknowledged.
//! - **Delivery is at least once.** A record is marked relayed only after
//!   JetStream acknowledged it; a crash in between publishes it again, and
//!   JetStream drops the copy (the `Nats-Msg-Id` header, within
//!   [`NatsConfig::duplicate_window`]). A message is acknowledged only after
//!   its outcome is in the journal; a crash in between redelivers it, and
//!   the consumer skips it (the journal says it is done). A crash during
//!   the secondary call applies the record again, with the same idempotency
//!   id and sequence ([`WriteContext`](super::WriteContext)), which a store
//!   uses to make the replay harmless.
//! - **The broker unreachable.** Records wait in the journal (callers are
//!   not slowed: their write is journaled locally); the relay retries with
//!   backoff and publishes them in order when the server is back.
//! - **Dead letters** stay in the journal, as with the appliers; a replayed
//!   one gets a new id and is relayed again.
//! - **Flush and phase changes** wait for the consumers: a record stays
//!   counted pending on its key's stripe until a consumer of this adapter
//!   has applied it or dead-lettered it.
//!
//! The JetStream stream (file storage, work-queue retention) and the
//! consumers are created when missing. The consumers run in the adapter
//! that relays: the journal, the relay and the consumers of a stream belong
//! to one process at a time, as the appliers do.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::relay::{Counted, Processor};
use super::{
    JournalRecord, NewRecord, OutboxError, OutboxRelay, Outcome, RecordState, RecordStatus,
    RelayParts, RelayThreads,
};
use crate::helpers::panic_message;
use crate::phase::Store;

/// Where and how the outbox's records go through NATS JetStream; the relay
/// given to `with_outbox_relay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// The server; default `nats://127.0.0.1:4222`.
    pub url: String,
    /// The subjects' prefix: a record goes to `<prefix>.<partition>`;
    /// default `dualwrite.outbox.<journal stream>`.
    pub subject_prefix: Option<String>,
    /// The JetStream stream; default `DUALWRITE_OUTBOX_<journal stream>`.
    pub stream_name: Option<String>,
    /// Key partitions, each with its subject and one consumer; default 4,
    /// at least 1. Keep it fixed for a stream: a key's records must stay in
    /// one partition.
    pub partitions: u32,
    /// How long JetStream remembers a message id to drop a copy published
    /// again (after a crash between its ack and the journal's note);
    /// default 2 minutes.
    pub duplicate_window: Duration,
    /// How long JetStream waits for a consumer's ack before it delivers the
    /// message again; default 30 s.
    pub ack_wait: Duration,
    /// How long a publish waits for JetStream's ack; default 5 s.
    pub publish_timeout: Duration,
    /// How long a consumer's pull waits for a message before it looks
    /// whether the outbox stops; default 250 ms.
    pub fetch_wait: Duration,
    /// The connection's timeout; default 2 s.
    pub connect_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            subject_prefix: None,
            stream_name: None,
            partitions: 4,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(5),
            fetch_wait: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl NatsConfig {
    /// The defaults, with the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets [`NatsConfig::subject_prefix`].
    #[must_use]
    pub fn with_subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = Some(prefix.into());
        self
    }

    /// Sets [`NatsConfig::stream_name`].
    #[must_use]
    pub fn with_stream_name(mut self, name: impl Into<String>) -> Self {
        self.stream_name = Some(name.into());
        self
    }

    /// Sets [`NatsConfig::partitions`].
    #[must_use]
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets [`NatsConfig::duplicate_window`].
    #[must_use]
    pub fn with_duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets [`NatsConfig::ack_wait`].
    #[must_use]
    pub fn with_ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Sets [`NatsConfig::publish_timeout`].
    #[must_use]
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets [`NatsConfig::fetch_wait`].
    #[must_use]
    pub fn with_fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait;
        self
    }

    /// Sets [`NatsConfig::connect_timeout`].
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The subject prefix used for the journal stream `stream`.
    pub fn subject_prefix_for(&self, stream: &str) -> String {
        self.subject_prefix
            .clone()
            .unwrap_or_else(|| format!("dualwrite.outbox.{}", token(stream)))
    }

    /// The JetStream stream used for the journal stream `stream`.
    pub fn stream_name_for(&self, stream: &str) -> String {
        self.stream_name
            .clone()
            .unwrap_or_else(|| format!("DUALWRITE_OUTBOX_{}", token(stream)))
    }

    /// The partition of a key's route hash.
    pub fn partition_of(&self, key_hash: Option<u64>) -> u32 {
        let partitions = u64::from(self.partitions.max(1));
        // The remainder is below `partitions`, so it fits.
        key_hash.map_or(0, |hash| (hash % partitions) as u32)
    }

    /// The names the relay uses for the journal stream `stream`; an error
    /// that says which name is not valid.
    fn names(&self, stream: &str) -> Result<Names, String> {
        let prefix = self.subject_prefix_for(stream);
        let stream_name = self.stream_name_for(stream);
        if prefix.is_empty()
            || prefix.starts_with('.')
            || prefix.ends_with('.')
            || prefix.contains("..")
            || prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '*' || c == '>')
        {
            return Err(format!(
                "`{prefix}` is not a valid subject prefix (dot-separated tokens without spaces or wildcards)"
            ));
        }
        if stream_name.is_empty()
            || stream_name
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(format!(
                "`{stream_name}` is not a valid JetStream stream name (no spaces, dots, wildcards or slashes)"
            ));
        }
        if self.url.trim().is_empty() {
            return Err("the NATS server URL is empty".to_owned());
        }
        Ok(Names {
            prefix,
            stream: stream_name,
        })
    }
}

/// A journal stream's name as one subject token.
fn token(stream: &str) -> String {
    stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Names {
    prefix: String,
    stream: String,
}

impl Names {
    fn subject(&self, partition: u32) -> String {
        format!("{}.{partition}", self.prefix)
    }

    fn consumer(partition: u32) -> String {
        format!("dualwrite-p{partition}")
    }
}

impl OutboxRelay for NatsConfig {
    fn spawn(self: Box<Self>, parts: RelayParts) -> Result<RelayThreads, OutboxError> {
        let names = self
            .names(&parts.shared.stream)
            .map_err(|error| OutboxError::Storage {
                during: "configuring the NATS relay",
                error,
            })?;
        let counted = Arc::new(Counted::new(
            Arc::clone(&parts.shared),
            &parts.pending_at_start,
        ));
        let link = Arc::new(Link {
            config: *self,
            names,
            conn: Mutex::new(None),
            stream_ready: AtomicBool::new(false),
        });
        let parts = Arc::new(parts);
        let spawn_error = |error: std::io::Error| OutboxError::Storage {
            during: "starting the NATS relay's threads",
            error: error.to_string(),
        };
        let mut consumers = Vec::new();
        for partition in 0..link.config.partitions.max(1) {
            let consumer = Consumer {
                partition,
                link: Arc::clone(&link),
                parts: Arc::clone(&parts),
                counted: Arc::clone(&counted),
                process: (parts.processor)(partition as usize),
                reported: None,
            };
            let thread = thread::Builder::new()
                .name(format!("dualwrite-nats-{partition}"))
                .spawn(move || consumer.run());
            match thread {
                Ok(thread) => consumers.push(thread),
                Err(error) => {
                    // The consumers started stop with the outbox's stop.
                    parts.shared.exit.store(true, Ordering::SeqCst);
                    return Err(spawn_error(error));
                }
            }
        }
        let relay = Relay {
            link,
            parts: Arc::clone(&parts),
            counted,
            cursor: 0,
            reported: None,
        };
        let relay = thread::Builder::new()
            .name("dualwrite-nats-relay".to_owned())
            .spawn(move || relay.run())
            .map_err(|error| {
                parts.shared.exit.store(true, Ordering::SeqCst);
                spawn_error(error)
            })?;
        Ok(RelayThreads { relay, consumers })
    }

    fn describe(&self) -> String {
        format!("NATS JetStream relay to {}", self.url)
    }
}

/// The connection, made on first use by whichever thread needs it (never
/// on a caller's thread, which may be inside a tokio runtime), and dropped
/// with the last relay thread.
struct Link {
    config: NatsConfig,
    names: Names,
    conn: Mutex<Option<Arc<Conn>>>,
    /// The JetStream stream is known to exist.
    stream_ready: AtomicBool,
}

struct Conn {
    runtime: tokio::runtime::Runtime,
    js: Context,
}

impl Link {
    fn conn(&self) -> Result<Arc<Conn>, String> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = &*slot {
            return Ok(Arc::clone(conn));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dualwrite-nats-io")
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start the NATS client's runtime: {error}"))?;
        // Connects in the background (and reconnects for ever): a server
        // that is down now is not an error, records wait in the journal.
        let js = runtime.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .name("dualwrite-outbox")
                .connection_timeout(self.config.connect_timeout)
                .retry_on_initial_connect()
                .max_reconnects(None)
                .connect(self.config.url.as_str())
                .await
                .map_err(|error| format!("cannot connect to {}: {error}", self.config.url))?;
            // The context starts its own task: made on the runtime.
            let mut js = jetstream::new(client);
            js.set_timeout(self.config.publish_timeout);
            Ok::<_, String>(js)
        })?;
        let conn = Arc::new(Conn { runtime, js });
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Creates the JetStream stream if it is missing.
    fn ensure_stream(&self, conn: &Conn) -> Result<stream::Stream, String> {
        let config = stream::Config {
            name: self.names.stream.clone(),
            subjects: vec![format!("{}.*", self.names.prefix)],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window: self.config.duplicate_window,
            ..Default::default()
        };
        let stream = conn.runtime.block_on(async {
            tokio::time::timeout(
                self.config.publish_timeout,
                conn.js.get_or_create_stream(config),
            )
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|error| error.to_string())
        });
        let stream = stream.map_err(|error| {
            format!(
                "cannot create or read the JetStream stream {}: {error}",
                self.names.stream
            )
        })?;
        self.stream_ready.store(true, Ordering::SeqCst);
        Ok(stream)
    }

    /// The durable pull consumer of a partition, created if it is missing.
    fn consumer(&self, conn: &Conn, partition: u32) -> Result<PullConsumer, String> {
        let stream = self.ensure_stream(conn)?;
        let name = Names::consumer(partition);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.names.subject(partition),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            max_ack_pending: 1,
            ack_wait: self.config.ack_wait,
            max_deliver: -1,
            ..Default::default()
        };
        conn.runtime
            .block_on(async {
                tokio::time::timeout(
                    self.config.publish_timeout,
                    stream.get_or_create_consumer(&name, config),
                )
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|error| error.to_string())
            })
            .map_err(|error| format!("cannot create or read the consumer {name}: {error}"))
    }
}

/// A journal record as a message.
#[derive(Serialize, Deserialize)]
struct Wire {
    id: i64,
    stream: String,
    idempotency_id: String,
    sequence: u64,
    key_text: Option<String>,
    key_hash: Option<u64>,
    method: String,
    target: String,
    payload: String,
}

impl Wire {
    fn of(record: &JournalRecord) -> Wire {
        let r = &record.record;
        Wire {
            id: record.id,
            stream: r.stream.clone(),
            idempotency_id: r.idempotency_id.to_string(),
            sequence: r.sequence,
            key_text: r.key_text.clone(),
            key_hash: r.key_hash,
            method: r.method.clone(),
            target: match r.target {
                Store::Old => "old",
                Store::New => "new",
            }
            .to_owned(),
            payload: r.payload.clone(),
        }
    }

    fn into_record(self, attempts: u32) -> Result<JournalRecord, String> {
        let now = std::time::SystemTime::now();
        Ok(JournalRecord {
            id: self.id,
            record: NewRecord {
                stream: self.stream,
                idempotency_id: self
                    .idempotency_id
                    .parse()
                    .map_err(|error: super::ids::ParseIdError| error.to_string())?,
                sequence: self.sequence,
                key_text: self.key_text,
                key_hash: self.key_hash,
                method: self.method,
                target: match self.target.as_str() {
                    "old" => Store::Old,
                    "new" => Store::New,
                    other => return Err(format!("unknown target `{other}`")),
                },
                payload: self.payload,
            },
            state: RecordState::Pending,
            attempts,
            last_error: None,
            created_at: now,
            updated_at: now,
        })
    }
}

/// Logs an error once until a different one (or success) comes.
fn report(reported: &mut Option<String>, what: &str, error: &str) {
    if reported.as_deref() != Some(error) {
        tracing::error!(%error, "outbox NATS relay: {what}; retrying");
        *reported = Some(error.to_owned());
    }
}

/// Sleeps `delay` in short steps while `stop` is false; whether it slept
/// the whole delay.
fn nap(delay: Duration, stop: impl Fn() -> bool) -> bool {
    let until = Instant::now() + delay;
    loop {
        if stop() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// The thread that publishes journal records.
struct Relay {
    link: Arc<Link>,
    parts: Arc<RelayParts>,
    counted: Arc<Counted>,
    /// Every claimed record up to this id was published.
    cursor: i64,
    reported: Option<String>,
}

impl Relay {
    fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.parts.relay_exit() {
                return;
            }
            let dirty = self.parts.take_dirty();
            let round = catch_unwind(AssertUnwindSafe(|| self.round())).unwrap_or_else(|payload| {
                Err((
                    "the relay recovered from a panic",
                    panic_message(payload.as_ref()).to_owned(),
                ))
            });
            match round {
                Ok(Round::More) => {
                    backoff = Duration::from_millis(50);
                }
                Ok(Round::Idle) => {
                    backoff = Duration::from_millis(50);
                    if !dirty {
                        self.parts.park(self.parts.config.poll_interval);
                    }
                }
                Err((what, error)) => {
                    report(&mut self.reported, what, &error);
                    let parts = Arc::clone(&self.parts);
                    nap(backoff, || parts.relay_exit());
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Claims records past the cursor and publishes them.
    fn round(&mut self) -> Result<Round, (&'static str, String)> {
        let shared = &self.parts.shared;
        let limit = self.parts.config.claim_batch.max(1);
        let claimed = shared
            .journal
            .claim_unrelayed(&shared.stream, self.cursor, limit)
            .map_err(|error| ("reading the journal failed", error.to_string()))?;
        let full = claimed.records.len() + claimed.unreadable.len() >= limit;
        let mut unreadable_max = 0;
        for row in &claimed.unreadable {
            self.counted
                .claimed(row.id, row.idempotency_id, row.key_hash);
            tracing::error!(
                stream = shared.stream,
                journal_id = row.id,
                error = %row.error,
                "outbox: a pending journal row cannot be read; kept as a dead letter"
            );
            let dead = Outcome::Dead {
                id: row.id,
                attempts: 0,
                error: format!("cannot read the journal row: {}", row.error),
            };
            shared
                .journal
                .record_outcomes(std::slice::from_ref(&dead))
                .map_err(|error| ("recording a dead letter failed", error.to_string()))?;
            self.counted.release(row.id, row.key_hash);
            unreadable_max = unreadable_max.max(row.id);
        }
        if claimed.records.is_empty() {
            self.cursor = self.cursor.max(unreadable_max);
            return Ok(if full { Round::More } else { Round::Idle });
        }
        for record in &claimed.records {
            self.counted.claimed(
                record.id,
                Some(record.record.idempotency_id),
                record.record.key_hash,
            );
        }
        let conn = self
            .link
            .conn()
            .map_err(|error| ("connecting failed", error))?;
        if !self.link.stream_ready.load(Ordering::SeqCst) {
            self.link
                .ensure_stream(&conn)
                .map_err(|error| ("the JetStream stream is not available", error))?;
        }
        let (acked, failure) =
            conn.runtime
                .block_on(publish(&self.link, &conn.js, &claimed.records));
        if let Err(error) = shared.journal.mark_relayed(&acked) {
            // Published again after a restart: JetStream drops the copies
            // within its duplicate window, the idempotency id after it.
            report(
                &mut self.reported,
                "marking records relayed failed",
                &error.to_string(),
            );
        }
        // The cursor moves past the longest run of published records.
        let acked: std::collections::HashSet<i64> = acked.into_iter().collect();
        let mut cursor = self.cursor.max(unreadable_max);
        for record in &claimed.records {
            if !acked.contains(&record.id) {
                break;
            }
            cursor = cursor.max(record.id);
        }
        self.cursor = cursor;
        if let Some(error) = failure {
            // A missing stream (the server lost it) is created again.
            self.link.stream_ready.store(false, Ordering::SeqCst);
            return Err((
                "publishing to JetStream failed; the records wait in the journal",
                error,
            ));
        }
        self.reported = None;
        Ok(if full { Round::More } else { Round::Idle })
    }
}

enum Round {
    /// A full batch was read: more may be waiting.
    More,
    /// Nothing more to read for now.
    Idle,
}

/// Publishes records, each partition's in order, one after the other's
/// ack; the ids acknowledged, and the first error.
async fn publish(
    link: &Link,
    js: &Context,
    records: &[JournalRecord],
) -> (Vec<i64>, Option<String>) {
    let partitions = link.config.partitions.max(1) as usize;
    let mut by_partition: Vec<Vec<&JournalRecord>> = vec![Vec::new(); partitions];
    for record in records {
        by_partition[link.config.partition_of(record.record.key_hash) as usize].push(record);
    }
    let runs = by_partition
        .into_iter()
        .enumerate()
        .filter(|(_, records)| !records.is_empty())
        .map(|(partition, records)| async move {
            let subject = link.names.subject(partition as u32);
            let mut acked = Vec::with_capacity(records.len());
            for record in records {
                match publish_one(link, js, &subject, record).await {
                    Ok(()) => acked.push(record.id),
                    Err(error) => return (acked, Some(error)),
                }
            }
            (acked, None)
        });
    let mut acked = Vec::with_capacity(records.len());
    let mut failure = None;
    for (ids, error) in futures_util::future::join_all(runs).await {
        acked.extend(ids);
        failure = failure.or(error);
    }
    (acked, failure)
}

async fn publish_one(
    link: &Link,
    js: &Context,
    subject: &str,
    record: &JournalRecord,
) -> Result<(), String> {
    let body = serde_json::to_vec(&Wire::of(record)).map_err(|error| error.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        record.record.idempotency_id.to_string().as_str(),
    );
    let attempt = async {
        js.publish_with_headers(subject.to_owned(), headers, body.into())
            .await
            .map_err(|error| error.to_string())?
            .await
            .map_err(|error| error.to_string())
    };
    match tokio::time::timeout(link.config.publish_timeout, attempt).await {
        Ok(Ok(_ack)) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!(
            "no JetStream ack within {:?}",
            link.config.publish_timeout
        )),
    }
}

/// The thread that applies one partition's records.
struct Consumer {
    partition: u32,
    link: Arc<Link>,
    parts: Arc<RelayParts>,
    counted: Arc<Counted>,
    process: Processor,
    reported: Option<String>,
}

impl Consumer {
    fn run(mut self) {
        let mut consumer: Option<PullConsumer> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.parts.consumers_exit() {
                return;
            }
            let conn = match self.link.conn() {
                Ok(conn) => conn,
                Err(error) => {
                    self.fail("connecting failed", &error, &mut backoff);
                    continue;
                }
            };
            let pull = match &consumer {
                Some(pull) => pull.clone(),
                None => match self.link.consumer(&conn, self.partition) {
                    Ok(pull) => {
                        consumer = Some(pull.clone());
                        pull
                    }
                    Err(error) => {
                        self.fail(
                            "the JetStream consumer is not available",
                            &error,
                            &mut backoff,
                        );
                        continue;
                    }
                },
            };
            let wait = self.link.config.fetch_wait;
            let fetched = conn.runtime.block_on(async {
                let mut batch = pull
                    .fetch()
                    .max_messages(1)
                    .expires(wait)
                    .messages()
                    .await
                    .map_err(|error| error.to_string())?;
                let mut first = None;
                // The batch ends when its one message came or it expired.
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|error| error.to_string())?;
                    if first.is_none() {
                        first = Some(message);
                    }
                }
                Ok::<_, String>(first)
            });
            match fetched {
                Ok(Some(message)) => {
                    backoff = Duration::from_millis(50);
                    self.reported = None;
                    let handled = catch_unwind(AssertUnwindSafe(|| self.handle(&conn, &message)));
                    if let Err(payload) = handled {
                        // Not acknowledged: delivered again after the ack wait.
                        tracing::error!(
                            panic = panic_message(payload.as_ref()),
                            "outbox NATS consumer recovered from a panic"
                        );
                    }
                }
                Ok(None) => {
                    backoff = Duration::from_millis(50);
                }
                Err(error) => {
                    consumer = None;
                    self.fail("pulling from JetStream failed", &error, &mut backoff);
                }
            }
        }
    }

    fn fail(&mut self, what: &str, error: &str, backoff: &mut Duration) {
        report(&mut self.reported, what, error);
        let parts = Arc::clone(&self.parts);
        nap(*backoff, || parts.consumers_exit());
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
    }

    /// Applies a message's record, records the outcome, acks.
    fn handle(&mut self, conn: &Conn, message: &jetstream::Message) {
        let ack = |kind: AckKind| {
            if let Err(error) = conn.runtime.block_on(message.ack_with(kind)) {
                // Delivered again; the consumer then finds it finished.
                tracing::warn!(%error, "outbox NATS consumer: acknowledging a message failed");
            }
        };
        let wire: Wire = match serde_json::from_slice(&message.payload) {
            Ok(wire) => wire,
            Err(error) => {
                tracing::error!(
                    subject = %message.subject,
                    %error,
                    "outbox NATS consumer: a message on the outbox's subject is not a journal record; dropped"
                );
                return ack(AckKind::Term);
            }
        };
        let (id, key_hash) = (wire.id, wire.key_hash);
        let journal = &self.parts.shared.journal;
        let earlier = match journal.status(id) {
            Ok(RecordStatus::Present {
                state: RecordState::Pending,
                attempts,
            }) => attempts,
            Ok(RecordStatus::Present { .. } | RecordStatus::Gone) => {
                // Applied or dead-lettered before (a redelivery, or a copy
                // published again): nothing to do.
                self.counted.release(id, key_hash);
                return ack(AckKind::Ack);
            }
            Ok(RecordStatus::Unknown) => message
                .info()
                .map(|info| u32::try_from(info.delivered.saturating_sub(1)).unwrap_or(u32::MAX))
                .unwrap_or(0),
            Err(error) => {
                report(
                    &mut self.reported,
                    "reading the journal failed",
                    &error.to_string(),
                );
                return ack(AckKind::Nak(Some(Duration::from_millis(200))));
            }
        };
        let record = match wire.into_record(earlier) {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(
                    journal_id = id,
                    %error,
                    "outbox NATS consumer: a message's record cannot be read; kept as a dead letter"
                );
                let dead = Outcome::Dead {
                    id,
                    attempts: earlier,
                    error: format!("cannot read the relayed record: {error}"),
                };
                if self.record(&[dead]) {
                    self.counted.release(id, key_hash);
                    ack(AckKind::Ack);
                } else {
                    ack(AckKind::Nak(None));
                }
                return;
            }
        };
        self.counted.applying(id, key_hash);
        let (finished, outcomes) = (self.process)(record);
        if !finished {
            // The outbox stops: delivered again to the next consumer.
            return ack(AckKind::Nak(None));
        }
        self.counted.finished(id);
        if self.record(&outcomes) {
            ack(AckKind::Ack);
        } else {
            // Not acknowledged: delivered again after a restart, and
            // applied again (its outcome never reached the journal).
            ack(AckKind::Nak(None));
        }
    }

    /// Writes outcomes to the journal, retrying until it works or the
    /// outbox stops; whether they were written.
    fn record(&mut self, outcomes: &[Outcome]) -> bool {
        if outcomes.is_empty() {
            return true;
        }
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.parts.shared.journal.record_outcomes(outcomes) {
                Ok(()) => return true,
                Err(error) => {
                    report(
                        &mut self.reported,
                        "recording outcomes failed",
                        &error.to_string(),
                    );
                    let parts = Arc::clone(&self.parts);
                    if !nap(backoff, || parts.consumers_exit()) {
                        return false;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_journal_stream_and_are_checked() {
        let config = NatsConfig::default();
        let names = config.names("UserStoreWrite").unwrap();
        assert_eq!(names.prefix, "dualwrite.outbox.UserStoreWrite");
        assert_eq!(names.stream, "DUALWRITE_OUTBOX_UserStoreWrite");
        assert_eq!(names.subject(3), "dualwrite.outbox.UserStoreWrite.3");
        assert_eq!(
            config.names("a.b c").unwrap().prefix,
            "dualwrite.outbox.a_b_c"
        );
        let bad = NatsConfig::default().with_subject_prefix("orders.*");
        assert!(
            bad.names("s")
                .unwrap_err()
                .contains("not a valid subject prefix")
        );
        let bad = NatsConfig::default().with_stream_name("a.b");
        assert!(
            bad.names("s")
                .unwrap_err()
                .contains("not a valid JetStream stream name")
        );
    }

    #[test]
    fn a_key_stays_in_one_partition() {
        let config = NatsConfig::default().with_partitions(3);
        assert_eq!(config.partition_of(None), 0);
        assert_eq!(config.partition_of(Some(7)), 1);
        assert_eq!(
            NatsConfig::default()
                .with_partitions(0)
                .partition_of(Some(7)),
            0
        );
    }
}

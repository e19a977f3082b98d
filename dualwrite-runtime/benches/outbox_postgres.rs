//! Throughput of the PostgreSQL outbox journal (plain timing, a table per
//! part). Needs `DUALWRITE_POSTGRES_URL`; prints a `skipped:` line without.
//!
//! ```text
//! DUALWRITE_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo bench -p dualwrite-runtime --features outbox-postgres --bench outbox_postgres
//! ```
//!
//! 1. **Journal append throughput** per durability policy, from 1 and 8
//!    threads appending directly (~2 s per case).
//! 2. **Drain throughput**: `DW_OUTBOX_DRAIN` (default 20 000) pending
//!    records over 1 000 keys applied into an in-memory secondary (the
//!    journal's own cost: claims, outcomes, leases) by one instance with
//!    1, 2 and 4 appliers, and by two instances (two journal handles with
//!    their own adapters, splitting the partitions) with 2 appliers each;
//!    `DW_OUTBOX_CLAIM_BATCH` sets `OutboxConfig::claim_batch` (default 256).
//!
//! Every case works in tables of its own schema, dropped at the end.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dualwrite_runtime::outbox::postgres::{PgJournal, PgJournalOptions};
use dualwrite_runtime::outbox::{Durability, IdempotencyId, Journal, NewRecord, OutboxConfig};
use dualwrite_runtime::{Migration, Phase, RoutingKey, Store, dual_write};

#[derive(Debug, Clone)]
pub struct BenchError(String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[dual_write(serde)]
pub trait Kv {
    #[dual_write(key = id)]
    fn put(&self, id: i64, value: i64) -> Result<(), BenchError>;
}

/// An in-memory store.
#[derive(Default)]
pub struct MemKv(Mutex<HashMap<i64, i64>>);

impl Kv for MemKv {
    fn put(&self, id: i64, value: i64) -> Result<(), BenchError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, value);
        Ok(())
    }
}

static SCHEMAS: AtomicUsize = AtomicUsize::new(0);

/// A schema of its own for one case; dropped with the guard.
struct Schema {
    name: String,
    url: String,
}

impl Schema {
    fn new(url: &str) -> Self {
        let name = format!(
            "dwbench_{}_{}",
            std::process::id(),
            SCHEMAS.fetch_add(1, Ordering::SeqCst)
        );
        psql(url, &format!("CREATE SCHEMA {name}"));
        Schema {
            name,
            url: url.to_owned(),
        }
    }

    fn journal(&self, durability: Durability) -> PgJournal {
        PgJournal::open_with(
            &self.url,
            PgJournalOptions::new(durability)
                .with_schema(self.name.clone())
                .with_partitions(16)
                .with_max_connections(16),
        )
        .expect("journal")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        psql(&self.url, &format!("DROP SCHEMA {} CASCADE", self.name));
    }
}

/// Runs one statement (schemas are made and dropped with the server's own
/// client, so the bench needs no client of its own).
fn psql(url: &str, sql: &str) {
    let status = std::process::Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("psql");
    assert!(status.success(), "psql {sql}");
}

fn record(journal: &PgJournal, key: i64, value: i64) -> NewRecord {
    NewRecord {
        stream: "KvWrite".to_owned(),
        idempotency_id: IdempotencyId::generate(),
        sequence: journal.next_sequence(),
        key_text: Some(key.to_string()),
        key_hash: Some(key.route_hash()),
        method: "put".to_owned(),
        target: Store::New,
        payload: format!("{{\"Put\":{{\"id\":{key},\"value\":{value}}}}}"),
    }
}

fn append_throughput(url: &str) {
    println!();
    println!("(1) PostgreSQL journal append throughput (direct appends, ~2 s per case)");
    println!(
        "{:<12} {:>8} {:>14} {:>12}",
        "durability", "threads", "appends/s", "mean µs"
    );
    for durability in [Durability::PerWrite, Durability::Grouped, Durability::None] {
        for threads in [1_usize, 8] {
            let schema = Schema::new(url);
            let journal = Arc::new(schema.journal(durability));
            let stop = Instant::now() + Duration::from_secs(2);
            let started = Instant::now();
            let handles: Vec<_> = (0..threads)
                .map(|thread| {
                    let journal = Arc::clone(&journal);
                    std::thread::spawn(move || {
                        let mut n = 0_i64;
                        while Instant::now() < stop {
                            let r = record(&journal, thread as i64 * 1_000_000 + n % 1_000, n);
                            journal.append(&r).expect("append");
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            let total: i64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            let elapsed = started.elapsed().as_secs_f64();
            println!(
                "{:<12} {:>8} {:>14.0} {:>12.1}",
                format!("{durability:?}"),
                threads,
                total as f64 / elapsed,
                elapsed * 1e6 * threads as f64 / total.max(1) as f64
            );
        }
    }
}

/// A number from the environment, or `default`.
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn drain_throughput(url: &str) {
    let records = env_usize("DW_OUTBOX_DRAIN", 20_000);
    println!();
    println!(
        "(2) PostgreSQL journal drain throughput: {records} pending records, 1 000 keys, in-memory secondary, claims of {}",
        env_usize("DW_OUTBOX_CLAIM_BATCH", 256)
    );
    println!(
        "{:<12} {:>9} {:>12} {:>14}",
        "instances", "appliers", "seconds", "records/s"
    );
    for (instances, appliers) in [(1_usize, 1_usize), (1, 2), (1, 4), (2, 2)] {
        let schema = Schema::new(url);
        let filler = schema.journal(Durability::None);
        let batch: Vec<NewRecord> = (0..records as i64)
            .map(|n| record(&filler, n % 1_000, n))
            .collect();
        let filled = Arc::new(filler);
        // Filled from 8 threads (not timed).
        std::thread::scope(|scope| {
            for chunk in batch.chunks(records.div_ceil(8).max(1)) {
                let journal = Arc::clone(&filled);
                scope.spawn(move || {
                    for record in chunk {
                        journal.append(record).expect("fill");
                    }
                });
            }
        });
        let started = Instant::now();
        let adapters: Vec<_> = (0..instances)
            .map(|_| {
                let journal = Arc::new(schema.journal(Durability::None));
                let adapter = KvDualWrite::new(
                    MemKv::default(),
                    MemKv::default(),
                    Migration::new(Phase::DualWrite),
                )
                .with_outbox(
                    journal.clone(),
                    OutboxConfig::default()
                        .with_appliers(appliers)
                        .with_poll_interval(Duration::from_millis(5))
                        .with_claim_batch(env_usize("DW_OUTBOX_CLAIM_BATCH", 256)),
                )
                .expect("outbox");
                (journal, adapter)
            })
            .collect();
        loop {
            if filled.counts().expect("counts").pending == 0 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(600), "drained");
            std::thread::sleep(Duration::from_millis(10));
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{:<12} {:>9} {:>12.2} {:>14.0}",
            instances,
            appliers,
            elapsed,
            records as f64 / elapsed
        );
        drop(adapters);
    }
}

fn main() {
    let Ok(url) = std::env::var("DUALWRITE_POSTGRES_URL") else {
        println!("skipped: outbox_postgres bench: set DUALWRITE_POSTGRES_URL");
        return;
    };
    let parts = std::env::var("DW_OUTBOX_PARTS").unwrap_or_else(|_| "append,drain".into());
    println!(
        "PostgreSQL outbox benchmark (release build; {} CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if parts.contains("append") {
        append_throughput(&url);
    }
    if parts.contains("drain") {
        drain_throughput(&url);
    }
}

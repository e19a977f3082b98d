//! Background shadow comparison: the caller gets the authoritative answer
//! without waiting for the other store; the comparison runs on a worker,
//! skips keys with writes in flight or pending, and a full queue drops
//! comparisons rather than delaying callers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use dualwrite_runtime::{LaneConfig, Migration, Phase, ShadowConfig, dual_write};

#[dual_write]
trait Kv {
    #[dual_write(key = key)]
    fn put(&self, key: u64, value: u64) -> Result<(), String>;
    #[dual_write(key = key)]
    fn get(&self, key: u64) -> Result<Option<u64>, String>;
    #[dual_write(key = key)]
    fn find_name(&self, key: u64, prefix: &str) -> Result<String, String>;
}

/// A store whose reads can be held at a gate.
#[derive(Default)]
struct Mem {
    map: Mutex<HashMap<u64, u64>>,
    held: Mutex<bool>,
    opened: Condvar,
    reads_started: Mutex<usize>,
}

impl Mem {
    fn hold_reads(&self, on: bool) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = on;
        self.opened.notify_all();
    }

    fn wait_at_gate(&self) {
        *self
            .reads_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while *held {
            held = self
                .opened
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn seed(&self, key: u64, value: u64) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value);
    }
}

impl Kv for Mem {
    fn put(&self, key: u64, value: u64) -> Result<(), String> {
        self.seed(key, value);
        Ok(())
    }

    fn get(&self, key: u64) -> Result<Option<u64>, String> {
        self.wait_at_gate();
        Ok(self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied())
    }

    fn find_name(&self, key: u64, prefix: &str) -> Result<String, String> {
        self.wait_at_gate();
        Ok(format!("{prefix}{key}"))
    }
}

fn stores() -> (Arc<Mem>, Arc<Mem>) {
    (Arc::new(Mem::default()), Arc::new(Mem::default()))
}

fn adapter(old: &Arc<Mem>, new: &Arc<Mem>) -> KvDualWrite<Mem, Mem> {
    KvDualWrite::from_shared(
        Arc::clone(old),
        Arc::clone(new),
        Migration::new(Phase::ShadowRead),
    )
}

#[test]
fn the_caller_does_not_wait_for_the_shadow_read() {
    let (old, new) = stores();
    old.seed(1, 10);
    new.seed(1, 10);
    let kv = Arc::new(adapter(&old, &new).with_background_shadow(ShadowConfig::default()));
    // New's reads hang until the gate opens: an inline comparison would
    // hold the caller there.
    new.hold_reads(true);
    let (done, answered) = mpsc::channel();
    let caller = {
        let kv = Arc::clone(&kv);
        thread::spawn(move || done.send(kv.get(1)).expect("test thread"))
    };
    let answer = answered.recv_timeout(Duration::from_secs(10));
    new.hold_reads(false);
    caller.join().expect("caller");
    assert_eq!(
        answer,
        Ok(Ok(Some(10))),
        "the caller got Old's answer at once"
    );
    assert!(kv.flush_shadow(Duration::from_secs(10)));
    let stats = kv.stats();
    assert_eq!((stats.reads_compared, stats.reads_matched), (1, 1));
}

#[test]
fn background_comparisons_count_mismatches_and_owned_arguments() {
    let (old, new) = stores();
    old.seed(1, 10);
    new.seed(1, 11);
    let kv = adapter(&old, &new).with_background_shadow(ShadowConfig::default());
    assert_eq!(kv.get(1), Ok(Some(10)));
    // A borrowed argument travels owned to the worker.
    assert_eq!(kv.find_name(2, "user-"), Ok("user-2".to_owned()));
    assert!(kv.flush_shadow(Duration::from_secs(10)));
    let stats = kv.stats();
    assert_eq!(stats.reads_compared, 2);
    assert_eq!(stats.reads_mismatched, 1);
    assert_eq!(stats.match_rate(), Some(0.5));
}

#[test]
fn a_key_with_a_pending_secondary_write_is_not_compared() {
    let (old, new) = stores();
    let kv = adapter(&old, &new)
        .with_async_secondary(LaneConfig::default().with_lanes(1))
        .with_background_shadow(ShadowConfig::default());
    // Read right after each write, while its secondary write may still be
    // pending in the lane: every read is skipped or matched, never counted
    // as a mismatch.
    for key in 0..200 {
        kv.put(key, key).expect("put");
        assert_eq!(kv.get(key), Ok(Some(key)));
    }
    kv.flush(Duration::from_secs(10)).expect("flushed");
    assert!(kv.flush_shadow(Duration::from_secs(10)));
    let stats = kv.stats();
    assert_eq!(stats.reads_mismatched, 0, "{stats:?}");
    assert_eq!(stats.reads_compared + stats.reads_skipped_pending, 200);
}

#[test]
fn a_full_queue_drops_comparisons_instead_of_waiting() {
    let (old, new) = stores();
    let kv = adapter(&old, &new)
        .with_background_shadow(ShadowConfig::default().with_workers(1).with_queue(1));
    new.hold_reads(true);
    for key in 0..20 {
        assert_eq!(kv.get(key), Ok(None));
    }
    new.hold_reads(false);
    assert!(kv.flush_shadow(Duration::from_secs(10)));
    let stats = kv.stats();
    // One read at the worker, one queued: the rest dropped.
    assert!(stats.shadow_dropped >= 18, "{stats:?}");
    assert_eq!(stats.reads_compared + stats.shadow_dropped, 20, "{stats:?}");
}

#[dual_write]
trait AsyncKv {
    #[dual_write(key = key)]
    async fn put(&self, key: u64, value: u64) -> Result<(), String>;
    #[dual_write(key = key)]
    async fn get(&self, key: u64) -> Result<Option<u64>, String>;
}

#[derive(Default)]
struct AsyncMem {
    map: Mutex<HashMap<u64, u64>>,
    slow: AtomicBool,
}

impl AsyncKv for AsyncMem {
    async fn put(&self, key: u64, value: u64) -> Result<(), String> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value);
        Ok(())
    }

    async fn get(&self, key: u64) -> Result<Option<u64>, String> {
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_reads_are_compared_in_the_background() {
    let old = Arc::new(AsyncMem::default());
    let new = Arc::new(AsyncMem::default());
    new.slow.store(true, Ordering::SeqCst);
    let kv = AsyncKvDualWrite::from_shared(
        Arc::clone(&old),
        Arc::clone(&new),
        Migration::new(Phase::ShadowRead),
    )
    .with_background_shadow(ShadowConfig::default());
    for key in 0..5 {
        kv.put(key, key).await.expect("put");
    }
    new.map
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(4, 99);
    for key in 0..5 {
        assert_eq!(kv.get(key).await, Ok(Some(key)));
    }
    let flushed = tokio::task::spawn_blocking({
        let kv = Arc::new(kv);
        move || (kv.flush_shadow(Duration::from_secs(10)), kv.stats())
    })
    .await
    .expect("flush");
    assert!(flushed.0);
    assert_eq!(flushed.1.reads_compared, 5);
    assert_eq!(flushed.1.reads_mismatched, 1);
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Profile {
    name: String,
    city: String,
    tags: Vec<String>,
}

#[dual_write]
trait Profiles {
    #[dual_write(key = id)]
    fn get(&self, id: u64) -> Result<Option<Profile>, String>;
}

struct Fixed(Profile);

impl Profiles for Fixed {
    fn get(&self, _id: u64) -> Result<Option<Profile>, String> {
        Ok(Some(self.0.clone()))
    }
}

#[test]
fn a_mismatch_names_the_differing_fields_not_their_values() {
    let profile = |city: &str, tag: &str| Profile {
        name: "ada".to_owned(),
        city: city.to_owned(),
        tags: vec!["a".to_owned(), tag.to_owned()],
    };
    let read = ProfilesRead::Get {
        id: 1,
        __dw_answer: Ok(Some(profile("Paris", "x"))),
    };
    assert_eq!(
        read.shadow(&Fixed(profile("Lyon", "y"))),
        dualwrite_runtime::Comparison::MismatchedFields(vec![
            "city".to_owned(),
            "tags[1]".to_owned()
        ])
    );
    assert_eq!(
        read.shadow(&Fixed(profile("Paris", "x"))),
        dualwrite_runtime::Comparison::Matched
    );
}

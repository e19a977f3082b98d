//! Secondary lanes, through `DualWriteCore`: per-key order under injected
//! failures, no lost writes, retries and dead letters, flushing, panics,
//! async store code and timeouts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use dualwrite_runtime::{
    DualWriteCore, LaneConfig, LaneContext, Migration, Phase, RoutingKey, Store, SyncMode,
    WriteStrategy,
};
use proptest::prelude::*;
use tokio::runtime::{Handle, RuntimeFlavor};

/// A write command: `failures` is how many attempts the fake store fails
/// before it accepts the write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cmd {
    key: Option<u32>,
    seq: usize,
    failures: u32,
}

/// A fake secondary store that records what it applied, in order.
#[derive(Debug, Default)]
struct FakeStore {
    attempts: HashMap<usize, u32>,
    applied: Vec<Cmd>,
    lanes_by_key: HashMap<Option<u32>, Vec<usize>>,
}

type Shared = Arc<Mutex<FakeStore>>;

fn lock(store: &Shared) -> MutexGuard<'_, FakeStore> {
    store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Fails each command `failures` times, then applies it.
fn flaky_apply(store: Shared) -> impl Fn(&LaneContext, Store, &Cmd) -> Result<(), String> {
    move |ctx, target, cmd| {
        assert_eq!(target, Store::New);
        let mut store = lock(&store);
        store
            .lanes_by_key
            .entry(cmd.key)
            .or_default()
            .push(ctx.lane());
        let attempt = store.attempts.entry(cmd.seq).or_insert(0);
        *attempt += 1;
        assert_eq!(ctx.attempt(), *attempt, "the context counts attempts");
        if *attempt <= cmd.failures {
            return Err(format!("injected failure {attempt}"));
        }
        store.applied.push(cmd.clone());
        Ok(())
    }
}

fn small_backoff(lanes: usize, max_attempts: u32) -> LaneConfig {
    LaneConfig::default()
        .with_lanes(lanes)
        .with_max_attempts(max_attempts)
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(1))
}

fn new_core() -> DualWriteCore<Cmd> {
    DualWriteCore::new(Migration::new(Phase::DualWrite))
}

fn submit(core: &DualWriteCore<Cmd>, cmd: Cmd) {
    let key = cmd.key;
    core.submit_keyed(
        "put",
        key.as_ref().map(|key| key as &dyn RoutingKey),
        Store::New,
        cmd,
    );
}

/// Submits `jobs` (key, failures) in order and checks, after a flush, that
/// each key's writes were applied in submission order, every job was applied
/// or dead-lettered exactly once, and the stats count every attempt.
fn check_ordered_delivery(jobs: &[(Option<u32>, u32)], lanes: usize, max_attempts: u32) {
    let store = Shared::default();
    let mut core = new_core();
    core.start_lanes(
        small_backoff(lanes, max_attempts),
        flaky_apply(Arc::clone(&store)),
    );
    let commands: Vec<Cmd> = jobs
        .iter()
        .enumerate()
        .map(|(seq, &(key, failures))| Cmd { key, seq, failures })
        .collect();
    for cmd in &commands {
        submit(&core, cmd.clone());
    }
    core.flush(std::time::Duration::from_secs(60))
        .expect("flushed");

    let store = lock(&store);
    let (delivered, given_up): (Vec<&Cmd>, Vec<&Cmd>) =
        commands.iter().partition(|cmd| cmd.failures < max_attempts);

    // Per key, the applied order is the submission order.
    let mut expected: BTreeMap<Option<u32>, Vec<usize>> = BTreeMap::new();
    for cmd in &delivered {
        expected.entry(cmd.key).or_default().push(cmd.seq);
    }
    let mut applied: BTreeMap<Option<u32>, Vec<usize>> = BTreeMap::new();
    for cmd in &store.applied {
        applied.entry(cmd.key).or_default().push(cmd.seq);
    }
    assert_eq!(applied, expected);

    // A key always runs on the same lane.
    for (key, lanes_seen) in &store.lanes_by_key {
        assert!(
            lanes_seen.windows(2).all(|w| w[0] == w[1]),
            "{key:?}: {lanes_seen:?}"
        );
    }

    // The rest are dead letters, with their command, error and attempts.
    let mut letters = core.dead_letters();
    letters.sort_by_key(|letter| letter.command.seq);
    assert_eq!(letters.len(), given_up.len());
    for (letter, cmd) in letters.iter().zip(&given_up) {
        assert_eq!(&letter.command, *cmd);
        assert_eq!(letter.method, "put");
        assert_eq!(letter.key, cmd.key.map(|key| key.to_string()));
        assert_eq!(letter.target, Store::New);
        assert_eq!(letter.attempts, max_attempts);
        assert_eq!(letter.error, format!("injected failure {max_attempts}"));
    }
    assert_eq!(store.applied.len() + letters.len(), commands.len());

    // Every attempt is counted.
    let attempts = |cmd: &Cmd| (cmd.failures + 1).min(max_attempts);
    let failed: u64 = commands
        .iter()
        .map(|cmd| u64::from(cmd.failures.min(max_attempts)))
        .sum();
    let retries: u64 = commands
        .iter()
        .map(|cmd| u64::from(attempts(cmd) - 1))
        .sum();
    let stats = core.snapshot();
    assert_eq!(stats.secondary_writes_ok, delivered.len() as u64);
    assert_eq!(stats.new_writes_ok, delivered.len() as u64);
    assert_eq!(stats.secondary_writes_failed, failed);
    assert_eq!(stats.new_writes_failed, failed);
    assert_eq!(stats.secondary_retries, retries);
    assert_eq!(stats.dead_letters, given_up.len() as u64);
    assert_eq!(stats.secondary_pending, 0);
    assert_eq!(stats.old_writes_ok + stats.old_writes_failed, 0);
    assert_eq!(stats.primary_writes_ok + stats.primary_writes_failed, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn per_key_order_holds_under_random_failures(
        jobs in prop::collection::vec((prop::option::of(0_u32..6), 0_u32..4), 0..40),
        lanes in 1_usize..5,
    ) {
        check_ordered_delivery(&jobs, lanes, 3);
    }
}

#[test]
fn a_single_attempt_dead_letters_every_failure() {
    check_ordered_delivery(&[(Some(1), 0), (Some(1), 1), (None, 2), (Some(1), 0)], 2, 1);
}

#[test]
fn concurrent_submitters_keep_their_keys_in_order() {
    let store = Shared::default();
    let mut core = new_core();
    core.start_lanes(small_backoff(3, 4), flaky_apply(Arc::clone(&store)));
    let core = Arc::new(core);
    let submitters: Vec<_> = (0..4_u32)
        .map(|thread_index| {
            let core = Arc::clone(&core);
            thread::spawn(move || {
                for i in 0..50_usize {
                    // Each thread owns two keys; sequence numbers are global.
                    let key = thread_index * 2 + u32::try_from(i % 2).unwrap_or(0);
                    let failures = u32::try_from(i % 3).unwrap_or(0);
                    let seq = usize::try_from(thread_index).unwrap_or(0) * 1_000 + i;
                    submit(
                        &core,
                        Cmd {
                            key: Some(key),
                            seq,
                            failures,
                        },
                    );
                }
            })
        })
        .collect();
    for submitter in submitters {
        submitter.join().expect("submitter finished");
    }
    core.flush(std::time::Duration::from_secs(60))
        .expect("flushed");
    let store = lock(&store);
    assert_eq!(store.applied.len(), 200);
    assert_eq!(core.dead_letter_count(), 0);
    let mut last: HashMap<Option<u32>, usize> = HashMap::new();
    for cmd in &store.applied {
        if let Some(previous) = last.insert(cmd.key, cmd.seq) {
            assert!(
                previous < cmd.seq,
                "key {:?}: {previous} then {}",
                cmd.key,
                cmd.seq
            );
        }
    }
}

#[test]
fn flush_waits_for_every_job() {
    let store = Shared::default();
    let mut core = new_core();
    let slow_store = Arc::clone(&store);
    core.start_lanes(small_backoff(2, 1), move |_ctx, _target, cmd: &Cmd| {
        thread::sleep(Duration::from_millis(2));
        lock(&slow_store).applied.push(cmd.clone());
        Ok(())
    });
    for seq in 0..30 {
        submit(
            &core,
            Cmd {
                key: Some(u32::try_from(seq % 5).unwrap_or(0)),
                seq,
                failures: 0,
            },
        );
    }
    core.flush(std::time::Duration::from_secs(60))
        .expect("flushed");
    assert_eq!(lock(&store).applied.len(), 30);
    assert_eq!(core.snapshot().secondary_pending, 0);
    // A second flush with nothing pending returns at once.
    core.flush(std::time::Duration::from_secs(60))
        .expect("flushed");
}

#[test]
fn flush_without_lanes_returns_at_once() {
    let core = new_core();
    core.flush(std::time::Duration::from_secs(60))
        .expect("flushed");
    assert!(!core.is_async());
    assert_eq!(core.sync_mode(), Some(SyncMode::Tolerant));
}

async fn flush_async_applies_everything() {
    let store = Shared::default();
    let mut core = new_core();
    core.start_lanes(small_backoff(3, 3), flaky_apply(Arc::clone(&store)));
    for seq in 0..25 {
        let key = Some(u32::try_from(seq % 4).unwrap_or(0));
        submit(
            &core,
            Cmd {
                key,
                seq,
                failures: u32::try_from(seq % 2).unwrap_or(0),
            },
        );
    }
    core.flush_async(std::time::Duration::from_secs(60))
        .await
        .expect("flushed");
    assert_eq!(lock(&store).applied.len(), 25);
    assert_eq!(core.snapshot().secondary_pending, 0);
    core.flush_async(std::time::Duration::from_secs(60))
        .await
        .expect("flushed");
}

#[tokio::test]
async fn flush_async_in_a_current_thread_runtime() {
    flush_async_applies_everything().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_async_in_a_multi_thread_runtime() {
    flush_async_applies_everything().await;
}

#[test]
fn a_panicking_apply_is_a_failed_attempt_not_a_dead_lane() {
    let store = Shared::default();
    let mut core = new_core();
    let panicky = flaky_apply(Arc::clone(&store));
    // Attempts the fake store would fail panic instead of returning errors.
    core.start_lanes(small_backoff(1, 2), move |ctx, target, cmd: &Cmd| {
        let result = panicky(ctx, target, cmd);
        if result.is_err() {
            panic!("boom {}", cmd.seq);
        }
        result
    });
    submit(
        &core,
        Cmd {
            key: Some(1),
            seq: 0,
            failures: 1,
        },
    );
    submit(
        &core,
        Cmd {
            key: Some(1),
            seq: 1,
            failures: 5,
        },
    );
    submit(
        &core,
        Cmd {
            key: Some(1),
            seq: 2,
            failures: 0,
        },
    );
    core.flush(std::time::Duration::from_secs(60))
        .expect("flushed");

    let applied: Vec<usize> = lock(&store).applied.iter().map(|cmd| cmd.seq).collect();
    assert_eq!(applied, [0, 2]);
    let letters = core.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].command.seq, 1);
    assert_eq!(letters[0].error, "secondary write panicked: boom 1");
    assert_eq!(letters[0].attempts, 2);
    let stats = core.snapshot();
    assert_eq!(stats.secondary_writes_failed, 3);
    assert_eq!(stats.secondary_writes_ok, 2);
}

/// Applies each command by awaiting a tokio timer through `block_on`, and
/// records the flavor of the runtime the future ran on.
fn check_block_on_with_a_timer(expected_flavor: RuntimeFlavor) {
    let flavors = Arc::new(Mutex::new(Vec::new()));
    let mut core = new_core();
    let seen = Arc::clone(&flavors);
    core.start_lanes(small_backoff(2, 1), move |ctx, _target, _cmd: &Cmd| {
        ctx.block_on(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let flavor = Handle::current().runtime_flavor();
            seen.lock().map_err(|e| e.to_string())?.push(flavor);
            Ok(())
        })
    });
    for seq in 0..6 {
        submit(
            &core,
            Cmd {
                key: Some(u32::try_from(seq).unwrap_or(0)),
                seq,
                failures: 0,
            },
        );
    }
    let caller_runtime = Handle::try_current().map(|handle| handle.runtime_flavor());
    if caller_runtime.ok() == Some(RuntimeFlavor::CurrentThread) {
        // Blocking this runtime's only thread could starve the lanes: the
        // blocking flush refuses at once, and works from another thread.
        assert_eq!(
            core.flush(Duration::from_secs(60)),
            Err(dualwrite_runtime::FlushError::InsideCurrentThreadRuntime)
        );
        thread::scope(|scope| {
            scope
                .spawn(|| core.flush(Duration::from_secs(60)))
                .join()
                .expect("flush thread")
        })
        .expect("flushed");
    } else {
        core.flush(Duration::from_secs(60)).expect("flushed");
    }
    assert_eq!(core.dead_letter_count(), 0);
    let flavors = flavors.lock().expect("not poisoned");
    assert_eq!(flavors.len(), 6);
    assert!(
        flavors.iter().all(|flavor| *flavor == expected_flavor),
        "{flavors:?}"
    );
}

#[test]
fn block_on_outside_any_runtime_uses_a_lane_runtime() {
    check_block_on_with_a_timer(RuntimeFlavor::CurrentThread);
}

#[tokio::test]
async fn block_on_under_a_current_thread_runtime_uses_a_lane_runtime() {
    check_block_on_with_a_timer(RuntimeFlavor::CurrentThread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_on_under_a_multi_thread_runtime_uses_that_runtime() {
    check_block_on_with_a_timer(RuntimeFlavor::MultiThread);
}

#[test]
fn attempt_timeout_turns_a_hung_write_into_a_timeout_error() {
    let mut core = new_core();
    let config = small_backoff(1, 2).with_attempt_timeout(Some(Duration::from_millis(5)));
    core.start_lanes(config, |ctx, _target, _cmd: &Cmd| {
        ctx.block_on(async {
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            Ok(())
        })
    });
    submit(
        &core,
        Cmd {
            key: Some(1),
            seq: 0,
            failures: 0,
        },
    );
    core.flush(std::time::Duration::from_secs(60))
        .expect("flushed");
    let letters = core.take_dead_letters();
    assert_eq!(letters.len(), 1);
    // Its outcome is unknown (the store may have applied it): not retried.
    assert_eq!(letters[0].attempts, 1);
    assert!(
        letters[0]
            .error
            .starts_with("secondary write timed out after"),
        "{}",
        letters[0].error
    );
    assert_eq!(core.dead_letter_count(), 0);
}

#[test]
fn lanes_are_named_threads_and_keyless_jobs_use_lane_zero() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut core = new_core();
    let record = Arc::clone(&seen);
    core.start_lanes(small_backoff(3, 1), move |ctx, _target, cmd: &Cmd| {
        let name = thread::current().name().map(str::to_owned);
        record
            .lock()
            .map_err(|e| e.to_string())?
            .push((cmd.key, ctx.lane(), name));
        Ok(())
    });
    for seq in 0..12 {
        let key = (seq % 3 != 0).then(|| u32::try_from(seq).unwrap_or(0));
        submit(
            &core,
            Cmd {
                key,
                seq,
                failures: 0,
            },
        );
    }
    core.flush(std::time::Duration::from_secs(60))
        .expect("flushed");
    let seen = seen.lock().expect("not poisoned");
    assert_eq!(seen.len(), 12);
    for (key, lane, name) in seen.iter() {
        assert!(*lane < 3);
        assert_eq!(
            name.as_deref(),
            Some(format!("dualwrite-lane-{lane}").as_str())
        );
        if key.is_none() {
            assert_eq!(*lane, 0);
        } else {
            let hash = key.as_ref().map_or(0, RoutingKey::route_hash);
            assert_eq!(u64::try_from(*lane).ok(), Some(hash % 3));
        }
    }
}

#[test]
fn set_sync_mode_drains_the_lanes_first() {
    let store = Shared::default();
    let mut core = new_core();
    let slow_store = Arc::clone(&store);
    core.start_lanes(small_backoff(2, 1), move |_ctx, _target, cmd: &Cmd| {
        thread::sleep(Duration::from_millis(1));
        lock(&slow_store).applied.push(cmd.clone());
        Ok(())
    });
    assert!(core.is_async());
    assert_eq!(core.sync_mode(), None);
    assert_eq!(
        core.strategy(),
        &WriteStrategy::AsyncSecondary(small_backoff(2, 1))
    );
    for seq in 0..20 {
        submit(
            &core,
            Cmd {
                key: Some(u32::try_from(seq % 2).unwrap_or(0)),
                seq,
                failures: 0,
            },
        );
    }
    core.set_sync_mode(SyncMode::Strong);
    assert_eq!(lock(&store).applied.len(), 20);
    assert!(!core.is_async());
    assert_eq!(core.sync_mode(), Some(SyncMode::Strong));
    assert_eq!(core.strategy(), &WriteStrategy::Sync(SyncMode::Strong));

    // Submitting without lanes is a misuse: kept as a dead letter, no panic.
    submit(
        &core,
        Cmd {
            key: Some(7),
            seq: 99,
            failures: 0,
        },
    );
    let letters = core.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error, "no secondary lanes are running");
    assert_eq!(letters[0].attempts, 0);
    assert_eq!(letters[0].key.as_deref(), Some("7"));
    assert_eq!(core.snapshot().dead_letters, 1);
}

#[test]
fn restarting_lanes_drains_the_previous_ones() {
    let first = Shared::default();
    let second = Shared::default();
    let mut core = new_core();
    core.start_lanes(small_backoff(2, 3), flaky_apply(Arc::clone(&first)));
    for seq in 0..10 {
        submit(
            &core,
            Cmd {
                key: Some(1),
                seq,
                failures: u32::try_from(seq % 2).unwrap_or(0),
            },
        );
    }
    core.start_lanes(small_backoff(1, 3), flaky_apply(Arc::clone(&second)));
    assert_eq!(lock(&first).applied.len(), 10);
    for seq in 10..15 {
        submit(
            &core,
            Cmd {
                key: Some(1),
                seq,
                failures: 0,
            },
        );
    }
    core.flush(std::time::Duration::from_secs(60))
        .expect("flushed");
    assert_eq!(lock(&second).applied.len(), 5);
    assert_eq!(lock(&first).applied.len(), 10);
}

#[test]
fn a_failed_synchronous_secondary_write_is_a_dead_letter() {
    let core = new_core();
    let cmd = Cmd {
        key: Some(3),
        seq: 0,
        failures: 1,
    };
    core.secondary_failed_keyed(
        "put",
        Some(&3_u32),
        Store::New,
        "disk full".to_owned(),
        cmd.clone(),
    );
    core.secondary_failed_keyed("delete", None, Store::Old, "gone".to_owned(), cmd.clone());
    assert_eq!(core.dead_letter_count(), 2);
    let letters = core.take_dead_letters();
    assert_eq!(core.dead_letter_count(), 0);
    assert_eq!(letters[0].method, "put");
    assert_eq!(letters[0].key.as_deref(), Some("3"));
    assert_eq!(letters[0].target, Store::New);
    assert_eq!(letters[0].error, "disk full");
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(letters[0].command, cmd);
    assert_eq!(letters[1].key, None);
    assert_eq!(letters[1].target, Store::Old);
    assert_eq!(core.snapshot().dead_letters, 2);
}

#[test]
fn debug_does_not_need_a_debug_command() {
    struct Opaque;
    let mut core: DualWriteCore<Opaque> = DualWriteCore::new(Migration::new(Phase::Backfill));
    core.start_lanes(
        LaneConfig::default().with_lanes(0),
        |_ctx, _target, _cmd| Ok(()),
    );
    core.submit_keyed("put", None, Store::New, Opaque);
    core.flush(std::time::Duration::from_secs(60))
        .expect("flushed");
    let debug = format!("{core:?}");
    assert!(
        debug.contains("DualWriteCore") && debug.contains("Backfill"),
        "{debug}"
    );
    assert_eq!(core.snapshot().secondary_writes_ok, 1);
}

/// Without a flush, dropping the core lets the lanes finish in the
/// background; the stores they hold are released when they are done.
#[test]
fn dropping_the_core_drains_the_lanes_in_the_background() {
    let store = Shared::default();
    let mut core = new_core();
    core.start_lanes(small_backoff(2, 2), flaky_apply(Arc::clone(&store)));
    for seq in 0..10 {
        submit(
            &core,
            Cmd {
                key: Some(u32::try_from(seq % 3).unwrap_or(0)),
                seq,
                failures: 1,
            },
        );
    }
    drop(core);
    // Every lane drops its copy of `apply` (and the store) once it exits.
    while Arc::strong_count(&store) > 1 {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(lock(&store).applied.len(), 10);
}

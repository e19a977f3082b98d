//! Metrics through the [`metrics`] facade (feature `metrics`, on by
//! default), so any exporter (Prometheus, StatsD, OpenTelemetry...) sees
//! the adapter's counters.
//!
//! Nothing is added to a call's path: the adapter's own counters
//! ([`crate::Stats`], the lanes' queue counts, the latency histograms) stay
//! the source of truth, and a [`MetricsPublisher`] copies them into the
//! facade when asked ([`MetricsPublisher::publish`]) or every interval on a
//! thread of its own ([`MetricsPublisher::spawn`]). Counters are published
//! with `Counter::absolute`, gauges with `Gauge::set`; the handles are
//! registered once, at the first publish (with the recorder current
//! there: install it first), and per method, lane or timed method the
//! first time one shows up.
//!
//! ```no_run
//! # use dualwrite_runtime::{DualWriteCore, Migration, Phase};
//! # let core: DualWriteCore<()> = DualWriteCore::new(Migration::new(Phase::DualWrite));
//! // After installing a recorder (e.g. metrics-exporter-prometheus):
//! let publishing = core
//!     .metrics_publisher()
//!     .with_label("adapter", "users-eu")
//!     .spawn(std::time::Duration::from_secs(5))
//!     .expect("a thread");
//! // ... on shutdown: publishes once more and stops.
//! publishing.stop();
//! ```
//!
//! # Metrics
//!
//! Every metric has the label `trait` (the repository trait's name), plus
//! the publisher's own labels ([`MetricsPublisher::with_label`]).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `dualwrite_writes_total` | counter | `phase`, `store`, `role`, `outcome` | write attempts per store (`old`, `new`), role (`primary`, `secondary`) and outcome (`ok`, `failed`); secondary retries included |
//! | `dualwrite_write_failures_total` | counter | `phase`, `method`, `store`, `role` | failed write attempts per method |
//! | `dualwrite_secondary_retries_total` | counter | `phase`, `method`, `store` | secondary attempts after the first |
//! | `dualwrite_dead_letters_total` | counter | `phase`, `method`, `store` | secondary writes given up on (kept as dead letters) |
//! | `dualwrite_dead_letters_held` | gauge | | dead letters kept in memory now |
//! | `dualwrite_dead_letters_evicted_total` | counter | `phase` | dead letters evicted from a full list |
//! | `dualwrite_secondary_pending` | gauge | | secondary writes handed to lanes (or abandoned at a deadline) and not finished |
//! | `dualwrite_lane_queue_depth` | gauge | `lane` | secondary writes queued in each lane |
//! | `dualwrite_replication_lag_seconds` | gauge | | age of the oldest queued secondary write (a lower bound, to one publish interval; 0 when none waits) |
//! | `dualwrite_queue_full_total` | counter | `phase` | writes that found their lane full |
//! | `dualwrite_writes_refused_total` | counter | `phase` | calls refused before any store was written (lane full, `FailCall`) |
//! | `dualwrite_late_completions_total` | counter | `phase` | secondary calls that returned after their deadline |
//! | `dualwrite_primary_outcome_unknown_total` | counter | `phase` | calls that ended during their primary write with a secondary write due |
//! | `dualwrite_shadow_reads_total` | counter | `phase`, `method`, `outcome` | shadow reads: `match`, `mismatch` (a failed shadow read included), `pending` (not compared: a write of the key was pending) |
//! | `dualwrite_shadow_dropped_total` | counter | `phase` | background comparisons dropped (queue full) |
//! | `dualwrite_phase` | gauge | `phase` | 1 for the global phase, 0 for the others |
//! | `dualwrite_phase_overrides` | gauge | `phase` | per-key overrides to each phase |
//! | `dualwrite_call_duration_seconds` | histogram | `phase`, `method` | the whole call (primary, then the secondary write or its hand-off) of sampled dual-write calls: one in [`crate::SAMPLE_EVERY`] per thread |
//! | `dualwrite_latency_p99_seconds` | gauge | `part` | p99 of the sampled calls since the adapter's latency was last reset: `call` (the whole call) or `primary` (its primary call alone) |
//! | `dualwrite_p99_impact_ratio` | gauge | | p99 of the whole call over p99 of the primary call (the cutover gate's latency criterion) |
//! | `dualwrite_backfill_rows` | gauge | `backfill`, `kind` | rows `done` (read and handled), `written`, `total` (when known) |
//! | `dualwrite_backfill_fraction` | gauge | `backfill` | progress in `[0, 1]` |
//! | `dualwrite_backfill_rows_per_second` | gauge | `backfill` | rate of the current run |
//! | `dualwrite_reconcile_gap` | gauge | | unresolved differences of the last reconciliation (the cutover gate wants 0) |
//! | `dualwrite_reconcile_differences` | gauge | `kind` | the last run's `missing_in_new`, `extra_in_new`, `different`, `repaired`, `settled` |
//! | `dualwrite_reconcile_runs_total` | counter | | reconciliation runs recorded |
//! | `dualwrite_cdc_changes_total` | counter | `outcome` | under change data capture, changes the follower read from its source: `read` (all), `journaled`, `skipped` (the mapping returned none, or the new store is primary), `rejected` (journaled as dead letters), `duplicate` (read again after a restart) |
//! | `dualwrite_cdc_lag_seconds` | gauge | | how far the follower trails: the time since the moment before which it has journaled every change of its source |
//! | `dualwrite_cdc_failing` | gauge | | 1 while the follower's last read or journal write failed, else 0 |
//! | `dualwrite_cdc_standby` | gauge | | 1 while another instance's follower reads the source and this one stands by to take it over, else 0 |
//!
//! Success counts are per store and role, not per method: a per-method
//! count of every write would put a shared counter on every call. Failures,
//! retries, dead letters and comparisons, which are off that path, are per
//! method.
//!
//! **Per phase.** Every counter carries the label `phase`: the global
//! phase in force when the count was made. The publisher keeps a ledger
//! that closes an epoch at every change of the global phase, told by the
//! migration while the change holds its writer lock and, when the change
//! moves a route, the fence, so no write of either phase is in flight: a
//! write is counted under the phase that routed it (test
//! `counts_are_split_exactly_at_a_phase_change_under_load`). Nothing is
//! added to a call's path. What to know:
//! - A key routed by a per-key override or a rollout is counted under the
//!   global phase (`dualwrite_phase_overrides` shows when such keys exist;
//!   each call's `tracing` span carries its own phase).
//! - A change that moves no route (`DualWrite` → `ShadowRead`) is not
//!   fenced: a call running across it is counted under either phase (they
//!   route it alike).
//! - Counts made before the publisher was made are put under the phase in
//!   force then: make it with the adapter.
//! - Sampled call durations are put under the phase in force at the
//!   publish that reads them, so near a change they may be one publish
//!   interval off.
//! - A phase's series appear once it has been the global phase while the
//!   publisher existed.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Label, Unit};

use crate::backfill::{BackfillProgress, ProgressSnapshot};
use crate::by_method::MethodEvent;
use crate::latency::Sample;
use crate::migration::Migration;
use crate::phase::{Phase, Store};
use crate::reconcile::ReconcileReport;
use crate::shared::Source;
use crate::stats::{Role, write_cell};

mod ledger;

use ledger::{PhaseLedger, SCALARS, Tally};

/// The metric names; see the [module docs](self) for what each one counts.
pub mod names {
    /// Write attempts per store, role and outcome.
    pub const WRITES: &str = "dualwrite_writes_total";
    /// Failed write attempts per method.
    pub const WRITE_FAILURES: &str = "dualwrite_write_failures_total";
    /// Secondary attempts after the first, per method.
    pub const SECONDARY_RETRIES: &str = "dualwrite_secondary_retries_total";
    /// Secondary writes given up on, per method.
    pub const DEAD_LETTERS: &str = "dualwrite_dead_letters_total";
    /// Dead letters kept in memory now.
    pub const DEAD_LETTERS_HELD: &str = "dualwrite_dead_letters_held";
    /// Dead letters evicted from a full list.
    pub const DEAD_LETTERS_EVICTED: &str = "dualwrite_dead_letters_evicted_total";
    /// Secondary writes not finished.
    pub const SECONDARY_PENDING: &str = "dualwrite_secondary_pending";
    /// Secondary writes queued per lane.
    pub const LANE_QUEUE_DEPTH: &str = "dualwrite_lane_queue_depth";
    /// Age of the oldest queued secondary write.
    pub const REPLICATION_LAG: &str = "dualwrite_replication_lag_seconds";
    /// Writes that found their lane full.
    pub const QUEUE_FULL: &str = "dualwrite_queue_full_total";
    /// Calls refused before any store was written.
    pub const WRITES_REFUSED: &str = "dualwrite_writes_refused_total";
    /// Secondary calls that returned after their deadline.
    pub const LATE_COMPLETIONS: &str = "dualwrite_late_completions_total";
    /// Calls that ended during their primary write.
    pub const PRIMARY_OUTCOME_UNKNOWN: &str = "dualwrite_primary_outcome_unknown_total";
    /// Shadow reads per method and outcome.
    pub const SHADOW_READS: &str = "dualwrite_shadow_reads_total";
    /// Background comparisons dropped.
    pub const SHADOW_DROPPED: &str = "dualwrite_shadow_dropped_total";
    /// The global phase.
    pub const PHASE: &str = "dualwrite_phase";
    /// Per-key overrides per phase.
    pub const PHASE_OVERRIDES: &str = "dualwrite_phase_overrides";
    /// Sampled call durations.
    pub const CALL_DURATION: &str = "dualwrite_call_duration_seconds";
    /// p99 of the sampled calls and of their primary calls.
    pub const LATENCY_P99: &str = "dualwrite_latency_p99_seconds";
    /// p99 of the call over p99 of the primary.
    pub const P99_IMPACT: &str = "dualwrite_p99_impact_ratio";
    /// Backfill rows done, written, total.
    pub const BACKFILL_ROWS: &str = "dualwrite_backfill_rows";
    /// Backfill progress in `[0, 1]`.
    pub const BACKFILL_FRACTION: &str = "dualwrite_backfill_fraction";
    /// Backfill rate.
    pub const BACKFILL_RATE: &str = "dualwrite_backfill_rows_per_second";
    /// Unresolved differences of the last reconciliation.
    pub const RECONCILE_GAP: &str = "dualwrite_reconcile_gap";
    /// The last reconciliation's differences by kind.
    pub const RECONCILE_DIFFERENCES: &str = "dualwrite_reconcile_differences";
    /// Reconciliation runs recorded.
    pub const RECONCILE_RUNS: &str = "dualwrite_reconcile_runs_total";
    /// Changes the change-data-capture follower read, by outcome.
    pub const CDC_CHANGES: &str = "dualwrite_cdc_changes_total";
    /// How far the change-data-capture follower trails its source.
    pub const CDC_LAG: &str = "dualwrite_cdc_lag_seconds";
    /// Whether the change-data-capture follower is failing.
    pub const CDC_FAILING: &str = "dualwrite_cdc_failing";
    /// Whether the change-data-capture follower stands by (another
    /// instance's reads the source).
    pub const CDC_STANDBY: &str = "dualwrite_cdc_standby";
}

/// The most lag samples kept per lane; beyond it the newest replaces the
/// last one (the lag stays a lower bound, only coarser).
const LAG_SAMPLES: usize = 4096;

/// Copies one adapter's counters into the `metrics` facade; see the
/// [module docs](self). Made by
/// [`DualWriteCore::metrics_publisher`](crate::DualWriteCore::metrics_publisher).
pub struct MetricsPublisher {
    source: Arc<dyn Source>,
    migration: Migration,
    /// The counts split by the phase they were made in.
    ledger: Arc<PhaseLedger>,
    labels: Vec<Label>,
    /// Made at the first publish.
    state: Mutex<Option<State>>,
    backfills: Mutex<Vec<WatchedBackfill>>,
}

/// What publishing keeps between two publishes: the handles, and what the
/// lag estimate needs.
struct State {
    fixed: Fixed,
    /// The counters of each phase that has had an epoch.
    phases: HashMap<Phase, PhaseHandles>,
    durations: HashMap<(Phase, &'static str), Histogram>,
    lanes: Vec<LaneState>,
    samples: Vec<Sample>,
    /// Made when a change-data-capture follower first shows up.
    cdc: Option<CdcHandles>,
}

/// The follower's counters and gauges.
struct CdcHandles {
    /// read, journaled, skipped, rejected, duplicate.
    changes: [Counter; 5],
    lag: Gauge,
    failing: Gauge,
    standby: Gauge,
}

/// The gauges every adapter has.
struct Fixed {
    dead_letters_held: Gauge,
    pending: Gauge,
    lag: Gauge,
    phase: [Gauge; 6],
    overrides: [Gauge; 6],
    p99_impact: Gauge,
    /// call, primary.
    p99: [Gauge; 2],
}

/// The counters of one phase.
struct PhaseHandles {
    /// Indexed by `write_cell`.
    writes: [Counter; 8],
    /// In [`Tally::scalars`] order.
    scalars: [Counter; SCALARS],
    methods: HashMap<&'static str, MethodHandles>,
}

/// The handles of one method: a write's (failures, retries, dead
/// letters), a read's (shadow outcomes), or both for a method the trait
/// did not list.
struct MethodHandles {
    write: Option<WriteHandles>,
    /// match, mismatch, pending.
    shadow: Option<[Counter; 3]>,
}

struct WriteHandles {
    /// Old primary, Old secondary, New primary, New secondary.
    failures: [Counter; 4],
    retries: [Counter; 2],
    dead_letters: [Counter; 2],
}

/// One lane's depth gauge and submission history.
struct LaneState {
    depth: Gauge,
    /// `(when, submitted so far)`, oldest first: the oldest queued write
    /// was submitted no later than the first sample that counts it.
    history: VecDeque<(Instant, u64)>,
}

struct WatchedBackfill {
    progress: BackfillProgress,
    labels: Vec<Label>,
}

impl MetricsPublisher {
    pub(crate) fn new(source: Arc<dyn Source>, migration: Migration) -> Self {
        let labels = vec![Label::new("trait", source.info().name)];
        source.latency().keep_samples(true);
        let ledger = PhaseLedger::attach(Arc::clone(&source), &migration);
        MetricsPublisher {
            source,
            migration,
            ledger,
            labels,
            state: Mutex::new(None),
            backfills: Mutex::new(Vec::new()),
        }
    }

    /// Adds a label to every metric of this publisher (e.g. `adapter` when
    /// one process runs two adapters of the same trait). Call it before
    /// the first publish: handles registered already are registered again,
    /// and their old series stay with the recorder.
    #[must_use]
    pub fn with_label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push(Label::new(key, value.into()));
        self.state = Mutex::new(None);
        self
    }

    /// Publishes a backfill's progress with every publish, labelled
    /// `backfill = name` (see [`record_backfill`]).
    pub fn watch_backfill(&self, name: impl Into<String>, progress: BackfillProgress) {
        let mut labels = self.labels.clone();
        labels.push(Label::new("backfill", name.into()));
        self.backfills
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(WatchedBackfill { progress, labels });
    }

    /// Publishes a reconciliation run's outcome (its gap, its differences
    /// by kind) with this publisher's labels.
    pub fn record_reconcile(&self, report: &ReconcileReport) {
        record_reconcile(&self.labels, report);
    }

    /// Copies the adapter's counters into the facade now.
    pub fn publish(&self) {
        let mut state = self.lock();
        let state = state.get_or_insert_with(|| {
            describe();
            State::new(&self.labels)
        });
        let source = &*self.source;
        let (split, current) = self.ledger.split();
        for (phase, tally) in &split {
            self.publish_phase(state, *phase, tally);
        }
        let fixed = &state.fixed;
        fixed
            .dead_letters_held
            .set(source.dead_letters_held() as f64);
        fixed
            .pending
            .set((source.stats().snapshot().secondary_pending + source.pending()) as f64);

        let global = self.migration.phase();
        let mut overrides = [0_u64; 6];
        for (_, phase) in self.migration.overrides() {
            overrides[phase as usize] += 1;
        }
        for phase in Phase::ALL {
            let index = phase as usize;
            fixed.phase[index].set(if phase == global { 1.0 } else { 0.0 });
            fixed.overrides[index].set(overrides[index] as f64);
        }

        self.publish_lanes(state);
        self.publish_latency(state, current);
        self.publish_cdc(state);
        let backfills = self
            .backfills
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for backfill in backfills.iter() {
            record_backfill(&backfill.labels, &backfill.progress.snapshot());
        }
    }

    /// The change-data-capture follower's counts and lag, while one runs.
    fn publish_cdc(&self, state: &mut State) {
        let Some((status, lag)) = self.source.cdc(Instant::now()) else {
            if let Some(cdc) = &state.cdc {
                cdc.lag.set(0.0);
                cdc.failing.set(0.0);
                cdc.standby.set(0.0);
            }
            return;
        };
        let labels = &self.labels;
        let cdc = state.cdc.get_or_insert_with(|| {
            let with = |outcome: &'static str| {
                let mut all = labels.clone();
                all.push(Label::new("outcome", outcome));
                metrics::counter!(names::CDC_CHANGES, all)
            };
            CdcHandles {
                changes: ["read", "journaled", "skipped", "rejected", "duplicate"].map(with),
                lag: metrics::gauge!(names::CDC_LAG, labels.clone()),
                failing: metrics::gauge!(names::CDC_FAILING, labels.clone()),
                standby: metrics::gauge!(names::CDC_STANDBY, labels.clone()),
            }
        });
        let counts = [
            status.changes_read,
            status.journaled,
            status.skipped,
            status.rejected,
            status.duplicates,
        ];
        for (counter, count) in cdc.changes.iter().zip(counts) {
            counter.absolute(count);
        }
        cdc.lag.set(lag.as_secs_f64());
        cdc.failing.set(if status.last_error.is_some() {
            1.0
        } else {
            0.0
        });
        cdc.standby.set(if status.standby { 1.0 } else { 0.0 });
    }

    /// Queue depth per lane and the lag of the oldest queued write.
    fn publish_lanes(&self, state: &mut State) {
        let now = Instant::now();
        let counts = self.source.lane_counts();
        while state.lanes.len() < counts.len() {
            let mut labels = self.labels.clone();
            labels.push(Label::new("lane", state.lanes.len().to_string()));
            state.lanes.push(LaneState {
                depth: metrics::gauge!(names::LANE_QUEUE_DEPTH, labels),
                history: VecDeque::new(),
            });
        }
        let mut lag = Duration::ZERO;
        for (lane, (submitted, finished)) in state.lanes.iter_mut().zip(&counts) {
            lane.depth.set(submitted.saturating_sub(*finished) as f64);
            lag = lag.max(lane.lag(now, *submitted, *finished));
        }
        // Lanes stopped (the strategy is synchronous now): none queue.
        for lane in state.lanes.iter_mut().skip(counts.len()) {
            lane.depth.set(0.0);
            lane.history.clear();
        }
        state.fixed.lag.set(lag.as_secs_f64());
    }

    /// The sampled durations since the last publish, and the p99 impact.
    /// The samples are put under `phase`, the phase in force now.
    fn publish_latency(&self, state: &mut State, phase: Phase) {
        let latency = self.source.latency();
        latency.drain_samples(&mut state.samples);
        for sample in state.samples.drain(..) {
            let key = (phase, sample.method);
            let histogram = state.durations.entry(key).or_insert_with(|| {
                let mut labels = self.labels.clone();
                labels.push(Label::new("method", sample.method));
                labels.push(Label::new("phase", phase.as_str()));
                metrics::histogram!(names::CALL_DURATION, labels)
            });
            histogram.record(Duration::from_nanos(sample.nanos).as_secs_f64());
        }
        let snapshot = latency.snapshot();
        if snapshot.samples > 0 {
            state.fixed.p99[0].set(snapshot.call_p99.as_secs_f64());
            state.fixed.p99[1].set(snapshot.primary_p99.as_secs_f64());
        }
        if let Some(impact) = snapshot.p99_impact() {
            state.fixed.p99_impact.set(impact);
        }
    }

    /// Sets the counters of `phase` from its tally, registering the
    /// handles of the phase and of its methods the first time.
    fn publish_phase(&self, state: &mut State, phase: Phase, tally: &Tally) {
        let handles = state
            .phases
            .entry(phase)
            .or_insert_with(|| PhaseHandles::new(&self.labels, phase));
        for (counter, value) in handles.writes.iter().zip(tally.writes) {
            counter.absolute(value);
        }
        for (counter, value) in handles.scalars.iter().zip(tally.scalars) {
            counter.absolute(value);
        }
        for (&method, counts) in &tally.methods {
            let handles = handles
                .methods
                .entry(method)
                .or_insert_with(|| self.method_handles(phase, method));
            let get = |event: MethodEvent| counts[event.cell()];
            if let Some(write) = &handles.write {
                for store in [Store::Old, Store::New] {
                    let s = store_index(store);
                    write.failures[s * 2].absolute(get(MethodEvent::PrimaryFailed(store)));
                    write.failures[s * 2 + 1].absolute(get(MethodEvent::SecondaryFailed(store)));
                    write.retries[s].absolute(get(MethodEvent::Retry(store)));
                    write.dead_letters[s].absolute(get(MethodEvent::DeadLetter(store)));
                }
            }
            if let Some(shadow) = &handles.shadow {
                shadow[0].absolute(get(MethodEvent::ShadowMatched));
                shadow[1].absolute(get(MethodEvent::ShadowMismatched));
                shadow[2].absolute(get(MethodEvent::ShadowPending));
            }
        }
    }

    /// The handles of one method's counters in `phase`.
    fn method_handles(&self, phase: Phase, method: &'static str) -> MethodHandles {
        let info = self.source.info();
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut labels = self.labels.clone();
            labels.push(Label::new("method", method));
            labels.push(Label::new("phase", phase.as_str()));
            labels.extend(pairs.iter().map(|&(k, v)| Label::new(k, v)));
            labels
        };
        let failure = |store: Store, role: &'static str| {
            metrics::counter!(
                names::WRITE_FAILURES,
                with(&[("store", store.as_str()), ("role", role)])
            )
        };
        let per_store = |name: &'static str| {
            [Store::Old, Store::New]
                .map(|store| metrics::counter!(name, with(&[("store", store.as_str())])))
        };
        let shadow = |outcome: &'static str| {
            metrics::counter!(names::SHADOW_READS, with(&[("outcome", outcome)]))
        };
        let is_write = info.writes.contains(&method);
        let is_read = info.reads.contains(&method);
        let unlisted = !is_write && !is_read;
        MethodHandles {
            write: (is_write || unlisted).then(|| WriteHandles {
                failures: [
                    failure(Store::Old, "primary"),
                    failure(Store::Old, "secondary"),
                    failure(Store::New, "primary"),
                    failure(Store::New, "secondary"),
                ],
                retries: per_store(names::SECONDARY_RETRIES),
                dead_letters: per_store(names::DEAD_LETTERS),
            }),
            shadow: (is_read || unlisted)
                .then(|| [shadow("match"), shadow("mismatch"), shadow("pending")]),
        }
    }

    /// Publishes every `interval` on a thread of its own (named
    /// `dualwrite-metrics`) until the returned handle is stopped or
    /// dropped, which publishes once more.
    pub fn spawn(self, interval: Duration) -> std::io::Result<PublisherThread> {
        let publisher = Arc::new(self);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let publisher = Arc::clone(&publisher);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("dualwrite-metrics".to_owned())
                .spawn(move || {
                    let (flag, wake) = &*stop;
                    let mut stopped = flag.lock().unwrap_or_else(PoisonError::into_inner);
                    while !*stopped {
                        drop(stopped);
                        publisher.publish();
                        stopped = flag.lock().unwrap_or_else(PoisonError::into_inner);
                        if *stopped {
                            break;
                        }
                        stopped = wake
                            .wait_timeout(stopped, interval)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    drop(stopped);
                    publisher.publish();
                })?
        };
        Ok(PublisherThread {
            publisher,
            stop,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        // Publishing only overwrites values: a panic mid-way leaves nothing
        // half-updated that the next publish does not set again.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for MetricsPublisher {
    fn drop(&mut self) {
        self.source.latency().keep_samples(false);
    }
}

impl fmt::Debug for MetricsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsPublisher")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl State {
    fn new(labels: &[Label]) -> Self {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut all = labels.to_vec();
            all.extend(pairs.iter().map(|&(k, v)| Label::new(k, v)));
            all
        };
        let plain_gauge = |name: &'static str| metrics::gauge!(name, labels.to_vec());
        let per_phase = |name: &'static str| {
            Phase::ALL.map(|phase| metrics::gauge!(name, with(&[("phase", phase.as_str())])))
        };
        State {
            fixed: Fixed {
                dead_letters_held: plain_gauge(names::DEAD_LETTERS_HELD),
                pending: plain_gauge(names::SECONDARY_PENDING),
                lag: plain_gauge(names::REPLICATION_LAG),
                phase: per_phase(names::PHASE),
                overrides: per_phase(names::PHASE_OVERRIDES),
                p99_impact: plain_gauge(names::P99_IMPACT),
                p99: ["call", "primary"]
                    .map(|part| metrics::gauge!(names::LATENCY_P99, with(&[("part", part)]))),
            },
            phases: HashMap::new(),
            durations: HashMap::new(),
            lanes: Vec::new(),
            samples: Vec::new(),
            cdc: None,
        }
    }
}

impl PhaseHandles {
    fn new(labels: &[Label], phase: Phase) -> Self {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut all = labels.to_vec();
            all.push(Label::new("phase", phase.as_str()));
            all.extend(pairs.iter().map(|&(k, v)| Label::new(k, v)));
            all
        };
        let write = |cell: usize| {
            let store = if cell < 4 { Store::Old } else { Store::New };
            let role = if cell % 4 < 2 {
                Role::Primary
            } else {
                Role::Secondary
            };
            let ok = cell.is_multiple_of(2);
            debug_assert_eq!(write_cell(store, role, ok), cell);
            metrics::counter!(
                names::WRITES,
                with(&[
                    ("store", store.as_str()),
                    (
                        "role",
                        match role {
                            Role::Primary => "primary",
                            Role::Secondary => "secondary",
                        }
                    ),
                    ("outcome", if ok { "ok" } else { "failed" }),
                ])
            )
        };
        let scalars = [
            names::DEAD_LETTERS_EVICTED,
            names::QUEUE_FULL,
            names::WRITES_REFUSED,
            names::LATE_COMPLETIONS,
            names::PRIMARY_OUTCOME_UNKNOWN,
            names::SHADOW_DROPPED,
        ];
        PhaseHandles {
            writes: std::array::from_fn(write),
            scalars: scalars.map(|name| metrics::counter!(name, with(&[]))),
            methods: HashMap::new(),
        }
    }
}

impl LaneState {
    /// The age of the lane's oldest queued write, at least: the time since
    /// the first sample that had counted it as submitted. Records this
    /// sample and forgets the ones no queued write needs.
    fn lag(&mut self, now: Instant, submitted: u64, finished: u64) -> Duration {
        // Samples that had not counted any still-queued write: the writes
        // they counted are all finished.
        while self
            .history
            .front()
            .is_some_and(|&(_, counted)| counted <= finished)
        {
            self.history.pop_front();
        }
        if submitted > finished {
            let grew = self
                .history
                .back()
                .is_none_or(|&(_, counted)| counted < submitted);
            if grew {
                if self.history.len() >= LAG_SAMPLES {
                    self.history.pop_back();
                }
                self.history.push_back((now, submitted));
            }
        }
        self.history
            .front()
            .map_or(Duration::ZERO, |&(at, _)| now.saturating_duration_since(at))
    }
}

/// A running [`MetricsPublisher::spawn`]: stop it (or drop it) to publish
/// once more and end the thread.
pub struct PublisherThread {
    publisher: Arc<MetricsPublisher>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl PublisherThread {
    /// The publisher the thread runs (e.g. to watch a backfill).
    pub fn publisher(&self) -> &MetricsPublisher {
        &self.publisher
    }

    /// Publishes once more and ends the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // A panic in a recorder ends the thread; nothing to recover.
            let _ = thread.join();
        }
    }
}

impl Drop for PublisherThread {
    fn drop(&mut self) {
        self.halt();
    }
}

impl fmt::Debug for PublisherThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherThread")
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

/// Sets a backfill's gauges (`dualwrite_backfill_*`) from `progress`, with
/// `labels` (e.g. `backfill = "users"`): for a backfill that runs apart
/// from any adapter's publisher.
pub fn record_backfill(labels: &[Label], progress: &ProgressSnapshot) {
    let with = |kind: &'static str| {
        let mut all = labels.to_vec();
        all.push(Label::new("kind", kind));
        all
    };
    metrics::gauge!(names::BACKFILL_ROWS, with("done")).set(progress.done as f64);
    metrics::gauge!(names::BACKFILL_ROWS, with("written")).set(progress.written as f64);
    if let Some(total) = progress.total {
        metrics::gauge!(names::BACKFILL_ROWS, with("total")).set(total as f64);
    }
    metrics::gauge!(names::BACKFILL_FRACTION, labels.to_vec()).set(progress.fraction());
    metrics::gauge!(names::BACKFILL_RATE, labels.to_vec()).set(progress.rows_per_second);
}

/// Records a reconciliation run (`dualwrite_reconcile_*`) with `labels`:
/// its gap, its differences by kind, one more run.
pub fn record_reconcile(labels: &[Label], report: &ReconcileReport) {
    metrics::gauge!(names::RECONCILE_GAP, labels.to_vec()).set(report.gap() as f64);
    for (kind, value) in [
        ("missing_in_new", report.missing_in_new),
        ("extra_in_new", report.extra_in_new),
        ("different", report.different),
        ("repaired", report.repaired),
        ("settled", report.settled),
    ] {
        let mut all = labels.to_vec();
        all.push(Label::new("kind", kind));
        metrics::gauge!(names::RECONCILE_DIFFERENCES, all).set(value as f64);
    }
    metrics::counter!(names::RECONCILE_RUNS, labels.to_vec()).increment(1);
}

/// Describes every metric to the installed recorder (its unit and help).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::WRITES,
        Unit::Count,
        "write attempts per phase, store, role and outcome"
    );
    describe_counter!(
        names::WRITE_FAILURES,
        Unit::Count,
        "failed write attempts per method, store and role"
    );
    describe_counter!(
        names::SECONDARY_RETRIES,
        Unit::Count,
        "secondary write attempts after the first"
    );
    describe_counter!(
        names::DEAD_LETTERS,
        Unit::Count,
        "secondary writes given up on and kept as dead letters"
    );
    describe_gauge!(
        names::DEAD_LETTERS_HELD,
        Unit::Count,
        "dead letters kept in memory"
    );
    describe_counter!(
        names::DEAD_LETTERS_EVICTED,
        Unit::Count,
        "dead letters evicted from a full list"
    );
    describe_gauge!(
        names::SECONDARY_PENDING,
        Unit::Count,
        "secondary writes not finished"
    );
    describe_gauge!(
        names::LANE_QUEUE_DEPTH,
        Unit::Count,
        "secondary writes queued in the lane"
    );
    describe_gauge!(
        names::REPLICATION_LAG,
        Unit::Seconds,
        "age of the oldest queued secondary write (lower bound)"
    );
    describe_counter!(
        names::QUEUE_FULL,
        Unit::Count,
        "writes that found their lane full"
    );
    describe_counter!(
        names::WRITES_REFUSED,
        Unit::Count,
        "calls refused before any store was written"
    );
    describe_counter!(
        names::LATE_COMPLETIONS,
        Unit::Count,
        "secondary calls that returned after their deadline"
    );
    describe_counter!(
        names::PRIMARY_OUTCOME_UNKNOWN,
        Unit::Count,
        "calls that ended during their primary write with a secondary write due"
    );
    describe_counter!(
        names::SHADOW_READS,
        Unit::Count,
        "shadow reads by outcome: match, mismatch, pending"
    );
    describe_counter!(
        names::SHADOW_DROPPED,
        Unit::Count,
        "background shadow comparisons dropped"
    );
    describe_gauge!(names::PHASE, "1 for the global migration phase");
    describe_gauge!(
        names::PHASE_OVERRIDES,
        Unit::Count,
        "per-key phase overrides"
    );
    describe_histogram!(
        names::CALL_DURATION,
        Unit::Seconds,
        "sampled dual-write calls, whole"
    );
    describe_gauge!(
        names::LATENCY_P99,
        Unit::Seconds,
        "p99 of sampled dual-write calls: the whole call, or its primary call"
    );
    describe_gauge!(
        names::P99_IMPACT,
        "p99 of the whole call over p99 of the primary call"
    );
    describe_gauge!(names::BACKFILL_ROWS, Unit::Count, "backfill rows");
    describe_gauge!(names::BACKFILL_FRACTION, "backfill progress in [0, 1]");
    describe_gauge!(names::BACKFILL_RATE, "backfill rows per second");
    describe_gauge!(
        names::RECONCILE_GAP,
        Unit::Count,
        "unresolved differences of the last reconciliation"
    );
    describe_gauge!(
        names::RECONCILE_DIFFERENCES,
        Unit::Count,
        "differences of the last reconciliation by kind"
    );
    describe_counter!(
        names::RECONCILE_RUNS,
        Unit::Count,
        "reconciliation runs recorded"
    );
    describe_counter!(
        names::CDC_CHANGES,
        Unit::Count,
        "changes the change-data-capture follower read, by outcome"
    );
    describe_gauge!(
        names::CDC_LAG,
        Unit::Seconds,
        "time since the moment before which the follower journaled every change"
    );
    describe_gauge!(
        names::CDC_FAILING,
        "1 while the change-data-capture follower's last round failed"
    );
    describe_gauge!(
        names::CDC_STANDBY,
        "1 while the change-data-capture follower stands by (another instance's reads the source)"
    );
}

fn store_index(store: Store) -> usize {
    match store {
        Store::Old => 0,
        Store::New => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane() -> LaneState {
        LaneState {
            depth: Gauge::noop(),
            history: VecDeque::new(),
        }
    }

    #[test]
    fn the_lag_is_the_age_of_the_first_sample_counting_the_oldest_queued_write() {
        let mut lane = lane();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Nothing queued: no lag.
        assert_eq!(lane.lag(at(0), 0, 0), Duration::ZERO);
        // 5 submitted, 0 finished: the oldest was submitted by t=100.
        assert_eq!(lane.lag(at(100), 5, 0), Duration::ZERO);
        assert_eq!(lane.lag(at(200), 9, 2), Duration::from_millis(100));
        // Write #6 (0-based 5) is the oldest now: first counted at t=200.
        assert_eq!(lane.lag(at(300), 9, 5), Duration::from_millis(100));
        // All finished: no lag, history emptied.
        assert_eq!(lane.lag(at(400), 9, 9), Duration::ZERO);
        assert!(lane.history.is_empty());
    }

    #[test]
    fn a_full_history_keeps_a_lower_bound() {
        let mut lane = lane();
        let t0 = Instant::now();
        for n in 1..=(LAG_SAMPLES as u64 + 10) {
            lane.lag(t0 + Duration::from_millis(n), n, 0);
        }
        assert_eq!(lane.history.len(), LAG_SAMPLES);
        let now = t0 + Duration::from_secs(60);
        let lag = lane.lag(now, LAG_SAMPLES as u64 + 10, 0);
        assert_eq!(lag, Duration::from_secs(60) - Duration::from_millis(1));
    }
}

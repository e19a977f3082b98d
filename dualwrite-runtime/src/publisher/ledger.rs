//! Counts split by phase: the adapter's counters are cumulative, and the
//! ledger closes a *phase epoch* at every change of the global phase, so
//! each count is published under the phase in force when it was made.
//!
//! The migration tells the ledger of a change while it holds its writer
//! lock and, when the change moves a route, the fence: no write of either
//! phase is in flight, so the split is exact at that boundary. A change
//! that moves no route (`DualWrite` to `ShadowRead`) is not fenced: a call
//! running across it is counted under one of the two phases, which route
//! it alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::by_method::{CELLS, MethodEvent};
use crate::migration::{Migration, PhaseObserver};
use crate::phase::Phase;
use crate::shared::Source;

/// Counters other than the write cells and the per-method rows, in
/// [`Tally::scalars`] order.
pub(super) const SCALARS: usize = 6;

/// Every cumulative counter of one adapter at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Tally {
    /// Indexed by `write_cell`: store x role x outcome.
    pub(super) writes: [u64; 8],
    /// Dead letters evicted, queue full, refused, late completions,
    /// primary outcome unknown, shadow comparisons dropped.
    pub(super) scalars: [u64; SCALARS],
    /// Per method, indexed like [`MethodEvent`]'s cells.
    pub(super) methods: HashMap<&'static str, [u64; CELLS]>,
}

impl Tally {
    /// The counters now.
    pub(super) fn read(source: &dyn Source) -> Tally {
        let stats = source.stats();
        let snapshot = stats.snapshot();
        let methods = stats
            .by_method()
            .rows()
            .iter()
            .map(|row| (row.method, MethodEvent::ALL.map(|event| row.get(event))))
            .collect();
        Tally {
            writes: stats.write_cells(),
            scalars: [
                snapshot.dead_letters_evicted,
                snapshot.queue_full,
                snapshot.writes_refused,
                snapshot.late_completions,
                snapshot.primary_outcome_unknown,
                snapshot.shadow_dropped,
            ],
            methods,
        }
    }

    /// Adds `later - earlier` to this tally (saturating: counters only
    /// grow, a method missing from `earlier` counts from 0).
    fn add_between(&mut self, later: &Tally, earlier: &Tally) {
        let add = |into: &mut [u64], now: &[u64], then: &[u64]| {
            for ((into, now), then) in into.iter_mut().zip(now).zip(then) {
                *into += now.saturating_sub(*then);
            }
        };
        add(&mut self.writes, &later.writes, &earlier.writes);
        add(&mut self.scalars, &later.scalars, &earlier.scalars);
        for (method, now) in &later.methods {
            let then = earlier.methods.get(method).copied().unwrap_or([0; CELLS]);
            let into = self.methods.entry(method).or_insert([0; CELLS]);
            add(into, now, &then);
        }
    }
}

/// One adapter's counts per phase since the ledger was made.
pub(super) struct PhaseLedger {
    source: Arc<dyn Source>,
    epochs: Mutex<Epochs>,
}

struct Epochs {
    /// The global phase of the open epoch.
    current: Phase,
    /// The counters when the open epoch began.
    start: Tally,
    /// The counts of the closed epochs, per phase.
    closed: [Option<Tally>; 6],
}

impl PhaseLedger {
    /// A ledger told of `migration`'s changes from now on. Its first epoch
    /// is the phase in force and holds every count made so far (counts
    /// made before the ledger are put under that phase).
    pub(super) fn attach(source: Arc<dyn Source>, migration: &Migration) -> Arc<Self> {
        migration.observe_with(|phase| {
            Arc::new(PhaseLedger {
                source,
                epochs: Mutex::new(Epochs {
                    current: phase,
                    start: Tally::default(),
                    closed: Default::default(),
                }),
            })
        })
    }

    /// The counts of every phase that has had an epoch, as of now, and the
    /// phase of the open epoch.
    pub(super) fn split(&self) -> (Vec<(Phase, Tally)>, Phase) {
        // Read under the lock: a phase change closing the epoch meanwhile
        // would otherwise count the same writes in two phases.
        let epochs = self.lock();
        let now = Tally::read(&*self.source);
        let mut split = Vec::new();
        for phase in Phase::ALL {
            let closed = &epochs.closed[phase as usize];
            if phase != epochs.current && closed.is_none() {
                continue;
            }
            let mut tally = closed.clone().unwrap_or_default();
            if phase == epochs.current {
                tally.add_between(&now, &epochs.start);
            }
            split.push((phase, tally));
        }
        (split, epochs.current)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Epochs> {
        // Every update replaces whole fields after the reads that can fail.
        self.epochs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PhaseObserver for PhaseLedger {
    fn global_changed(&self, from: Phase, to: Phase) {
        let mut epochs = self.lock();
        let now = Tally::read(&*self.source);
        // Made under the migration's writer lock, the ledger has seen
        // every change since.
        debug_assert_eq!(epochs.current, from);
        let ending = epochs.current;
        let start = std::mem::replace(&mut epochs.start, now.clone());
        let mut closed = epochs.closed[ending as usize].take().unwrap_or_default();
        closed.add_between(&now, &start);
        epochs.closed[ending as usize] = Some(closed);
        epochs.current = to;
    }
}

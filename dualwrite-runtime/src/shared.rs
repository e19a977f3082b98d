//! The state an adapter shares with its lanes: counters, dead letters, the
//! per-key stripes and the latency histograms.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::cdc::CdcStatus;
use crate::dead_letter::DeadLetterSink;
use crate::lanes::Pending;
use crate::latency::LatencyRecorder;
use crate::stats::Stats;
use crate::stripes::KeyStripes;
use crate::trait_info::TraitInfo;

/// What the caller's path and the lane threads of one adapter both use.
pub(crate) struct Shared<C> {
    pub(crate) info: TraitInfo,
    pub(crate) stats: Stats,
    pub(crate) dead_letters: DeadLetterSink<C>,
    pub(crate) stripes: Arc<KeyStripes>,
    pub(crate) latency: LatencyRecorder,
    /// The submitted and finished counts of the running lanes, if any: what
    /// a metrics publisher reads for queue depths and lag.
    pub(crate) lanes: ArcSwapOption<Pending>,
    /// The change-data-capture follower's status while one runs.
    pub(crate) cdc: ArcSwapOption<Mutex<CdcStatus>>,
}

impl<C> Shared<C> {
    pub(crate) fn new(dead_letter_capacity: usize, info: TraitInfo) -> Self {
        let stats = Stats::for_methods(info.writes.iter().chain(info.reads).copied());
        let stripes = Arc::new(KeyStripes::new());
        stats.attach_stripes(Arc::clone(&stripes));
        Shared {
            info,
            dead_letters: DeadLetterSink::new(dead_letter_capacity, stats.clone()),
            stats,
            stripes,
            latency: LatencyRecorder::new(),
            lanes: ArcSwapOption::empty(),
            cdc: ArcSwapOption::empty(),
        }
    }
}

/// What a metrics publisher reads of an adapter, without its command type.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) trait Source: Send + Sync {
    fn info(&self) -> TraitInfo;
    fn stats(&self) -> &Stats;
    fn dead_letters_held(&self) -> usize;
    /// Secondary writes handed over and not finished: in the lanes, or
    /// (synchronous strategy) blocking calls abandoned at their deadline.
    fn pending(&self) -> u64;
    /// `(submitted, finished)` per running lane; empty without lanes.
    fn lane_counts(&self) -> Vec<(u64, u64)>;
    fn latency(&self) -> &LatencyRecorder;
    /// The change-data-capture follower's status and how far it trails
    /// (the time since every change committed before it was journaled),
    /// while one runs.
    fn cdc(&self, now: Instant) -> Option<(CdcStatus, Duration)>;
}

impl<C: Send> Source for Shared<C> {
    fn info(&self) -> TraitInfo {
        self.info
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn dead_letters_held(&self) -> usize {
        self.dead_letters.len()
    }

    fn pending(&self) -> u64 {
        match &*self.lanes.load() {
            Some(lanes) => lanes.count(),
            None => self.stripes.total_pending(),
        }
    }

    fn lane_counts(&self) -> Vec<(u64, u64)> {
        self.lanes
            .load()
            .as_ref()
            .map_or_else(Vec::new, |lanes| lanes.lane_counts())
    }

    fn latency(&self) -> &LatencyRecorder {
        &self.latency
    }

    fn cdc(&self, now: Instant) -> Option<(CdcStatus, Duration)> {
        let status = self.cdc.load();
        let status = status
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Some((status, self.stripes.follower_lag(now)))
    }
}

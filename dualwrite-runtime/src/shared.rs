//! The state an adapter shares with its lanes: counters, dead letters, the
//! per-key stripes and the latency histograms.

use std::sync::Arc;

use crate::dead_letter::DeadLetterSink;
use crate::latency::LatencyRecorder;
use crate::stats::Stats;
use crate::stripes::KeyStripes;

/// What the caller's path and the lane threads of one adapter both use.
pub(crate) struct Shared<C> {
    pub(crate) stats: Stats,
    pub(crate) dead_letters: DeadLetterSink<C>,
    pub(crate) stripes: Arc<KeyStripes>,
    pub(crate) latency: LatencyRecorder,
}

impl<C> Shared<C> {
    pub(crate) fn new(dead_letter_capacity: usize) -> Self {
        let stats = Stats::new();
        let stripes = Arc::new(KeyStripes::new());
        stats.attach_stripes(Arc::clone(&stripes));
        Shared {
            dead_letters: DeadLetterSink::new(dead_letter_capacity, stats.clone()),
            stats,
            stripes,
            latency: LatencyRecorder::new(),
        }
    }
}

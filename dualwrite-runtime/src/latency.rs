//! Caller latency of dual-write calls against their primary call alone, in
//! HDR histograms: the "p99 latency impact" the cutover gate checks,
//! measured rather than guessed.
//!
//! Only calls that have a secondary write (DualWrite to Cutover) are timed,
//! and only one in [`SAMPLE_EVERY`] of them per thread: a timed call reads
//! the clock three times and takes a lock twice, which the primary-only path
//! and most dual-write calls do not pay. For each timed call the histograms
//! get the primary call's duration and the whole call's (primary, then the
//! secondary write or its hand-off to a lane), so the ratio of their p99s is
//! what the adapter adds at the tail.
//!
//! While a metrics publisher is attached, each timed call's whole duration
//! is also kept as a raw sample with its method (a bounded buffer under the
//! same lock), which the publisher drains into a `metrics` histogram.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One dual-write call in this many (per thread) is timed.
pub const SAMPLE_EVERY: u32 = 16;

/// Durations are recorded in nanoseconds, from 1 ns to 1 hour, with 3
/// significant digits.
const HIGHEST_NS: u64 = 3_600_000_000_000;

thread_local! {
    static CALLS: Cell<u32> = const { Cell::new(0) };
}

/// The clock's origin: a timed call keeps its start as nanoseconds since
/// it (`0` stands for "not timed"), which fits the write ticket in 8 bytes.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    // `+ 1` keeps a real start apart from the "not timed" zero, and the
    // bound apart from `u64::MAX`, which a write ticket reserves.
    u64::try_from(origin().elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .clamp(0, u64::MAX - 2)
        + 1
}

/// The most raw samples kept between two drains; later ones are dropped
/// (the histograms still get them).
const MAX_SAMPLES: usize = 16_384;

struct Pair {
    call: Histogram<u64>,
    primary: Histogram<u64>,
    /// Raw samples for a metrics publisher, while one is attached.
    samples: Vec<Sample>,
}

/// One timed call's whole duration, for a metrics publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct Sample {
    pub(crate) method: &'static str,
    pub(crate) nanos: u64,
}

/// The latency histograms of one adapter.
pub(crate) struct LatencyRecorder {
    pair: Mutex<Pair>,
    /// Whether raw samples are kept (a publisher is attached).
    keep: AtomicBool,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    pub(crate) fn new() -> Self {
        let histogram = || {
            Histogram::new_with_bounds(1, HIGHEST_NS, 3)
                .unwrap_or_else(|_| unreachable!("the bounds are valid"))
        };
        LatencyRecorder {
            pair: Mutex::new(Pair {
                call: histogram(),
                primary: histogram(),
                samples: Vec::new(),
            }),
            keep: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pair> {
        self.pair.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The start of a call, if this one is to be timed; else `0`.
    #[inline]
    pub(crate) fn start(&self) -> u64 {
        let sampled = CALLS.with(|calls| {
            let n = calls.get().wrapping_add(1);
            calls.set(n);
            n % SAMPLE_EVERY == 0
        });
        if sampled { now_ns() } else { 0 }
    }

    /// The primary call of a timed call (started at `started`) succeeded.
    #[cold]
    pub(crate) fn primary_done(&self, started: u64) {
        let elapsed = now_ns().saturating_sub(started).max(1);
        let _ = self.lock().primary.record(elapsed.min(HIGHEST_NS));
    }

    /// A timed call of `method` whose primary succeeded is over.
    #[cold]
    pub(crate) fn call_done(&self, started: u64, method: &'static str) {
        let nanos = now_ns().saturating_sub(started).clamp(1, HIGHEST_NS);
        let mut pair = self.lock();
        let _ = pair.call.record(nanos);
        if self.keep.load(Ordering::Relaxed) {
            keep_sample(&mut pair.samples, Sample { method, nanos });
        }
    }

    /// Starts or stops keeping raw samples (a publisher attached or gone);
    /// stopping drops those kept.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn keep_samples(&self, keep: bool) {
        self.keep.store(keep, Ordering::Relaxed);
        if !keep {
            self.lock().samples = Vec::new();
        }
    }

    /// Moves the raw samples kept so far into `into`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn drain_samples(&self, into: &mut Vec<Sample>) {
        into.append(&mut self.lock().samples);
    }

    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        let pair = self.lock();
        let at = |histogram: &Histogram<u64>, quantile: f64| {
            Duration::from_nanos(histogram.value_at_quantile(quantile))
        };
        LatencySnapshot {
            samples: pair.call.len().min(pair.primary.len()),
            call_p50: at(&pair.call, 0.5),
            call_p99: at(&pair.call, 0.99),
            primary_p50: at(&pair.primary, 0.5),
            primary_p99: at(&pair.primary, 0.99),
        }
    }

    pub(crate) fn reset(&self) {
        let mut pair = self.lock();
        pair.call.reset();
        pair.primary.reset();
    }
}

/// Keeps a raw sample for a metrics publisher, unless the buffer is full.
#[cold]
#[inline(never)]
fn keep_sample(samples: &mut Vec<Sample>, sample: Sample) {
    if samples.len() < MAX_SAMPLES {
        samples.push(sample);
    }
}

/// What the adapter measured of its dual-write calls' latency (one call in
/// [`SAMPLE_EVERY`] per thread is timed; see [`crate::DualWriteCore::latency`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySnapshot {
    /// Timed calls.
    pub samples: u64,
    /// The whole call (primary, then the secondary write or its hand-off).
    pub call_p50: Duration,
    /// The whole call's 99th percentile.
    pub call_p99: Duration,
    /// The primary call alone.
    pub primary_p50: Duration,
    /// The primary call's 99th percentile.
    pub primary_p99: Duration,
}

impl LatencySnapshot {
    /// The p99 of the whole call over the p99 of the primary call alone
    /// (1.2 = 20 % slower at the tail); `None` without samples.
    pub fn p99_impact(&self) -> Option<f64> {
        if self.samples == 0 || self.primary_p99.is_zero() {
            return None;
        }
        Some(self.call_p99.as_secs_f64() / self.primary_p99.as_secs_f64())
    }
}

impl fmt::Display for LatencySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.p99_impact() {
            None => f.write_str("no timed calls"),
            Some(impact) => write!(
                f,
                "p99 {:?} against {:?} for the primary alone ({impact:.3}x, {} timed calls)",
                self.call_p99, self.primary_p99, self.samples
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_in_sample_every_is_timed() {
        let recorder = LatencyRecorder::new();
        let timed = (0..SAMPLE_EVERY * 10)
            .filter(|_| recorder.start() != 0)
            .count();
        assert_eq!(timed, 10);
    }

    #[test]
    fn the_impact_is_the_ratio_of_the_p99s() {
        let recorder = LatencyRecorder::new();
        {
            let mut pair = recorder.lock();
            for _ in 0..100 {
                pair.primary.record(1_000).expect("in range");
                pair.call.record(1_500).expect("in range");
            }
        }
        let snapshot = recorder.snapshot();
        assert_eq!(snapshot.samples, 100);
        let impact = snapshot.p99_impact().expect("samples");
        assert!((impact - 1.5).abs() < 0.01, "{impact}");
        recorder.reset();
        assert_eq!(recorder.snapshot().p99_impact(), None);
    }

    #[test]
    fn a_timed_call_records_both_durations() {
        let recorder = LatencyRecorder::new();
        let started = now_ns();
        std::thread::sleep(Duration::from_millis(2));
        recorder.primary_done(started);
        std::thread::sleep(Duration::from_millis(2));
        recorder.call_done(started, "put");
        let snapshot = recorder.snapshot();
        assert_eq!(snapshot.samples, 1);
        assert!(snapshot.call_p99 > snapshot.primary_p99, "{snapshot:?}");
        assert!(snapshot.primary_p99 >= Duration::from_millis(2));
    }

    #[test]
    fn raw_samples_are_kept_only_while_asked_for() {
        let recorder = LatencyRecorder::new();
        recorder.call_done(now_ns(), "put");
        let mut samples = Vec::new();
        recorder.drain_samples(&mut samples);
        assert!(samples.is_empty());
        recorder.keep_samples(true);
        recorder.call_done(now_ns(), "put");
        recorder.primary_done(now_ns());
        recorder.call_done(now_ns(), "get");
        recorder.drain_samples(&mut samples);
        let seen: Vec<&str> = samples.iter().map(|s| s.method).collect();
        assert_eq!(seen, ["put", "get"]);
        assert!(samples.iter().all(|s| s.nanos >= 1));
        recorder.drain_samples(&mut samples);
        assert_eq!(samples.len(), 2, "a drain empties the buffer");
        recorder.keep_samples(false);
        recorder.call_done(now_ns(), "put");
        samples.clear();
        recorder.drain_samples(&mut samples);
        assert!(samples.is_empty());
    }
}

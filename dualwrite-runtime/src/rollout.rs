//! Percentage rollouts: "keys whose hash falls in the first N % use phase P".
//!
//! A key's bucket is its text hash ([`RoutingKey::text_hash`], the hash of
//! its rendered text) modulo [`ROLLOUT_BUCKETS`], so every process puts a
//! key in the same bucket, whatever type the key
//! had when it was routed (`42_u64` and `"42"` share a bucket). A rollout of
//! N basis points covers the buckets `0..N`: growing it only adds keys, and
//! rollouts of several phases nest, the later phase winning where they
//! overlap: a `cutover` rollout of 5 % beside a `shadow_read` rollout of
//! 20 % puts 5 % of keys in `cutover` and 15 % more in `shadow_read`, the
//! usual shape of a staged cutover (each rollout is "the share of keys that
//! got at least this far").
//!
//! The hash is a fixed function (FNV-1a over the text, then the splitmix64
//! finalizer; its values are pinned by a test in `key.rs`), so instances
//! built with different toolchains or versions of this crate agree on every
//! key's bucket.

use std::fmt;

use crate::key::RoutingKey;
use crate::phase::Phase;

/// How many buckets keys are spread over: one per basis point (0.01 %).
pub const ROLLOUT_BUCKETS: u16 = 10_000;

/// One rollout rule: keys whose bucket is below `basis_points` (out of
/// [`ROLLOUT_BUCKETS`]) use `phase`, unless the key has its own override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rollout {
    /// The phase the covered keys use.
    pub phase: Phase,
    /// The share of keys covered, in basis points (`1_000` = 10 %), at most
    /// [`ROLLOUT_BUCKETS`].
    pub basis_points: u16,
}

impl Rollout {
    /// A rollout of `percent` % of keys (values above 100 mean 100).
    pub fn percent(phase: Phase, percent: u8) -> Self {
        Rollout {
            phase,
            basis_points: u16::from(percent.min(100)) * 100,
        }
    }

    /// The share of keys covered, in percent.
    pub fn as_percent(&self) -> f64 {
        f64::from(self.basis_points) / 100.0
    }

    /// Whether the rollout covers `key` (its override, if any, aside).
    pub fn covers<K: RoutingKey + ?Sized>(&self, key: &K) -> bool {
        bucket_of(key.text_hash()) < self.basis_points
    }
}

impl fmt::Display for Rollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of keys in `{}`",
            Percent(self.basis_points),
            self.phase
        )
    }
}

/// Basis points shown as a percentage: `10%`, `0.5%`, `12.25%`.
pub(crate) struct Percent(pub(crate) u16);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, part) = (self.0 / 100, self.0 % 100);
        match part {
            0 => write!(f, "{whole}%"),
            p if p % 10 == 0 => write!(f, "{whole}.{}%", p / 10),
            p => write!(f, "{whole}.{p:02}%"),
        }
    }
}

/// The bucket of a key with this text hash.
#[inline]
pub(crate) fn bucket_of(text_hash: u64) -> u16 {
    // The remainder is below 10 000, so it fits.
    (text_hash % u64::from(ROLLOUT_BUCKETS)) as u16
}

/// Sorts rollouts into the order they are evaluated in (the later phase
/// first, so it wins where rollouts overlap), one per phase (the first
/// given), without empty ones.
pub(crate) fn normalize(rollouts: &mut Vec<Rollout>) {
    let mut seen = [false; Phase::ALL.len()];
    rollouts.retain(|r| !std::mem::replace(&mut seen[r.phase as usize], true));
    rollouts.retain(|r| r.basis_points > 0);
    for r in rollouts.iter_mut() {
        r.basis_points = r.basis_points.min(ROLLOUT_BUCKETS);
    }
    rollouts.sort_by_key(|r| std::cmp::Reverse(r.phase));
}

/// The phase of the first rollout (in evaluation order) covering `bucket`.
#[inline]
pub(crate) fn phase_in_bucket(rollouts: &[Rollout], bucket: u16) -> Option<Phase> {
    rollouts
        .iter()
        .find(|r| bucket < r.basis_points)
        .map(|r| r.phase)
}

/// `rollouts` with the rollout of `phase` set to `basis_points` (removed at
/// 0), normalized.
pub(crate) fn with_rollout(rollouts: &[Rollout], phase: Phase, basis_points: u16) -> Vec<Rollout> {
    let mut next: Vec<Rollout> = rollouts
        .iter()
        .filter(|r| r.phase != phase)
        .copied()
        .collect();
    next.push(Rollout {
        phase,
        basis_points,
    });
    normalize(&mut next);
    next
}

/// Every distinct `(before, after)` pair of phases that keys without an
/// override move between when the global phase and the rollouts change
/// from `before` to `after`; empty when no such key moves.
pub(crate) fn moves(
    before: (Phase, &[Rollout]),
    after: (Phase, &[Rollout]),
) -> Vec<(Phase, Phase)> {
    let mut bounds: Vec<u16> = before
        .1
        .iter()
        .chain(after.1)
        .map(|r| r.basis_points)
        .chain([0])
        .filter(|b| *b < ROLLOUT_BUCKETS)
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut pairs = Vec::new();
    // Within two adjacent bounds, every bucket has the same phase on both
    // sides, so the segment's first bucket stands for it.
    for bucket in bounds {
        let from = phase_in_bucket(before.1, bucket).unwrap_or(before.0);
        let to = phase_in_bucket(after.1, bucket).unwrap_or(after.0);
        if from != to && !pairs.contains(&(from, to)) {
            pairs.push((from, to));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_text() {
        assert_eq!(Percent(1_000).to_string(), "10%");
        assert_eq!(Percent(50).to_string(), "0.5%");
        assert_eq!(Percent(1_225).to_string(), "12.25%");
        assert_eq!(Percent(10_000).to_string(), "100%");
        assert_eq!(
            Rollout::percent(Phase::ShadowRead, 10).to_string(),
            "10% of keys in `shadow_read`"
        );
        assert_eq!(Rollout::percent(Phase::Cutover, 250).basis_points, 10_000);
    }

    #[test]
    fn normalize_orders_dedups_and_drops_empty() {
        let mut rollouts = vec![
            Rollout::percent(Phase::ShadowRead, 20),
            Rollout::percent(Phase::Cutover, 5),
            Rollout::percent(Phase::Backfill, 0),
            Rollout::percent(Phase::Cutover, 50),
        ];
        // The later phase first; the first rollout given of a phase kept.
        normalize(&mut rollouts);
        assert_eq!(
            rollouts,
            vec![
                Rollout::percent(Phase::Cutover, 5),
                Rollout::percent(Phase::ShadowRead, 20),
            ]
        );
        assert_eq!(phase_in_bucket(&rollouts, 0), Some(Phase::Cutover));
        assert_eq!(phase_in_bucket(&rollouts, 499), Some(Phase::Cutover));
        assert_eq!(phase_in_bucket(&rollouts, 500), Some(Phase::ShadowRead));
        assert_eq!(phase_in_bucket(&rollouts, 1_999), Some(Phase::ShadowRead));
        assert_eq!(phase_in_bucket(&rollouts, 2_000), None);
        // Where they overlap, the later phase wins.
        let overlapping = [
            Rollout::percent(Phase::Cutover, 50),
            Rollout::percent(Phase::ShadowRead, 30),
        ];
        assert_eq!(phase_in_bucket(&overlapping, 100), Some(Phase::Cutover));
        assert_eq!(phase_in_bucket(&overlapping, 4_999), Some(Phase::Cutover));
        assert_eq!(phase_in_bucket(&overlapping, 5_000), None);
    }

    #[test]
    fn moves_name_each_segment_that_changes() {
        let none: &[Rollout] = &[];
        let ten = [Rollout::percent(Phase::ShadowRead, 10)];
        let twenty = [Rollout::percent(Phase::ShadowRead, 20)];
        // Growing a rollout moves keys from the global phase into it.
        assert_eq!(
            moves((Phase::Backfill, &ten), (Phase::Backfill, &twenty)),
            vec![(Phase::Backfill, Phase::ShadowRead)]
        );
        // Shrinking or removing moves them back.
        assert_eq!(
            moves((Phase::Backfill, &twenty), (Phase::Backfill, none)),
            vec![(Phase::ShadowRead, Phase::Backfill)]
        );
        // A global move leaves covered keys where they are.
        assert_eq!(
            moves((Phase::Backfill, &ten), (Phase::ShadowRead, &ten)),
            vec![(Phase::Backfill, Phase::ShadowRead)]
        );
        assert!(moves((Phase::Backfill, &ten), (Phase::Backfill, &ten)).is_empty());
        // A full rollout leaves no key in the global phase.
        let all = [Rollout::percent(Phase::ShadowRead, 100)];
        assert!(moves((Phase::Backfill, &all), (Phase::DualWrite, &all)).is_empty());
    }
}

//! Cutover gates: the spec's cutover criteria, evaluated from measurements
//! before a phase moves forward.
//!
//! | criterion | default threshold (spec) | measured by |
//! |---|---|---|
//! | read comparison match rate | > 99.9 % | shadow reads (pending-aware) |
//! | backfill completion | 100 % | the backfill job's progress |
//! | secondary write success rate | > 99.95 % | the adapter's write counters |
//! | p99 latency impact | < 20 % increase | the adapter's latency histograms |
//! | reconciliation gap | 0 unresolved | the reconciliation job |
//!
//! Each step forward checks the criteria that say the next phase is safe:
//!
//! | step | criteria |
//! |---|---|
//! | Prepare -> DualWrite | none |
//! | DualWrite -> Backfill | secondary success rate |
//! | Backfill -> ShadowRead | backfill completion, secondary success rate |
//! | ShadowRead -> Cutover | all five |
//! | Cutover -> Cleanup | secondary success rate, reconciliation gap |
//!
//! A rate needs a minimum number of samples before it counts (a 100 % match
//! rate over 3 reads proves nothing): below it the criterion is unmet. A
//! criterion with no measurement at all (no backfill progress reported) is
//! unmet too. [`crate::Migration::advance`] moves only when every criterion
//! of the step is met, and otherwise returns the [`GateReport`] with each
//! value and threshold.

use std::fmt;

use crate::latency::LatencySnapshot;
use crate::phase::Phase;
use crate::stats::StatsSnapshot;

/// The thresholds of a [`CutoverGate`]; the defaults are the spec's.
#[derive(Debug, Clone, PartialEq)]
pub struct GateThresholds {
    /// Shadow reads that matched, over those compared: more than this.
    pub min_match_rate: f64,
    /// Compared shadow reads needed before the match rate counts.
    pub min_compared_reads: u64,
    /// Backfill progress, as a fraction: at least this.
    pub min_backfill: f64,
    /// Secondary writes that succeeded, over those attempted: more than this.
    pub min_secondary_success: f64,
    /// Secondary writes needed before the success rate counts.
    pub min_secondary_writes: u64,
    /// Caller p99 over the primary call's p99: less than this.
    pub max_p99_impact: f64,
    /// Timed calls needed before the p99 impact counts.
    pub min_latency_samples: u64,
    /// Unresolved differences found by reconciliation: at most this.
    pub max_gap: u64,
}

impl Default for GateThresholds {
    fn default() -> Self {
        GateThresholds {
            min_match_rate: 0.999,
            min_compared_reads: 1_000,
            min_backfill: 1.0,
            min_secondary_success: 0.9995,
            min_secondary_writes: 1_000,
            max_p99_impact: 1.20,
            min_latency_samples: 200,
            max_gap: 0,
        }
    }
}

/// What a gate decides from: the measurements of the adapters that route by
/// the migration, and of the backfill and reconciliation jobs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateInputs {
    /// Shadow reads compared (skipped ones excluded).
    pub reads_compared: u64,
    /// Shadow reads that matched.
    pub reads_matched: u64,
    /// Secondary writes that succeeded.
    pub secondary_ok: u64,
    /// Secondary writes that failed (attempts given up on, and refused
    /// calls' writes, count here).
    pub secondary_failed: u64,
    /// The caller latency against the primary's, if measured.
    pub latency: Option<LatencySnapshot>,
    /// Backfill progress in `[0, 1]`, if a backfill reported.
    pub backfill: Option<f64>,
    /// Unresolved differences, if a reconciliation ran.
    pub gap: Option<u64>,
}

impl GateInputs {
    /// The counters of one adapter (`adapter.stats()`) and its latency
    /// (`adapter.core().latency()`).
    pub fn from_adapter(stats: &StatsSnapshot, latency: LatencySnapshot) -> Self {
        GateInputs {
            reads_compared: stats.reads_compared,
            reads_matched: stats.reads_matched,
            secondary_ok: stats.secondary_writes_ok,
            secondary_failed: stats.secondary_writes_failed,
            latency: Some(latency),
            backfill: None,
            gap: None,
        }
    }

    /// Adds another adapter's measurements (several adapters route by one
    /// migration): counts add up; the latency kept is the worse impact.
    #[must_use]
    pub fn and(mut self, other: GateInputs) -> Self {
        self.reads_compared += other.reads_compared;
        self.reads_matched += other.reads_matched;
        self.secondary_ok += other.secondary_ok;
        self.secondary_failed += other.secondary_failed;
        self.latency = match (self.latency, other.latency) {
            (Some(a), Some(b)) => Some(if b.p99_impact() > a.p99_impact() {
                b
            } else {
                a
            }),
            (a, b) => a.or(b),
        };
        self.backfill = match (self.backfill, other.backfill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.gap = match (self.gap, other.gap) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self
    }

    /// Sets the backfill progress, a fraction in `[0, 1]`.
    #[must_use]
    pub fn with_backfill(mut self, progress: f64) -> Self {
        self.backfill = Some(progress);
        self
    }

    /// Sets the reconciliation gap.
    #[must_use]
    pub fn with_gap(mut self, gap: u64) -> Self {
        self.gap = Some(gap);
        self
    }
}

/// One of the spec's cutover criteria.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Criterion {
    /// Read comparison match rate.
    MatchRate,
    /// Backfill completion.
    BackfillCompletion,
    /// Secondary write success rate.
    SecondarySuccess,
    /// P99 latency impact.
    P99Impact,
    /// Reconciliation gap.
    ReconciliationGap,
}

impl Criterion {
    /// The criteria the step from `from` to `to` checks (see the module
    /// docs); a step backward or sideways checks none.
    pub fn for_step(from: Phase, to: Phase) -> &'static [Criterion] {
        use Criterion::*;
        match (from, to) {
            (Phase::DualWrite, Phase::Backfill) => &[SecondarySuccess],
            (Phase::Backfill, Phase::ShadowRead) => &[BackfillCompletion, SecondarySuccess],
            (Phase::ShadowRead, Phase::Cutover) => &[
                MatchRate,
                BackfillCompletion,
                SecondarySuccess,
                P99Impact,
                ReconciliationGap,
            ],
            (Phase::Cutover, Phase::Cleanup) => &[SecondarySuccess, ReconciliationGap],
            _ => &[],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Criterion::MatchRate => "read match rate",
            Criterion::BackfillCompletion => "backfill completion",
            Criterion::SecondarySuccess => "secondary write success rate",
            Criterion::P99Impact => "p99 latency impact",
            Criterion::ReconciliationGap => "reconciliation gap",
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one criterion came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Measured and within its threshold.
    Met,
    /// Measured and outside its threshold.
    Unmet,
    /// Fewer samples than the threshold's minimum.
    TooFewSamples,
    /// Nothing reported it (no backfill progress, no reconciliation run).
    NotMeasured,
}

/// One criterion of a [`GateReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct CriterionReport {
    /// Which criterion.
    pub criterion: Criterion,
    /// The measured value (a rate or ratio; the gap as a count), if any.
    pub value: Option<f64>,
    /// The threshold it is held to.
    pub threshold: f64,
    /// The samples behind the value (reads, writes, timed calls), where it
    /// applies.
    pub samples: Option<u64>,
    /// The samples needed, where it applies.
    pub min_samples: Option<u64>,
    /// The outcome.
    pub verdict: Verdict,
}

impl CriterionReport {
    /// Whether this criterion lets the step pass.
    pub fn met(&self) -> bool {
        self.verdict == Verdict::Met
    }
}

/// A table row: name, value, threshold and verdict; `{:#}` gives the
/// one-line form (`secondary write success rate 98.9 % (needs > 99.950 %)`).
impl fmt::Display for CriterionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (value, threshold) = match self.criterion {
            Criterion::MatchRate | Criterion::SecondarySuccess => (
                self.value.map(|v| format!("{:.3} %", v * 100.0)),
                format!("> {:.3} %", self.threshold * 100.0),
            ),
            Criterion::BackfillCompletion => (
                self.value.map(|v| format!("{:.1} %", v * 100.0)),
                format!(">= {:.1} %", self.threshold * 100.0),
            ),
            Criterion::P99Impact => (
                self.value.map(|v| format!("{v:.3}x")),
                format!("< {:.2}x", self.threshold),
            ),
            Criterion::ReconciliationGap => (
                self.value.map(|v| format!("{v:.0}")),
                format!("<= {:.0}", self.threshold),
            ),
        };
        let value = value.unwrap_or_else(|| "-".to_owned());
        if f.alternate() {
            // The one-line form, for an error message or a table cell.
            let name = self.criterion.name();
            return match self.verdict {
                Verdict::Met => write!(f, "{name} {value} (met: {threshold})"),
                Verdict::Unmet => write!(f, "{name} {value} (needs {threshold})"),
                Verdict::TooFewSamples => write!(
                    f,
                    "{name} {value} on too few samples ({} of {})",
                    self.samples.unwrap_or(0),
                    self.min_samples.unwrap_or(0)
                ),
                Verdict::NotMeasured => write!(f, "{name} not measured"),
            };
        }
        let verdict = match self.verdict {
            Verdict::Met => "met".to_owned(),
            Verdict::Unmet => "UNMET".to_owned(),
            Verdict::TooFewSamples => format!(
                "UNMET: {} of {} samples needed",
                self.samples.unwrap_or(0),
                self.min_samples.unwrap_or(0)
            ),
            Verdict::NotMeasured => "UNMET: not measured".to_owned(),
        };
        write!(
            f,
            "{:<30} {value:>12}  (threshold {threshold})  {verdict}",
            self.criterion.name()
        )
    }
}

/// What a gate found for one step.
#[derive(Debug, Clone, PartialEq)]
pub struct GateReport {
    /// The phase in force.
    pub from: Phase,
    /// The phase the step goes to.
    pub to: Phase,
    /// Each criterion of the step.
    pub criteria: Vec<CriterionReport>,
}

impl GateReport {
    /// Whether every criterion of the step is met.
    pub fn passed(&self) -> bool {
        self.criteria.iter().all(CriterionReport::met)
    }

    /// The criteria that are not met.
    pub fn unmet(&self) -> impl Iterator<Item = &CriterionReport> {
        self.criteria.iter().filter(|c| !c.met())
    }
}

impl fmt::Display for GateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "gate {} -> {}: {}",
            self.from,
            self.to,
            if self.passed() { "passed" } else { "refused" }
        )?;
        if self.criteria.is_empty() {
            return writeln!(f, "  (no criteria for this step)");
        }
        for criterion in &self.criteria {
            writeln!(f, "  {criterion}")?;
        }
        Ok(())
    }
}

/// Evaluates the spec's cutover criteria for a phase step; see the module
/// docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CutoverGate {
    thresholds: GateThresholds,
}

impl CutoverGate {
    /// A gate with the spec's thresholds.
    pub fn new() -> Self {
        Self::default()
    }

    /// A gate with these thresholds.
    pub fn with_thresholds(thresholds: GateThresholds) -> Self {
        CutoverGate { thresholds }
    }

    /// The thresholds.
    pub fn thresholds(&self) -> &GateThresholds {
        &self.thresholds
    }

    /// Evaluates the criteria of the step from `from` to `to`.
    pub fn evaluate(&self, from: Phase, to: Phase, inputs: &GateInputs) -> GateReport {
        GateReport {
            from,
            to,
            criteria: Criterion::for_step(from, to)
                .iter()
                .map(|criterion| self.criterion(*criterion, inputs))
                .collect(),
        }
    }

    fn criterion(&self, criterion: Criterion, inputs: &GateInputs) -> CriterionReport {
        let t = &self.thresholds;
        let report = |value: Option<f64>,
                      threshold: f64,
                      samples: Option<(u64, u64)>,
                      met: &dyn Fn(f64) -> bool| {
            let verdict = match (value, samples) {
                (_, Some((have, need))) if have < need => Verdict::TooFewSamples,
                (None, _) => Verdict::NotMeasured,
                (Some(value), _) if met(value) => Verdict::Met,
                (Some(_), _) => Verdict::Unmet,
            };
            CriterionReport {
                criterion,
                value,
                threshold,
                samples: samples.map(|(have, _)| have),
                min_samples: samples.map(|(_, need)| need),
                verdict,
            }
        };
        let rate = |good: u64, all: u64| (all > 0).then(|| good as f64 / all as f64);
        match criterion {
            Criterion::MatchRate => report(
                rate(inputs.reads_matched, inputs.reads_compared),
                t.min_match_rate,
                Some((inputs.reads_compared, t.min_compared_reads)),
                &|v| v > t.min_match_rate || (v >= 1.0 && t.min_match_rate >= 1.0),
            ),
            Criterion::BackfillCompletion => report(inputs.backfill, t.min_backfill, None, &|v| {
                v >= t.min_backfill
            }),
            Criterion::SecondarySuccess => {
                let all = inputs.secondary_ok + inputs.secondary_failed;
                report(
                    rate(inputs.secondary_ok, all),
                    t.min_secondary_success,
                    Some((all, t.min_secondary_writes)),
                    &|v| {
                        v > t.min_secondary_success || (v >= 1.0 && t.min_secondary_success >= 1.0)
                    },
                )
            }
            Criterion::P99Impact => {
                let latency = inputs.latency.unwrap_or_default();
                report(
                    latency.p99_impact(),
                    t.max_p99_impact,
                    Some((latency.samples, t.min_latency_samples)),
                    &|v| v < t.max_p99_impact,
                )
            }
            Criterion::ReconciliationGap => report(
                inputs.gap.map(|gap| gap as f64),
                t.max_gap as f64,
                None,
                &|v| v <= t.max_gap as f64,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Inputs that pass every criterion with the default thresholds.
    fn healthy() -> GateInputs {
        GateInputs {
            reads_compared: 10_000,
            reads_matched: 10_000,
            secondary_ok: 10_000,
            secondary_failed: 0,
            latency: Some(LatencySnapshot {
                samples: 1_000,
                call_p50: Duration::from_micros(100),
                call_p99: Duration::from_micros(110),
                primary_p50: Duration::from_micros(100),
                primary_p99: Duration::from_micros(100),
            }),
            backfill: Some(1.0),
            gap: Some(0),
        }
    }

    fn verdict_of(report: &GateReport, criterion: Criterion) -> Verdict {
        report
            .criteria
            .iter()
            .find(|c| c.criterion == criterion)
            .map(|c| c.verdict)
            .expect("the step checks it")
    }

    fn cutover(inputs: &GateInputs) -> GateReport {
        CutoverGate::new().evaluate(Phase::ShadowRead, Phase::Cutover, inputs)
    }

    #[test]
    fn healthy_inputs_pass_every_step() {
        for pair in Phase::ALL.windows(2) {
            let report = CutoverGate::new().evaluate(pair[0], pair[1], &healthy());
            assert!(report.passed(), "{report}");
        }
    }

    #[test]
    fn each_criterion_refuses_cutover_on_its_own() {
        let cases: [(Criterion, GateInputs); 5] = [
            (
                Criterion::MatchRate,
                GateInputs {
                    reads_matched: 9_980,
                    ..healthy()
                },
            ),
            (Criterion::BackfillCompletion, healthy().with_backfill(0.97)),
            (
                Criterion::SecondarySuccess,
                GateInputs {
                    secondary_ok: 9_990,
                    secondary_failed: 10,
                    ..healthy()
                },
            ),
            (
                Criterion::P99Impact,
                GateInputs {
                    latency: Some(LatencySnapshot {
                        call_p99: Duration::from_micros(130),
                        ..healthy().latency.expect("set")
                    }),
                    ..healthy()
                },
            ),
            (Criterion::ReconciliationGap, healthy().with_gap(3)),
        ];
        for (criterion, inputs) in cases {
            let report = cutover(&inputs);
            assert!(!report.passed(), "{criterion}: {report}");
            let unmet: Vec<Criterion> = report.unmet().map(|c| c.criterion).collect();
            assert_eq!(unmet, [criterion], "{report}");
            assert_eq!(verdict_of(&report, criterion), Verdict::Unmet);
        }
    }

    #[test]
    fn too_few_samples_and_missing_measurements_are_unmet() {
        let inputs = GateInputs {
            reads_compared: 5,
            reads_matched: 5,
            backfill: None,
            gap: None,
            latency: None,
            ..healthy()
        };
        let report = cutover(&inputs);
        assert_eq!(
            verdict_of(&report, Criterion::MatchRate),
            Verdict::TooFewSamples
        );
        assert_eq!(
            verdict_of(&report, Criterion::BackfillCompletion),
            Verdict::NotMeasured
        );
        assert_eq!(
            verdict_of(&report, Criterion::P99Impact),
            Verdict::TooFewSamples
        );
        assert_eq!(
            verdict_of(&report, Criterion::ReconciliationGap),
            Verdict::NotMeasured
        );
        let text = report.to_string();
        assert!(text.contains("refused"), "{text}");
        assert!(text.contains("5 of 1000 samples needed"), "{text}");
        assert!(text.contains("not measured"), "{text}");
    }

    #[test]
    fn each_step_checks_its_criteria() {
        assert!(Criterion::for_step(Phase::Prepare, Phase::DualWrite).is_empty());
        assert_eq!(
            Criterion::for_step(Phase::Backfill, Phase::ShadowRead),
            [Criterion::BackfillCompletion, Criterion::SecondarySuccess]
        );
        assert_eq!(
            Criterion::for_step(Phase::ShadowRead, Phase::Cutover).len(),
            5
        );
        // Rollbacks are not gated.
        assert!(Criterion::for_step(Phase::Cutover, Phase::ShadowRead).is_empty());
    }

    #[test]
    fn inputs_of_several_adapters_add_up() {
        let a = GateInputs {
            secondary_ok: 10,
            secondary_failed: 1,
            ..GateInputs::default()
        };
        let b = GateInputs {
            secondary_ok: 5,
            gap: Some(2),
            backfill: Some(0.5),
            ..GateInputs::default()
        };
        let both = a.with_backfill(0.9).and(b);
        assert_eq!((both.secondary_ok, both.secondary_failed), (15, 1));
        assert_eq!(both.backfill, Some(0.5));
        assert_eq!(both.gap, Some(2));
    }
}

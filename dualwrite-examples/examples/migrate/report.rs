//! The run's report: one row per gate decision, as a table and as JSON.

use std::fmt;

use dualwrite_runtime::{GateInputs, Phase};
use serde_json::{Value, json};

/// One gate decision and the measurements it was made on.
pub struct GateRow {
    pub from: Phase,
    pub to: Phase,
    pub match_rate: Option<f64>,
    pub secondary_success_rate: Option<f64>,
    pub p99_impact: Option<f64>,
    pub backfill: Option<f64>,
    pub gap: Option<u64>,
    /// `passed`, or `refused: ` and the unmet criteria.
    pub gate: String,
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl GateRow {
    pub fn new(from: Phase, to: Phase, inputs: &GateInputs, gate: String) -> GateRow {
        GateRow {
            from,
            to,
            match_rate: ratio(inputs.reads_matched, inputs.reads_compared),
            secondary_success_rate: ratio(
                inputs.secondary_ok,
                inputs.secondary_ok + inputs.secondary_failed,
            ),
            p99_impact: inputs.latency.and_then(|l| l.p99_impact()),
            backfill: inputs.backfill,
            gap: inputs.gap,
            gate,
        }
    }

    fn json(&self) -> Value {
        json!({
            "phase": self.from.as_str(),
            "to": self.to.as_str(),
            "match_rate": self.match_rate,
            "secondary_success_rate": self.secondary_success_rate,
            "p99_impact": self.p99_impact,
            "backfill": self.backfill,
            "gap": self.gap,
            "gate": self.gate,
        })
    }
}

fn percent(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{:.digits$} %", v * 100.0))
}

impl fmt::Display for GateRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<25} {:>10} {:>10} {:>7} {:>8} {:>5}  {}",
            format!("{} -> {}", self.from, self.to),
            percent(self.match_rate, 3),
            percent(self.secondary_success_rate, 3),
            self.p99_impact
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x")),
            percent(self.backfill, 1),
            self.gap.map_or_else(|| "-".to_owned(), |g| g.to_string()),
            self.gate
        )
    }
}

/// The whole run.
pub struct Report {
    pub rows: u64,
    pub phases: Vec<GateRow>,
    pub final_gap: Option<u64>,
}

impl Report {
    pub fn new(rows: u64) -> Report {
        Report {
            rows,
            phases: Vec::new(),
            final_gap: None,
        }
    }

    /// The per-step table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<25} {:>10} {:>10} {:>7} {:>8} {:>5}  {}\n",
            "step", "match", "secondary", "p99", "backfill", "gap", "gate"
        );
        for row in &self.phases {
            out.push_str(&row.to_string());
            out.push('\n');
        }
        out
    }

    /// `{"rows": N, "phases": [...], "final_gap": 0}`.
    pub fn to_json(&self) -> String {
        let report = json!({
            "rows": self.rows,
            "phases": self.phases.iter().map(GateRow::json).collect::<Vec<_>>(),
            "final_gap": self.final_gap,
        });
        serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

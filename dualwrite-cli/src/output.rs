//! What the commands print: text for people, JSON (`--json`) for scripts.

use std::time::{SystemTime, UNIX_EPOCH};

use dualwrite_runtime::phase_source::{AuditRecord, ChangeScope, PhaseState, Rollout};
use dualwrite_runtime::{Phase, Transition};
use serde_json::{Value, json};

/// Prints results on stdout and, in text mode, failures on stderr.
pub struct Printer {
    pub json: bool,
}

impl Printer {
    pub fn status(&self, source: &str, state: &PhaseState, records: &[AuditRecord]) {
        if self.json {
            print_json(&json!({
                "source": source,
                "version": state.version,
                "global": state.global.as_str(),
                "overrides": state
                    .overrides
                    .iter()
                    .map(|(key, phase)| (key.clone(), Value::from(phase.as_str())))
                    .collect::<serde_json::Map<_, _>>(),
                "rollouts": state.rollouts.iter().map(rollout_json).collect::<Vec<_>>(),
                "audit": records.iter().map(record_json).collect::<Vec<_>>(),
            }));
            return;
        }
        println!("phase database  {source}");
        if state.version == 0 {
            println!("version         0 (nothing stored yet: every key is in `prepare`)");
        } else {
            println!("version         {}", state.version);
        }
        println!("global phase    {}", state.global);
        if state.overrides.is_empty() {
            println!("overrides       none");
        } else {
            println!("overrides       {}", state.overrides.len());
            let width = state.overrides.keys().map(|k| k.len()).max().unwrap_or(0);
            for (key, phase) in &state.overrides {
                println!("  {key:width$}  {phase}");
            }
        }
        if state.rollouts.is_empty() {
            println!("rollouts        none");
        } else {
            println!("rollouts        (where they overlap, the later phase wins)");
            for rollout in &state.rollouts {
                println!("  {:<11}  {}% of keys", rollout.phase, rollout.as_percent());
            }
        }
        if !records.is_empty() {
            println!("latest changes");
            for record in records {
                println!("  {}", record_line(record));
            }
        }
    }

    pub fn audit(&self, records: &[AuditRecord]) {
        if self.json {
            print_json(&Value::from(
                records.iter().map(record_json).collect::<Vec<_>>(),
            ));
            return;
        }
        if records.is_empty() {
            println!("no changes recorded");
        }
        for record in records {
            println!("{}", record_line(record));
            if let Some(gate) = &record.gate {
                for line in gate.lines() {
                    println!("    {line}");
                }
            }
        }
    }

    pub fn transition(&self, transition: &Transition, version: u64) {
        let scope = match (&transition.key, &transition.rollout) {
            (Some(key), _) => key.clone(),
            (None, Some(rollout)) => format!("rollout {} {}%", rollout.phase, rollout.as_percent()),
            (None, None) => "*".to_owned(),
        };
        if self.json {
            print_json(&json!({
                "ok": true,
                "version": version,
                "scope": scope,
                "key": transition.key,
                "rollout": transition.rollout.as_ref().map(rollout_json),
                "from": transition.from.as_str(),
                "to": transition.to.as_str(),
                "forced": transition.forced,
                "needs_reconciliation": transition.needs_reconciliation,
                "reason": transition.reason,
                "gate": transition.gate.as_ref().map(ToString::to_string),
            }));
            return;
        }
        match (&transition.key, &transition.rollout) {
            (None, Some(rollout)) if transition.from == transition.to => println!(
                "set the `{}` rollout to {}% of keys; no key changed phase (version {version})",
                rollout.phase,
                rollout.as_percent()
            ),
            (None, Some(rollout)) => println!(
                "set the `{}` rollout to {}% of keys: keys moved from `{}` to `{}` (version {version})",
                rollout.phase,
                rollout.as_percent(),
                transition.from,
                transition.to
            ),
            (key, _) => println!(
                "moved {} from `{}` to `{}` (version {version})",
                key.as_ref()
                    .map_or_else(|| "the migration".to_owned(), |key| format!("key `{key}`")),
                transition.from,
                transition.to
            ),
        }
        if transition.forced {
            println!("forced: the spec's rules or the gate were overridden");
        }
        if transition.needs_reconciliation {
            println!("rolled back from cutover: the writes' order reversed, run reconciliation");
        }
        if let Some(gate) = &transition.gate {
            print!("{gate}");
        }
    }

    pub fn cleared(&self, key: &str, previous: Phase, now: Phase, version: u64) {
        if self.json {
            print_json(&json!({
                "ok": true, "version": version, "key": key,
                "from": previous.as_str(), "to": now.as_str(), "cleared": true,
            }));
        } else {
            println!(
                "lifted the override of key `{key}`: `{previous}` -> `{now}` (version {version})"
            );
        }
    }

    pub fn nothing_to_clear(&self, key: &str, now: Phase, version: u64) {
        if self.json {
            print_json(&json!({
                "ok": true, "version": version, "key": key,
                "to": now.as_str(), "cleared": false,
            }));
        } else {
            println!("key `{key}` has no override (it is in `{now}`)");
        }
    }

    pub fn failure(&self, message: &str, code: u8) {
        if self.json {
            print_json(&json!({ "error": message, "exit_code": code }));
        } else {
            eprintln!("error: {message}");
        }
    }
}

fn print_json(value: &Value) {
    // Serialising a `Value` cannot fail.
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn rollout_json(rollout: &Rollout) -> Value {
    json!({
        "phase": rollout.phase.as_str(),
        "percent": rollout.as_percent(),
        "basis_points": rollout.basis_points,
    })
}

fn record_json(record: &AuditRecord) -> Value {
    let (kind, key, rollout) = match &record.scope {
        ChangeScope::Global => ("global", None, None),
        ChangeScope::Key(key) => ("key", Some(key.clone()), None),
        ChangeScope::Rollout {
            phase,
            basis_points,
        } => (
            "rollout",
            None,
            Some(rollout_json(&Rollout {
                phase: *phase,
                basis_points: *basis_points,
            })),
        ),
    };
    json!({
        "version": record.version,
        "at": rfc3339(record.at),
        "actor": record.actor,
        "scope": record.scope.to_string(),
        "scope_kind": kind,
        "key": key,
        "rollout": rollout,
        "from": record.from.as_str(),
        "to": record.to.as_str(),
        "reason": record.reason,
        "forced": record.forced,
        "gate": record.gate,
    })
}

fn record_line(record: &AuditRecord) -> String {
    let mut line = format!(
        "v{:<4} {}  {}  {} -> {}  by {}",
        record.version,
        rfc3339(record.at),
        record.scope,
        record.from,
        record.to,
        record.actor
    );
    if record.forced {
        line.push_str("  (forced)");
    }
    if let Some(reason) = &record.reason {
        line.push_str(": ");
        line.push_str(reason);
    }
    line
}

/// `2026-11-01T09:30:12.345Z` (UTC, milliseconds).
pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Day and month are in 1..=31 and 1..=12.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_709_251_199_123)),
            "2024-02-29T23:59:59.123Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}

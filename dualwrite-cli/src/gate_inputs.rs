//! The gate inputs file: the service's measurements for `advance`, as JSON.
//!
//! Every field is optional: a missing counter is 0, a missing measurement
//! (latency, backfill, gap) is "not measured". An unknown field is an error,
//! so a misspelt one does not silently count as unmeasured.

use std::path::Path;
use std::time::Duration;

use dualwrite_runtime::{GateInputs, LatencySnapshot};
use serde_json::{Map, Value};

const FIELDS: [&str; 7] = [
    "reads_compared",
    "reads_matched",
    "secondary_ok",
    "secondary_failed",
    "latency",
    "backfill",
    "gap",
];

const LATENCY_FIELDS: [&str; 5] = [
    "samples",
    "call_p50_us",
    "call_p99_us",
    "primary_p50_us",
    "primary_p99_us",
];

/// Reads and checks the file at `path`.
pub fn read(path: &Path) -> Result<GateInputs, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("--gate-inputs {}: {error}", path.display()))?;
    parse(&text).map_err(|error| format!("--gate-inputs {}: {error}", path.display()))
}

/// Parses the JSON text of a gate inputs file.
pub fn parse(text: &str) -> Result<GateInputs, String> {
    let value: Value = serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    let Value::Object(object) = value else {
        return Err("expected a JSON object".to_owned());
    };
    check_fields(&object, &FIELDS, "")?;
    let mut inputs = GateInputs {
        reads_compared: count(&object, "reads_compared")?.unwrap_or(0),
        reads_matched: count(&object, "reads_matched")?.unwrap_or(0),
        secondary_ok: count(&object, "secondary_ok")?.unwrap_or(0),
        secondary_failed: count(&object, "secondary_failed")?.unwrap_or(0),
        ..GateInputs::default()
    };
    if inputs.reads_matched > inputs.reads_compared {
        return Err(format!(
            "`reads_matched` ({}) is more than `reads_compared` ({})",
            inputs.reads_matched, inputs.reads_compared
        ));
    }
    inputs.gap = count(&object, "gap")?;
    inputs.backfill = match object.get("backfill") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_f64() {
            Some(fraction) if (0.0..=1.0).contains(&fraction) => Some(fraction),
            _ => return Err("`backfill` must be a fraction from 0 to 1".to_owned()),
        },
    };
    inputs.latency = match object.get("latency") {
        None | Some(Value::Null) => None,
        Some(Value::Object(latency)) => {
            check_fields(latency, &LATENCY_FIELDS, "latency.")?;
            let micros = |name: &str| -> Result<Duration, String> {
                Ok(Duration::from_micros(count(latency, name)?.unwrap_or(0)))
            };
            Some(LatencySnapshot {
                samples: count(latency, "samples")?.unwrap_or(0),
                call_p50: micros("call_p50_us")?,
                call_p99: micros("call_p99_us")?,
                primary_p50: micros("primary_p50_us")?,
                primary_p99: micros("primary_p99_us")?,
            })
        }
        Some(_) => return Err("`latency` must be an object".to_owned()),
    };
    Ok(inputs)
}

fn check_fields(object: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), String> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(unknown) => Err(format!(
            "unknown field `{prefix}{unknown}` (expected {})",
            known
                .iter()
                .map(|k| format!("`{prefix}{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => Ok(()),
    }
}

/// A non-negative integer field, if present.
fn count(object: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{name}` must be a non-negative integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let inputs = parse(
            r#"{"reads_compared": 2000, "reads_matched": 1999, "secondary_ok": 5000,
                "secondary_failed": 1, "backfill": 1.0, "gap": 0,
                "latency": {"samples": 400, "call_p50_us": 110, "call_p99_us": 950,
                            "primary_p50_us": 100, "primary_p99_us": 900}}"#,
        )
        .expect("parses");
        assert_eq!(inputs.reads_compared, 2000);
        assert_eq!(inputs.secondary_failed, 1);
        assert_eq!(inputs.backfill, Some(1.0));
        assert_eq!(inputs.gap, Some(0));
        let latency = inputs.latency.expect("latency");
        assert_eq!(latency.call_p99, Duration::from_micros(950));
        assert_eq!(latency.samples, 400);
    }

    #[test]
    fn missing_fields_are_unmeasured_and_bad_ones_are_errors() {
        let inputs = parse("{}").expect("parses");
        assert_eq!(inputs, GateInputs::default());
        for (bad, says) in [
            ("[]", "expected a JSON object"),
            ("{", "not JSON"),
            (r#"{"reads_compard": 1}"#, "unknown field `reads_compard`"),
            (r#"{"latency": {"p99": 1}}"#, "unknown field `latency.p99`"),
            (r#"{"gap": -1}"#, "`gap` must be a non-negative integer"),
            (r#"{"backfill": 1.5}"#, "`backfill` must be a fraction"),
            (r#"{"reads_compared": 1, "reads_matched": 2}"#, "more than"),
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}

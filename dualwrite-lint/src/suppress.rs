//! Inline suppressions: `// dualwrite-lint: allow(DW001, DW002) reason…`.
//!
//! A suppression written after code covers its own line; one alone on its
//! line covers the next line that is not a `//` comment (so several
//! suppressions can be stacked above one line). A finding is covered when
//! its first line is the covered line. The reason is required.
//!
//! Suppressions are found by the lint's Rust lexer ([`crate::lex`]), not
//! the syntax tree: it is cheap, works in files that do not parse, and
//! ignores text in strings and doc comments that only looks like a
//! suppression.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::finding::{Finding, Fingerprint, Location, RuleId, Severity};
use crate::lex::{Kind, Lexer};

/// The text that starts a suppression comment.
pub const MARKER: &str = "dualwrite-lint:";

/// One suppression comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// Where the comment is (its `//` to the end of the line).
    pub location: Location,
    /// The line whose findings it suppresses.
    pub covers: usize,
    /// The rules it names.
    pub rules: Vec<RuleId>,
    /// The reason, when one is given.
    pub reason: Option<String>,
    /// What is wrong with it beyond a missing reason (malformed, unknown rule).
    pub problems: Vec<String>,
}

/// Every suppression comment of a file.
pub fn scan(file: &str, text: &str) -> Vec<Suppression> {
    // Most files have none; a substring search is far cheaper than lexing.
    if !text.contains(MARKER) {
        return Vec::new();
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (index, comment_start) in line_comments(text) {
        let Some(line) = lines.get(index) else {
            continue;
        };
        let Some(after) = line
            .get(comment_start + 2..)
            .and_then(|rest| rest.trim_start().strip_prefix(MARKER))
        else {
            continue;
        };
        let line_number = index + 1;
        let standalone = line[..comment_start].trim().is_empty();
        let covers = if standalone {
            lines[index + 1..]
                .iter()
                .position(|l| !l.trim_start().starts_with("//"))
                .map_or(line_number + 1, |offset| line_number + 1 + offset)
        } else {
            line_number
        };
        let (rules, reason, problems) = parse_body(after);
        out.push(Suppression {
            location: Location {
                file: file.to_owned(),
                start_line: line_number,
                start_column: line[..comment_start].chars().count() + 1,
                end_line: line_number,
                end_column: line.trim_end().chars().count() + 1,
            },
            covers,
            rules,
            reason,
            problems,
        });
    }
    out
}

/// The `//` comments of a file that are not documentation (`///`, `//!`):
/// 0-based line index and byte offset of the `//` in its line. The lint's
/// Rust lexer ([`crate::lex`]) finds them, so text in strings (also raw
/// and multi-line), character literals and block comments that only looks
/// like a comment is not one.
fn line_comments(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    // Lines are counted from one comment to the next.
    let (mut line, mut line_start, mut counted) = (0, 0, 0);
    for token in Lexer::new(text) {
        if token.kind != (Kind::LineComment { doc: false }) {
            continue;
        }
        for newline in memchr::memchr_iter(b'\n', &bytes[counted..token.start]) {
            line += 1;
            line_start = counted + newline + 1;
        }
        counted = token.start;
        out.push((line, token.start - line_start));
    }
    out
}

fn parse_body(after: &str) -> (Vec<RuleId>, Option<String>, Vec<String>) {
    let mut problems = Vec::new();
    let body = after.trim_start();
    let Some(list_and_rest) = body
        .strip_prefix("allow")
        .map(str::trim_start)
        .and_then(|s| s.strip_prefix('('))
    else {
        problems.push(format!(
            "malformed suppression `{}`: expected `allow(DW001) reason`",
            body.trim()
        ));
        return (Vec::new(), None, problems);
    };
    let Some(close) = list_and_rest.find(')') else {
        problems.push("malformed suppression: `allow(` has no closing `)`".to_owned());
        return (Vec::new(), None, problems);
    };
    let mut rules = Vec::new();
    for name in list_and_rest[..close].split(',').map(str::trim) {
        if name.is_empty() {
            continue;
        }
        match name.parse::<RuleId>() {
            Ok(rule) if !rules.contains(&rule) => rules.push(rule),
            Ok(_) => {}
            Err(why) => problems.push(why),
        }
    }
    if rules.is_empty() && problems.is_empty() {
        problems.push("malformed suppression: `allow()` names no rule".to_owned());
    }
    let reason = list_and_rest[close + 1..]
        .trim_start_matches(|c: char| c.is_whitespace() || matches!(c, ':' | '-' | '—' | '–'))
        .trim();
    let reason = (!reason.is_empty()).then(|| reason.to_owned());
    (rules, reason, problems)
}

/// Removes the findings covered by a suppression and returns the DW004
/// findings: suppressions without a reason (what they cover stays
/// suppressed), malformed ones, and rules a suppression names but no finding
/// on its line has (except rules switched off by the configuration).
pub fn apply(
    findings: Vec<Finding>,
    suppressions: &BTreeMap<String, Vec<Suppression>>,
    is_off: impl Fn(RuleId) -> bool,
) -> (Vec<Finding>, Vec<Finding>) {
    let mut used: HashSet<(&str, usize, RuleId)> = HashSet::new();
    let mut kept = Vec::with_capacity(findings.len());
    for finding in findings {
        let covering = (finding.rule != RuleId::DW004)
            .then(|| suppressions.get(&finding.location.file))
            .flatten()
            .and_then(|list| {
                list.iter().enumerate().find(|(_, s)| {
                    s.covers == finding.location.start_line && s.rules.contains(&finding.rule)
                })
            });
        match covering {
            Some((index, _)) => {
                let file = suppressions
                    .get_key_value(&finding.location.file)
                    .map_or("", |(k, _)| k.as_str());
                used.insert((file, index, finding.rule));
            }
            None => kept.push(finding),
        }
    }
    let mut problems = Vec::new();
    for (file, list) in suppressions {
        let mut occurrences: HashMap<String, usize> = HashMap::new();
        let mut push = |problems: &mut Vec<Finding>,
                        s: &Suppression,
                        callee: String,
                        severity: Severity,
                        message: String,
                        label: &str| {
            let occurrence = occurrences.entry(callee.clone()).or_insert(0);
            problems.push(Finding {
                rule: RuleId::DW004,
                severity,
                message,
                label: label.to_owned(),
                help: RuleId::DW004.help().to_owned(),
                location: s.location.clone(),
                fingerprint: Fingerprint {
                    rule: RuleId::DW004,
                    file: file.clone(),
                    item: String::new(),
                    callee,
                    occurrence: *occurrence,
                },
                in_test: false,
                explain: Vec::new(),
            });
            *occurrence += 1;
        };
        for (index, s) in list.iter().enumerate() {
            for problem in &s.problems {
                push(
                    &mut problems,
                    s,
                    "suppression:malformed".to_owned(),
                    Severity::Error,
                    problem.clone(),
                    "malformed suppression",
                );
            }
            if s.reason.is_none() && !s.rules.is_empty() {
                let names: Vec<&str> = s.rules.iter().map(|r| r.code()).collect();
                push(
                    &mut problems,
                    s,
                    "suppression:no-reason".to_owned(),
                    Severity::Error,
                    format!(
                        "suppression of {} has no reason; write why after `allow(...)`",
                        names.join(", ")
                    ),
                    "no reason given",
                );
            }
            for rule in &s.rules {
                if is_off(*rule) || used.contains(&(file.as_str(), index, *rule)) {
                    continue;
                }
                push(
                    &mut problems,
                    s,
                    format!("suppression:unused:{}", rule.code()),
                    Severity::Warning,
                    format!(
                        "unused suppression: no {} finding on line {}",
                        rule.code(),
                        s.covers
                    ),
                    "suppresses nothing",
                );
            }
        }
    }
    (kept, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_comment_forms() {
        let text = "\
// dualwrite-lint: allow(DW001) backfill job
// dualwrite-lint: allow(DW002, adapter-bypass)
store.insert(x);
store.insert(y); // dualwrite-lint: allow(DW001): one-off repair
/// // dualwrite-lint: allow(DW001) doc example
let s = \"// dualwrite-lint: allow(DW001) in a string\";
// dualwrite-lint: allow DW001
// dualwrite-lint: allow(DW009) typo
";
        let found = scan("a.rs", text);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert_eq!(found[0].covers, 3);
        assert_eq!(found[0].reason.as_deref(), Some("backfill job"));
        assert_eq!(found[1].covers, 3);
        assert_eq!(found[1].rules, vec![RuleId::DW002, RuleId::DW001]);
        assert_eq!(found[1].reason, None);
        assert_eq!(found[2].covers, 4);
        assert_eq!(found[2].reason.as_deref(), Some("one-off repair"));
        assert_eq!(found[2].location.start_column, 18);
        assert_eq!(found[3].problems.len(), 1);
        assert!(found[4].problems[0].contains("unknown rule"));
    }
}

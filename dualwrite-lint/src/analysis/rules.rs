//! Pass 2's rules: DW001 (adapter bypass), DW002 (raw write) and DW003
//! (what the macro rejects), applied to every file's summary against the
//! global [`Index`], with line-independent fingerprints.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use super::apis::{ApiKind, ApiSpec, ApiTable, CallForm};
use super::deps::{CrateDeps, DepsCache};
use super::index::{FileScope, Index, last_segment};
use super::sql::is_write_verb;
use super::summary::{CallKind, CallSite, FileSummary, Span, SqlEvidence, Step};
use crate::finding::{Finding, Fingerprint, Location, RuleId, Severity};

/// A finding before its fingerprint's occurrence index is known.
struct Draft {
    rule: RuleId,
    span: Span,
    message: String,
    label: String,
    help: String,
    item: String,
    callee: String,
    in_test: bool,
    explain: Vec<String>,
}

/// Applies the rules to every file.
pub fn apply(files: &[FileSummary], apis: &ApiTable, root: Option<&Path>) -> Vec<Finding> {
    let index = Index::build(files);
    let matcher = ApiMatcher::new(apis);
    let deps = root.map(DepsCache::new);
    let mut findings: Vec<Finding> = files
        .par_iter()
        .flat_map_iter(|file| {
            let scope = FileScope::new(file);
            let crate_deps = match &deps {
                Some(cache) if !file.calls.is_empty() => cache.for_file(&file.path),
                _ => None,
            };
            let mut drafts = unclassified_methods(file);
            for call in &file.calls {
                let Some(context) = file.items.get(call.item as usize) else {
                    continue;
                };
                let exempt = context
                    .impl_trait
                    .as_deref()
                    .is_some_and(|t| index.is_annotated(&scope, t));
                if exempt {
                    continue;
                }
                let draft = adapter_bypass(&index, &scope, call)
                    .or_else(|| raw_write(&index, &matcher, &scope, call, crate_deps.as_deref()));
                if let Some(mut draft) = draft {
                    draft.item = context.path.to_string();
                    draft.in_test = call.in_test;
                    drafts.push(draft);
                }
            }
            let mut out = Vec::new();
            finish(file, drafts, &mut out);
            out
        })
        .collect();
    findings.sort_by(|a, b| {
        (
            &a.location.file,
            a.location.start_line,
            a.location.start_column,
            a.rule,
        )
            .cmp(&(
                &b.location.file,
                b.location.start_line,
                b.location.start_column,
                b.rule,
            ))
    });
    findings
}

/// Orders a file's drafts and numbers repeated (rule, item, callee) triples.
fn finish(file: &FileSummary, mut drafts: Vec<Draft>, out: &mut Vec<Finding>) {
    drafts.sort_by_key(|d| (d.span.line, d.span.column, d.rule));
    let mut seen: HashMap<(RuleId, String, String), usize> = HashMap::new();
    for draft in drafts {
        let counter = seen
            .entry((draft.rule, draft.item.clone(), draft.callee.clone()))
            .or_default();
        let occurrence = *counter;
        *counter += 1;
        out.push(Finding {
            rule: draft.rule,
            severity: Severity::Error,
            message: draft.message,
            label: draft.label,
            help: draft.help,
            location: Location {
                file: file.path.clone(),
                start_line: draft.span.line as usize,
                start_column: draft.span.column as usize,
                end_line: draft.span.end_line as usize,
                end_column: draft.span.end_column as usize,
            },
            fingerprint: Fingerprint {
                rule: draft.rule,
                file: file.path.clone(),
                item: draft.item,
                callee: draft.callee,
                occurrence,
            },
            in_test: draft.in_test,
            explain: draft.explain,
        });
    }
}

/// DW003: every error the macro would report on an annotated trait.
fn unclassified_methods(file: &FileSummary) -> Vec<Draft> {
    let mut drafts = Vec::new();
    for t in &file.traits {
        for error in &t.errors {
            drafts.push(Draft {
                rule: RuleId::DW003,
                span: error.span,
                message: error.message.clone(),
                label: "rejected by #[dual_write]".to_owned(),
                help: RuleId::DW003.help().to_owned(),
                item: format!("trait {}", t.name),
                callee: t.name.to_string(),
                in_test: t.in_test,
                explain: Vec::new(),
            });
        }
    }
    drafts
}

/// DW001: a write of an annotated trait called on one of its raw stores.
fn adapter_bypass(index: &Index<'_>, scope: &FileScope<'_>, call: &CallSite) -> Option<Draft> {
    let (store, trait_name, method) = match call.kind {
        CallKind::Method => {
            let method = &*call.callee;
            if !index.write_names.contains(method) {
                return None;
            }
            let store = index.resolve_hint(scope, call.receiver.as_ref()?)?;
            let trait_name = index.bypassed_trait(&store, method)?;
            (store, trait_name, method)
        }
        CallKind::Path => {
            let method = last_segment(&call.callee);
            if !index.write_names.contains(method) {
                return None;
            }
            if let Some(qself) = &call.qself {
                // `<PgUserStore as UserStore>::insert(..)`
                let store = index.resolve_type(scope, qself)?;
                let trait_name = index.bypassed_trait(&store, method)?;
                (store, trait_name, method)
            } else {
                let owner = call.callee.strip_suffix(method)?.strip_suffix("::")?;
                let owner = index.resolve_type(scope, owner)?;
                if index.traits.contains_key(owner.as_str()) {
                    // `UserStore::insert(&pg, ..)`: the first argument is the store.
                    let store = index.resolve_hint(scope, call.receiver.as_ref()?)?;
                    let trait_name = index.bypassed_trait(&store, method)?;
                    if trait_name != owner {
                        return None;
                    }
                    (store, trait_name, method)
                } else {
                    // `PgUserStore::insert(&pg, ..)`
                    let trait_name = index.bypassed_trait(&owner, method)?;
                    (owner, trait_name, method)
                }
            }
        }
        CallKind::Macro => return None,
    };
    let adapter = index.traits.get(trait_name).map_or("", |t| t.adapter);
    let mut explain = Vec::new();
    match (call.kind, &call.qself, &call.receiver) {
        (CallKind::Path, Some(qself), _) => {
            explain.push(format!(
                "`<{qself} as ..>::{method}` names the type `{store}`"
            ));
        }
        (CallKind::Path, None, _) if !call.callee.starts_with(trait_name) => {
            explain.push(format!("`{}` names the type `{store}`", call.callee));
        }
        (_, _, Some(hint)) => {
            index.resolve_hint_ty(scope, hint, Some(&mut explain));
        }
        _ => {}
    }
    explain.push(format!(
        "`{store}` implements the #[dual_write] trait `{trait_name}`: it is a raw store, and `{method}` is a write"
    ));
    Some(Draft {
        rule: RuleId::DW001,
        span: call.span,
        message: format!(
            "`{method}` of `{trait_name}` is called on the raw store `{store}`, bypassing the dual-write adapter"
        ),
        label: "raw store write".to_owned(),
        help: format!("call this through `{adapter}` so both stores receive it"),
        item: String::new(),
        callee: format!("{store}::{method}"),
        in_test: false,
        explain,
    })
}

/// A spec with its name split for matching.
struct Matcher<'a> {
    spec: &'a ApiSpec,
    /// The name's segments, `!` dropped.
    segments: Vec<&'a str>,
}

/// The API table indexed by the last segment of each name.
struct ApiMatcher<'a> {
    by_name: HashMap<&'a str, Vec<Matcher<'a>>>,
}

impl<'a> ApiMatcher<'a> {
    fn new(table: &'a ApiTable) -> Self {
        let mut by_name: HashMap<&str, Vec<Matcher<'_>>> = HashMap::new();
        for spec in &table.specs {
            let segments: Vec<&str> = spec.name.trim_end_matches('!').split("::").collect();
            if let Some(last) = segments.last() {
                by_name
                    .entry(last)
                    .or_default()
                    .push(Matcher { spec, segments });
            }
        }
        ApiMatcher { by_name }
    }
}

/// Whether the spec's path segments match the called path: same last
/// segment, and the spec's other segments appear in order before it.
fn path_matches(spec: &[&str], called: &str) -> bool {
    let called: Vec<&str> = called.split("::").collect();
    let (Some(spec_last), Some(called_last)) = (spec.last(), called.last()) else {
        return false;
    };
    if spec_last != called_last {
        return false;
    }
    let mut rest = called[..called.len() - 1].iter();
    spec[..spec.len() - 1]
        .iter()
        .all(|segment| rest.any(|c| c == segment))
}

/// DW002: a call that matches a raw-write API.
fn raw_write(
    index: &Index<'_>,
    matcher: &ApiMatcher<'_>,
    scope: &FileScope<'_>,
    call: &CallSite,
    crate_deps: Option<&CrateDeps>,
) -> Option<Draft> {
    let name = last_segment(&call.callee);
    let candidates = matcher.by_name.get(name)?;
    let mut paths = match call.kind {
        CallKind::Method => Vec::new(),
        CallKind::Path | CallKind::Macro => scope.candidates(&call.callee),
    };
    if let Some(deps) = crate_deps {
        // `kv::cmd(..)` under `kv = { package = "redis" }` is `redis::cmd`.
        let renamed: Vec<String> = paths.iter().filter_map(|p| deps.unrename(p)).collect();
        paths.extend(renamed);
    }
    // Shown for each path: itself, or the path it was derived from.
    let mut shown: Vec<String> = paths.clone();
    // `prelude::User::delete_many` under `pub use user::Entity as User;`
    // elsewhere is `prelude::Entity::delete_many`.
    for i in 0..paths.len() {
        let Some((owner_path, name)) = paths[i].rsplit_once("::") else {
            continue;
        };
        let (prefix, owner) = match owner_path.rsplit_once("::") {
            Some((prefix, owner)) => (Some(prefix), owner),
            None => (None, owner_path),
        };
        let Some(original) = index.renamed_from(owner) else {
            continue;
        };
        let path = match prefix {
            Some(prefix) => format!("{prefix}::{original}::{name}"),
            None => format!("{original}::{name}"),
        };
        shown.push(paths[i].clone());
        paths.push(path);
    }
    let receiver_type = match (&call.receiver, call.kind) {
        (Some(hint), CallKind::Method) => {
            let resolved = index.resolve_hint(scope, hint);
            let written = scope.expand(hint.base_text());
            let written = crate_deps
                .and_then(|deps| deps.unrename(&written))
                .unwrap_or(written);
            Some((written, resolved))
        }
        _ => None,
    };
    // A receiver of a type of the project's own is not a client, unless its
    // type was written as a client's (a same-named type elsewhere).
    let client_crate = match &receiver_type {
        Some((_, Some(resolved))) if index.is_project_type(resolved) => {
            match written_crate(index, scope, call, crate_deps, resolved) {
                Some(first) => Some(first),
                None => return None,
            }
        }
        _ => None,
    };
    for m in candidates {
        let spec = m.spec;
        if let Some(first) = &client_crate
            && !spec.crates.iter().any(|c| c.replace('-', "_") == *first)
        {
            // Written as another crate's type (or a sibling crate's).
            continue;
        }
        if !spec.crates.is_empty()
            && let Some(deps) = crate_deps
            && !spec.crates.iter().any(|c| deps.contains(c))
        {
            // The crate does not depend on this client.
            continue;
        }
        let form_ok = matches!(
            (spec.call, call.kind),
            (CallForm::Any, _)
                | (CallForm::Method, CallKind::Method)
                | (CallForm::Function, CallKind::Path)
                | (CallForm::Macro, CallKind::Macro)
        );
        if !form_ok {
            continue;
        }
        let matched_path = match call.kind {
            CallKind::Method => {
                if m.segments.len() != 1 {
                    continue;
                }
                None
            }
            _ => match paths.iter().position(|p| path_matches(&m.segments, p)) {
                Some(i) => Some((paths[i].as_str(), shown[i].as_str())),
                None => continue,
            },
        };
        let shown_path = matched_path.map(|(_, shown)| shown);
        let matched_path = matched_path.map(|(path, _)| path);
        if let Some(receiver) = &spec.receiver {
            let mut texts: Vec<&str> = Vec::new();
            if let Some((written, resolved)) = &receiver_type {
                texts.push(written);
                if let Some(resolved) = resolved {
                    texts.push(resolved);
                }
            }
            if let Some(text) = &call.receiver_text {
                texts.push(text);
            }
            if let Some(hint) = &call.receiver {
                // `db.collection::<T>("users")`
                texts.extend(hint.steps.iter().filter_map(|step| match step {
                    Step::Method(method) => Some(&**method),
                    _ => None,
                }));
            }
            if let Some(path) = matched_path {
                texts.push(path);
            }
            let ok = receiver
                .split('|')
                .filter(|alt| !alt.is_empty())
                .any(|alt| texts.iter().any(|t| t.contains(alt)));
            if !ok {
                continue;
            }
        }
        let keyword = match &call.sql {
            Some(SqlEvidence::Keyword(k)) => Some(&**k),
            Some(SqlEvidence::Const(name)) => index.const_keyword(name),
            None => None,
        };
        let library = spec.library.as_deref();
        let (display, callee) = match call.kind {
            CallKind::Method => (
                match &call.receiver_text {
                    Some(text) => format!("{text}.{name}"),
                    None => format!(".{name}"),
                },
                name.to_owned(),
            ),
            CallKind::Path => {
                let path = shown_path.unwrap_or(&call.callee).to_owned();
                (path.clone(), path)
            }
            CallKind::Macro => {
                let path = format!("{}!", shown_path.unwrap_or(&call.callee));
                (path.clone(), path)
            }
        };
        let (message, label) = match spec.kind {
            ApiKind::Sql => {
                let Some(verb) = keyword.filter(|k| is_write_verb(k)) else {
                    continue;
                };
                (
                    format!(
                        "raw SQL write (`{verb}`) through `{display}` outside a #[dual_write] repository"
                    ),
                    "raw SQL write".to_owned(),
                )
            }
            ApiKind::Command => {
                let Some(command) =
                    keyword.filter(|k| spec.commands.iter().any(|c| c.eq_ignore_ascii_case(k)))
                else {
                    continue;
                };
                let what =
                    library.map_or_else(|| "raw write".to_owned(), |l| format!("raw {l} write"));
                (
                    format!(
                        "{what} (`{command}`) through `{display}` outside a #[dual_write] repository"
                    ),
                    what,
                )
            }
            ApiKind::Write => {
                let what =
                    library.map_or_else(|| "raw write".to_owned(), |l| format!("raw {l} write"));
                (
                    format!("{what} through `{display}` outside a #[dual_write] repository"),
                    what,
                )
            }
        };
        return Some(Draft {
            rule: RuleId::DW002,
            span: call.span,
            message,
            label,
            help: raw_write_help(index),
            item: String::new(),
            callee,
            in_test: false,
            explain: Vec::new(),
        });
    }
    None
}

/// Names the repository trait and its adapter when there is exactly one.
fn raw_write_help(index: &Index<'_>) -> String {
    if index.traits.len() == 1
        && let Some((name, info)) = index.traits.iter().next()
    {
        return format!(
            "move this write into an `impl {name} for ..` store and call it through `{}` so both stores receive it, or suppress it with a reason if only one store must see it",
            info.adapter
        );
    }
    RuleId::DW002.help().to_owned()
}

/// The crate the receiver's type was written under, when a type of the
/// project has its name (`resolved`): the first segment of the path the
/// type was declared with (`rusqlite::Transaction`, or `Transaction` under
/// `use rusqlite::Transaction;`, renamed dependencies by their package),
/// or, when that cannot be followed, of this file's import of the name
/// (`use mysql::Conn;`). `None` for a path in the crate (`crate::`, a
/// module of its own, a bare name): the project's type. The caller holds
/// it against the client specs' crates, so a sibling crate of the
/// workspace is not taken for a client.
fn written_crate(
    index: &Index<'_>,
    scope: &FileScope<'_>,
    call: &CallSite,
    deps: Option<&CrateDeps>,
    resolved: &str,
) -> Option<String> {
    let written = call
        .receiver
        .as_ref()
        .and_then(|hint| index.hint_written_path(scope, hint));
    let path = match written {
        Some(path) => path,
        None if resolved.contains("::") => return None,
        None => scope.expand(resolved),
    };
    let path = deps.and_then(|deps| deps.unrename(&path)).unwrap_or(path);
    let (first, _) = path.split_once("::")?;
    if matches!(first, "crate" | "self" | "super" | "Self") || scope.declares_module(first) {
        return None;
    }
    Some(first.replace('-', "_"))
}

//! Reading types and expressions without compiling: the type path a `Type`
//! names (smart pointers and references stripped), the type an expression
//! evaluates to when it is evident from its syntax, and the SQL text an
//! argument carries.

use std::fmt::Write;

use proc_macro2::{Ident, Span as TokenSpan, TokenStream, TokenTree};
use syn::{Expr, Lit, Path, Type};

use super::env::Env;
use super::sql::leading_keyword;
use super::summary::{Span, SqlEvidence, TypeHint};

/// Wrappers that deref to the value they hold: a method called on
/// `Arc<PgUserStore>` runs on the `PgUserStore`.
const POINTERS: &[&str] = &["Arc", "Rc", "Box"];

/// Associated functions that, by convention, return `Self` (possibly in a
/// `Result` or a future): `T::new(..)`, `T::connect(..).await?`.
fn is_constructor(name: &str) -> bool {
    matches!(
        name,
        "new" | "default" | "connect" | "open" | "init" | "from" | "try_new" | "try_from"
    ) || ["new_", "with_", "connect_", "from_", "open_", "try_new_"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Methods that return (a reference to) their receiver's value, so the
/// hint passes through: `x.clone()`, `x.as_ref()`, `T::new(..).unwrap()`.
const PASSTHROUGH: &[&str] = &[
    "clone",
    "to_owned",
    "as_ref",
    "as_mut",
    "borrow",
    "borrow_mut",
    "deref",
    "deref_mut",
    "unwrap",
    "expect",
];

/// Methods that turn their receiver's text into another string type.
const TEXT_CONVERSIONS: &[&str] = &["as_str", "to_string", "to_owned", "as_ref", "clone", "into"];

/// Whether `ident` is one of `names` (compared without allocating).
fn is_one_of(ident: &Ident, names: &[&str]) -> bool {
    names.iter().any(|n| ident == n)
}

/// Converts a token span to 1-based positions.
pub fn span_of(span: TokenSpan) -> Span {
    span_between(span, span)
}

/// The positions from the start of `first` to the end of `last`.
pub fn span_between(first: TokenSpan, last: TokenSpan) -> Span {
    let start = first.start();
    let end = last.end();
    Span {
        line: start.line as u32,
        column: start.column as u32 + 1,
        end_line: end.line as u32,
        end_column: end.column as u32 + 1,
    }
}

/// `a::b::C` without generic arguments (a leading `::` is dropped).
pub fn path_text(path: &Path) -> String {
    let mut text = String::new();
    for (i, segment) in path.segments.iter().enumerate() {
        if i > 0 {
            text.push_str("::");
        }
        let _ = write!(text, "{}", segment.ident);
    }
    text
}

/// The type path a type names, with `&`, `&mut`, parentheses and the
/// [`POINTERS`] stripped; `Self` becomes `self_ty`. `None` for tuples,
/// `dyn`/`impl` traits, slices and the like.
pub fn type_path(ty: &Type, self_ty: Option<&str>) -> Option<Box<str>> {
    match ty {
        Type::Reference(r) => type_path(&r.elem, self_ty),
        Type::Paren(p) => type_path(&p.elem, self_ty),
        Type::Group(g) => type_path(&g.elem, self_ty),
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            if POINTERS.iter().any(|w| last.ident == w)
                && let syn::PathArguments::AngleBracketed(args) = &last.arguments
                && let Some(syn::GenericArgument::Type(inner)) = args.args.first()
            {
                return type_path(inner, self_ty);
            }
            if p.path.segments.len() == 1 && last.ident == "Self" {
                return self_ty.map(Box::from);
            }
            Some(path_text(&p.path).into_boxed_str())
        }
        _ => None,
    }
}

/// How far [`expr_hint`] and [`sql_evidence`] follow an expression
/// inward (`x.clone().unwrap()...`, `&&&x`): far beyond real code, and a
/// bound on their recursion whatever the syntax tree's depth.
const MAX_HINT_DEPTH: u32 = 64;

/// The type an expression evidently has, from its syntax and the bindings
/// in scope.
pub fn expr_hint(expr: &Expr, env: &Env, self_ty: Option<&str>) -> Option<TypeHint> {
    hint_at(expr, env, self_ty, 0)
}

fn hint_at(expr: &Expr, env: &Env, self_ty: Option<&str>, depth: u32) -> Option<TypeHint> {
    if depth > MAX_HINT_DEPTH {
        return None;
    }
    let inner = |expr: &Expr| hint_at(expr, env, self_ty, depth + 1);
    match expr {
        Expr::Path(p) if p.qself.is_none() => {
            let ident = p.path.get_ident()?;
            if env.is_bound(ident) {
                return env.hint(ident).cloned();
            }
            let name = ident.to_string();
            if name.starts_with(|c: char| c.is_ascii_uppercase())
                && name.chars().any(|c| c.is_ascii_lowercase())
            {
                // A unit struct used as a value: `let s = PgUserStore;`.
                Some(TypeHint::of(name))
            } else {
                None
            }
        }
        Expr::Field(f) => {
            let mut hint = inner(&f.base)?;
            let field = match &f.member {
                syn::Member::Named(ident) => ident.to_string(),
                syn::Member::Unnamed(index) => index.index.to_string(),
            };
            hint.fields.push(field.into_boxed_str());
            Some(hint)
        }
        Expr::Reference(r) => inner(&r.expr),
        Expr::Paren(p) => inner(&p.expr),
        Expr::Group(g) => inner(&g.expr),
        Expr::Await(a) => inner(&a.base),
        Expr::Try(t) => inner(&t.expr),
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => inner(&u.expr),
        Expr::MethodCall(m) if is_one_of(&m.method, PASSTHROUGH) => inner(&m.receiver),
        Expr::Struct(s) if s.qself.is_none() => {
            if s.path.is_ident("Self") {
                self_ty.map(TypeHint::of)
            } else {
                Some(TypeHint::of(path_text(&s.path)))
            }
        }
        Expr::Call(c) => call_hint(c, env, self_ty, depth),
        _ => None,
    }
}

/// `Arc::new(x)` is `x`'s type; `T::new(..)` is `T`.
fn call_hint(
    call: &syn::ExprCall,
    env: &Env,
    self_ty: Option<&str>,
    depth: u32,
) -> Option<TypeHint> {
    let Expr::Path(func) = &*call.func else {
        return None;
    };
    let segments = &func.path.segments;
    let last = segments.last()?.ident.to_string();
    if let Some(qself) = &func.qself {
        // `<T>::new(..)`
        return if qself.position == 0 && is_constructor(&last) {
            type_path(&qself.ty, self_ty).map(TypeHint::of)
        } else {
            None
        };
    }
    if segments.len() < 2 {
        return None;
    }
    let owner = &segments[segments.len() - 2].ident;
    let owner_text = owner.to_string();
    if POINTERS.contains(&owner_text.as_str()) && matches!(last.as_str(), "new" | "clone" | "from")
    {
        return hint_at(call.args.first()?, env, self_ty, depth + 1);
    }
    if !is_constructor(&last) || !owner_text.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    if owner_text == "Self" && segments.len() == 2 {
        return self_ty.map(TypeHint::of);
    }
    if owner_text == "Default" {
        return None;
    }
    let mut text = String::new();
    for (i, segment) in segments.iter().take(segments.len() - 1).enumerate() {
        if i > 0 {
            text.push_str("::");
        }
        text.push_str(&segment.ident.to_string());
    }
    Some(TypeHint::of(text))
}

/// The receiver's text when it is a plain path or field chain
/// (`self.redis`, `conn`), for API specs that match on it.
pub fn receiver_text(expr: &Expr) -> Option<Box<str>> {
    fn write(expr: &Expr, out: &mut String, depth: u32) -> Option<()> {
        if depth > 8 {
            return None;
        }
        match expr {
            Expr::Path(p) if p.qself.is_none() => {
                out.push_str(&path_text(&p.path));
                Some(())
            }
            Expr::Field(f) => {
                write(&f.base, out, depth + 1)?;
                out.push('.');
                let _ = match &f.member {
                    syn::Member::Named(ident) => write!(out, "{ident}"),
                    syn::Member::Unnamed(index) => write!(out, "{}", index.index),
                };
                Some(())
            }
            Expr::Reference(r) => write(&r.expr, out, depth + 1),
            Expr::Paren(p) => write(&p.expr, out, depth + 1),
            Expr::MethodCall(m) if is_one_of(&m.method, PASSTHROUGH) => {
                write(&m.receiver, out, depth + 1)
            }
            _ => None,
        }
    }
    let mut out = String::new();
    write(expr, &mut out, 0)?;
    Some(out.into_boxed_str())
}

/// Macros whose first argument is the text they produce.
const TEXT_MACROS: &[&str] = &["format", "concat", "formatcp", "indoc", "formatdoc"];

/// The SQL evidence of an argument: a literal, `format!("..")`, a local
/// bound to one, or a `const` by name.
pub fn sql_evidence(expr: &Expr, env: &Env) -> Option<SqlEvidence> {
    evidence_at(expr, env, 0)
}

fn evidence_at(expr: &Expr, env: &Env, depth: u32) -> Option<SqlEvidence> {
    if depth > MAX_HINT_DEPTH {
        return None;
    }
    let inner = |expr: &Expr| evidence_at(expr, env, depth + 1);
    match expr {
        Expr::Lit(lit) => literal_keyword(&lit.lit).map(SqlEvidence::Keyword),
        Expr::Reference(r) => inner(&r.expr),
        Expr::Paren(p) => inner(&p.expr),
        Expr::Group(g) => inner(&g.expr),
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => inner(&u.expr),
        Expr::Macro(m) => {
            if is_one_of(&m.mac.path.segments.last()?.ident, TEXT_MACROS) {
                first_literal_keyword(&m.mac.tokens)
            } else {
                None
            }
        }
        Expr::MethodCall(m) if is_one_of(&m.method, TEXT_CONVERSIONS) => inner(&m.receiver),
        Expr::Call(c) => {
            // `String::from("INSERT ..")`
            let Expr::Path(func) = &*c.func else {
                return None;
            };
            let last = func.path.segments.last()?;
            if last.ident == "from" || last.ident == "new" {
                inner(c.args.first()?)
            } else {
                None
            }
        }
        Expr::Path(p) if p.qself.is_none() => {
            let ident = &p.path.segments.last()?.ident;
            if p.path.segments.len() == 1 && env.is_bound(ident) {
                return env.sql(ident).cloned();
            }
            let last = ident.to_string();
            let is_const_name = last.chars().any(|c| c.is_ascii_uppercase())
                && !last.chars().any(|c| c.is_ascii_lowercase());
            is_const_name.then(|| SqlEvidence::Const(last.into_boxed_str()))
        }
        _ => None,
    }
}

/// The leading keyword of a string literal.
pub fn literal_keyword(lit: &Lit) -> Option<Box<str>> {
    match lit {
        Lit::Str(s) => leading_keyword(&s.value()),
        _ => None,
    }
}

/// The leading keyword of the first token of a macro body when it is a
/// string literal (`query!("INSERT ..", ..)`, `format!("DELETE ..")`,
/// `concat!("UPDATE ", ..)`).
pub fn first_literal_keyword(tokens: &TokenStream) -> Option<SqlEvidence> {
    match tokens.clone().into_iter().next()? {
        TokenTree::Literal(literal) => {
            literal_keyword(&Lit::new(literal)).map(SqlEvidence::Keyword)
        }
        _ => None,
    }
}

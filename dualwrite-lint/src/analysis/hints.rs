//! Reading types and expressions without compiling: the type path a `Type`
//! names (smart pointers and references stripped), the type an expression
//! evaluates to when it is evident from its syntax, and the SQL text an
//! argument carries.

use std::fmt::Write;
use std::path::Path as FsPath;

use proc_macro2::{Ident, Span as TokenSpan, TokenStream, TokenTree};
use syn::{Expr, Lit, Path, Type};

use super::env::Env;
use super::sql::leading_keyword;
use super::summary::{HintBase, Span, SqlEvidence, Step, TypeHint};

/// Wrappers that deref to the value they hold: a method called on
/// `Arc<PgUserStore>` runs on the `PgUserStore`.
const POINTERS: &[&str] = &["Arc", "Rc", "Box"];

/// Associated functions that, by convention, return `Self` (possibly in a
/// `Result` or a future): `T::new(..)`, `T::connect(..).await?`. Used when
/// the crate does not define the function.
pub fn is_constructor(name: &str) -> bool {
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

/// Methods that give the value inside an `Option` or `Result`.
const UNWRAPS: &[&str] = &[
    "unwrap",
    "expect",
    "unwrap_or_default",
    "unwrap_or",
    "unwrap_or_else",
    "unwrap_unchecked",
];

/// Methods that keep an `Option`/`Result` (or error context) around the
/// same value: `.ok()?`, `.context("..")?`.
const KEEPS: &[&str] = &[
    "ok",
    "ok_or",
    "ok_or_else",
    "context",
    "with_context",
    "wrap_err",
    "map_err",
];

/// Wrapper constructors whose argument is the value: `Arc::new(x)`,
/// `Mutex::new(x)`.
fn is_wrapper_constructor(owner: &str, name: &str) -> bool {
    crate::analysis::ty::TRANSPARENT.contains(&owner)
        && matches!(name, "new" | "clone" | "from" | "pin")
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
            let hint = inner(&f.base)?;
            let field = match &f.member {
                syn::Member::Named(ident) => ident.to_string(),
                syn::Member::Unnamed(index) => index.index.to_string(),
            };
            Some(hint.then(Step::Field(field.into_boxed_str())))
        }
        Expr::Reference(r) => inner(&r.expr),
        Expr::Paren(p) => inner(&p.expr),
        Expr::Group(g) => inner(&g.expr),
        Expr::Await(a) => inner(&a.base),
        Expr::Cast(c) => inner(&c.expr),
        Expr::Try(t) => Some(inner(&t.expr)?.then(Step::Unwrap)),
        // `xs[..]`, `xs[1..]`: the same elements.
        Expr::Index(i) if matches!(&*i.index, Expr::Range(_)) => inner(&i.expr),
        Expr::Index(i) => Some(inner(&i.expr)?.then(Step::Elem)),
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => inner(&u.expr),
        Expr::MethodCall(m) if is_one_of(&m.method, PASSTHROUGH) => inner(&m.receiver),
        Expr::MethodCall(m) if is_one_of(&m.method, KEEPS) => inner(&m.receiver),
        Expr::MethodCall(m) if is_one_of(&m.method, UNWRAPS) => {
            Some(inner(&m.receiver)?.then(Step::Unwrap))
        }
        Expr::MethodCall(m) if m.method == "zip" && m.args.len() == 1 => {
            let other = m.args.first().and_then(inner).map(Box::new);
            Some(inner(&m.receiver)?.then(Step::Zip(other)))
        }
        Expr::MethodCall(m) => {
            let hint = inner(&m.receiver)?;
            Some(hint.then(Step::Method(m.method.to_string().into_boxed_str())))
        }
        Expr::Struct(s) if s.qself.is_none() => {
            if s.path.is_ident("Self") {
                self_ty.map(TypeHint::of)
            } else {
                Some(TypeHint::of(path_text(&s.path)))
            }
        }
        Expr::Call(c) => call_hint(c, env, self_ty, depth),
        Expr::Macro(m) if m.mac.path.is_ident("vec") => {
            // `vec![PgOrders::new(), ..]`
            let elems = m
                .mac
                .parse_body_with(
                    syn::punctuated::Punctuated::<Expr, syn::Token![,]>::parse_terminated,
                )
                .ok()?;
            Some(inner(elems.first()?)?.then(Step::Collect))
        }
        Expr::Array(a) => Some(inner(a.elems.first()?)?.then(Step::Collect)),
        Expr::Tuple(t) if !t.elems.is_empty() => {
            let mut text = String::from("(");
            for (i, elem) in t.elems.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                match inner(elem) {
                    Some(TypeHint {
                        base: HintBase::Type(ty),
                        steps,
                        ..
                    }) if steps.is_empty() => text.push_str(&ty),
                    _ => text.push('_'),
                }
            }
            text.push(')');
            Some(TypeHint::of(text))
        }
        _ => None,
    }
}

/// `Arc::new(x)` is `x`'s type; `Some(x)` an `Option` of it; `T::new(..)`
/// is `T`; `T::f(..)` and `f(..)` what they return (found in pass 2).
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
        // `<T>::new(..)`, `<T as Trait>::open(..)`
        let ty = type_path(&qself.ty, self_ty)?;
        return Some(TypeHint::from_base(HintBase::Assoc(
            ty,
            last.into_boxed_str(),
        )));
    }
    if segments.len() == 1 {
        let arg = || hint_at(call.args.first()?, env, self_ty, depth + 1);
        return match last.as_str() {
            "Some" | "Ok" => Some(arg()?.then(Step::Collect)),
            "Err" | "None" => None,
            _ if last.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') => {
                Some(TypeHint::from_base(HintBase::Call(last.into_boxed_str())))
            }
            _ => None,
        };
    }
    let owner = &segments[segments.len() - 2].ident;
    let owner_text = owner.to_string();
    if is_wrapper_constructor(&owner_text, &last) {
        return hint_at(call.args.first()?, env, self_ty, depth + 1);
    }
    if !owner_text.starts_with(|c: char| c.is_ascii_uppercase()) {
        // `db::connect(..)`, `redis::pipe()`
        return Some(TypeHint::from_base(HintBase::Call(
            path_text(&func.path).into_boxed_str(),
        )));
    }
    if owner_text == "Default" {
        return None;
    }
    let variant = last.starts_with(|c: char| c.is_ascii_uppercase());
    let owner_path = if owner_text == "Self" && segments.len() == 2 {
        Box::from(self_ty?)
    } else {
        let mut text = String::new();
        for (i, segment) in segments.iter().take(segments.len() - 1).enumerate() {
            if i > 0 {
                text.push_str("::");
            }
            text.push_str(&segment.ident.to_string());
        }
        text.into_boxed_str()
    };
    if variant {
        // `Backend::Pg(store)`: a value of the enum.
        return Some(TypeHint::of(owner_path));
    }
    Some(TypeHint::from_base(HintBase::Assoc(
        owner_path,
        last.into_boxed_str(),
    )))
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
            Expr::MethodCall(m)
                if is_one_of(&m.method, PASSTHROUGH) || is_one_of(&m.method, UNWRAPS) =>
            {
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
/// `include_str!("x.sql")` is read relative to `dir`.
pub fn sql_evidence(expr: &Expr, env: &Env, dir: Option<&FsPath>) -> Option<SqlEvidence> {
    evidence_at(expr, env, dir, 0)
}

/// Included SQL files larger than this are not read.
const MAX_INCLUDED_SQL: u64 = 1 << 20;

/// The leading keyword of the file `include_str!`/`include_bytes!` names,
/// read relative to `dir`.
pub fn included_keyword(tokens: &TokenStream, dir: Option<&FsPath>) -> Option<SqlEvidence> {
    let dir = dir?;
    let TokenTree::Literal(literal) = tokens.clone().into_iter().next()? else {
        return None;
    };
    let Lit::Str(name) = Lit::new(literal) else {
        return None;
    };
    let path = dir.join(name.value());
    let file = std::fs::File::open(&path).ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_INCLUDED_SQL), &mut text)
        .ok()?;
    leading_keyword(&text).map(SqlEvidence::Keyword)
}

fn evidence_at(expr: &Expr, env: &Env, dir: Option<&FsPath>, depth: u32) -> Option<SqlEvidence> {
    if depth > MAX_HINT_DEPTH {
        return None;
    }
    let inner = |expr: &Expr| evidence_at(expr, env, dir, depth + 1);
    match expr {
        Expr::Lit(lit) => literal_keyword(&lit.lit).map(SqlEvidence::Keyword),
        Expr::Reference(r) => inner(&r.expr),
        Expr::Paren(p) => inner(&p.expr),
        Expr::Group(g) => inner(&g.expr),
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => inner(&u.expr),
        Expr::Macro(m) => {
            let name = &m.mac.path.segments.last()?.ident;
            if is_one_of(name, TEXT_MACROS) {
                first_literal_keyword(&m.mac.tokens)
            } else if is_one_of(name, &["include_str", "include_bytes"]) {
                included_keyword(&m.mac.tokens, dir)
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

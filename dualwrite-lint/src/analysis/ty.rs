//! Types as the lint keeps them: a small text form written in pass 1
//! (`encode`, from syn's `Type`) and a tree read back in pass 2 ([`Ty`]).
//!
//! The text form keeps what matters to find a raw store behind a value:
//! paths (generics dropped, except type arguments), tuples, slices and
//! arrays. Smart pointers and locks that deref to, or guard, the value they
//! hold (`Arc`, `Box`, `Mutex`, `RwLock`, `RefCell`...) are dropped, so
//! `Arc<Mutex<PgOrders>>` is `PgOrders`; `Option`, `Result` and collections
//! are kept, so `Option::insert` is never taken for `PgOrders::insert`.
//! Anything else (`dyn`, `impl`, function pointers) is `_`.

use std::fmt::{self, Write};

use syn::{GenericArgument, PathArguments, Type};

/// Wrappers that hand out the value they hold (deref or a guard): they are
/// dropped from types.
pub const TRANSPARENT: &[&str] = &[
    "Arc",
    "Rc",
    "Box",
    "Mutex",
    "RwLock",
    "RefCell",
    "Cell",
    "MutexGuard",
    "RwLockReadGuard",
    "RwLockWriteGuard",
    "Ref",
    "RefMut",
    "ArcSwap",
    "Pin",
    "ManuallyDrop",
    "Cow",
];

/// Type text nested deeper than this is cut to `_` (types this deep name
/// no store the lint can follow).
const MAX_DEPTH: u32 = 8;

/// The text form of a type; `None` when nothing of it is known (`_`).
/// `Self` becomes `self_ty`.
pub fn encode(ty: &Type, self_ty: Option<&str>) -> Option<Box<str>> {
    let mut out = String::new();
    write_ty(ty, self_ty, &mut out, 0);
    (out != "_").then(|| out.into_boxed_str())
}

fn write_ty(ty: &Type, self_ty: Option<&str>, out: &mut String, depth: u32) {
    if depth > MAX_DEPTH {
        out.push('_');
        return;
    }
    match ty {
        Type::Reference(r) => write_ty(&r.elem, self_ty, out, depth + 1),
        Type::Paren(p) => write_ty(&p.elem, self_ty, out, depth + 1),
        Type::Group(g) => write_ty(&g.elem, self_ty, out, depth + 1),
        Type::Slice(s) => {
            out.push('[');
            write_ty(&s.elem, self_ty, out, depth + 1);
            out.push(']');
        }
        Type::Array(a) => {
            out.push('[');
            write_ty(&a.elem, self_ty, out, depth + 1);
            out.push(']');
        }
        Type::Tuple(t) => {
            out.push('(');
            for (i, elem) in t.elems.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_ty(elem, self_ty, out, depth + 1);
            }
            out.push(')');
        }
        Type::Path(p) => {
            let segments = &p.path.segments;
            let Some(last) = segments.last() else {
                out.push('_');
                return;
            };
            let args: Vec<&Type> = match &last.arguments {
                PathArguments::AngleBracketed(args) => args
                    .args
                    .iter()
                    .filter_map(|a| match a {
                        GenericArgument::Type(t) => Some(t),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            if p.qself.is_none() && TRANSPARENT.iter().any(|w| last.ident == w) {
                // `Cow<'_, T>`, `Arc<T>`: the (last) type argument.
                match args.last() {
                    Some(inner) => write_ty(inner, self_ty, out, depth + 1),
                    None => out.push('_'),
                }
                return;
            }
            if let Some(qself) = &p.qself {
                // `<X as Trait>::Name`: X's associated type `Name`.
                write_ty(&qself.ty, self_ty, out, depth + 1);
                out.push_str("::");
                let _ = write!(out, "{}", last.ident);
                return;
            }
            for (i, segment) in segments.iter().enumerate() {
                if i > 0 {
                    out.push_str("::");
                }
                if i == 0 && segment.ident == "Self" {
                    match self_ty {
                        Some(s) => out.push_str(s),
                        None => {
                            out.clear();
                            out.push('_');
                            return;
                        }
                    }
                } else {
                    let _ = write!(out, "{}", segment.ident);
                }
            }
            if !args.is_empty() {
                out.push('<');
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_ty(arg, self_ty, out, depth + 1);
                }
                out.push('>');
            }
        }
        _ => out.push('_'),
    }
}

/// A type read back from its text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ty {
    /// A path with its type arguments.
    Named(String, Vec<Ty>),
    /// `(A, B)`.
    Tuple(Vec<Ty>),
    /// `[T]`, `[T; N]`.
    Slice(Box<Ty>),
    /// Not known.
    Unknown,
}

impl Ty {
    /// Reads the text form (anything malformed reads as [`Ty::Unknown`]).
    pub fn parse(text: &str) -> Ty {
        let mut at = 0;
        let ty = parse_at(text.as_bytes(), &mut at, 0);
        if at == text.len() { ty } else { Ty::Unknown }
    }

    /// The same type with every path passed through `f`.
    pub fn map_paths(&self, f: &mut impl FnMut(&str) -> String) -> Ty {
        match self {
            Ty::Named(name, args) => {
                Ty::Named(f(name), args.iter().map(|a| a.map_paths(f)).collect())
            }
            Ty::Tuple(elems) => Ty::Tuple(elems.iter().map(|e| e.map_paths(f)).collect()),
            Ty::Slice(elem) => Ty::Slice(Box::new(elem.map_paths(f))),
            Ty::Unknown => Ty::Unknown,
        }
    }

    /// The `n`th type argument of a path.
    pub fn arg(&self, n: usize) -> Option<&Ty> {
        match self {
            Ty::Named(_, args) => args.get(n),
            _ => None,
        }
    }
}

fn parse_at(text: &[u8], at: &mut usize, depth: u32) -> Ty {
    if depth > 2 * MAX_DEPTH {
        *at = text.len() + 1;
        return Ty::Unknown;
    }
    match text.get(*at) {
        Some(b'_') if !matches!(text.get(*at + 1), Some(b) if b.is_ascii_alphanumeric() || *b == b'_') =>
        {
            *at += 1;
            Ty::Unknown
        }
        Some(b'(') => {
            *at += 1;
            let elems = parse_list(text, at, b')', depth);
            Ty::Tuple(elems)
        }
        Some(b'[') => {
            *at += 1;
            let elem = parse_at(text, at, depth + 1);
            if text.get(*at) == Some(&b']') {
                *at += 1;
            } else {
                *at = text.len() + 1;
            }
            Ty::Slice(Box::new(elem))
        }
        Some(_) => {
            let start = *at;
            while let Some(&b) = text.get(*at) {
                if b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b >= 0x80 {
                    *at += 1;
                } else {
                    break;
                }
            }
            let name = String::from_utf8_lossy(&text[start..*at]).into_owned();
            if name.is_empty() {
                *at = text.len() + 1;
                return Ty::Unknown;
            }
            let args = if text.get(*at) == Some(&b'<') {
                *at += 1;
                parse_list(text, at, b'>', depth)
            } else {
                Vec::new()
            };
            Ty::Named(name, args)
        }
        None => Ty::Unknown,
    }
}

fn parse_list(text: &[u8], at: &mut usize, close: u8, depth: u32) -> Vec<Ty> {
    let mut out = Vec::new();
    if text.get(*at) == Some(&close) {
        *at += 1;
        return out;
    }
    loop {
        out.push(parse_at(text, at, depth + 1));
        match text.get(*at) {
            Some(b',') => *at += 1,
            Some(&b) if b == close => {
                *at += 1;
                return out;
            }
            _ => {
                *at = text.len() + 1;
                return out;
            }
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Named(name, args) => {
                f.write_str(name)?;
                if !args.is_empty() {
                    f.write_char('<')?;
                    for (i, arg) in args.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{arg}")?;
                    }
                    f.write_char('>')?;
                }
                Ok(())
            }
            Ty::Tuple(elems) => {
                f.write_char('(')?;
                for (i, elem) in elems.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{elem}")?;
                }
                f.write_char(')')
            }
            Ty::Slice(elem) => write!(f, "[{elem}]"),
            Ty::Unknown => f.write_char('_'),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(text: &str) -> Option<String> {
        encode(&syn::parse_str(text).unwrap(), Some("Me")).map(String::from)
    }

    #[test]
    fn encoding_keeps_containers_and_drops_pointers() {
        assert_eq!(enc("Arc<Mutex<PgOrders>>").as_deref(), Some("PgOrders"));
        assert_eq!(
            enc("Result<Option<Vec<db::Pg>>, E>").as_deref(),
            Some("Result<Option<Vec<db::Pg>>,E>")
        );
        assert_eq!(enc("&[Pg; 2]").as_deref(), Some("[Pg]"));
        assert_eq!(enc("(Pg, Box<dyn T>)").as_deref(), Some("(Pg,_)"));
        assert_eq!(enc("&Self::Store").as_deref(), Some("Me::Store"));
        assert_eq!(enc("<B as Backend>::Store").as_deref(), Some("B::Store"));
        assert_eq!(enc("Box<dyn OrderStore>"), None);
        assert_eq!(enc("impl OrderStore"), None);
    }

    #[test]
    fn text_reads_back() {
        for text in [
            "Result<Option<Vec<db::Pg>>,E>",
            "(Pg,_)",
            "[Pg]",
            "A::B",
            "()",
        ] {
            let ty = Ty::parse(text);
            assert_ne!(ty, Ty::Unknown, "{text}");
        }
        assert_eq!(
            Ty::parse("Vec<Pg>"),
            Ty::Named("Vec".into(), vec![Ty::Named("Pg".into(), vec![])])
        );
        assert_eq!(Ty::parse("Vec<Pg"), Ty::Unknown);
        assert_eq!(Ty::parse("_under"), Ty::Named("_under".into(), vec![]));
        assert_eq!(Ty::parse("(Pg,_)").to_string(), "(Pg, _)");
    }
}

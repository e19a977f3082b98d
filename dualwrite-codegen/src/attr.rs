//! The options of `#[dual_write(...)]`, on the trait and on its methods.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser as _;
use syn::spanned::Spanned as _;
use syn::{Attribute, Expr, Ident, Member, Path};

use crate::ctxt::Ctxt;

/// The name of the macro and of its helper attribute.
pub const ATTR: &str = "dual_write";

/// One part of a key: `arg` or `arg.field.field`.
#[derive(Debug, Clone)]
pub struct KeyPart {
    /// The argument the part is taken from.
    pub arg: Ident,
    /// Field accesses applied to the argument, in order.
    pub fields: Vec<Member>,
    /// The expression as written, for spans and display.
    pub expr: Expr,
}

impl KeyPart {
    fn parse(expr: &Expr, option: &str) -> syn::Result<Self> {
        let mut fields = Vec::new();
        let mut cur = expr;
        loop {
            match cur {
                Expr::Field(field) => {
                    fields.push(field.member.clone());
                    cur = &field.base;
                }
                Expr::Paren(paren) => cur = &paren.expr,
                Expr::Path(path) if path.qself.is_none() => {
                    let Some(arg) = path.path.get_ident() else {
                        break;
                    };
                    fields.reverse();
                    return Ok(KeyPart {
                        arg: arg.clone(),
                        fields,
                        expr: expr.clone(),
                    });
                }
                _ => break,
            }
        }
        Err(syn::Error::new_spanned(
            expr,
            format!(
                "`{option}` in #[dual_write] takes an argument name, a field path or a tuple of them, such as `{option} = id`, `{option} = user.id` or `{option} = (tenant, id)`"
            ),
        ))
    }

    /// `user.id` as text.
    pub fn display(&self) -> String {
        let mut s = self.arg.to_string();
        for field in &self.fields {
            s.push('.');
            match field {
                Member::Named(ident) => s.push_str(&ident.to_string()),
                Member::Unnamed(index) => s.push_str(&index.index.to_string()),
            }
        }
        s
    }
}

/// A key named by `key = arg`, `key = arg.field.field`, or a composite of
/// 2 to 4 such parts, `key = (tenant, user.id)` (also `tenant = ..`).
#[derive(Debug, Clone)]
pub struct KeyPath {
    /// The parts, in order; one for a plain key.
    pub parts: Vec<KeyPart>,
    /// The expression as written, for spans and display.
    pub expr: Expr,
}

impl KeyPath {
    fn parse(expr: Expr, option: &str) -> syn::Result<Self> {
        let parts = match &expr {
            Expr::Tuple(tuple) => {
                if !(2..=4).contains(&tuple.elems.len()) {
                    return Err(syn::Error::new_spanned(
                        &expr,
                        format!(
                            "a composite `{option}` in #[dual_write] has 2 to 4 parts, such as `{option} = (tenant, id)`"
                        ),
                    ));
                }
                tuple
                    .elems
                    .iter()
                    .map(|part| KeyPart::parse(part, option))
                    .collect::<syn::Result<Vec<_>>>()?
            }
            single => vec![KeyPart::parse(single, option)?],
        };
        Ok(KeyPath { parts, expr })
    }

    /// `user.id` or `(tenant, user.id)` as text.
    pub fn display(&self) -> String {
        match self.parts.as_slice() {
            [single] => single.display(),
            parts => format!(
                "({})",
                parts
                    .iter()
                    .map(KeyPart::display)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Options given to the macro itself: `#[dual_write(adapter = X, command = Y, serde, key = id)]`.
#[derive(Debug, Default, Clone)]
pub struct TraitArgs {
    /// `adapter = Name`: the adapter struct's name.
    pub adapter: Option<Ident>,
    /// `command = Name`: the write-command enum's name.
    pub command: Option<Ident>,
    /// `serde`: derive serde's traits on the command enum.
    pub serde: bool,
    /// `key = arg`: the default key of every method with an argument of that name.
    pub key: Option<KeyPath>,
    /// `tenant = arg`: the default tenant (what phase overrides apply to) of
    /// every method with the arguments it names.
    pub tenant: Option<KeyPath>,
    /// `crate = path`: where the runtime is, when it is re-exported elsewhere.
    pub krate: Option<Path>,
}

/// Parses the macro's arguments, recording every problem in `cx`.
pub fn parse_trait_args(cx: &mut Ctxt, args: TokenStream) -> TraitArgs {
    let mut out = TraitArgs::default();
    let parser = syn::meta::parser(|meta| {
        let path = &meta.path;
        if path.is_ident("adapter") {
            let ident: Ident = meta.value()?.parse()?;
            if out.adapter.replace(ident).is_some() {
                return Err(meta.error("duplicate `adapter` in #[dual_write]; keep one"));
            }
        } else if path.is_ident("command") {
            let ident: Ident = meta.value()?.parse()?;
            if out.command.replace(ident).is_some() {
                return Err(meta.error("duplicate `command` in #[dual_write]; keep one"));
            }
        } else if path.is_ident("serde") {
            if out.serde {
                return Err(meta.error("duplicate `serde` in #[dual_write]; keep one"));
            }
            out.serde = true;
        } else if path.is_ident("key") {
            let key = KeyPath::parse(meta.value()?.parse()?, "key")?;
            if out.key.replace(key).is_some() {
                return Err(meta.error("duplicate `key` in #[dual_write]; keep one"));
            }
        } else if path.is_ident("tenant") {
            let tenant = KeyPath::parse(meta.value()?.parse()?, "tenant")?;
            if out.tenant.replace(tenant).is_some() {
                return Err(meta.error("duplicate `tenant` in #[dual_write]; keep one"));
            }
        } else if path.is_ident("crate") {
            let krate: Path = meta.value()?.parse()?;
            if out.krate.replace(krate).is_some() {
                return Err(meta.error("duplicate `crate` in #[dual_write]; keep one"));
            }
        } else if let Some(name) = METHOD_OPTIONS.iter().find(|name| path.is_ident(name)) {
            return Err(meta.error(format_args!(
                "`{name}` is an option of a method, not of the trait: write #[dual_write({name})] above the method it applies to"
            )));
        } else {
            return Err(meta.error(format_args!(
                "unknown #[dual_write] option `{}`; expected `adapter = Name`, `command = Name`, `serde`, `key = arg`, `tenant = arg` or `crate = path`",
                path_text(path)
            )));
        }
        Ok(())
    });
    if let Err(err) = parser.parse2(args) {
        cx.syn_error(err);
    }
    out
}

const METHOD_OPTIONS: &[&str] = &["write", "read", "passthrough", "compare", "no_compare"];

/// What an explicit attribute says a method is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExplicitKind {
    /// `#[dual_write(write)]`
    Write,
    /// `#[dual_write(read)]`
    Read,
    /// `#[dual_write(passthrough)]`
    Passthrough,
}

impl ExplicitKind {
    fn name(self) -> &'static str {
        match self {
            ExplicitKind::Write => "write",
            ExplicitKind::Read => "read",
            ExplicitKind::Passthrough => "passthrough",
        }
    }
}

/// The `#[dual_write(...)]` options on one method.
#[derive(Debug, Default, Clone)]
pub struct MethodAttrs {
    /// `write`, `read` or `passthrough`, with the span of the word.
    pub kind: Option<(ExplicitKind, Span)>,
    /// `key = arg.field`.
    pub key: Option<KeyPath>,
    /// `tenant = arg.field`.
    pub tenant: Option<KeyPath>,
    /// `compare = path::to::fn`.
    pub compare: Option<Path>,
    /// `no_compare`, with its span.
    pub no_compare: Option<Span>,
    /// Whether an attribute failed to parse. Options after the error are
    /// lost, so checks that depend on them are skipped rather than reported
    /// as follow-on errors.
    pub invalid: bool,
}

/// Whether an attribute on a method or argument of the trait is our
/// helper attribute, `#[dual_write(..)]`: the one matcher of the macro and
/// the lint (the macro has been expanded by then, so only the bare name
/// can remain).
pub fn is_dual_write_attr(attr: &Attribute) -> bool {
    attr.path().is_ident(ATTR)
}

/// Whether an attribute on a trait invokes the macro: `#[dual_write]` or
/// a path ending in it (`#[dualwrite_runtime::dual_write]`).
pub fn is_macro_attr(attr: &Attribute) -> bool {
    attr.path().segments.last().is_some_and(|s| s.ident == ATTR)
}

/// Parses the `#[dual_write(...)]` attributes of a method.
pub fn parse_method_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> MethodAttrs {
    let mut out = MethodAttrs::default();
    for attr in attrs.iter().filter(|attr| is_dual_write_attr(attr)) {
        let result = attr.parse_nested_meta(|meta| {
            let path = &meta.path;
            let kind = if path.is_ident("write") {
                Some(ExplicitKind::Write)
            } else if path.is_ident("read") {
                Some(ExplicitKind::Read)
            } else if path.is_ident("passthrough") {
                Some(ExplicitKind::Passthrough)
            } else {
                None
            };
            if let Some(kind) = kind {
                if let Some((previous, _)) = out.kind {
                    return Err(meta.error(if previous == kind {
                        format!("duplicate `{}` in #[dual_write]; keep one", kind.name())
                    } else {
                        format!(
                            "#[dual_write] routes a method either as `{}` or as `{}`, not both: keep one of them",
                            previous.name(),
                            kind.name()
                        )
                    }));
                }
                out.kind = Some((kind, path.span()));
            } else if path.is_ident("key") {
                let key = KeyPath::parse(meta.value()?.parse()?, "key")?;
                if out.key.replace(key).is_some() {
                    return Err(meta.error("duplicate `key` in #[dual_write]; keep one"));
                }
            } else if path.is_ident("tenant") {
                let tenant = KeyPath::parse(meta.value()?.parse()?, "tenant")?;
                if out.tenant.replace(tenant).is_some() {
                    return Err(meta.error("duplicate `tenant` in #[dual_write]; keep one"));
                }
            } else if path.is_ident("compare") {
                let compare: Path = meta.value()?.parse()?;
                if out.compare.replace(compare).is_some() {
                    return Err(meta.error("duplicate `compare` in #[dual_write]; keep one"));
                }
            } else if path.is_ident("no_compare") {
                if out.no_compare.replace(path.span()).is_some() {
                    return Err(meta.error("duplicate `no_compare` in #[dual_write]; keep one"));
                }
            } else if ["adapter", "command", "serde", "crate"]
                .iter()
                .any(|name| path.is_ident(name))
            {
                return Err(meta.error(format_args!(
                    "`{}` is an option of the trait, not of a method: move it into the #[dual_write(...)] above the trait",
                    path_text(path)
                )));
            } else {
                return Err(meta.error(format_args!(
                    "unknown #[dual_write] option `{}`; expected `write`, `read`, `passthrough`, `key = arg`, `tenant = arg`, `compare = path` or `no_compare`",
                    path_text(path)
                )));
            }
            Ok(())
        });
        if let Err(err) = result {
            out.invalid = true;
            cx.syn_error(err);
        }
    }
    out
}

/// Removes our helper attributes, keeping every other attribute (docs, cfg).
pub fn strip(attrs: &mut Vec<Attribute>) {
    attrs.retain(|attr| !is_dual_write_attr(attr));
}

fn path_text(path: &Path) -> String {
    path.segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

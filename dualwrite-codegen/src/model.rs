//! The model of a `#[dual_write]` trait: which methods write, which read,
//! their keys and comparators. Built once, used by the macro's expansion and
//! by the lint.

use proc_macro2::TokenStream;
use quote::format_ident;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{
    Attribute, FnArg, GenericParam, Ident, ItemTrait, Pat, Path, ReceiverKind, ReturnType,
    Signature, TraitItem, TraitItemFn, Type, TypeParamBound, Visibility,
};

use crate::attr::{self, ExplicitKind, KeyPath, TraitArgs};
use crate::classify::{NameClass, classify_name};
use crate::ctxt::Ctxt;

/// What the adapter does with a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// Written to the primary store, then handed to the secondary.
    Write,
    /// Read from the phase's authoritative store; compared in the shadow phase.
    Read,
    /// Forwarded to the phase's authoritative store only.
    Passthrough,
    /// A default method without an attribute: the adapter keeps the default
    /// body, which reaches the stores through the adapter's own methods.
    Inherited,
}

impl MethodKind {
    /// `write`, `read`, `passthrough` or `inherited`.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Write => "write",
            MethodKind::Read => "read",
            MethodKind::Passthrough => "passthrough",
            MethodKind::Inherited => "inherited",
        }
    }
}

/// Why a method got its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindSource {
    /// `#[dual_write(write)]` and friends.
    Attribute,
    /// A conventional verb in its name.
    Name,
    /// A `&mut self` receiver.
    MutReceiver,
    /// A default body without an attribute.
    DefaultBody,
}

/// How a method's result is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    /// A plain `fn`.
    Sync,
    /// A native `async fn`.
    Async,
    /// `fn ... -> impl Future<Output = T> [+ Send]`.
    ImplFuture {
        /// Whether the future is declared `Send`.
        send: bool,
    },
    /// An `async fn` in a trait that `#[async_trait]` rewrites.
    AsyncTrait,
}

impl Flavor {
    /// Whether calls must be awaited.
    pub fn is_async(&self) -> bool {
        !matches!(self, Flavor::Sync)
    }
}

/// How shadow reads compare the two answers.
#[derive(Debug, Clone)]
pub enum Compare {
    /// `PartialEq` on the success values.
    Eq,
    /// `compare = path`: `fn(&T, &T) -> bool`.
    Custom(Path),
    /// `no_compare`: never read the other store.
    Skip,
}

/// How an argument is passed.
#[derive(Debug, Clone)]
pub enum ArgMode {
    /// By value: cloned for the second store.
    Value,
    /// `&T`: borrowed by both stores; owned (`ToOwned`) in the command enum.
    Ref {
        /// `T`.
        elem: Type,
    },
    /// `&mut T`.
    RefMut {
        /// `T`.
        elem: Type,
    },
}

/// One argument of a method (the receiver excluded).
#[derive(Debug, Clone)]
pub struct Arg {
    /// The name the adapter uses: the user's ident, or `__dw_argN` for patterns.
    pub ident: Ident,
    /// The user's name, when the pattern was a plain ident.
    pub user_ident: Option<Ident>,
    /// The declared type.
    pub ty: Type,
    /// By value or by reference.
    pub mode: ArgMode,
}

/// One method of the trait.
#[derive(Debug, Clone)]
pub struct Method {
    /// The method's name.
    pub ident: Ident,
    /// The signature, with argument patterns replaced by the idents in `args`.
    pub sig: Signature,
    /// Attributes kept on the generated items (`cfg`, `cfg_attr`, `allow`...).
    pub cfg_attrs: Vec<Attribute>,
    /// Write, read, passthrough or inherited.
    pub kind: MethodKind,
    /// Why it has that kind.
    pub kind_source: KindSource,
    /// `&mut self` rather than `&self`.
    pub mut_receiver: bool,
    /// Sync or one of the async forms.
    pub flavor: Flavor,
    /// The arguments after the receiver.
    pub args: Vec<Arg>,
    /// The routing key, if any: it orders writes (lane and stripe) and,
    /// without a tenant, picks the phase override.
    pub key: Option<KeyPath>,
    /// The tenant, if named apart from the key: it picks the phase
    /// override, while the key orders writes.
    pub tenant: Option<KeyPath>,
    /// How shadow reads compare.
    pub compare: Compare,
    /// The value the call produces (the future's output for async forms).
    pub output: Type,
    /// Whether the write can be carried by the command enum (no method type
    /// parameters, `impl Trait` or method lifetimes in its arguments).
    pub in_command: bool,
    /// Whether the read can be compared in the background: a `<Trait>Read`
    /// variant can own its arguments and its answer (as `in_command` for
    /// writes), and it takes `&self`.
    pub in_shadow: bool,
    /// The command enum's variant for this write (or the read enum's).
    pub variant: Ident,
    /// Whether the trait gives a default body.
    pub has_default: bool,
}

/// An associated type of the trait.
#[derive(Debug, Clone)]
pub struct AssocType {
    /// Its name.
    pub ident: Ident,
    /// Its bounds (`Clone + Hash`), given to the command enum's parameter.
    pub bounds: syn::punctuated::Punctuated<TypeParamBound, syn::Token![+]>,
    /// `cfg` and similar attributes.
    pub cfg_attrs: Vec<Attribute>,
}

/// An associated constant of the trait.
#[derive(Debug, Clone)]
pub struct AssocConst {
    /// Its name.
    pub ident: Ident,
    /// Its type.
    pub ty: Type,
    /// `cfg` and similar attributes.
    pub cfg_attrs: Vec<Attribute>,
}

/// A parsed and validated `#[dual_write]` trait.
#[derive(Debug, Clone)]
pub struct TraitModel {
    /// The trait as it is emitted: unchanged but for our helper attributes.
    pub item: ItemTrait,
    /// The trait's name.
    pub ident: Ident,
    /// The trait's visibility, given to the generated items.
    pub vis: Visibility,
    /// The adapter struct's name (`<Trait>DualWrite` by default).
    pub adapter: Ident,
    /// The command enum's name (`<Trait>Write` by default).
    pub command: Ident,
    /// The read enum's name (`<Trait>Read`), for background shadow reads.
    pub reads: Ident,
    /// Derive serde's traits on the command enum.
    pub serde: bool,
    /// The path of the runtime crate.
    pub krate: Path,
    /// The trait-level default key.
    pub default_key: Option<KeyPath>,
    /// The trait-level `tenant = ..`, if any.
    pub default_tenant: Option<KeyPath>,
    /// The `#[async_trait]` attribute, when the trait carries one.
    pub async_trait: Option<Attribute>,
    /// Whether `#[async_trait]` futures are `Send` (not `?Send`).
    pub async_trait_send: bool,
    /// Associated types.
    pub assoc_types: Vec<AssocType>,
    /// Associated constants.
    pub assoc_consts: Vec<AssocConst>,
    /// Every method, in declaration order.
    pub methods: Vec<Method>,
}

impl TraitModel {
    /// Parses and validates a trait; returns every error found.
    pub fn parse(args: TokenStream, item: &ItemTrait) -> Result<TraitModel, Vec<syn::Error>> {
        let mut cx = Ctxt::new();
        let trait_args = attr::parse_trait_args(&mut cx, args);
        let model = build(&mut cx, trait_args, item);
        if cx.is_empty() {
            Ok(model)
        } else {
            Err(cx.into_errors())
        }
    }

    /// The methods the adapter routes (every kind but `Inherited`).
    pub fn routed(&self) -> impl Iterator<Item = &Method> {
        self.methods
            .iter()
            .filter(|m| m.kind != MethodKind::Inherited)
    }

    /// The reads carried by the read enum (background shadow comparison).
    /// Only for traits without generics or associated types.
    pub fn shadow_reads(&self) -> impl Iterator<Item = &Method> {
        let simple = self.item.generics.params.is_empty() && self.assoc_types.is_empty();
        self.methods.iter().filter(move |m| simple && m.in_shadow)
    }

    /// The writes carried by the command enum.
    pub fn commands(&self) -> impl Iterator<Item = &Method> {
        self.methods
            .iter()
            .filter(|m| m.kind == MethodKind::Write && m.in_command)
    }

    /// Whether a routed method takes `&mut self`: the adapter then owns its
    /// stores and secondary writes stay on the caller's path.
    pub fn needs_owned_stores(&self) -> bool {
        self.routed().any(|m| m.mut_receiver)
    }
}

/// The trait with every `#[dual_write(...)]` helper attribute removed.
pub fn strip_helper_attrs(item: &ItemTrait) -> ItemTrait {
    let mut item = item.clone();
    for trait_item in &mut item.items {
        match trait_item {
            TraitItem::Fn(f) => {
                attr::strip(&mut f.attrs);
                for input in &mut f.sig.inputs {
                    match input {
                        FnArg::Receiver(r) => attr::strip(&mut r.attrs),
                        FnArg::Typed(t) => attr::strip(&mut t.attrs),
                    }
                }
            }
            TraitItem::Type(t) => attr::strip(&mut t.attrs),
            TraitItem::Const(c) => attr::strip(&mut c.attrs),
            _ => {}
        }
    }
    item
}

fn build(cx: &mut Ctxt, args: TraitArgs, item: &ItemTrait) -> TraitModel {
    let ident = item.ident.clone();
    let adapter = args
        .adapter
        .clone()
        .unwrap_or_else(|| format_ident!("{}DualWrite", ident));
    let command = args
        .command
        .clone()
        .unwrap_or_else(|| format_ident!("{}Write", ident));
    if adapter == command {
        // Point at a name the user wrote: a default name has no span of its own.
        let written = args.command.as_ref().or(args.adapter.as_ref());
        cx.error_spanned_by(
            written.unwrap_or(&command),
            format_args!(
                "#[dual_write] would name both the adapter struct and the command enum `{adapter}`; give them different names with `adapter = ..` and `command = ..`"
            ),
        );
    }
    let krate = args
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::dualwrite_runtime));

    let async_trait = item
        .attrs
        .iter()
        .find(|a| {
            a.path()
                .segments
                .last()
                .is_some_and(|s| s.ident == "async_trait")
        })
        .cloned();
    let async_trait_send = async_trait.as_ref().is_none_or(|a| {
        !a.meta
            .require_list()
            .is_ok_and(|list| list.tokens.to_string().replace(' ', "") == "?Send")
    });
    if item.modifiers != Default::default() {
        cx.error_spanned_by(&item.ident, "#[dual_write] supports plain traits only");
    }
    for param in item.generics.type_params() {
        if param.ident == "Old" || param.ident == "New" {
            cx.error_spanned_by(
                &param.ident,
                format_args!(
                    "#[dual_write] names the adapter's store parameters `Old` and `New`; rename the trait parameter `{}`",
                    param.ident
                ),
            );
        }
    }

    // `#[async_trait]` above `#[dual_write]` has rewritten every `async fn`:
    // say so once, on the first rewritten method, not once per method.
    if let Some(first) = item.items.iter().find_map(|trait_item| match trait_item {
        TraitItem::Fn(f) if rewritten_by_async_trait(&f.sig) => Some(&f.sig.ident),
        _ => None,
    }) {
        cx.error_spanned_by(
            first,
            "#[async_trait] ran before #[dual_write] and rewrote the `async fn`s; put #[dual_write] above #[async_trait]",
        );
    }

    let mut assoc_types = Vec::new();
    let mut assoc_consts = Vec::new();
    let mut methods = Vec::new();
    for trait_item in &item.items {
        match trait_item {
            TraitItem::Fn(f) => {
                if let Some(method) = build_method(cx, &args, item, async_trait.is_some(), f) {
                    methods.push(method);
                }
            }
            TraitItem::Type(t) => {
                attr::reject_misplaced(cx, &t.attrs, "an associated type");
                if !t.generics.params.is_empty() || t.generics.where_clause.is_some() {
                    cx.error_spanned_by(
                        &t.ident,
                        "#[dual_write] does not support generic associated types; use a plain associated type or a trait parameter",
                    );
                }
                assoc_types.push(AssocType {
                    ident: t.ident.clone(),
                    bounds: t.bounds.clone(),
                    cfg_attrs: kept_attrs(&t.attrs),
                });
            }
            TraitItem::Const(c) => {
                attr::reject_misplaced(cx, &c.attrs, "an associated constant");
                if !c.generics.params.is_empty() {
                    cx.error_spanned_by(&c.ident, "#[dual_write] does not support generic associated constants");
                }
                assoc_consts.push(AssocConst {
                    ident: c.ident.clone(),
                    ty: c.ty.clone(),
                    cfg_attrs: kept_attrs(&c.attrs),
                });
            }
            TraitItem::Macro(m) => cx.error_spanned_by(
                &m.mac,
                "#[dual_write] cannot see inside a macro invocation in a trait; write the methods out",
            ),
            other => cx.error_spanned_by(other, "#[dual_write] does not understand this trait item"),
        }
    }

    for (option, key) in [("key", &args.key), ("tenant", &args.tenant)] {
        let Some(key) = key else { continue };
        let used = methods.iter().any(|m| takes_all(&m.args, key));
        if !used {
            let names = key
                .parts
                .iter()
                .map(|part| format!("`{}`", part.arg))
                .collect::<Vec<_>>()
                .join(", ");
            cx.error_spanned_by(
                &key.expr,
                format_args!(
                    "trait-level #[dual_write({option} = {})] matches no method: none takes the argument(s) {names}; name arguments that the methods take, or remove `{option}`",
                    key.display(),
                ),
            );
        }
    }

    TraitModel {
        item: strip_helper_attrs(item),
        ident,
        vis: item.vis.clone(),
        adapter,
        reads: format_ident!("{}Read", item.ident),
        command,
        serde: args.serde,
        krate,
        default_key: args.key,
        default_tenant: args.tenant,
        async_trait,
        async_trait_send,
        assoc_types,
        assoc_consts,
        methods,
    }
}

/// Whether `#[async_trait]` already rewrote this method (it adds an
/// `'async_trait` lifetime to every `async fn` it boxes).
fn rewritten_by_async_trait(sig: &Signature) -> bool {
    sig.generics
        .lifetimes()
        .any(|lt| lt.lifetime.ident == "async_trait")
}

/// Attributes that must follow the method onto generated items.
fn kept_attrs(attrs: &[Attribute]) -> Vec<Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr"))
        .cloned()
        .collect()
}

fn build_method(
    cx: &mut Ctxt,
    args: &TraitArgs,
    item: &ItemTrait,
    has_async_trait: bool,
    f: &TraitItemFn,
) -> Option<Method> {
    let attrs = attr::parse_method_attrs(cx, &f.attrs);
    let sig = &f.sig;
    let ident = sig.ident.clone();
    let has_default = f.default.is_some();

    for input in &sig.inputs {
        let attrs = match input {
            FnArg::Receiver(r) => &r.attrs,
            FnArg::Typed(t) => &t.attrs,
        };
        attr::reject_misplaced(cx, attrs, "an argument");
    }

    if rewritten_by_async_trait(sig) {
        // Reported once for the whole trait by `build`.
        return None;
    }

    // Receiver.
    let receiver = sig.receiver();
    let mut_receiver = match receiver.map(|r| &r.kind) {
        Some(ReceiverKind::Reference(_, _, mutability)) => mutability.is_some(),
        Some(_) => {
            if !has_default || attrs.kind.is_some() {
                cx.error_spanned_by(
                    receiver,
                    format_args!(
                        "#[dual_write] cannot route `{ident}` between two stores through this receiver; take `&self` or `&mut self`{}",
                        if attrs.kind.is_some() { "" } else { ", or give the method a default body" }
                    ),
                );
                return None;
            }
            false
        }
        None => {
            if !has_default || attrs.kind.is_some() {
                cx.error_spanned_by(
                    &ident,
                    format_args!(
                        "#[dual_write] cannot route `{ident}`: it has no `self` receiver; take `&self` or `&mut self`{}, or move it out of the trait",
                        if attrs.kind.is_some() { "" } else { ", give it a default body" }
                    ),
                );
                return None;
            }
            false
        }
    };

    // Kind.
    let name_class = classify_name(&ident.to_string());
    let (kind, kind_source) = match (attrs.kind, has_default) {
        (Some((ExplicitKind::Write, _)), _) => (MethodKind::Write, KindSource::Attribute),
        (Some((ExplicitKind::Read, _)), _) => (MethodKind::Read, KindSource::Attribute),
        (Some((ExplicitKind::Passthrough, _)), _) => {
            (MethodKind::Passthrough, KindSource::Attribute)
        }
        (None, true) => (MethodKind::Inherited, KindSource::DefaultBody),
        (None, false) => match name_class {
            NameClass::Write => (MethodKind::Write, KindSource::Name),
            NameClass::Read => (MethodKind::Read, KindSource::Name),
            NameClass::Unknown if mut_receiver => (MethodKind::Write, KindSource::MutReceiver),
            NameClass::Unknown if attrs.invalid => return None,
            NameClass::Unknown => {
                cx.error_spanned_by(
                    &ident,
                    format_args!(
                        "cannot tell whether `{ident}` reads or writes; mark it #[dual_write(write)], #[dual_write(read)] or #[dual_write(passthrough)]"
                    ),
                );
                return None;
            }
        },
    };

    if kind == MethodKind::Inherited {
        // Point at the first option that has no effect.
        let message = format!(
            "`{ident}` keeps its default body, so `key`, `compare` and `no_compare` have no effect; add #[dual_write(write)] or #[dual_write(read)] to route it, or remove the option"
        );
        if let Some(key) = attrs.key.as_ref().or(attrs.tenant.as_ref()) {
            cx.error_spanned_by(&key.expr, message);
        } else if let Some(path) = &attrs.compare {
            cx.error_spanned_by(path, message);
        } else if let Some(span) = attrs.no_compare {
            cx.syn_error(syn::Error::new(span, message));
        }
    }

    // Qualifiers the adapter cannot reproduce.
    if kind != MethodKind::Inherited {
        if sig.constness.is_some() {
            cx.error_spanned_by(sig.constness, "#[dual_write] cannot route a `const fn`");
        }
        if !matches!(sig.safety, syn::Safety::Default) {
            cx.error_spanned_by(
                &ident,
                "#[dual_write] cannot route an `unsafe fn`; wrap the unsafe call in a safe method",
            );
        }
        if sig.abi.is_some() {
            cx.error_spanned_by(&sig.abi, "#[dual_write] cannot route an `extern` method");
        }
    }

    // Flavor and output.
    let (flavor, output) = if sig.asyncness.is_some() {
        let flavor = if has_async_trait {
            Flavor::AsyncTrait
        } else {
            Flavor::Async
        };
        (flavor, return_type(&sig.output))
    } else if let Some((send, out)) = impl_future_output(&sig.output) {
        match out {
            Some(out) => (Flavor::ImplFuture { send }, out),
            None => {
                cx.error_spanned_by(
                    &sig.output,
                    "the returned future must name its output: `impl Future<Output = T>`",
                );
                return None;
            }
        }
    } else {
        (Flavor::Sync, return_type(&sig.output))
    };

    // Arguments.
    let mut renamed = sig.clone();
    let mut method_args = Vec::new();
    for (index, input) in renamed.inputs.iter_mut().enumerate() {
        let FnArg::Typed(pat_type) = input else {
            continue;
        };
        let user_ident = match &*pat_type.pat {
            Pat::Ident(p) if p.subpat.is_none() && p.by_ref.is_none() => Some(p.ident.clone()),
            _ => None,
        };
        let ident = user_ident
            .clone()
            .unwrap_or_else(|| format_ident!("__dw_arg{}", index));
        *pat_type.pat = Pat::Ident(syn::PatIdent {
            attrs: Vec::new(),
            by_ref: None,
            mutability: None,
            ident: ident.clone(),
            subpat: None,
        });
        pat_type.attrs.clear();
        let ty = (*pat_type.ty).clone();
        let mode = match &ty {
            Type::Reference(r) if r.mutability.is_some() => ArgMode::RefMut {
                elem: (*r.elem).clone(),
            },
            Type::Reference(r) => ArgMode::Ref {
                elem: (*r.elem).clone(),
            },
            _ => ArgMode::Value,
        };
        method_args.push(Arg {
            ident,
            user_ident,
            ty,
            mode,
        });
    }
    for input in renamed.inputs.iter_mut() {
        if let FnArg::Receiver(r) = input {
            r.attrs.clear();
        }
    }

    // Key and tenant.
    let key = method_key(
        cx,
        "key",
        &ident,
        &method_args,
        attrs.key.as_ref(),
        args.key.as_ref(),
    );
    let tenant = method_key(
        cx,
        "tenant",
        &ident,
        &method_args,
        attrs.tenant.as_ref(),
        args.tenant.as_ref(),
    );

    // Comparison.
    let compare = match (&attrs.compare, attrs.no_compare) {
        (Some(path), Some(span)) => {
            cx.syn_error(syn::Error::new(
                span,
                "#[dual_write] `compare` and `no_compare` contradict each other: keep `compare = ..` to compare with a function, or `no_compare` to skip the comparison",
            ));
            Compare::Custom(path.clone())
        }
        (Some(path), None) => Compare::Custom(path.clone()),
        (None, Some(_)) => Compare::Skip,
        (None, None) => Compare::Eq,
    };
    if kind != MethodKind::Read && kind != MethodKind::Inherited {
        let why = match kind_source {
            KindSource::Name => " (by its name)",
            KindSource::MutReceiver => " (it takes `&mut self`)",
            KindSource::Attribute | KindSource::DefaultBody => "",
        };
        let message = |option: &str| {
            format!(
                "`{option}` applies to read methods only, and #[dual_write] routes `{ident}` as a {}{why}; remove `{option}`, or mark the method #[dual_write(read)] if it only reads",
                kind.as_str()
            )
        };
        if let Some(path) = &attrs.compare {
            cx.error_spanned_by(path, message("compare"));
        }
        if let Some(span) = attrs.no_compare {
            cx.syn_error(syn::Error::new(span, message("no_compare")));
        }
    }

    // A reference with a named lifetime (`&'a str`) must outlive that
    // lifetime, which a borrow of the command's owned copy cannot.
    let named_ref = |a: &Arg| match &a.ty {
        Type::Reference(r) => r.lifetime.as_ref().is_some_and(|lt| lt.ident != "_"),
        _ => false,
    };
    let args_storable = method_args
        .iter()
        .all(|a| !named_ref(a) && storable(item, sig, arg_owned_type(a)));
    let in_command = kind == MethodKind::Write && args_storable;
    let in_shadow = kind == MethodKind::Read
        && args_storable
        && !mut_receiver
        && !matches!(compare, Compare::Skip)
        && storable(item, sig, &output);

    Some(Method {
        variant: format_ident!("{}", camel_case(&ident.to_string()), span = ident.span()),
        ident,
        sig: renamed,
        cfg_attrs: kept_attrs(&f.attrs),
        kind,
        kind_source,
        mut_receiver,
        flavor,
        args: method_args,
        key,
        tenant,
        compare,
        output,
        in_command,
        in_shadow,
        has_default,
    })
}

/// Whether `args` has every argument `key` is taken from.
fn takes_all(args: &[Arg], key: &KeyPath) -> bool {
    key.parts.iter().all(|part| {
        args.iter()
            .any(|a| a.user_ident.as_ref() == Some(&part.arg))
    })
}

/// A method's `key` or `tenant` (`option`): its own, checked against its
/// arguments, or the trait's default when the method takes every argument
/// the default names.
fn method_key(
    cx: &mut Ctxt,
    option: &str,
    ident: &Ident,
    args: &[Arg],
    own: Option<&KeyPath>,
    default: Option<&KeyPath>,
) -> Option<KeyPath> {
    let Some(key) = own else {
        return default.filter(|key| takes_all(args, key)).cloned();
    };
    let missing = key.parts.iter().find(|part| {
        !args
            .iter()
            .any(|a| a.user_ident.as_ref() == Some(&part.arg))
    });
    let Some(missing) = missing else {
        return Some(key.clone());
    };
    let names: Vec<String> = args
        .iter()
        .filter_map(|a| a.user_ident.as_ref().map(ToString::to_string))
        .collect();
    let hint = if names.is_empty() {
        format!("`{ident}` takes no named argument, so remove `{option}`")
    } else {
        format!(
            "name one of its arguments: {}",
            names
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let shown = if key.parts.len() == 1 {
        format!("#[dual_write({option} = {})]", key.display())
    } else {
        format!(
            "`{}` in #[dual_write({option} = {})]",
            missing.display(),
            key.display()
        )
    };
    cx.error_spanned_by(
        &missing.expr,
        format_args!("{shown} names no argument of `{ident}`; {hint}"),
    );
    None
}

fn arg_owned_type(arg: &Arg) -> &Type {
    match &arg.mode {
        ArgMode::Value => &arg.ty,
        ArgMode::Ref { elem } | ArgMode::RefMut { elem } => elem,
    }
}

fn return_type(output: &ReturnType) -> Type {
    match output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    }
}

/// `impl Future<Output = T> [+ Send]` -> (send, Some(T)); `None` when the
/// return type is not an `impl Future`.
fn impl_future_output(output: &ReturnType) -> Option<(bool, Option<Type>)> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::ImplTrait(imp) = &**ty else {
        return None;
    };
    let mut future = None;
    let mut send = false;
    for bound in &imp.bounds {
        let TypeParamBound::Trait(tb) = bound else {
            continue;
        };
        let Some(last) = tb.path.segments.last() else {
            continue;
        };
        if last.ident == "Send" {
            send = true;
        } else if last.ident == "Future" || last.ident == "IntoFuture" {
            let mut out = None;
            if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
                for arg in &args.args {
                    if let syn::GenericArgument::AssocType(assoc) = arg
                        && assoc.ident == "Output"
                    {
                        out = Some(assoc.ty.clone());
                    }
                }
            }
            future = Some(out);
        }
    }
    future.map(|out| (send, out))
}

/// Whether an owned argument type can live in the command enum: no method
/// generics, no `impl Trait`, no lifetimes but the trait's and `'static`, and
/// `Self` only as `Self::Assoc`.
fn storable(item: &ItemTrait, sig: &Signature, ty: &Type) -> bool {
    struct Check<'a> {
        trait_lifetimes: Vec<&'a Ident>,
        method_types: Vec<&'a Ident>,
        assoc_types: Vec<&'a Ident>,
        ok: bool,
    }
    impl<'ast> Visit<'ast> for Check<'_> {
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.ok = false;
        }
        fn visit_type_trait_object(&mut self, _: &'ast syn::TypeTraitObject) {
            self.ok = false;
        }
        fn visit_lifetime(&mut self, lt: &'ast syn::Lifetime) {
            if lt.ident != "static" && !self.trait_lifetimes.contains(&&lt.ident) {
                self.ok = false;
            }
        }
        fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
            if r.lifetime.is_none() {
                self.ok = false;
            }
            syn::visit::visit_type_reference(self, r);
        }
        fn visit_type_path(&mut self, p: &'ast syn::TypePath) {
            if p.qself.is_some() {
                // `<Self as Trait>::X` and other qualified paths: keep it simple.
                self.ok = false;
            }
            let segs = &p.path.segments;
            if let Some(first) = segs.first() {
                if first.ident == "Self"
                    && (segs.len() != 2 || !self.assoc_types.contains(&&segs[1].ident))
                {
                    self.ok = false;
                }
                if segs.len() == 1 && self.method_types.contains(&&first.ident) {
                    self.ok = false;
                }
            }
            syn::visit::visit_type_path(self, p);
        }
    }
    let mut check = Check {
        trait_lifetimes: item
            .generics
            .lifetimes()
            .map(|l| &l.lifetime.ident)
            .collect(),
        assoc_types: item
            .items
            .iter()
            .filter_map(|i| match i {
                TraitItem::Type(t) => Some(&t.ident),
                _ => None,
            })
            .collect(),
        method_types: sig
            .generics
            .params
            .iter()
            .filter_map(|p| match p {
                GenericParam::Type(t) => Some(&t.ident),
                GenericParam::Const(c) => Some(&c.ident),
                GenericParam::Lifetime(_) => None,
            })
            .collect(),
        ok: true,
    };
    check.visit_type(ty);
    check.ok
}

/// Rewrites `Self::Assoc` to `Assoc` in bounds.
pub fn replace_self_assoc_in_bound(bound: &TypeParamBound) -> TypeParamBound {
    let mut bound = bound.clone();
    SelfAssoc.visit_type_param_bound_mut(&mut bound);
    bound
}

struct SelfAssoc;

impl VisitMut for SelfAssoc {
    fn visit_type_path_mut(&mut self, p: &mut syn::TypePath) {
        if p.qself.is_none() && p.path.segments.len() == 2 && p.path.segments[0].ident == "Self" {
            let assoc = p.path.segments[1].ident.clone();
            *p = syn::parse_quote!(#assoc);
            return;
        }
        syn::visit_mut::visit_type_path_mut(self, p);
    }
}

/// Rewrites `Self::Assoc` to `Assoc` (a parameter of the command enum).
pub fn replace_self_assoc(ty: &Type) -> Type {
    let mut ty = ty.clone();
    SelfAssoc.visit_type_mut(&mut ty);
    ty
}

/// `find_by_email` -> `FindByEmail`.
pub fn camel_case(snake: &str) -> String {
    let snake = snake.strip_prefix("r#").unwrap_or(snake);
    let mut out = String::with_capacity(snake.len());
    let mut upper = true;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_of_method_names() {
        assert_eq!(camel_case("insert"), "Insert");
        assert_eq!(camel_case("find_by_email"), "FindByEmail");
        assert_eq!(camel_case("r#type"), "Type");
    }
}

//! The model of a `#[dual_write]` trait: which methods write, which read,
//! their keys and comparators. Built once, used by the macro's expansion and
//! by the lint.
//!
//! `ItemTrait` + [`TraitArgs`] -> [`TraitModel`]: `build` reads the syntax
//! and the options into the model, recording only options that do not parse;
//! `valid::check` then runs every rule on what was read, and
//! [`TraitModel::parse`] returns the model only when neither found an error.

use proc_macro2::TokenStream;
use quote::format_ident;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{
    Attribute, FnArg, GenericParam, Ident, ItemTrait, Pat, Path, ReceiverKind, ReturnType,
    Signature, TraitItem, TraitItemFn, Type, TypeParamBound, Visibility,
};

use crate::attr::{self, ExplicitKind, KeyPart, KeyPath, MethodAttrs, TraitArgs};
use crate::classify::{NameClass, classify_name};
use crate::ctxt::{Ctxt, Place};
use crate::valid;

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
    ///
    /// Errors come in the order of the trait (see [`Place`]): the trait's
    /// own, then each item's in declaration order (an option that does not
    /// parse first), then those about every method.
    pub fn parse(args: TokenStream, item: &ItemTrait) -> Result<TraitModel, Vec<syn::Error>> {
        let analysis = TraitModel::analyze(args, item);
        if analysis.errors.is_empty() {
            Ok(analysis.model)
        } else {
            Err(analysis.errors)
        }
    }

    /// Reads and checks a trait, returning the model together with every
    /// error found: for a trait the macro rejects, the model is partial
    /// (it has a [`Method`] for each `fn` whose kind could be told, as the
    /// macro classified it), which is what the lint guards.
    pub fn analyze(args: TokenStream, item: &ItemTrait) -> Analysis {
        let mut cx = Ctxt::new();
        // Options that do not parse are reported while reading them: the
        // model is built from what they say.
        let trait_args = attr::parse_trait_args(&mut cx, args);
        let built = build(&mut cx, trait_args, item);
        valid::check(&mut cx, item, &built);
        let errors = if cx.is_empty() {
            Vec::new()
        } else {
            cx.into_errors()
        };
        Analysis {
            model: built.model,
            errors,
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

/// What [`TraitModel::analyze`] found in a trait.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The model: complete when `errors` is empty, else partial (methods
    /// whose kind cannot be told are left out).
    pub model: TraitModel,
    /// Every error, in the order of the trait; empty when the macro
    /// accepts the trait.
    pub errors: Vec<syn::Error>,
}

/// A trait annotated with the macro, as the macro receives it.
#[derive(Debug, Clone)]
pub struct Annotated {
    /// The attribute's arguments.
    pub args: TokenStream,
    /// The trait without the macro's own attribute.
    pub item: ItemTrait,
}

/// The trait's `#[dual_write(..)]` (or `#[path::dual_write(..)]`) and the
/// trait as the macro receives it; `None` for a trait without it. The one
/// trait finder of the macro's users (the lint's `check`, `expand` and
/// `report`).
pub fn annotated(item: &ItemTrait) -> Option<Annotated> {
    let attr = item.attrs.iter().find(|a| attr::is_macro_attr(a))?;
    let args = match &attr.meta {
        syn::Meta::List(list) => list.tokens.clone(),
        _ => TokenStream::new(),
    };
    let mut bare = item.clone();
    bare.attrs.retain(|a| a != attr);
    Some(Annotated { args, item: bare })
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

/// What [`build`] returns: the model, and what the checks in
/// [`valid`](crate::valid) need beyond it to point at what the user wrote.
pub(crate) struct Built {
    /// The model, with a [`Method`] for every `fn` that could be modelled.
    pub(crate) model: TraitModel,
    /// The trait's options as written.
    pub(crate) args: TraitArgs,
    /// One entry per `fn` of the trait, in declaration order.
    pub(crate) fns: Vec<FnRead>,
}

/// What [`build`] read from one `fn` of the trait.
pub(crate) struct FnRead {
    /// Its `#[dual_write(...)]` options as written, with their spans.
    pub(crate) attrs: MethodAttrs,
    /// Its index in [`TraitModel::methods`], or why it has no [`Method`].
    pub(crate) built: Result<usize, Unbuilt>,
}

/// Why a `fn` has no [`Method`]: the model leaves it out, and
/// [`valid`](crate::valid) reports why (among the other rules of that method,
/// in their order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unbuilt {
    /// `#[async_trait]` rewrote it before `#[dual_write]` ran.
    RewrittenByAsyncTrait,
    /// It must be routed but takes neither `&self` nor `&mut self`.
    Receiver,
    /// Neither an option, nor its name, nor its receiver tells its kind.
    UnknownKind,
    /// It returns an `impl Future` without `Output = T`. The kind is kept
    /// for the rules that hold for any method of that kind.
    FutureOutput(MethodKind),
}

/// Builds the model of `item` from its syntax and its options.
///
/// The only errors recorded here are those of options that do not parse
/// (through [`attr::parse_method_attrs`]): the model cannot be built from an
/// option that cannot be read. Every rule about what was read runs afterwards,
/// in [`valid::check`](crate::valid::check).
pub(crate) fn build(cx: &mut Ctxt, args: TraitArgs, item: &ItemTrait) -> Built {
    let ident = item.ident.clone();
    let adapter = args
        .adapter
        .clone()
        .unwrap_or_else(|| format_ident!("{}DualWrite", ident));
    let command = args
        .command
        .clone()
        .unwrap_or_else(|| format_ident!("{}Write", ident));
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

    let mut assoc_types = Vec::new();
    let mut assoc_consts = Vec::new();
    let mut methods = Vec::new();
    let mut fns = Vec::new();
    for (index, trait_item) in item.items.iter().enumerate() {
        match trait_item {
            TraitItem::Fn(f) => {
                // Options that do not parse are reported here: the model is
                // built from the options, so it cannot wait for `valid`.
                cx.at(Place::Item(index));
                let attrs = attr::parse_method_attrs(cx, &f.attrs);
                let built =
                    build_method(&args, item, async_trait.is_some(), f, &attrs).map(|method| {
                        methods.push(method);
                        methods.len() - 1
                    });
                fns.push(FnRead { attrs, built });
            }
            TraitItem::Type(t) => assoc_types.push(AssocType {
                ident: t.ident.clone(),
                bounds: t.bounds.clone(),
                cfg_attrs: kept_attrs(&t.attrs),
            }),
            TraitItem::Const(c) => assoc_consts.push(AssocConst {
                ident: c.ident.clone(),
                ty: c.ty.clone(),
                cfg_attrs: kept_attrs(&c.attrs),
            }),
            _ => {}
        }
    }

    let model = TraitModel {
        item: strip_helper_attrs(item),
        ident,
        vis: item.vis.clone(),
        adapter,
        reads: format_ident!("{}Read", item.ident),
        command,
        serde: args.serde,
        krate,
        default_key: args.key.clone(),
        default_tenant: args.tenant.clone(),
        async_trait,
        async_trait_send,
        assoc_types,
        assoc_consts,
        methods,
    };
    Built { model, args, fns }
}

/// Whether `#[async_trait]` already rewrote this method (it adds an
/// `'async_trait` lifetime to every `async fn` it boxes).
pub(crate) fn rewritten_by_async_trait(sig: &Signature) -> bool {
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

/// A method's kind and why: its explicit option, else a default body, else
/// its name, else a `&mut self` receiver; `None` when nothing tells.
fn method_kind(
    attrs: &MethodAttrs,
    has_default: bool,
    name: &Ident,
    mut_receiver: bool,
) -> Option<(MethodKind, KindSource)> {
    Some(match (attrs.kind, has_default) {
        (Some((ExplicitKind::Write, _)), _) => (MethodKind::Write, KindSource::Attribute),
        (Some((ExplicitKind::Read, _)), _) => (MethodKind::Read, KindSource::Attribute),
        (Some((ExplicitKind::Passthrough, _)), _) => {
            (MethodKind::Passthrough, KindSource::Attribute)
        }
        (None, true) => (MethodKind::Inherited, KindSource::DefaultBody),
        (None, false) => match classify_name(&name.to_string()) {
            NameClass::Write => (MethodKind::Write, KindSource::Name),
            NameClass::Read => (MethodKind::Read, KindSource::Name),
            NameClass::Unknown if mut_receiver => (MethodKind::Write, KindSource::MutReceiver),
            NameClass::Unknown => return None,
        },
    })
}

fn build_method(
    args: &TraitArgs,
    item: &ItemTrait,
    has_async_trait: bool,
    f: &TraitItemFn,
    attrs: &MethodAttrs,
) -> Result<Method, Unbuilt> {
    let sig = &f.sig;
    let ident = sig.ident.clone();
    let has_default = f.default.is_some();

    if rewritten_by_async_trait(sig) {
        return Err(Unbuilt::RewrittenByAsyncTrait);
    }

    // Receiver. A method the adapter leaves alone (a default body without
    // an option) may take any receiver, or none.
    let mut_receiver = match sig.receiver().map(|r| &r.kind) {
        Some(ReceiverKind::Reference(_, _, mutability)) => mutability.is_some(),
        Some(_) | None if !has_default || attrs.kind.is_some() => {
            return Err(Unbuilt::Receiver);
        }
        Some(_) | None => false,
    };

    // Kind.
    let (kind, kind_source) =
        method_kind(attrs, has_default, &ident, mut_receiver).ok_or(Unbuilt::UnknownKind)?;

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
            None => return Err(Unbuilt::FutureOutput(kind)),
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

    // Key and tenant: the method's own when it names its arguments (else
    // `valid` reports it), or the trait's default when the method takes
    // every argument the default names.
    let method_key = |own: Option<&KeyPath>, default: Option<&KeyPath>| match own {
        Some(own) => missing_part(&method_args, own)
            .is_none()
            .then(|| own.clone()),
        None => default
            .filter(|default| takes_all(&method_args, default))
            .cloned(),
    };
    let key = method_key(attrs.key.as_ref(), args.key.as_ref());
    let tenant = method_key(attrs.tenant.as_ref(), args.tenant.as_ref());

    // Comparison. With both options (which `valid` reports), `compare` wins.
    let compare = match (&attrs.compare, attrs.no_compare) {
        (Some(path), _) => Compare::Custom(path.clone()),
        (None, Some(_)) => Compare::Skip,
        (None, None) => Compare::Eq,
    };

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

    Ok(Method {
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
pub(crate) fn takes_all(args: &[Arg], key: &KeyPath) -> bool {
    missing_part(args, key).is_none()
}

/// The first part of `key` taken from no argument in `args`.
pub(crate) fn missing_part<'k>(args: &[Arg], key: &'k KeyPath) -> Option<&'k KeyPart> {
    key.parts.iter().find(|part| {
        !args
            .iter()
            .any(|a| a.user_ident.as_ref() == Some(&part.arg))
    })
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

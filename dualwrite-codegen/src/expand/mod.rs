//! Expansion of a [`TraitModel`] into the trait, the adapter and the command
//! enum.
//!
//! For
//!
//! ```text
//! #[dual_write]
//! pub trait UserStore {
//!     fn insert(&self, user: &User) -> Result<(), Error>;
//!     fn get(&self, id: u64) -> Result<Option<User>, Error>;
//! }
//! ```
//!
//! the expansion is
//!
//! ```text
//! pub trait UserStore { /* unchanged */ }
//! pub enum UserStoreWrite { Insert { user: User } }        // + method(), key(), apply()
//! pub struct UserStoreDualWrite<Old, New> { .. }           // + new(), stats(), flush() ..
//! impl<Old: UserStore, New: UserStore> UserStore for UserStoreDualWrite<Old, New> {
//!     fn insert(&self, user: &User) -> Result<(), Error> { /* route, primary, secondary */ }
//!     fn get(&self, id: u64) -> Result<Option<User>, Error> { /* route, shadow compare */ }
//! }
//! ```
//!
//! One file per generated item, each with its own input -> output example:
//! [`command`] (the command enum), [`adapter`] (the struct and its inherent
//! methods), [`method`] (the trait impl: thin dispatch into the runtime),
//! [`outbox`] (the outbox builder).

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{GenericParam, Generics, Ident, ItemTrait, TypeParamBound};

mod adapter;
mod command;
mod method;
mod outbox;
mod reads;

use crate::attr::KeyPath;
use crate::model::{
    ArgMode, Compare, Flavor, Method, MethodKind, TraitModel, replace_self_assoc,
    replace_self_assoc_in_bound,
};

/// Which store a call goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Old,
    New,
}

/// Which copy of the arguments a call receives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ArgSet {
    /// The caller's arguments.
    Caller,
    /// The copies made for the second store.
    Copies,
}

/// Gives every token the same span, so an error in a generated call points
/// at the user's token the call is made for.
/// A method's name as the runtime sees it (labels, spans, dead letters):
/// `r#type` is `type`.
fn method_name(method: &Method) -> String {
    let name = method.ident.to_string();
    name.strip_prefix("r#").unwrap_or(&name).to_owned()
}

fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Group(group) => {
                let mut new = Group::new(group.delimiter(), respan(group.stream(), span));
                new.set_span(span);
                TokenTree::Group(new)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

struct Expander<'a> {
    m: &'a TraitModel,
    rt: &'a syn::Path,
    trait_path: TokenStream,
    cmd_ty: TokenStream,
    owned: bool,
}

/// Expands a valid model.
pub fn expand_model(m: &TraitModel) -> TokenStream {
    let (_, trait_ty_generics, _) = m.item.generics.split_for_impl();
    let ident = &m.ident;
    let trait_path = quote!(#ident #trait_ty_generics);
    let cmd_args = command_args(m, &quote!(<Old as #trait_path>));
    let command = &m.command;
    let cmd_ty = quote!(#command #cmd_args);
    let e = Expander {
        m,
        rt: &m.krate,
        trait_path,
        cmd_ty,
        owned: m.needs_owned_stores(),
    };
    let item = &m.item;
    let command_enum = e.command_enum();
    let read_enum = e.read_enum();
    let adapter = e.adapter_struct();
    let inherent = e.adapter_inherent();
    let async_ctor = e.async_constructor();
    let trait_impl = e.trait_impl();
    let outbox_ctor = e.outbox_constructor();
    quote! {
        #item
        #command_enum
        #read_enum
        #adapter
        #inherent
        #async_ctor
        #outbox_ctor
        #trait_impl
    }
}

/// The arguments that name a generics list's parameters at a use site:
/// `<'a, T, N>` for `<'a, T: Clone, const N: usize>`.
fn generic_args(generics: &Generics) -> impl Iterator<Item = TokenStream> + '_ {
    generics.params.iter().map(|p| match p {
        GenericParam::Lifetime(l) => {
            let lt = &l.lifetime;
            quote!(#lt)
        }
        GenericParam::Type(t) => {
            let id = &t.ident;
            quote!(#id)
        }
        GenericParam::Const(c) => {
            let id = &c.ident;
            quote!(#id)
        }
    })
}

/// The command enum's generic arguments at a use site: the trait's own, then
/// one per associated type, taken from `assoc_owner` (`<Old as Trait>`).
fn command_args(m: &TraitModel, assoc_owner: &TokenStream) -> TokenStream {
    let mut args: Vec<TokenStream> = generic_args(&m.item.generics).collect();
    for assoc in &m.assoc_types {
        let id = &assoc.ident;
        args.push(quote!(#assoc_owner::#id));
    }
    if args.is_empty() {
        quote!()
    } else {
        quote!(<#(#args),*>)
    }
}

/// The trait's generics with `Old` and `New` appended.
fn adapter_generics(item: &ItemTrait) -> Generics {
    let mut generics = item.generics.clone();
    for param in generics.params.iter_mut() {
        if let GenericParam::Type(t) = param {
            t.default = None;
        }
        if let GenericParam::Const(c) = param {
            c.default = None;
        }
    }
    generics.params.push(syn::parse_quote!(Old));
    generics.params.push(syn::parse_quote!(New));
    generics
}

/// The type the command enum stores for a `&elem` argument: `String` for
/// `str`, `Vec<T>` for `[T]`, `elem` itself for a sized type, and the
/// `ToOwned` form for other unsized standard types. `true` when the field is
/// `elem` itself (copied with `Clone`).
fn owned_field_type(elem: &syn::Type, rt: &syn::Path) -> (syn::Type, bool) {
    let span = elem.span();
    match elem {
        syn::Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => (
            syn::parse_quote_spanned!(span=> ::std::string::String),
            false,
        ),
        syn::Type::Slice(slice) => {
            let inner = &slice.elem;
            (
                syn::parse_quote_spanned!(span=> ::std::vec::Vec<#inner>),
                false,
            )
        }
        syn::Type::Path(p)
            if p.qself.is_none()
                && p.path.segments.last().is_some_and(|s| {
                    s.arguments.is_empty()
                        && ["Path", "OsStr", "CStr"].contains(&s.ident.to_string().as_str())
                }) =>
        {
            let rt = respan(quote!(#rt), span);
            (
                syn::parse_quote_spanned!(span=> <#elem as #rt::__private::OwnedArg>::Owned),
                false,
            )
        }
        _ => (elem.clone(), true),
    }
}

impl Expander<'_> {
    /// `keep::<ty>(value)`: a copy of a value for the second store, with
    /// errors (a type that is not `Clone`) pointing at `ty`.
    fn keep(&self, ty: &syn::Type, value: TokenStream) -> TokenStream {
        let span = ty.span();
        let self_rt = self.rt;
        let rt = respan(quote!(#self_rt), span);
        quote_spanned!(span=> #rt::__private::keep::<#ty>(#value))
    }

    fn has_async_send(&self) -> bool {
        self.m.routed().any(|method| match &method.flavor {
            Flavor::AsyncTrait => self.m.async_trait_send,
            Flavor::ImplFuture { send } => *send,
            _ => false,
        })
    }

    fn supertraits_need_send(&self) -> bool {
        self.m.item.supertraits.iter().any(|b| match b {
            TypeParamBound::Trait(t) => t
                .path
                .segments
                .last()
                .is_some_and(|s| s.ident == "Send" || s.ident == "Sync"),
            _ => false,
        })
    }

    /// The owned fields of a method's arguments in the command or read
    /// enum: `id: u64`, `name: String` for `name: &str`.
    fn owned_fields(&self, method: &Method) -> Vec<TokenStream> {
        let rt = self.rt;
        method
            .args
            .iter()
            .map(|arg| {
                let id = &arg.ident;
                let ty = match &arg.mode {
                    ArgMode::Value => {
                        let ty = replace_self_assoc(&arg.ty);
                        quote!(#ty)
                    }
                    ArgMode::RefMut { elem } => {
                        let ty = replace_self_assoc(elem);
                        quote!(#ty)
                    }
                    ArgMode::Ref { elem } => {
                        let (owned, _) = owned_field_type(&replace_self_assoc(elem), rt);
                        quote!(#owned)
                    }
                };
                quote!(#id: #ty)
            })
            .collect()
    }

    /// The arguments of a call made from an enum variant's owned fields
    /// (bound by reference): clones, borrows, and `&mut` temporaries made
    /// in the returned prelude.
    fn borrowed_call_args(&self, method: &Method) -> (Vec<TokenStream>, Vec<TokenStream>) {
        let rt = self.rt;
        let mut prelude = Vec::new();
        let call_args = method
            .args
            .iter()
            .map(|arg| {
                let id = &arg.ident;
                match &arg.mode {
                    ArgMode::Value => self.keep(&replace_self_assoc(&arg.ty), quote!(#id)),
                    ArgMode::Ref { elem } => {
                        let elem = replace_self_assoc(elem);
                        quote!(#rt::__private::borrow::<#elem, _>(#id))
                    }
                    ArgMode::RefMut { elem } => {
                        let tmp = format_ident!("__dw_tmp_{}", id);
                        let copy = self.keep(&replace_self_assoc(elem), quote!(#id));
                        prelude.push(quote!(let mut #tmp = #copy;));
                        quote!(&mut #tmp)
                    }
                }
            })
            .collect();
        (prelude, call_args)
    }

    /// Whether two answers `__dw_a` and `__dw_b` of a read agree: the
    /// method's comparator, or `PartialEq` (errors spanned on the return
    /// type).
    fn comparator(&self, method: &Method) -> TokenStream {
        let rt = self.rt;
        match &method.compare {
            Compare::Custom(path) => quote_spanned!(path.span()=> #path(__dw_a, __dw_b)),
            _ => {
                let span = match &method.sig.output {
                    syn::ReturnType::Type(_, ty) => ty.span(),
                    syn::ReturnType::Default => method.ident.span(),
                };
                let rt = respan(quote!(#rt), span);
                quote_spanned!(span=> #rt::__private::shadow_eq(__dw_a, __dw_b))
            }
        }
    }

    /// A key's value from an enum variant's fields (bound by reference):
    /// `root` or `&root.field` for one part, `&Composite((.., ..))` for
    /// several. With the roots to bind.
    fn key_from_fields(&self, method: &Method, key: &KeyPath) -> (Vec<Ident>, TokenStream) {
        let rt = self.rt;
        let mut roots: Vec<Ident> = Vec::new();
        let values: Vec<TokenStream> = key
            .parts
            .iter()
            .map(|part| {
                let root = method
                    .args
                    .iter()
                    .find(|a| a.user_ident.as_ref() == Some(&part.arg))
                    .map(|a| a.ident.clone())
                    .unwrap_or_else(|| part.arg.clone());
                if !roots.contains(&root) {
                    roots.push(root.clone());
                }
                let fields = &part.fields;
                // `#root` is bound by reference already.
                if fields.is_empty() {
                    quote!(#root)
                } else {
                    quote!(&#root #(.#fields)*)
                }
            })
            .collect();
        let value = match values.as_slice() {
            [single] => single.clone(),
            parts => quote!(&#rt::Composite((#(#parts),*))),
        };
        (roots, respan(value, key.expr.span()))
    }

    /// The arms of an enum's `key_text` (`render`) or `key_hash`
    /// (`route_hash`) method.
    fn key_arms(&self, methods: &[&Method], op: &str) -> Vec<TokenStream> {
        let rt = self.rt;
        let op = Ident::new(op, Span::call_site());
        methods
            .iter()
            .map(|method| {
                let variant = &method.variant;
                let cfg = &method.cfg_attrs;
                match &method.key {
                    Some(key) => {
                        let (roots, value) = self.key_from_fields(method, key);
                        // The cast reports a key that is no `RoutingKey`
                        // with the same error as the method body's, once.
                        let cast = respan(quote!(#value as &dyn #rt::RoutingKey), key.expr.span());
                        quote! {
                            #(#cfg)* Self::#variant { #(#roots,)* .. } =>
                                ::core::option::Option::Some(#rt::RoutingKey::#op(#cast)),
                        }
                    }
                    None => {
                        quote!(#(#cfg)* Self::#variant { .. } => ::core::option::Option::None,)
                    }
                }
            })
            .collect()
    }

    /// `Some(&key as &dyn RoutingKey)` for a key built from the method's
    /// arguments, or `None`.
    fn key_ref(&self, key: Option<&KeyPath>) -> TokenStream {
        let rt = self.rt;
        let Some(key) = key else {
            return quote!(::core::option::Option::None);
        };
        let span = key.expr.span();
        let rt = respan(quote!(#rt), span);
        let values: Vec<TokenStream> = key
            .parts
            .iter()
            .map(|part| {
                let root = &part.arg;
                let fields = &part.fields;
                quote_spanned!(span=> (#root #(.#fields)*))
            })
            .collect();
        match values.as_slice() {
            [single] => quote_spanned! {span=>
                ::core::option::Option::Some(&#single as &dyn #rt::RoutingKey)
            },
            parts => quote_spanned! {span=>
                ::core::option::Option::Some(&#rt::Composite((#(&#parts),*)) as &dyn #rt::RoutingKey)
            },
        }
    }

    /// Bounds every generated impl of the adapter needs.
    fn base_predicates(&self, with_store_bounds: bool) -> Vec<TokenStream> {
        let trait_path = &self.trait_path;
        let mut preds: Vec<TokenStream> = Vec::new();
        if with_store_bounds || !self.m.assoc_types.is_empty() {
            preds.push(quote!(Old: #trait_path));
        }
        if with_store_bounds {
            let assoc_eq = self.m.assoc_types.iter().map(|a| {
                let id = &a.ident;
                quote!(#id = <Old as #trait_path>::#id)
            });
            let trait_ident = &self.m.ident;
            let params = generic_args(&self.m.item.generics);
            let all: Vec<TokenStream> = params.chain(assoc_eq).collect();
            if all.is_empty() {
                preds.push(quote!(New: #trait_ident));
            } else {
                preds.push(quote!(New: #trait_ident<#(#all),*>));
            }
        }
        if let Some(wc) = &self.m.item.generics.where_clause {
            for p in &wc.predicates {
                preds.push(quote!(#p));
            }
        }
        preds
    }
}

/// The error for an attribute placed on something that is not a trait:
/// spanned on the item's keyword and name.
pub fn not_a_trait(input: &TokenStream) -> TokenStream {
    let message = |what: &str| {
        format!(
            "#[dual_write] goes on a repository trait, not on {what}: `#[dual_write] pub trait UserStore {{ .. }}`"
        )
    };
    let error = match syn::parse2::<syn::Item>(input.clone()) {
        Ok(item) => {
            let (what, tokens) = match &item {
                syn::Item::Struct(i) => {
                    let (kw, id) = (&i.struct_token, &i.ident);
                    ("a struct", quote!(#kw #id))
                }
                syn::Item::Enum(i) => {
                    let (kw, id) = (&i.enum_token, &i.ident);
                    ("an enum", quote!(#kw #id))
                }
                syn::Item::Fn(i) => {
                    let (kw, id) = (&i.sig.fn_token, &i.sig.ident);
                    ("a function", quote!(#kw #id))
                }
                syn::Item::Impl(i) => {
                    let (kw, ty) = (&i.impl_token, &i.self_ty);
                    ("an impl block", quote!(#kw #ty))
                }
                syn::Item::Mod(i) => {
                    let (kw, id) = (&i.mod_token, &i.ident);
                    ("a module", quote!(#kw #id))
                }
                syn::Item::Type(i) => {
                    let (kw, id) = (&i.type_token, &i.ident);
                    ("a type alias", quote!(#kw #id))
                }
                other => ("this item", quote!(#other)),
            };
            syn::Error::new_spanned(tokens, message(what))
        }
        Err(_) => syn::Error::new(Span::call_site(), message("this item")),
    };
    error.to_compile_error()
}

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

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{GenericParam, Generics, ItemTrait, TypeParamBound};

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
    let adapter = e.adapter_struct();
    let inherent = e.adapter_inherent();
    let async_ctor = e.async_constructor();
    let trait_impl = e.trait_impl();
    quote! {
        #item
        #command_enum
        #adapter
        #inherent
        #async_ctor
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

    // ---------------------------------------------------------------- enum

    fn command_enum(&self) -> TokenStream {
        let m = self.m;
        let rt = self.rt;
        let vis = &m.vis;
        let command = &m.command;
        let trait_ident = &m.ident;
        let trait_path = &self.trait_path;

        let mut generics = m.item.generics.clone();
        for assoc in &m.assoc_types {
            let id = &assoc.ident;
            let bounds = assoc.bounds.iter().map(replace_self_assoc_in_bound);
            generics.params.push(syn::parse_quote!(#id: #(#bounds)+*));
        }
        for param in generics.params.iter_mut() {
            if let GenericParam::Type(t) = param {
                t.default = None;
            }
        }
        let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();

        // Every lifetime and type parameter must be used: a hidden variant that
        // cannot be built uses them all.
        let phantom_parts: Vec<TokenStream> = generics
            .params
            .iter()
            .filter_map(|p| match p {
                GenericParam::Lifetime(l) => {
                    let lt = &l.lifetime;
                    Some(quote!(&#lt ()))
                }
                GenericParam::Type(t) => {
                    let id = &t.ident;
                    Some(quote!(#id))
                }
                GenericParam::Const(_) => None,
            })
            .collect();
        let has_phantom = !phantom_parts.is_empty();
        let serde_skip = if m.serde {
            quote!(#[serde(skip)])
        } else {
            quote!()
        };
        let phantom_variant = if has_phantom {
            quote! {
                #[doc(hidden)]
                #serde_skip
                __Phantom(::core::convert::Infallible, ::core::marker::PhantomData<fn() -> (#(#phantom_parts,)*)>),
            }
        } else {
            quote!()
        };
        let phantom_arm = if has_phantom {
            quote!(Self::__Phantom(never, _) => match *never {},)
        } else {
            quote!()
        };

        let commands: Vec<&Method> = m.commands().collect();
        let variants = commands.iter().map(|method| {
            let variant = &method.variant;
            let cfg = &method.cfg_attrs;
            let doc = format!(" A call of [`{}::{}`].", trait_ident, method.ident);
            let fields = method.args.iter().map(|arg| {
                let id = &arg.ident;
                let ty = match &arg.mode {
                    ArgMode::Value | ArgMode::RefMut { .. } => {
                        let ty = match &arg.mode {
                            ArgMode::RefMut { elem } => elem,
                            _ => &arg.ty,
                        };
                        let ty = replace_self_assoc(ty);
                        quote!(#ty)
                    }
                    ArgMode::Ref { elem } => {
                        let (owned, _) = owned_field_type(&replace_self_assoc(elem), rt);
                        quote!(#owned)
                    }
                };
                quote!(#id: #ty)
            });
            quote! {
                #[doc = #doc]
                #(#cfg)*
                #variant { #(#fields),* }
            }
        });

        let method_arms = commands.iter().map(|method| {
            let variant = &method.variant;
            let cfg = &method.cfg_attrs;
            let name = method.ident.to_string();
            let name = name.strip_prefix("r#").unwrap_or(&name);
            quote!(#(#cfg)* Self::#variant { .. } => #name,)
        });
        let key_arms = commands.iter().map(|method| {
            let variant = &method.variant;
            let cfg = &method.cfg_attrs;
            match &method.key {
                Some(key) => {
                    let root = method
                        .args
                        .iter()
                        .find(|a| a.user_ident.as_ref() == Some(&key.arg))
                        .map(|a| a.ident.clone())
                        .unwrap_or_else(|| key.arg.clone());
                    let fields = &key.fields;
                    // `#root` is bound by reference already.
                    let value = if fields.is_empty() {
                        quote!(#root)
                    } else {
                        quote!(&#root #(.#fields)*)
                    };
                    let span = key.expr.span();
                    let cast = respan(quote!(#value as &dyn #rt::RoutingKey), span);
                    quote! {
                        #(#cfg)* Self::#variant { #root, .. } =>
                            ::core::option::Option::Some(#cast),
                    }
                }
                None => quote!(#(#cfg)* Self::#variant { .. } => ::core::option::Option::None,),
            }
        });

        let any_async = commands.iter().any(|c| c.flavor.is_async());
        let any_mut = commands.iter().any(|c| c.mut_receiver);
        let store_ref = if any_mut {
            quote!(&mut __DwStore)
        } else {
            quote!(&__DwStore)
        };
        let asyncness = if any_async { quote!(async) } else { quote!() };
        let assoc_eq = m.assoc_types.iter().map(|a| {
            let id = &a.ident;
            quote!(#id = #id)
        });
        let store_bound = {
            let params: Vec<TokenStream> = generic_args(&m.item.generics).chain(assoc_eq).collect();
            if params.is_empty() {
                quote!(#trait_ident)
            } else {
                quote!(#trait_ident<#(#params),*>)
            }
        };
        let apply_arms = commands.iter().map(|method| {
            let variant = &method.variant;
            let cfg = &method.cfg_attrs;
            let ident = &method.ident;
            let bindings = method.args.iter().map(|a| &a.ident);
            let mut prelude = Vec::new();
            let call_args: Vec<TokenStream> = method
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
            let await_ = if method.flavor.is_async() {
                quote!(.await)
            } else {
                quote!()
            };
            quote! {
                #(#cfg)*
                Self::#variant { #(#bindings),* } => {
                    #(#prelude)*
                    let ret = <__DwStore as #trait_path>::#ident(store, #(#call_args),*)#await_;
                    match (&&&#rt::__private::Probe(&ret)).dw_error() {
                        ::core::option::Option::Some(error) => ::core::result::Result::Err(error),
                        ::core::option::Option::None => ::core::result::Result::Ok(()),
                    }
                }
            }
        });
        let serde_derive = if m.serde {
            let krate = quote!(#rt).to_string().replace(' ', "");
            let serde_path = format!("{krate}::__private::serde");
            quote! {
                #[derive(#rt::__private::serde::Serialize, #rt::__private::serde::Deserialize)]
                #[serde(crate = #serde_path)]
            }
        } else {
            quote!()
        };
        let doc = format!(
            " A write of [`{trait_ident}`] captured as a value: the arguments of one write call, owned.\n\n\
             Secondary lanes replay it with [`{command}::apply`]; dead letters keep it for reconciliation."
        );
        let empty_match = if commands.is_empty() && !has_phantom {
            quote!(match *self {})
        } else {
            quote!()
        };
        let clone_arms = commands.iter().map(|method| {
            let variant = &method.variant;
            let cfg = &method.cfg_attrs;
            let bindings: Vec<_> = method.args.iter().map(|a| &a.ident).collect();
            let values = method.args.iter().map(|arg| {
                let id = &arg.ident;
                let ty = match &arg.mode {
                    ArgMode::Value => replace_self_assoc(&arg.ty),
                    ArgMode::RefMut { elem } => replace_self_assoc(elem),
                    ArgMode::Ref { elem } => owned_field_type(&replace_self_assoc(elem), rt).0,
                };
                let value = self.keep(&ty, quote!(#id));
                quote!(#id: #value)
            });
            quote!(#(#cfg)* Self::#variant { #(#bindings),* } => Self::#variant { #(#values),* },)
        });
        let debug_arms = commands.iter().map(|method| {
            let variant = &method.variant;
            let cfg = &method.cfg_attrs;
            let name = variant.to_string();
            let bindings: Vec<_> = method.args.iter().map(|a| &a.ident).collect();
            let fields = method.args.iter().map(|arg| {
                let id = &arg.ident;
                let label = id.to_string();
                let label = label.strip_prefix("r#").unwrap_or(&label).to_owned();
                quote!(.field(#label, &(&&#rt::__private::DebugProbe(#id)).dw_debug()))
            });
            quote!(#(#cfg)* Self::#variant { #(#bindings),* } => f.debug_struct(#name) #(#fields)* .finish(),)
        });
        let clone_body = if commands.is_empty() && !has_phantom {
            empty_match.clone()
        } else {
            quote!(match self { #(#clone_arms)* #phantom_arm })
        };
        let debug_body = if commands.is_empty() && !has_phantom {
            quote!({ let _ = f; #empty_match })
        } else {
            quote!(match self { #(#debug_arms)* #phantom_arm })
        };
        let method_body = if commands.is_empty() && !has_phantom {
            empty_match.clone()
        } else {
            quote!(match self { #(#method_arms)* #phantom_arm })
        };
        let key_body = if commands.is_empty() && !has_phantom {
            empty_match.clone()
        } else {
            quote!(match self { #(#key_arms)* #phantom_arm })
        };
        let apply_body = if commands.is_empty() && !has_phantom {
            quote!({ let _ = store; #empty_match })
        } else {
            quote!({
                #[allow(unused_imports)]
                use #rt::__private::{ProbeAny as _, ProbeResult as _, ProbeResultDebug as _};
                match self { #(#apply_arms)* #phantom_arm }
            })
        };
        quote! {
            #[doc = #doc]
            #serde_derive
            #[allow(dead_code)]
            #vis enum #command #impl_generics #where_clause {
                #(#variants,)*
                #phantom_variant
            }

            impl #impl_generics #command #ty_generics #where_clause {
                /// The name of the trait method this write calls.
                #vis fn method(&self) -> &'static str {
                    #method_body
                }

                /// The write's routing key, if the method has one.
                #vis fn key(&self) -> ::core::option::Option<&dyn #rt::RoutingKey> {
                    #key_body
                }

                /// Replays the write against `store`; a failure comes back as text.
                #vis #asyncness fn apply<__DwStore>(&self, store: #store_ref) -> ::core::result::Result<(), ::std::string::String>
                where
                    __DwStore: #store_bound + ?::core::marker::Sized,
                #apply_body
            }

            impl #impl_generics ::core::clone::Clone for #command #ty_generics #where_clause {
                fn clone(&self) -> Self {
                    #clone_body
                }
            }

            impl #impl_generics ::core::fmt::Debug for #command #ty_generics #where_clause {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    #[allow(unused_imports)]
                    use #rt::__private::{DebugViaDebug as _, DebugViaName as _};
                    #debug_body
                }
            }

            impl #impl_generics #rt::WriteCommand for #command #ty_generics #where_clause {
                fn method(&self) -> &'static str {
                    #command::method(self)
                }
                fn key(&self) -> ::core::option::Option<&dyn #rt::RoutingKey> {
                    #command::key(self)
                }
            }
        }
    }

    // -------------------------------------------------------------- struct

    fn adapter_struct(&self) -> TokenStream {
        let m = self.m;
        let rt = self.rt;
        let vis = &m.vis;
        let adapter = &m.adapter;
        let cmd_ty = &self.cmd_ty;
        let generics = adapter_generics(&m.item);
        let (impl_generics, _, _) = generics.split_for_impl();
        let preds = self.base_predicates(false);
        let where_clause = if preds.is_empty() {
            quote!()
        } else {
            quote!(where #(#preds),*)
        };
        let (old_ty, new_ty) = if self.owned {
            (quote!(Old), quote!(New))
        } else {
            (quote!(::std::sync::Arc<Old>), quote!(::std::sync::Arc<New>))
        };
        let trait_ident = &m.ident;
        let doc = format!(
            " Dual-write adapter for [`{trait_ident}`]: implements the trait over an old and a new store.\n\n\
             Each call is routed by the phase of its [`Migration`]({rt}::Migration) (globally or for its key); \
             see [`{command}`] for the writes it hands to the secondary store.",
            rt = quote!(#rt).to_string().replace(' ', ""),
            command = m.command,
        );
        // Struct declarations take bounds in angle brackets or where clauses
        // alike; keep the trait's where clause.
        quote! {
            #[doc = #doc]
            #vis struct #adapter #impl_generics #where_clause {
                old: #old_ty,
                new: #new_ty,
                core: #rt::DualWriteCore<#cmd_ty>,
            }
        }
    }

    fn adapter_inherent(&self) -> TokenStream {
        let m = self.m;
        let rt = self.rt;
        let vis = &m.vis;
        let adapter = &m.adapter;
        let cmd_ty = &self.cmd_ty;
        let generics = adapter_generics(&m.item);
        let (impl_generics, ty_generics, _) = generics.split_for_impl();
        let preds = self.base_predicates(false);
        let where_clause = if preds.is_empty() {
            quote!()
        } else {
            quote!(where #(#preds),*)
        };
        let store_access = if self.owned {
            quote! {
                /// Builds the adapter over the two stores, with the synchronous,
                /// tolerant strategy (see [`with_sync_mode`](Self::with_sync_mode)).
                #vis fn new(old: Old, new: New, migration: #rt::Migration) -> Self {
                    Self { old, new, core: #rt::DualWriteCore::new(migration) }
                }
                /// The old store.
                #vis fn old_store(&self) -> &Old {
                    &self.old
                }
                /// The new store.
                #vis fn new_store(&self) -> &New {
                    &self.new
                }
                /// The old store, mutably.
                #vis fn old_store_mut(&mut self) -> &mut Old {
                    &mut self.old
                }
                /// The new store, mutably.
                #vis fn new_store_mut(&mut self) -> &mut New {
                    &mut self.new
                }
                /// Gives the two stores back.
                #vis fn into_stores(self) -> (Old, New) {
                    (self.old, self.new)
                }
            }
        } else {
            quote! {
                /// Builds the adapter over the two stores, with the synchronous,
                /// tolerant strategy (see [`with_sync_mode`](Self::with_sync_mode)
                /// and [`with_async_secondary`](Self::with_async_secondary)).
                #vis fn new(old: Old, new: New, migration: #rt::Migration) -> Self {
                    Self::from_shared(::std::sync::Arc::new(old), ::std::sync::Arc::new(new), migration)
                }
                /// Builds the adapter over stores that are shared elsewhere too.
                #vis fn from_shared(old: ::std::sync::Arc<Old>, new: ::std::sync::Arc<New>, migration: #rt::Migration) -> Self {
                    Self { old, new, core: #rt::DualWriteCore::new(migration) }
                }
                /// The old store.
                #vis fn old_store(&self) -> &Old {
                    &self.old
                }
                /// The new store.
                #vis fn new_store(&self) -> &New {
                    &self.new
                }
                /// The old store, shared.
                #vis fn old_shared(&self) -> &::std::sync::Arc<Old> {
                    &self.old
                }
                /// The new store, shared.
                #vis fn new_shared(&self) -> &::std::sync::Arc<New> {
                    &self.new
                }
            }
        };
        quote! {
            impl #impl_generics #adapter #ty_generics #where_clause {
                #store_access

                /// The migration handle that routes this adapter's calls.
                #vis fn migration(&self) -> &#rt::Migration {
                    self.core.migration()
                }

                /// The routing and secondary-write machinery.
                #vis fn core(&self) -> &#rt::DualWriteCore<#cmd_ty> {
                    &self.core
                }

                /// Counters: writes per store, secondary retries and dead letters, shadow comparisons.
                #vis fn stats(&self) -> #rt::StatsSnapshot {
                    self.core.snapshot()
                }

                /// Writes the secondary store on the caller's path: `Strong` fails
                /// the call when the secondary fails, `Tolerant` logs and records it.
                #[must_use]
                #vis fn with_sync_mode(mut self, mode: #rt::SyncMode) -> Self {
                    self.core.set_sync_mode(mode);
                    self
                }

                /// Blocks until every secondary write handed to the lanes before this call is
                /// applied or dead-lettered, or `timeout` passes. Inside a current-thread tokio
                /// runtime it fails at once: use [`flush_async`](Self::flush_async) there.
                #vis fn flush(&self, timeout: ::core::time::Duration) -> ::core::result::Result<(), #rt::FlushError> {
                    self.core.flush(timeout)
                }

                /// Waits, without blocking the thread, until every secondary write handed to the
                /// lanes before this call is applied or dead-lettered, or `timeout` passes.
                #vis async fn flush_async(&self, timeout: ::core::time::Duration) -> ::core::result::Result<(), #rt::FlushError> {
                    self.core.flush_async(timeout).await
                }

                /// Drains and stops the secondary lanes (see
                /// `DualWriteCore::shutdown`); returns whether it
                /// finished and every dead letter kept. Call it before the process exits.
                #vis fn shutdown(&self, timeout: ::core::time::Duration) -> #rt::ShutdownReport<#cmd_ty> {
                    self.core.shutdown(timeout)
                }

                /// Writes that the secondary store never accepted, oldest first.
                #vis fn dead_letters(&self) -> ::std::vec::Vec<#rt::DeadLetter<#cmd_ty>>
                where
                    #cmd_ty: ::core::clone::Clone,
                {
                    self.core.dead_letters()
                }

                /// Takes the dead letters out (for a reconciliation job).
                #vis fn take_dead_letters(&self) -> ::std::vec::Vec<#rt::DeadLetter<#cmd_ty>> {
                    self.core.take_dead_letters()
                }
            }
        }
    }

    fn async_constructor(&self) -> TokenStream {
        let m = self.m;
        let rt = self.rt;
        let vis = &m.vis;
        let adapter = &m.adapter;
        let cmd_ty = &self.cmd_ty;
        let generics = adapter_generics(&m.item);
        let (impl_generics, ty_generics, _) = generics.split_for_impl();
        let mut preds = self.base_predicates(true);
        preds.push(quote!(Old: ::core::marker::Send + ::core::marker::Sync + 'static));
        preds.push(quote!(New: ::core::marker::Send + ::core::marker::Sync + 'static));
        preds.push(quote!(#cmd_ty: ::core::marker::Send + 'static));
        let doc = quote! {
            /// Hands secondary writes to background lanes instead of the caller's
            /// path: writes to the same key reach the secondary in the primary's
            /// order, failures retry with exponential backoff and jitter, and a
            /// write the lanes give up on becomes a dead letter.
        };
        if self.owned {
            // The bound cannot hold: calling the method is a compile error
            // that says why (see `SharedReceivers`).
            let base = self.base_predicates(false);
            let where_clause = if base.is_empty() {
                quote!()
            } else {
                quote!(where #(#base),*)
            };
            return quote! {
                impl #impl_generics #adapter #ty_generics #where_clause {
                    #doc
                    #[must_use]
                    #vis fn with_async_secondary(self, config: #rt::LaneConfig) -> Self
                    where
                        #rt::__private::MutReceiverWrites<Old, New>: #rt::__private::SharedReceivers,
                    {
                        let _ = config;
                        self
                    }
                }
            };
        }
        let any_async = m.commands().any(|c| c.flavor.is_async());
        // Async stores run on the lane's runtime under the attempt timeout;
        // blocking ones on the lane's helper thread, so the lane can stop
        // waiting at the timeout (`LaneContext::run_blocking`).
        let apply = |store: TokenStream| {
            if any_async {
                quote!(ctx.block_on(command.apply(&*#store)))
            } else {
                quote!({
                    let __dw_store = ::std::sync::Arc::clone(&#store);
                    let __dw_command = ::core::clone::Clone::clone(command);
                    ctx.run_blocking(move || __dw_command.apply(&*__dw_store))
                })
            }
        };
        let apply_old = apply(quote!(old));
        let apply_new = apply(quote!(new));
        quote! {
            impl #impl_generics #adapter #ty_generics where #(#preds),* {
                #doc
                #[must_use]
                #vis fn with_async_secondary(mut self, config: #rt::LaneConfig) -> Self {
                    let old = ::std::sync::Arc::clone(&self.old);
                    let new = ::std::sync::Arc::clone(&self.new);
                    self.core.start_lanes(
                        config,
                        move |ctx: &#rt::LaneContext, target: #rt::Store, command: &#cmd_ty| {
                            let _ = ctx;
                            match target {
                                #rt::Store::Old => #apply_old,
                                #rt::Store::New => #apply_new,
                            }
                        },
                    );
                    self
                }
            }
        }
    }

    // ----------------------------------------------------------- trait impl

    fn trait_impl(&self) -> TokenStream {
        let m = self.m;
        let adapter = &m.adapter;
        let trait_path = &self.trait_path;
        let cmd_ty = &self.cmd_ty;
        let generics = adapter_generics(&m.item);
        let (impl_generics, ty_generics, _) = generics.split_for_impl();
        let mut preds = self.base_predicates(true);
        if self.has_async_send() || self.supertraits_need_send() {
            preds.push(quote!(Old: ::core::marker::Send + ::core::marker::Sync));
            preds.push(quote!(New: ::core::marker::Send + ::core::marker::Sync));
            preds.push(quote!(#cmd_ty: ::core::marker::Send));
        }
        let assoc_types = m.assoc_types.iter().map(|a| {
            let id = &a.ident;
            let cfg = &a.cfg_attrs;
            quote!(#(#cfg)* type #id = <Old as #trait_path>::#id;)
        });
        let assoc_consts = m.assoc_consts.iter().map(|c| {
            let id = &c.ident;
            let ty = &c.ty;
            let cfg = &c.cfg_attrs;
            quote!(#(#cfg)* const #id: #ty = <Old as #trait_path>::#id;)
        });
        let methods = m.routed().map(|method| self.method(method));
        let async_trait = &m.async_trait;
        let unsafety = &m.item.unsafety;
        quote! {
            #async_trait
            #unsafety impl #impl_generics #trait_path for #adapter #ty_generics
            where
                #(#preds),*
            {
                #(#assoc_types)*
                #(#assoc_consts)*
                #(#methods)*
            }
        }
    }

    fn method(&self, method: &Method) -> TokenStream {
        let rt = self.rt;
        let cfg = &method.cfg_attrs;
        let sig = &method.sig;
        let body = match method.kind {
            MethodKind::Write => self.write_body(method),
            MethodKind::Read => self.read_body(method),
            MethodKind::Passthrough | MethodKind::Inherited => self.passthrough_body(method),
        };
        let body = quote! {
            #[allow(unused_imports)]
            use #rt::__private::{ProbeAny as _, ProbeResult as _, ProbeResultDebug as _, RefuseNever as _, RefuseViaFrom as _};
            #body
        };
        match method.flavor {
            Flavor::ImplFuture { .. } => quote! {
                #(#cfg)*
                #sig {
                    async move { #body }
                }
            },
            _ => quote! {
                #(#cfg)*
                #sig {
                    #body
                }
            },
        }
    }

    /// The key rendered as text, or `None`.
    fn key_text(&self, method: &Method) -> TokenStream {
        let rt = self.rt;
        if method.key.is_none() {
            return quote!(::core::option::Option::None);
        }
        let key = self.key_expr(method);
        quote!((#key).map(#rt::RoutingKey::render))
    }

    /// `Some(&key as &dyn RoutingKey)` or `None`.
    fn key_expr(&self, method: &Method) -> TokenStream {
        let rt = self.rt;
        match &method.key {
            Some(key) => {
                let root = &key.arg;
                let fields = &key.fields;
                let span = key.expr.span();
                let rt = respan(quote!(#rt), span);
                quote_spanned! {span=>
                    ::core::option::Option::Some(&(#root #(.#fields)*) as &dyn #rt::RoutingKey)
                }
            }
            None => quote!(::core::option::Option::None),
        }
    }

    /// A call of the method on one store, awaited when the method is async.
    fn call(&self, method: &Method, side: Side, set: ArgSet) -> TokenStream {
        self.call_inner(method, side, set, method.flavor.is_async())
    }

    /// A call of the method on one store; `awaited` appends `.await`.
    fn call_inner(&self, method: &Method, side: Side, set: ArgSet, awaited: bool) -> TokenStream {
        let trait_path = &self.trait_path;
        let ident = &method.ident;
        let (store_ty, field) = match side {
            Side::Old => (quote!(Old), quote!(old)),
            Side::New => (quote!(New), quote!(new)),
        };
        let recv = match (self.owned, method.mut_receiver) {
            (false, _) => quote!(&*self.#field),
            (true, false) => quote!(&self.#field),
            (true, true) => quote!(&mut self.#field),
        };
        let args = method.args.iter().map(|arg| {
            let id = &arg.ident;
            let copy = format_ident!("__dw_copy_{}", id);
            match (&arg.mode, set) {
                (ArgMode::Value, ArgSet::Caller) | (ArgMode::Ref { .. }, _) => quote!(#id),
                (ArgMode::RefMut { .. }, ArgSet::Caller) => quote!(&mut *#id),
                (ArgMode::Value, ArgSet::Copies) => quote!(#copy),
                (ArgMode::RefMut { .. }, ArgSet::Copies) => quote!(&mut #copy),
            }
        });
        let await_ = if awaited { quote!(.await) } else { quote!() };
        quote!(<#store_ty as #trait_path>::#ident(#recv, #(#args),*)#await_)
    }

    /// `match route.primary { Old => call, New => call }`.
    fn dispatch(&self, method: &Method, store: TokenStream, set: ArgSet) -> TokenStream {
        let rt = self.rt;
        let old = self.call(method, Side::Old, set);
        let new = self.call(method, Side::New, set);
        quote! {
            match #store {
                #rt::Store::Old => #old,
                #rt::Store::New => #new,
            }
        }
    }

    /// Copies of by-value arguments, taken before the first call.
    fn copies_of_values(&self, method: &Method) -> TokenStream {
        let lets = method.args.iter().filter_map(|arg| match arg.mode {
            ArgMode::Value => {
                let id = &arg.ident;
                let copy = format_ident!("__dw_copy_{}", id);
                let value = self.keep(&arg.ty, quote!(&#id));
                Some(quote!(let #copy = #value;))
            }
            _ => None,
        });
        quote!(#(#lets)*)
    }

    /// Copies of `&mut` arguments (their state after the primary call).
    fn copies_of_mut_refs(&self, method: &Method) -> TokenStream {
        let lets = method.args.iter().filter_map(|arg| match &arg.mode {
            ArgMode::RefMut { elem } => {
                let id = &arg.ident;
                let copy = format_ident!("__dw_copy_{}", id);
                let value = self.keep(elem, quote!(&*#id));
                Some(quote!(let mut #copy = #value;))
            }
            _ => None,
        });
        quote!(#(#lets)*)
    }

    /// Builds the command value. `consume_copies`: by-value arguments are
    /// moved out of their copies (otherwise cloned from them).
    fn command_value(&self, method: &Method, consume_copies: bool) -> TokenStream {
        let rt = self.rt;
        let command = &self.m.command;
        let variant = &method.variant;
        let fields = method.args.iter().map(|arg| {
            let id = &arg.ident;
            let copy = format_ident!("__dw_copy_{}", id);
            let value = match &arg.mode {
                ArgMode::Value | ArgMode::RefMut { .. } if consume_copies => quote!(#copy),
                ArgMode::Value => self.keep(&arg.ty, quote!(&#copy)),
                ArgMode::RefMut { elem } => self.keep(elem, quote!(&#copy)),
                ArgMode::Ref { elem } => {
                    if owned_field_type(elem, rt).1 {
                        self.keep(elem, quote!(#id))
                    } else {
                        let span = elem.span();
                        let rt = respan(quote!(#rt), span);
                        quote_spanned!(span=> #rt::__private::to_owned::<#elem>(#id))
                    }
                }
            };
            quote!(#id: #value)
        });
        quote!(#command::#variant { #(#fields),* })
    }

    /// The body of a write method: thin dispatch into the runtime's write
    /// path (`dualwrite_runtime::WriteTicket`), which routes, orders,
    /// counts and dead-letters. For `fn put(&self, key: u64, value: u64)`:
    ///
    /// ```text
    /// let mut __dw_w = match self.core.begin_write("put", Some(&key), can_refuse) {
    ///     Ok(w) => w,
    ///     Err(refused) => return <refusal as the return type>,
    /// };
    /// let Some(_) = __dw_w.secondary() else { /* primary only */ };
    /// let __dw_copy_value = keep(&value);                 // for the second store
    /// let __dw_ret = match __dw_w.primary() { Old => old.put(key, value), New => .. };
    /// if !__dw_w.primary_done(ok(&__dw_ret)) { return __dw_ret; }
    /// if __dw_w.is_async() { __dw_w.submit(KvWrite::Put { .. }); return __dw_ret; }
    /// __dw_w.arm(KvWrite::Put { .. });                    // dead letter if dropped
    /// match __dw_w.run_secondary(|| match secondary { .. }) { .. }
    /// ```
    fn write_body(&self, method: &Method) -> TokenStream {
        let rt = self.rt;
        let out = &method.output;
        let key = self.key_expr(method);
        let name = method.ident.to_string();
        let name = name.strip_prefix("r#").unwrap_or(&name).to_owned();
        let is_async = method.flavor.is_async();
        let primary = self.dispatch(method, quote!(__dw_w.primary()), ArgSet::Caller);
        let copies = self.copies_of_values(method);
        let mut_copies = self.copies_of_mut_refs(method);
        let begin = if is_async {
            quote! {
                let __dw_hold = self.core.begin_write_async(self.core.key_hash(#key)).await;
                __dw_hold.route(#name, #key).admit(__dw_can_refuse).await
            }
        } else {
            quote!(self.core.begin_write(#name, #key, __dw_can_refuse))
        };
        let async_branch = if method.in_command && !self.owned {
            let command = self.command_value(method, true);
            quote! {
                if __dw_w.is_async() {
                    __dw_w.submit(#command);
                    return __dw_ret;
                }
            }
        } else {
            quote!()
        };
        let arm = if method.in_command {
            let command = self.command_value(method, false);
            quote!(__dw_w.arm(#command);)
        } else {
            let text = self.key_text(method);
            quote!(__dw_w.arm_untracked(#text);)
        };
        let key_text_early = if method.in_command {
            quote!()
        } else {
            // Rendered before the primary call may consume the key.
            let text = self.key_text(method);
            quote!(let __dw_key_text: ::core::option::Option<::std::string::String> = #text;)
        };
        let arm = if method.in_command {
            arm
        } else {
            quote!(__dw_w.arm_untracked(__dw_key_text);)
        };
        let secondary_call = if is_async {
            let old = self.call_inner(method, Side::Old, ArgSet::Copies, false);
            let new = self.call_inner(method, Side::New, ArgSet::Copies, false);
            quote! {
                __dw_w.run_secondary_async(async {
                    match __dw_secondary {
                        #rt::Store::Old => #old.await,
                        #rt::Store::New => #new.await,
                    }
                }).await
            }
        } else {
            let secondary = self.dispatch(method, quote!(__dw_secondary), ArgSet::Copies);
            quote!(__dw_w.run_secondary(|| #secondary))
        };
        quote! {
            let __dw_can_refuse = (&&#rt::__private::RefuseProbe::<#out>::new()).dw_can_refuse();
            let mut __dw_w = match { #begin } {
                ::core::result::Result::Ok(__dw_w) => __dw_w,
                ::core::result::Result::Err(__dw_refused) => {
                    match (&&#rt::__private::RefuseProbe::<#out>::new()).dw_refuse(__dw_refused) {
                        ::core::option::Option::Some(__dw_ret) => return __dw_ret,
                        ::core::option::Option::None => ::core::unreachable!("a refusal is only returned when the method can return it"),
                    }
                }
            };
            let ::core::option::Option::Some(__dw_secondary) = __dw_w.secondary() else {
                let __dw_ret: #out = #primary;
                let _ = __dw_w.primary_done(!(&&&#rt::__private::Probe(&__dw_ret)).dw_failed());
                return __dw_ret;
            };
            #key_text_early
            #copies
            let __dw_ret: #out = #primary;
            if !__dw_w.primary_done(!(&&&#rt::__private::Probe(&__dw_ret)).dw_failed()) {
                return __dw_ret;
            }
            #mut_copies
            #async_branch
            #arm
            let __dw_ret2: ::core::option::Option<#out> = #secondary_call;
            match __dw_ret2 {
                ::core::option::Option::None => __dw_ret,
                ::core::option::Option::Some(__dw_ret2) => {
                    if __dw_w.secondary_done((&&&#rt::__private::Probe(&__dw_ret2)).dw_error()) {
                        __dw_ret2
                    } else {
                        __dw_ret
                    }
                }
            }
        }
    }

    fn read_body(&self, method: &Method) -> TokenStream {
        let rt = self.rt;
        let out = &method.output;
        let key = self.key_expr(method);
        let name = method.ident.to_string();
        let name = name.strip_prefix("r#").unwrap_or(&name).to_owned();
        let primary = self.dispatch(method, quote!(__dw_route.primary), ArgSet::Caller);
        if matches!(method.compare, Compare::Skip) {
            return quote! {
                let __dw_route = self.core.read_route(#key);
                #primary
            };
        }
        let copies = self.copies_of_values(method);
        let mut_copies = self.copies_of_mut_refs(method);
        let key_text = self.key_text(method);
        let both = if method.flavor.is_async() {
            // Both reads run concurrently.
            let old_p = self.call_inner(method, Side::Old, ArgSet::Caller, false);
            let new_p = self.call_inner(method, Side::New, ArgSet::Caller, false);
            let old_s = self.call_inner(method, Side::Old, ArgSet::Copies, false);
            let new_s = self.call_inner(method, Side::New, ArgSet::Copies, false);
            quote! {
                let (__dw_ret, __dw_other): (#out, #out) = match __dw_route.primary {
                    #rt::Store::Old => #rt::__private::tokio::join!(#old_p, #new_s),
                    #rt::Store::New => #rt::__private::tokio::join!(#new_p, #old_s),
                };
            }
        } else {
            let shadow = self.dispatch(method, quote!(__dw_shadow), ArgSet::Copies);
            quote! {
                let __dw_ret: #out = #primary;
                let __dw_other: #out = #shadow;
            }
        };
        let cmp = match &method.compare {
            Compare::Custom(path) => quote_spanned!(path.span()=> #path(__dw_a, __dw_b)),
            _ => {
                let span = match &method.sig.output {
                    syn::ReturnType::Type(_, ty) => ty.span(),
                    syn::ReturnType::Default => method.ident.span(),
                };
                let rt = respan(quote!(#rt), span);
                quote_spanned!(span=> #rt::__private::shadow_eq(__dw_a, __dw_b))
            }
        };
        quote! {
            let __dw_route = self.core.read_route(#key);
            if let ::core::option::Option::Some(__dw_shadow) = __dw_route.shadow {
                if self.core.should_shadow() {
                    let __dw_key_text: ::core::option::Option<::std::string::String> = #key_text;
                    #copies
                    #mut_copies
                    let _ = __dw_shadow;
                    let __dw_window = self.core.shadow_begin(#key);
                    #both
                    // A write of the key in flight or pending in the lanes
                    // means the stores cannot agree yet: not compared.
                    if !self.core.shadow_comparable(__dw_window) {
                        return __dw_ret;
                    }
                    if let ::core::option::Option::Some(__dw_a) = (&&&#rt::__private::Probe(&__dw_ret)).dw_value() {
                        let __dw_outcome = match (&&&#rt::__private::Probe(&__dw_other)).dw_value() {
                            ::core::option::Option::Some(__dw_b) => {
                                if #cmp {
                                    #rt::Comparison::Matched
                                } else {
                                    #rt::Comparison::Mismatched
                                }
                            }
                            ::core::option::Option::None => #rt::Comparison::ShadowFailed(
                                (&&&#rt::__private::Probe(&__dw_other)).dw_error().unwrap_or_default(),
                            ),
                        };
                        self.core.record_comparison(
                            #name,
                            __dw_key_text.as_ref().map(|k| k as &dyn #rt::RoutingKey),
                            __dw_outcome,
                        );
                    }
                    return __dw_ret;
                }
            }
            #primary
        }
    }

    fn passthrough_body(&self, method: &Method) -> TokenStream {
        let key = self.key_expr(method);
        let primary = self.dispatch(method, quote!(__dw_route.primary), ArgSet::Caller);
        quote! {
            let __dw_route = self.core.read_route(#key);
            #primary
        }
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

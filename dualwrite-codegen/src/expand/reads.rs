//! The read enum, for background shadow comparison: one variant per read
//! that can own its arguments and its answer, with `shadow(&store)`, which
//! reads the other store and compares.
//!
//! ```text
//! fn get(&self, id: u64) -> Result<Option<User>, Error>;   // in the trait
//! ```
//! becomes
//! ```text
//! pub enum UserStoreRead { Get { id: u64, __dw_answer: Result<Option<User>, Error> } }
//! impl UserStoreRead {
//!     pub fn shadow<S: UserStore + ?Sized>(&self, store: &S) -> Comparison {
//!         match self { Self::Get { id, __dw_answer } => {
//!             let other = store.get(*id);
//!             /* compare the answers' success values */
//!         } }
//!     }
//! }
//! ```
//!
//! Only for traits without generics or associated types, and for adapters
//! that share their stores (`&self` methods).

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::*;

impl Expander<'_> {
    /// Whether the adapter gets a read enum and `with_background_shadow`.
    pub(super) fn has_read_enum(&self) -> bool {
        !self.owned && self.m.shadow_reads().next().is_some()
    }

    /// The read enum and its impls; nothing when there is none.
    pub(super) fn read_enum(&self) -> TokenStream {
        if !self.has_read_enum() {
            return quote!();
        }
        let m = self.m;
        let rt = self.rt;
        let vis = &m.vis;
        let reads = &m.reads;
        let trait_ident = &m.ident;
        let trait_path = &self.trait_path;
        let methods: Vec<&Method> = m.shadow_reads().collect();
        let variants = methods.iter().map(|method| {
            let variant = &method.variant;
            let cfg = &method.cfg_attrs;
            let out = &method.output;
            let fields = self.owned_fields(method);
            let doc = format!(
                " A call of [`{}::{}`] and its answer.",
                trait_ident, method.ident
            );
            quote! {
                #[doc = #doc]
                #(#cfg)*
                #variant { #(#fields,)* __dw_answer: #out }
            }
        });
        let method_arms = methods.iter().map(|method| {
            let variant = &method.variant;
            let cfg = &method.cfg_attrs;
            let name = method.ident.to_string();
            let name = name.strip_prefix("r#").unwrap_or(&name).to_owned();
            quote!(#(#cfg)* Self::#variant { .. } => #name,)
        });
        let key_text_arms = self.key_arms(&methods, "render");
        let any_async = methods.iter().any(|method| method.flavor.is_async());
        let asyncness = if any_async { quote!(async) } else { quote!() };
        let shadow_arms = methods.iter().map(|method| {
            let variant = &method.variant;
            let cfg = &method.cfg_attrs;
            let ident = &method.ident;
            let out = &method.output;
            let bindings = method.args.iter().map(|a| &a.ident);
            let (prelude, call_args) = self.borrowed_call_args(method);
            let await_ = if method.flavor.is_async() {
                quote!(.await)
            } else {
                quote!()
            };
            let cmp = self.comparator(method);
            quote! {
                #(#cfg)*
                Self::#variant { #(#bindings,)* __dw_answer } => {
                    #(#prelude)*
                    let __dw_other: #out = <__DwStore as #trait_path>::#ident(store, #(#call_args),*)#await_;
                    match (
                        (&&&#rt::__private::Probe(__dw_answer)).dw_value(),
                        (&&&#rt::__private::Probe(&__dw_other)).dw_value(),
                    ) {
                        (::core::option::Option::Some(__dw_a), ::core::option::Option::Some(__dw_b)) => {
                            if #cmp {
                                #rt::Comparison::Matched
                            } else {
                                #rt::__private::mismatch((&&#rt::__private::DiffProbe(__dw_a, __dw_b)).dw_diff())
                            }
                        }
                        (_, ::core::option::Option::None) => #rt::Comparison::ShadowFailed(
                            (&&&#rt::__private::Probe(&__dw_other)).dw_error().unwrap_or_default(),
                        ),
                        // Only successful answers are queued.
                        (::core::option::Option::None, ::core::option::Option::Some(_)) => #rt::Comparison::Matched,
                    }
                }
            }
        });
        let doc = format!(
            " A read of [`{trait_ident}`] and the authoritative store's answer, for a background \
             shadow comparison (the adapter's `with_background_shadow`)."
        );
        quote! {
            #[doc = #doc]
            #[allow(dead_code)]
            #vis enum #reads {
                #(#variants,)*
            }

            impl #reads {
                /// The name of the trait method read.
                #vis fn method(&self) -> &'static str {
                    match self { #(#method_arms)* }
                }

                /// The read's routing key as text, if the method has one.
                #vis fn key_text(&self) -> ::core::option::Option<::std::string::String> {
                    match self { #(#key_text_arms)* }
                }

                /// Reads `store` as the original call did and compares its answer with the
                /// one this read carries.
                #vis #asyncness fn shadow<__DwStore>(&self, store: &__DwStore) -> #rt::Comparison
                where
                    __DwStore: #trait_path + ?::core::marker::Sized,
                {
                    #[allow(unused_imports)]
                    use #rt::__private::{DiffNone as _, DiffViaSerde as _, ProbeAny as _, ProbeResult as _, ProbeResultDebug as _};
                    match self { #(#shadow_arms)* }
                }
            }

            impl #rt::ShadowRead for #reads {
                fn method(&self) -> &'static str {
                    #reads::method(self)
                }
                fn key_text(&self) -> ::core::option::Option<::std::string::String> {
                    #reads::key_text(self)
                }
            }
        }
    }

    /// The read enum's value for a call: owned copies of its arguments (made
    /// as for the command enum) and the answer.
    pub(super) fn read_value(&self, method: &Method) -> TokenStream {
        let reads = &self.m.reads;
        let variant = &method.variant;
        let fields = self.variant_fields(method, true);
        let answer = format_ident!("__dw_answer");
        quote!(#reads::#variant { #(#fields,)* #answer })
    }
}

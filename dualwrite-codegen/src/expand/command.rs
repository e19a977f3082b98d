//! The command enum: one variant per write method, holding its arguments
//! owned, with `method()`, `key()` and `apply(&store)`.
//!
//! ```text
//! fn insert(&self, user: &User) -> Result<(), Error>;     // in the trait
//! ```
//! becomes
//! ```text
//! pub enum UserStoreWrite { Insert { user: User } }
//! impl UserStoreWrite {
//!     pub fn method(&self) -> &'static str { match self { Self::Insert { .. } => "insert" } }
//!     pub fn key_text(&self) -> Option<String> { .. }         // and key_hash()
//!     pub fn apply<S: UserStore + ?Sized>(&self, store: &S) -> Result<(), String> { .. }
//! }
//! ```

use proc_macro2::TokenStream;
use quote::quote;
use syn::GenericParam;

use super::*;

impl Expander<'_> {
    pub(super) fn command_enum(&self) -> TokenStream {
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
            let fields = self.owned_fields(method);
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
        let key_text_arms = self.key_arms(&commands, "render");
        let key_hash_arms = self.key_arms(&commands, "route_hash");
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
            let (prelude, call_args) = self.borrowed_call_args(method);
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
        let (key_text_body, key_hash_body) = if commands.is_empty() && !has_phantom {
            (empty_match.clone(), empty_match.clone())
        } else {
            (
                quote!(match self { #(#key_text_arms)* #phantom_arm }),
                quote!(match self { #(#key_hash_arms)* #phantom_arm }),
            )
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

                /// The write's routing key as text, if the method has one
                /// (`a/b` for a composite key).
                #vis fn key_text(&self) -> ::core::option::Option<::std::string::String> {
                    #key_text_body
                }

                /// The route hash of the write's key, which picks its lane.
                #vis fn key_hash(&self) -> ::core::option::Option<u64> {
                    #key_hash_body
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
                fn key_text(&self) -> ::core::option::Option<::std::string::String> {
                    #command::key_text(self)
                }
                fn key_hash(&self) -> ::core::option::Option<u64> {
                    #command::key_hash(self)
                }
            }
        }
    }
}

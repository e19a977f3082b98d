//! The trait impl of the adapter: each method is thin dispatch into the
//! runtime (writes through `WriteTicket`, reads through the core's route and
//! shadow window).
//!
//! ```text
//! impl<Old: UserStore, New: UserStore> UserStore for UserStoreDualWrite<Old, New> {
//!     fn insert(&self, user: &User) -> Result<(), Error> {
//!         let mut __dw_w = self.core.begin_write("insert", Some(&user.id), ..);
//!         if let Some(refused) = __dw_w.refused() { return refused.into() }
//!         /* primary call, then submit / arm + secondary call */
//!     }
//!     fn get(&self, id: u64) -> Result<Option<User>, Error> {
//!         let route = self.core.begin_read("get", Some(&id));  // route + span
//!         /* primary read; in the shadow phase also the other store, compared */
//!     }
//! }
//! ```

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;

use super::*;

impl Expander<'_> {
    pub(super) fn trait_impl(&self) -> TokenStream {
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

    pub(super) fn method(&self, method: &Method) -> TokenStream {
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
            use #rt::__private::{CloneNever as _, CloneViaClone as _, DiffNone as _, DiffViaSerde as _, ProbeAny as _, ProbeResult as _, ProbeResultDebug as _, RefuseNever as _, RefuseViaFrom as _};
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
    pub(super) fn key_text(&self, method: &Method) -> TokenStream {
        let rt = self.rt;
        if method.key.is_none() {
            return quote!(::core::option::Option::None);
        }
        let key = self.key_expr(method);
        quote!((#key).map(#rt::RoutingKey::render))
    }

    /// The key that orders the method's writes (lane and stripe):
    /// `Some(&key as &dyn RoutingKey)` or `None`.
    pub(super) fn key_expr(&self, method: &Method) -> TokenStream {
        self.key_ref(method.key.as_ref())
    }

    /// The key whose phase routes the call: the tenant if the method names
    /// one, else the key.
    pub(super) fn route_key_expr(&self, method: &Method) -> TokenStream {
        self.key_ref(method.tenant.as_ref().or(method.key.as_ref()))
    }

    /// A call of the method on one store, awaited when the method is async.
    pub(super) fn call(&self, method: &Method, side: Side, set: ArgSet) -> TokenStream {
        self.call_inner(method, side, set, method.flavor.is_async())
    }

    /// A call of the method on one store; `awaited` appends `.await`.
    pub(super) fn call_inner(
        &self,
        method: &Method,
        side: Side,
        set: ArgSet,
        awaited: bool,
    ) -> TokenStream {
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
    pub(super) fn dispatch(&self, method: &Method, store: TokenStream, set: ArgSet) -> TokenStream {
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
    pub(super) fn copies_of_values(&self, method: &Method) -> TokenStream {
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
    pub(super) fn copies_of_mut_refs(&self, method: &Method) -> TokenStream {
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
    pub(super) fn command_value(&self, method: &Method, consume_copies: bool) -> TokenStream {
        let command = &self.m.command;
        let variant = &method.variant;
        let fields = self.variant_fields(method, consume_copies);
        quote!(#command::#variant { #(#fields),* })
    }

    /// `id: value` for each argument of an enum variant. `consume_copies`:
    /// by-value arguments are moved out of their copies (otherwise cloned
    /// from them).
    pub(super) fn variant_fields(&self, method: &Method, consume_copies: bool) -> Vec<TokenStream> {
        let rt = self.rt;
        method
            .args
            .iter()
            .map(|arg| {
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
            })
            .collect()
    }

    /// The body of a write method: thin dispatch into the runtime's write
    /// path (`dualwrite_runtime::WriteTicket`), which routes, orders,
    /// counts and dead-letters. For `fn put(&self, key: u64, value: u64)`:
    ///
    /// ```text
    /// let mut __dw_w = self.core.begin_write("put", Some(&key), Some(&key), can_refuse);
    /// if let Some(refused) = __dw_w.refused() { return <refusal as the return type> }
    /// let Some(_) = __dw_w.secondary() else { /* primary only */ };
    /// let __dw_copy_value = keep(&value);                 // for the second store
    /// let __dw_journal = __dw_w.outbox_scope(|| KvWrite::Put { .. }); // outbox: the record, before the call
    /// let __dw_ret = match __dw_w.primary() { Old => old.put(key, value), New => .. };
    /// if !__dw_w.primary_done(ok(&__dw_ret)) { return __dw_ret; }
    /// if __dw_w.is_async() { __dw_w.submit(KvWrite::Put { .. }); return __dw_ret; }
    /// let mut __dw_w = __dw_w.arm(KvWrite::Put { .. });   // dead letter if dropped
    /// match __dw_w.run_secondary(|| match secondary { .. }) { .. }
    /// ```
    pub(super) fn write_body(&self, method: &Method) -> TokenStream {
        let rt = self.rt;
        let out = &method.output;
        let key = self.key_expr(method);
        let route_key = self.route_key_expr(method);
        let name = method_name(method);
        let is_async = method.flavor.is_async();
        let primary = self.dispatch(method, quote!(__dw_w.primary()), ArgSet::Caller);
        let copies = self.copies_of_values(method);
        let mut_copies = self.copies_of_mut_refs(method);
        // A refusal is returned at once, in the method's error type.
        let refuse = quote! {
            match (&&#rt::__private::RefuseProbe::<#out>::new()).dw_refuse(__dw_refused) {
                ::core::option::Option::Some(__dw_ret) => return __dw_ret,
                ::core::option::Option::None => ::core::unreachable!("a refusal is only returned when the method can return it"),
            }
        };
        let begin = if is_async {
            quote! {
                let __dw_hold = self.core.begin_write_async(self.core.key_hash(#key)).await;
                let mut __dw_w = match __dw_hold.route(#name, #route_key).admit(__dw_can_refuse).await {
                    ::core::result::Result::Ok(__dw_w) => __dw_w,
                    ::core::result::Result::Err(__dw_refused) => #refuse,
                };
            }
        } else {
            quote! {
                let mut __dw_w = self.core.begin_write(#name, #key, #route_key, __dw_can_refuse);
                if let ::core::option::Option::Some(__dw_refused) = __dw_w.refused() {
                    #refuse
                }
            }
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
        let key_text_early = if method.in_command {
            quote!()
        } else {
            // Rendered before the primary call may consume the key.
            let text = self.key_text(method);
            quote!(let __dw_key_text: ::core::option::Option<::std::string::String> = #text;)
        };
        let arm = if method.in_command {
            let command = self.command_value(method, false);
            quote!(let mut __dw_w = __dw_w.arm(#command);)
        } else {
            quote!(let mut __dw_w = __dw_w.arm_untracked(__dw_key_text);)
        };
        // A blocking method whose secondary call is bounded
        // (`with_blocking_secondary_timeout`): the runtime applies a copy of
        // the command on a helper thread and stops waiting at the deadline.
        let bounded = if !is_async && method.in_command && !self.owned {
            quote! {
                if __dw_w.is_bounded() {
                    return match __dw_w.run_secondary_bounded() {
                        ::core::option::Option::None => __dw_ret,
                        ::core::option::Option::Some(__dw_refused) => {
                            match (&&#rt::__private::RefuseProbe::<#out>::new()).dw_refuse(__dw_refused) {
                                ::core::option::Option::Some(__dw_err) => __dw_err,
                                ::core::option::Option::None => {
                                    #rt::__private::strong_unreported(#name);
                                    __dw_ret
                                }
                            }
                        }
                    };
                }
            }
        } else {
            quote!()
        };
        // Under the outbox strategy, the journal record is made before the
        // primary call, so the store can journal it in its own transaction
        // (blocking methods whose command holds the arguments as they are
        // before the call).
        let outbox_scope = if !is_async
            && method.in_command
            && !self.owned
            && !method
                .args
                .iter()
                .any(|arg| matches!(arg.mode, ArgMode::RefMut { .. }))
        {
            let command = self.command_value(method, false);
            quote!(let __dw_journal = __dw_w.outbox_scope(|| #command);)
        } else {
            quote!()
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
            #begin
            let ::core::option::Option::Some(__dw_secondary) = __dw_w.secondary() else {
                let __dw_ret: #out = #primary;
                let _ = __dw_w.primary_done(!(&&&#rt::__private::Probe(&__dw_ret)).dw_failed());
                return __dw_ret;
            };
            #key_text_early
            #copies
            #outbox_scope
            let __dw_ret: #out = #primary;
            if !__dw_w.primary_done(!(&&&#rt::__private::Probe(&__dw_ret)).dw_failed()) {
                return __dw_ret;
            }
            #mut_copies
            #async_branch
            #arm
            #bounded
            let __dw_ret2: ::core::option::Option<#out> = #secondary_call;
            match __dw_ret2 {
                ::core::option::Option::None => match __dw_w.take_refusal() {
                    // Strong mode, timed out: fail the call if the error
                    // type can say so.
                    ::core::option::Option::Some(__dw_refused) => {
                        match (&&#rt::__private::RefuseProbe::<#out>::new()).dw_refuse(__dw_refused) {
                            ::core::option::Option::Some(__dw_err) => __dw_err,
                            ::core::option::Option::None => {
                                #rt::__private::strong_unreported(#name);
                                __dw_ret
                            }
                        }
                    }
                    ::core::option::Option::None => __dw_ret,
                },
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

    pub(super) fn read_body(&self, method: &Method) -> TokenStream {
        let rt = self.rt;
        let out = &method.output;
        let key = self.key_expr(method);
        let begin = self.begin_read(method);
        let primary = self.dispatch(method, quote!(__dw_route.primary), ArgSet::Caller);
        if matches!(method.compare, Compare::Skip) {
            return quote! {
                #begin
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
        let cmp = self.comparator(method);
        let background = if self.has_read_enum() && method.in_shadow {
            let read_value = self.read_value(method);
            quote! {
                if let ::core::option::Option::Some(__dw_runner) = &self.shadow {
                    if (&&#rt::__private::CloneProbe::<#out>::new()).dw_can_clone() {
                        let __dw_window = self.core.shadow_begin(#key);
                        #copies
                        let __dw_ret: #out = #primary;
                        #mut_copies
                        if (&&&#rt::__private::Probe(&__dw_ret)).dw_value().is_some() {
                            if let ::core::option::Option::Some(__dw_answer) =
                                (&&#rt::__private::CloneProbe::<#out>::new()).dw_try_clone(&__dw_ret)
                            {
                                __dw_runner.submit(#read_value, __dw_shadow, __dw_window);
                            }
                        }
                        return __dw_ret;
                    }
                }
            }
        } else {
            quote!()
        };
        quote! {
            #begin
            if let ::core::option::Option::Some(__dw_shadow) = __dw_route.shadow {
                if self.core.should_shadow() {
                    #background
                    let __dw_key_text: ::core::option::Option<::std::string::String> = #key_text;
                    #copies
                    #mut_copies
                    let _ = __dw_shadow;
                    let __dw_window = self.core.shadow_begin(#key);
                    #both
                    // A write of the key in flight or pending in the lanes
                    // means the stores cannot agree yet: not compared.
                    if !__dw_route.comparable(__dw_window) {
                        return __dw_ret;
                    }
                    if let ::core::option::Option::Some(__dw_a) = (&&&#rt::__private::Probe(&__dw_ret)).dw_value() {
                        let __dw_outcome = match (&&&#rt::__private::Probe(&__dw_other)).dw_value() {
                            ::core::option::Option::Some(__dw_b) => {
                                if #cmp {
                                    #rt::Comparison::Matched
                                } else {
                                    #rt::__private::mismatch((&&#rt::__private::DiffProbe(__dw_a, __dw_b)).dw_diff())
                                }
                            }
                            ::core::option::Option::None => #rt::Comparison::ShadowFailed(
                                (&&&#rt::__private::Probe(&__dw_other)).dw_error().unwrap_or_default(),
                            ),
                        };
                        __dw_route.record_comparison(
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

    pub(super) fn passthrough_body(&self, method: &Method) -> TokenStream {
        let begin = self.begin_read(method);
        let primary = self.dispatch(method, quote!(__dw_route.primary), ArgSet::Caller);
        quote! {
            #begin
            #primary
        }
    }

    /// Routes a read and opens its span: `__dw_route`, a `ReadCall` (whose
    /// span stays entered only in a blocking method).
    fn begin_read(&self, method: &Method) -> TokenStream {
        let route_key = self.route_key_expr(method);
        let name = method_name(method);
        if method.flavor.is_async() {
            quote!(let __dw_route = self.core.begin_async_read(#name, #route_key);)
        } else {
            quote!(let __dw_route = self.core.begin_read(#name, #route_key);)
        }
    }
}

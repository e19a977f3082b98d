//! The adapter struct and its inherent methods: constructors, store access,
//! stats, strategy builders, flush, shutdown and dead letters.
//!
//! ```text
//! pub struct UserStoreDualWrite<Old, New> { old: Arc<Old>, new: Arc<New>, core: DualWriteCore<UserStoreWrite> }
//! impl<Old, New> UserStoreDualWrite<Old, New> {
//!     pub fn new(old: Old, new: New, migration: Migration) -> Self { .. }
//!     pub fn flush(&self, timeout: Duration) -> Result<(), FlushError> { self.core.flush(timeout) }
//!     ..
//! }
//! impl<Old: UserStore + Send + Sync + 'static, New: ..> UserStoreDualWrite<Old, New> {
//!     pub fn with_async_secondary(self, config: LaneConfig) -> Self { /* start lanes that apply commands */ }
//! }
//! ```

use proc_macro2::TokenStream;
use quote::quote;

use super::*;

impl Expander<'_> {
    pub(super) fn adapter_struct(&self) -> TokenStream {
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
        let shadow_field = if self.has_read_enum() {
            let reads = &m.reads;
            quote!(shadow: ::core::option::Option<#rt::ShadowRunner<#reads>>,)
        } else {
            quote!()
        };
        // Struct declarations take bounds in angle brackets or where clauses
        // alike; keep the trait's where clause.
        quote! {
            #[doc = #doc]
            #vis struct #adapter #impl_generics #where_clause {
                old: #old_ty,
                new: #new_ty,
                core: #rt::DualWriteCore<#cmd_ty>,
                #shadow_field
            }
        }
    }

    pub(super) fn adapter_inherent(&self) -> TokenStream {
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
        let shadow_init = if self.has_read_enum() {
            quote!(shadow: ::core::option::Option::None)
        } else {
            quote!()
        };
        let core_init = self.core_init();
        let shadow_flush = if self.has_read_enum() {
            quote! {
                /// Waits until the background shadow comparisons queued before this call are done,
                /// or `timeout` passes; whether they are. True at once without
                /// [`with_background_shadow`](Self::with_background_shadow).
                #vis fn flush_shadow(&self, timeout: ::core::time::Duration) -> bool {
                    self.shadow.as_ref().is_none_or(|runner| runner.flush(timeout))
                }
            }
        } else {
            quote!()
        };
        let store_access = if self.owned {
            quote! {
                /// Builds the adapter over the two stores, with the synchronous,
                /// tolerant strategy (see [`with_sync_mode`](Self::with_sync_mode)).
                #vis fn new(old: Old, new: New, migration: #rt::Migration) -> Self {
                    Self { old, new, core: #core_init, #shadow_init }
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
                    Self { old, new, core: #core_init, #shadow_init }
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

                /// Keeps at most `capacity` dead letters (default 100 000): beyond that the
                /// oldest is evicted, logged at error level and counted. Call it before
                /// `with_async_secondary`.
                #[must_use]
                #vis fn with_dead_letter_capacity(mut self, capacity: usize) -> Self {
                    self.core.set_dead_letter_capacity(capacity);
                    self
                }

                /// Bounds the secondary call an async method makes on the caller's path in
                /// the synchronous strategy (default 30 s; `None` waits for ever): at the
                /// deadline the call is dropped and the write kept as a dead letter.
                #[must_use]
                #vis fn with_secondary_timeout(mut self, timeout: ::core::option::Option<::core::time::Duration>) -> Self {
                    self.core.set_secondary_timeout(timeout);
                    self
                }

                #shadow_flush

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

    pub(super) fn async_constructor(&self) -> TokenStream {
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
        let background_shadow = if self.has_read_enum() {
            let reads = &m.reads;
            let any_async = m.shadow_reads().any(|method| method.flavor.is_async());
            let shadow = |store: TokenStream| {
                if any_async {
                    quote!(worker.block_on(read.shadow(&*#store)))
                } else {
                    quote!(read.shadow(&*#store))
                }
            };
            let shadow_old = shadow(quote!(old));
            let shadow_new = shadow(quote!(new));
            quote! {
                /// Compares shadow reads off the caller's path: the caller gets the
                /// authoritative store's answer at once, and worker threads read the other
                /// store and compare (a full queue drops the comparison and counts it in
                /// `shadow_dropped`). Without it, both reads are made on the caller's path.
                #[must_use]
                #vis fn with_background_shadow(mut self, config: #rt::ShadowConfig) -> Self
                where
                    #reads: ::core::marker::Send + 'static,
                {
                    let old = ::std::sync::Arc::clone(&self.old);
                    let new = ::std::sync::Arc::clone(&self.new);
                    self.shadow = ::core::option::Option::Some(#rt::ShadowRunner::start(
                        config,
                        self.core.shadow_context(),
                        move |worker: &#rt::ShadowWorker, read: &#reads, store: #rt::Store| {
                            let _ = worker;
                            match store {
                                #rt::Store::Old => #shadow_old,
                                #rt::Store::New => #shadow_new,
                            }
                        },
                    ));
                    self
                }
            }
        } else {
            quote!()
        };
        // Blocking traits: the synchronous strategy's secondary call can be
        // bounded by running it on a helper thread.
        let blocking_timeout = if any_async {
            quote!()
        } else {
            quote! {
                /// Bounds the secondary call of the synchronous strategy (default: none).
                /// With a bound, each secondary write is made on a helper thread (a
                /// copy of the write's command applied to the shared store) and the
                /// caller stops waiting at the deadline: the write is kept as a dead
                /// letter, the strong mode fails the call with
                /// `WriteRefused::SecondaryTimedOut`, and the abandoned call counts as
                /// pending until it returns (later writes of its key are dead-lettered
                /// until then, so they cannot land before it). The hop costs a few
                /// microseconds a write.
                #[must_use]
                #vis fn with_blocking_secondary_timeout(
                    mut self,
                    timeout: ::core::option::Option<::core::time::Duration>,
                ) -> Self {
                    let old = ::std::sync::Arc::clone(&self.old);
                    let new = ::std::sync::Arc::clone(&self.new);
                    self.core.set_blocking_secondary_timeout(
                        timeout,
                        move |target: #rt::Store, command: #cmd_ty| match target {
                            #rt::Store::Old => command.apply(&*old),
                            #rt::Store::New => command.apply(&*new),
                        },
                    );
                    self
                }
            }
        };
        quote! {
            impl #impl_generics #adapter #ty_generics where #(#preds),* {
                #blocking_timeout

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

                #background_shadow
            }
        }
    }

    /// The adapter's core, told the trait's name and routed methods (for
    /// metric labels and span fields):
    ///
    /// ```text
    /// DualWriteCore::for_trait(migration, TraitInfo {
    ///     name: "UserStore", writes: &["insert"], reads: &["get", "ping"],
    /// })
    /// ```
    fn core_init(&self) -> TokenStream {
        let rt = self.rt;
        let name = self.m.ident.to_string();
        let name = name.strip_prefix("r#").unwrap_or(&name).to_owned();
        let of = |write: bool| -> Vec<String> {
            self.m
                .routed()
                .filter(|method| (method.kind == MethodKind::Write) == write)
                .map(method_name)
                .collect()
        };
        let (writes, reads) = (of(true), of(false));
        quote! {
            #rt::DualWriteCore::for_trait(
                migration,
                #rt::TraitInfo { name: #name, writes: &[#(#writes),*], reads: &[#(#reads),*] },
            )
        }
    }
}

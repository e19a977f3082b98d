//! The adapter's outbox, relay and change-data-capture builders:
//! `with_outbox`, `with_outbox_relay` and `with_cdc`, thin dispatch into
//! `DualWriteCore::start_outbox`, `DualWriteCore::start_outbox_relay` and
//! `DualWriteCore::start_cdc` (the journal, the appliers, the relays, the
//! follower and the write path are in `dualwrite_runtime::outbox` and
//! `dualwrite_runtime::cdc`).
//!
//! ```text
//! impl<Old: UserStore + Send + Sync + 'static, New: ..> UserStoreDualWrite<Old, New> {
//!     pub fn with_outbox(self, journal: Arc<dyn Journal>, config: OutboxConfig) -> Result<Self, OutboxError>
//!     where OutboxCommand<Old>: JournalReady<UserStoreWrite>   // serde, checked at the call
//!     { /* start the appliers, which apply commands to the secondary store */ }
//!     pub fn with_cdc(self, journal: Arc<dyn Journal>, cdc: Cdc<UserStoreWrite>, config: OutboxConfig) -> Result<Self, CdcError>
//!     where OutboxCommand<Old>: JournalReady<UserStoreWrite>
//!     { /* the same appliers, fed by the follower of the old database */ }
//! }
//! ```

use proc_macro2::TokenStream;
use quote::quote;

use super::*;

impl Expander<'_> {
    pub(super) fn outbox_constructor(&self) -> TokenStream {
        let m = self.m;
        let rt = self.rt;
        let vis = &m.vis;
        let adapter = &m.adapter;
        let cmd_ty = &self.cmd_ty;
        let generics = adapter_generics(&m.item);
        let (impl_generics, ty_generics, _) = generics.split_for_impl();
        let doc = quote! {
            /// Keeps each secondary write in a durable outbox journal before the call
            /// returns, and applies the journal to the secondary store from applier
            /// threads (per-key order, retries with backoff, dead letters kept in the
            /// journal); a new adapter over the same journal resumes what a crash left
            /// pending. A primary store that keeps the journal in its own database can
            /// journal the write in its own transaction (`outbox::WriteContext`).
            /// Needs `#[dual_write(serde)]`. Fails when the journal cannot be read.
        };
        let signature = quote! {
            #vis fn with_outbox(
                mut self,
                journal: ::std::sync::Arc<dyn #rt::outbox::Journal>,
                config: #rt::outbox::OutboxConfig,
            ) -> ::core::result::Result<Self, #rt::outbox::OutboxError>
        };
        let cdc_doc = quote! {
            /// Change data capture: writes reach the old (primary) store only, and a
            /// follower reads its change stream (`cdc.source`), maps each row change
            /// to a write command (`cdc`'s function) and journals it; the outbox's
            /// appliers apply the journal to the new store (per-key order, retries,
            /// dead letters kept in the journal). Phase changes and flushes have the
            /// follower catch up first. Needs `#[dual_write(serde)]`. Fails when the
            /// journal cannot be read or the source cannot be opened.
        };
        let cdc_signature = quote! {
            #vis fn with_cdc(
                mut self,
                journal: ::std::sync::Arc<dyn #rt::outbox::Journal>,
                cdc: #rt::cdc::Cdc<#cmd_ty>,
                config: #rt::outbox::OutboxConfig,
            ) -> ::core::result::Result<Self, #rt::cdc::CdcError>
        };
        let relay_doc = quote! {
            /// Like `with_outbox`, with the journal relayed to a message broker:
            /// records are published (per key partition, in journal order) and the
            /// broker's consumers apply them to the secondary store with explicit
            /// acks (e.g. `outbox::nats::NatsConfig`, feature `outbox-nats` of the
            /// runtime). Fails when the journal cannot be read or the relay's
            /// configuration is not valid; an unreachable broker is not an error
            /// (records wait in the journal).
        };
        let relay_signature = quote! {
            #vis fn with_outbox_relay(
                mut self,
                journal: ::std::sync::Arc<dyn #rt::outbox::Journal>,
                config: #rt::outbox::OutboxConfig,
                relay: impl #rt::outbox::OutboxRelay + 'static,
            ) -> ::core::result::Result<Self, #rt::outbox::OutboxError>
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
                    #signature
                    where
                        #rt::__private::MutReceiverWrites<Old, New>: #rt::__private::SharedReceivers,
                    {
                        let _ = (journal, config);
                        ::core::result::Result::Ok(self)
                    }

                    #cdc_doc
                    #cdc_signature
                    where
                        #rt::__private::MutReceiverWrites<Old, New>: #rt::__private::SharedReceivers,
                    {
                        let _ = (journal, cdc, config);
                        ::core::result::Result::Ok(self)
                    }

                    #relay_doc
                    #relay_signature
                    where
                        #rt::__private::MutReceiverWrites<Old, New>: #rt::__private::SharedReceivers,
                    {
                        let _ = (journal, config, relay);
                        ::core::result::Result::Ok(self)
                    }
                }
            };
        }
        let mut preds = self.base_predicates(true);
        preds.push(quote!(Old: ::core::marker::Send + ::core::marker::Sync + 'static));
        preds.push(quote!(New: ::core::marker::Send + ::core::marker::Sync + 'static));
        preds.push(quote!(#cmd_ty: ::core::marker::Send + 'static));
        let any_async = m.commands().any(|c| c.flavor.is_async());
        // The applier's thread runs the call: async stores on the applier's
        // runtime under the attempt timeout, blocking ones directly.
        let apply = |store: TokenStream| {
            if any_async {
                quote!(ctx.block_on(command.apply(&*#store)))
            } else {
                quote!(command.apply(&*#store))
            }
        };
        let apply_old = apply(quote!(old));
        let apply_new = apply(quote!(new));
        let applier = quote! {
            move |ctx: &#rt::LaneContext, target: #rt::Store, command: &#cmd_ty| {
                let _ = ctx;
                match target {
                    #rt::Store::Old => #apply_old,
                    #rt::Store::New => #apply_new,
                }
            }
        };
        quote! {
            impl #impl_generics #adapter #ty_generics where #(#preds),* {
                #doc
                #signature
                where
                    #rt::__private::OutboxCommand<Old>: #rt::__private::JournalReady<#cmd_ty>,
                {
                    let old = ::std::sync::Arc::clone(&self.old);
                    let new = ::std::sync::Arc::clone(&self.new);
                    self.core.start_outbox(
                        journal,
                        config,
                        <#rt::__private::OutboxCommand<Old> as #rt::__private::JournalReady<#cmd_ty>>::codec(),
                        #applier,
                    )?;
                    ::core::result::Result::Ok(self)
                }

                #relay_doc
                #relay_signature
                where
                    #rt::__private::OutboxCommand<Old>: #rt::__private::JournalReady<#cmd_ty>,
                {
                    let old = ::std::sync::Arc::clone(&self.old);
                    let new = ::std::sync::Arc::clone(&self.new);
                    self.core.start_outbox_relay(
                        journal,
                        config,
                        <#rt::__private::OutboxCommand<Old> as #rt::__private::JournalReady<#cmd_ty>>::codec(),
                        ::std::boxed::Box::new(relay),
                        #applier,
                    )?;
                    ::core::result::Result::Ok(self)
                }

                #cdc_doc
                #cdc_signature
                where
                    #rt::__private::OutboxCommand<Old>: #rt::__private::JournalReady<#cmd_ty>,
                {
                    let old = ::std::sync::Arc::clone(&self.old);
                    let new = ::std::sync::Arc::clone(&self.new);
                    self.core.start_cdc(
                        journal,
                        config,
                        <#rt::__private::OutboxCommand<Old> as #rt::__private::JournalReady<#cmd_ty>>::codec(),
                        cdc,
                        #applier,
                    )?;
                    ::core::result::Result::Ok(self)
                }
            }
        }
    }
}

//! The rules a `#[dual_write]` trait must follow, checked on its built model.
//!
//! [`Built`] model + `ItemTrait` -> spanned errors in a [`Ctxt`]: every rule
//! about what [`model::build`](crate::model::build) read (option combinations,
//! receivers, qualifiers, keys naming arguments, unsupported items) runs here,
//! in the order of the trait: rules of the whole trait, then each item's in
//! declaration order, then the trait-level `key` and `tenant`, which need
//! every method. Options that do not parse are reported by `build`, filed
//! under the same [`Place`] so that each item's errors stay together.

use syn::{Attribute, FnArg, ItemTrait, TraitItem, TraitItemFn};

use crate::attr::{self, KeyPath, MethodAttrs};
use crate::ctxt::{Ctxt, Place};
use crate::model::{
    Built, FnRead, KindSource, Method, MethodKind, TraitModel, Unbuilt, missing_part,
    rewritten_by_async_trait, takes_all,
};

/// Runs every rule over `built` (the model of `item`), recording an error
/// spanned on the offending tokens for each one broken.
pub(crate) fn check(cx: &mut Ctxt, item: &ItemTrait, built: &Built) {
    let model = &built.model;
    cx.at(Place::Trait);
    check_names(cx, built);
    check_trait(cx, item);

    let mut fns = built.fns.iter();
    for (index, trait_item) in item.items.iter().enumerate() {
        cx.at(Place::Item(index));
        match trait_item {
            TraitItem::Fn(f) => {
                let read = fns.next().expect("`build` reads every `fn` of the trait");
                check_fn(cx, model, f, read);
            }
            TraitItem::Type(t) => {
                reject_misplaced(cx, &t.attrs, "an associated type");
                if !t.generics.params.is_empty() || t.generics.where_clause.is_some() {
                    cx.error_spanned_by(
                        &t.ident,
                        "#[dual_write] does not support generic associated types; use a plain associated type or a trait parameter",
                    );
                }
            }
            TraitItem::Const(c) => {
                reject_misplaced(cx, &c.attrs, "an associated constant");
                if !c.generics.params.is_empty() {
                    cx.error_spanned_by(
                        &c.ident,
                        "#[dual_write] does not support generic associated constants",
                    );
                }
            }
            TraitItem::Macro(m) => cx.error_spanned_by(
                &m.mac,
                "#[dual_write] cannot see inside a macro invocation in a trait; write the methods out",
            ),
            other => {
                cx.error_spanned_by(other, "#[dual_write] does not understand this trait item");
            }
        }
    }

    cx.at(Place::AllMethods);
    check_default_keys(cx, model);
}

/// The adapter and the command enum need different names.
fn check_names(cx: &mut Ctxt, built: &Built) {
    let (model, args) = (&built.model, &built.args);
    if model.adapter == model.command {
        // Point at a name the user wrote: a default name has no span of its own.
        let written = args.command.as_ref().or(args.adapter.as_ref());
        cx.error_spanned_by(
            written.unwrap_or(&model.command),
            format_args!(
                "#[dual_write] would name both the adapter struct and the command enum `{}`; give them different names with `adapter = ..` and `command = ..`",
                model.adapter
            ),
        );
    }
}

/// Rules on the trait's declaration.
fn check_trait(cx: &mut Ctxt, item: &ItemTrait) {
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
}

/// Rules on one method, in the order they were always reported. A method the
/// model could not be built for gets the reason, and only the rules that
/// hold without a model.
fn check_fn(cx: &mut Ctxt, model: &TraitModel, f: &TraitItemFn, read: &FnRead) {
    let attrs = &read.attrs;
    let sig = &f.sig;
    let ident = &sig.ident;

    for input in &sig.inputs {
        let attrs = match input {
            FnArg::Receiver(r) => &r.attrs,
            FnArg::Typed(t) => &t.attrs,
        };
        reject_misplaced(cx, attrs, "an argument");
    }

    let (kind, method) = match read.built {
        Ok(index) => {
            let method = &model.methods[index];
            (method.kind, Some(method))
        }
        // Reported once for the whole trait by `check_trait`.
        Err(Unbuilt::RewrittenByAsyncTrait) => return,
        Err(Unbuilt::Receiver) => {
            match sig.receiver() {
                Some(receiver) => cx.error_spanned_by(
                    receiver,
                    format_args!(
                        "#[dual_write] cannot route `{ident}` between two stores through this receiver; take `&self` or `&mut self`{}",
                        if attrs.kind.is_some() { "" } else { ", or give the method a default body" }
                    ),
                ),
                None => cx.error_spanned_by(
                    ident,
                    format_args!(
                        "#[dual_write] cannot route `{ident}`: it has no `self` receiver; take `&self` or `&mut self`{}, or move it out of the trait",
                        if attrs.kind.is_some() { "" } else { ", give it a default body" }
                    ),
                ),
            }
            return;
        }
        Err(Unbuilt::UnknownKind) => {
            // An option that did not parse may have been the kind: its parse
            // error is enough.
            if !attrs.invalid {
                cx.error_spanned_by(
                    ident,
                    format_args!(
                        "cannot tell whether `{ident}` reads or writes; mark it #[dual_write(write)], #[dual_write(read)] or #[dual_write(passthrough)]"
                    ),
                );
            }
            return;
        }
        Err(Unbuilt::FutureOutput(kind)) => (kind, None),
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
                ident,
                "#[dual_write] cannot route an `unsafe fn`; wrap the unsafe call in a safe method",
            );
        }
        if sig.abi.is_some() {
            cx.error_spanned_by(&sig.abi, "#[dual_write] cannot route an `extern` method");
        }
    }

    let Some(method) = method else {
        // `Unbuilt::FutureOutput`: the only reason left.
        cx.error_spanned_by(
            &sig.output,
            "the returned future must name its output: `impl Future<Output = T>`",
        );
        return;
    };

    check_key_names_arguments(cx, "key", method, attrs.key.as_ref());
    check_key_names_arguments(cx, "tenant", method, attrs.tenant.as_ref());
    check_compare(cx, method, attrs);
}

/// A method's own `key` or `tenant` (`option`) names its arguments.
fn check_key_names_arguments(cx: &mut Ctxt, option: &str, method: &Method, own: Option<&KeyPath>) {
    let Some(key) = own else { return };
    let Some(missing) = missing_part(&method.args, key) else {
        return;
    };
    let ident = &method.ident;
    let names: Vec<String> = method
        .args
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
}

/// `compare` and `no_compare`: not both, and on reads only.
fn check_compare(cx: &mut Ctxt, method: &Method, attrs: &MethodAttrs) {
    if let (Some(_), Some(span)) = (&attrs.compare, attrs.no_compare) {
        cx.syn_error(syn::Error::new(
            span,
            "#[dual_write] `compare` and `no_compare` contradict each other: keep `compare = ..` to compare with a function, or `no_compare` to skip the comparison",
        ));
    }
    let kind = method.kind;
    if kind != MethodKind::Read && kind != MethodKind::Inherited {
        let why = match method.kind_source {
            KindSource::Name => " (by its name)",
            KindSource::MutReceiver => " (it takes `&mut self`)",
            KindSource::Attribute | KindSource::DefaultBody => "",
        };
        let message = |option: &str| {
            format!(
                "`{option}` applies to read methods only, and #[dual_write] routes `{}` as a {}{why}; remove `{option}`, or mark the method #[dual_write(read)] if it only reads",
                method.ident,
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
}

/// A trait-level `key` or `tenant` is taken by at least one method.
fn check_default_keys(cx: &mut Ctxt, model: &TraitModel) {
    for (option, key) in [
        ("key", &model.default_key),
        ("tenant", &model.default_tenant),
    ] {
        let Some(key) = key else { continue };
        let used = model.methods.iter().any(|m| takes_all(&m.args, key));
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
}

/// `#[dual_write(...)]` where it has no meaning (associated types, constants,
/// arguments).
fn reject_misplaced(cx: &mut Ctxt, attrs: &[Attribute], what: &str) {
    for attr in attrs.iter().filter(|attr| attr::is_dual_write_attr(attr)) {
        cx.error_spanned_by(
            attr,
            format_args!(
                "#[dual_write] has no meaning on {what}; put it on the trait or on a method"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;
    use syn::parse_quote;

    use super::*;
    use crate::model::build;

    /// The messages `check` records for `item`, after asserting that
    /// building it recorded none (its options all parse).
    fn check_errors(args: TokenStream, item: &ItemTrait) -> Vec<String> {
        let mut cx = Ctxt::new();
        let args = attr::parse_trait_args(&mut cx, args);
        let built = build(&mut cx, args, item);
        assert!(cx.is_empty(), "building recorded errors");
        check(&mut cx, item, &built);
        cx.into_errors().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_valid_trait_passes() {
        let item: ItemTrait = parse_quote! {
            pub trait UserStore {
                fn insert(&self, id: u64, name: String) -> bool;
                #[dual_write(compare = same_user)]
                fn get(&self, id: u64) -> Option<String>;
                fn describe(&self) -> String { String::new() }
            }
        };
        assert_eq!(check_errors(quote!(key = id), &item), Vec::<String>::new());
    }

    #[test]
    fn a_method_of_unknown_kind() {
        let item: ItemTrait = parse_quote! {
            pub trait UserStore {
                fn compute(&self) -> u64;
            }
        };
        assert_eq!(
            check_errors(TokenStream::new(), &item),
            [
                "cannot tell whether `compute` reads or writes; mark it #[dual_write(write)], #[dual_write(read)] or #[dual_write(passthrough)]"
            ]
        );
    }

    #[test]
    fn a_key_that_names_no_argument() {
        let item: ItemTrait = parse_quote! {
            pub trait UserStore {
                #[dual_write(key = (tenant, user.id))]
                fn insert(&self, tenant: u32, account: u64);
            }
        };
        assert_eq!(
            check_errors(TokenStream::new(), &item),
            [
                "`user.id` in #[dual_write(key = (tenant, user.id))] names no argument of `insert`; name one of its arguments: `tenant`, `account`"
            ]
        );
    }

    #[test]
    fn compare_on_a_write() {
        let item: ItemTrait = parse_quote! {
            pub trait UserStore {
                #[dual_write(compare = same_user)]
                fn insert(&self, id: u64);
            }
        };
        assert_eq!(
            check_errors(TokenStream::new(), &item),
            [
                "`compare` applies to read methods only, and #[dual_write] routes `insert` as a write (by its name); remove `compare`, or mark the method #[dual_write(read)] if it only reads"
            ]
        );
    }

    #[test]
    fn adapter_named_like_the_default_command() {
        let item: ItemTrait = parse_quote! {
            pub trait UserStore {
                fn insert(&self, id: u64);
            }
        };
        assert_eq!(
            check_errors(quote!(adapter = UserStoreWrite), &item),
            [
                "#[dual_write] would name both the adapter struct and the command enum `UserStoreWrite`; give them different names with `adapter = ..` and `command = ..`"
            ]
        );
    }

    #[test]
    fn a_trait_key_no_method_takes() {
        let item: ItemTrait = parse_quote! {
            pub trait UserStore {
                fn insert(&self, id: u64);
            }
        };
        assert_eq!(
            check_errors(quote!(tenant = org), &item),
            [
                "trait-level #[dual_write(tenant = org)] matches no method: none takes the argument(s) `org`; name arguments that the methods take, or remove `tenant`"
            ]
        );
    }

    #[test]
    fn errors_of_both_passes_come_in_item_order() {
        // `build` finds the typo on `refresh`, `check` the rules on the trait
        // and on `compute`, which come before it in the trait.
        let item: ItemTrait = parse_quote! {
            pub trait UserStore<Old> {
                fn compute(&self) -> u64;
                #[dual_write(wrte)]
                fn refresh(&self, id: u64);
            }
        };
        let mut cx = Ctxt::new();
        let args = attr::parse_trait_args(&mut cx, TokenStream::new());
        let built = build(&mut cx, args, &item);
        check(&mut cx, &item, &built);
        let errors: Vec<String> = cx.into_errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "#[dual_write] names the adapter's store parameters `Old` and `New`; rename the trait parameter `Old`",
                "cannot tell whether `compute` reads or writes; mark it #[dual_write(write)], #[dual_write(read)] or #[dual_write(passthrough)]",
                "unknown #[dual_write] option `wrte`; expected `write`, `read`, `passthrough`, `key = arg`, `tenant = arg`, `compare = path` or `no_compare`",
            ]
        );
    }
}

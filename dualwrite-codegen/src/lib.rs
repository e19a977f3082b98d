//! Parser, model, validation and expansion of `#[dual_write]` repository
//! traits.
//!
//! One parser, two users: the `#[dual_write]` macro (`dualwrite-macros`) and
//! the `dualwrite-lint` CLI both read traits through [`TraitModel::analyze`] (the
//! macro through [`TraitModel::parse`]), so they always agree on which methods are writes and which argument is a key.
//!
//! The stages, one module each: [`attr`] reads the options, [`model`] builds
//! the model from the syntax, `valid` checks every rule on it
//! (both collect their errors in a [`ctxt::Ctxt`]), [`expand`](crate::expand)
//! generates the code.

pub mod attr;
pub mod classify;
pub mod ctxt;
mod expand;
pub mod model;
mod valid;

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemTrait;

pub use classify::{NameClass, classify_name};
pub use model::{
    Analysis, Annotated, Arg, ArgMode, Compare, Flavor, KindSource, Method, MethodKind, TraitModel,
    annotated,
};

/// Expands `#[dual_write(args)]` on `input`.
///
/// On error the trait is still emitted (without the helper attributes) next
/// to every error found, so the user sees the real problems and not a cascade
/// of "trait not found".
pub fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: ItemTrait = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(_) => {
            let error = expand::not_a_trait(&input);
            return quote!(#input #error);
        }
    };
    match expand_trait(args, &item) {
        Ok(tokens) => tokens,
        Err(errors) => {
            let item = model::strip_helper_attrs(&item);
            let errors = ctxt::to_compile_errors(&errors);
            quote!(#item #errors)
        }
    }
}

/// Expands one parsed trait, or returns every error found in it.
pub fn expand_trait(args: TokenStream, item: &ItemTrait) -> Result<TokenStream, Vec<syn::Error>> {
    let model = TraitModel::parse(args, item)?;
    Ok(expand::expand_model(&model))
}

/// Expands a model that was parsed already.
pub fn expand_model(model: &TraitModel) -> TokenStream {
    expand::expand_model(model)
}

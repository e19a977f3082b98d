//! Error collection: every problem in a trait is reported at once.

use std::fmt::Display;

use proc_macro2::TokenStream;
use quote::ToTokens;

/// Gathers spanned errors while a trait is parsed and validated, so the user
/// sees all of them in one compile.
#[derive(Default)]
pub struct Ctxt {
    errors: Vec<(Place, syn::Error)>,
    place: Place,
}

/// The part of the trait an error is about.
///
/// Errors are reported place by place in this order, and in the order they
/// were found within a place. Options are parsed while the model is built and
/// the rules run afterwards, so the errors of one method come from two passes;
/// the place keeps them together, in the order of the trait's items.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// The trait's options and declaration.
    #[default]
    Trait,
    /// The trait item at this index of `ItemTrait::items`.
    Item(usize),
    /// Rules over every method (a trait-level option that no method takes).
    AllMethods,
}

impl Ctxt {
    /// An empty collector, at [`Place::Trait`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Files the errors recorded from now on under `place`.
    pub fn at(&mut self, place: Place) {
        self.place = place;
    }

    /// Records an error spanned on `tokens`.
    pub fn error_spanned_by<T: ToTokens, M: Display>(&mut self, tokens: T, message: M) {
        self.syn_error(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an error produced by syn.
    pub fn syn_error(&mut self, error: syn::Error) {
        self.errors.push((self.place, error));
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The recorded errors, place by place, each place's in the order they
    /// were found.
    pub fn into_errors(mut self) -> Vec<syn::Error> {
        // Stable: keeps the order of discovery within a place.
        self.errors.sort_by_key(|(place, _)| *place);
        self.errors.into_iter().map(|(_, error)| error).collect()
    }
}

/// Renders errors as `compile_error!` invocations.
pub fn to_compile_errors(errors: &[syn::Error]) -> TokenStream {
    errors.iter().map(syn::Error::to_compile_error).collect()
}

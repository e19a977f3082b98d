//! The `#[dual_write]` attribute macro.
//!
//! This crate is a thin shell around [`dualwrite_codegen::expand`]; depend on
//! `dualwrite-runtime`, which re-exports the macro next to the types the
//! generated code calls.

use proc_macro::TokenStream;

/// Generates a dual-write adapter, a write-command enum and routing glue for a
/// repository trait. See the `dualwrite-runtime` crate documentation.
#[proc_macro_attribute]
pub fn dual_write(args: TokenStream, input: TokenStream) -> TokenStream {
    dualwrite_codegen::expand(args.into(), input.into()).into()
}

//! The audit side of dualwrite: reads Rust sources with the same parser as
//! the `#[dual_write]` macro, so both agree on what a write is, and reports
//! the writes that bypass the adapter.
//!
//! The pipeline of `check` ([`check::run`]): [`walk`] the paths ->
//! [`intake`] each file (size, UTF-8, [`nesting`], all read with the one
//! Rust lexer, [`lex`]) -> in parallel,
//! [`analysis::summarize`] the files that can declare annotated traits, then
//! [`analysis::summarize_with`] the rest, recording only what the
//! [`analysis::Interest`] names -> [`analysis::analyze`] -> [`config`]
//! levels, [`suppress`]ions, test policy, allowed paths, [`baseline`] ->
//! [`output`].

pub mod analysis;
pub mod baseline;
pub mod check;
pub mod cli;
pub mod config;
pub mod error;
pub mod expand;
pub mod finding;
pub mod intake;
pub mod lex;
pub mod nesting;
pub mod output;
pub mod report;
pub mod suppress;
pub mod traits;
pub mod walk;

pub use traits::{AnnotatedTrait, annotated_traits};

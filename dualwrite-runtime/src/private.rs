//! Items used by code that `#[dual_write]` generates. Not a public API: names
//! and signatures here change without notice.

use core::fmt::Debug;
use std::borrow::Borrow;

pub use crate::command::WriteCommand;
pub use crate::key::ViaDebug;

/// Wraps a method's return value so generated code can ask, without knowing
/// its type by name, whether it is a failure and what its success value is.
///
/// Resolution is by auto-ref: generated code calls `(&&&Probe(&ret)).dw_error()`
/// and method lookup picks the most specific of [`ProbeResultDebug`] (a
/// `Result` whose error is `Debug`), [`ProbeResult`] (any `Result`) and
/// [`ProbeAny`] (every other type, which never fails: `Option<T>`, `()`, `bool`...).
pub struct Probe<'a, T: ?Sized>(pub &'a T);

/// `Result<T, E: Debug>`: the error is rendered with `Debug`.
pub trait ProbeResultDebug {
    /// Whether the call failed (no formatting).
    fn dw_failed(&self) -> bool;
    /// The success value type.
    type Value: ?Sized;
    /// The error as text, if the call failed.
    fn dw_error(&self) -> Option<String>;
    /// The success value, if the call succeeded.
    fn dw_value(&self) -> Option<&Self::Value>;
}

impl<T, E: Debug> ProbeResultDebug for &&Probe<'_, Result<T, E>> {
    type Value = T;
    fn dw_failed(&self) -> bool {
        self.0.is_err()
    }
    fn dw_error(&self) -> Option<String> {
        self.0.as_ref().err().map(|e| format!("{e:?}"))
    }
    fn dw_value(&self) -> Option<&T> {
        self.0.as_ref().ok()
    }
}

/// `Result<T, E>` whose error is not `Debug`: the error's type name is used.
pub trait ProbeResult {
    /// Whether the call failed (no formatting).
    fn dw_failed(&self) -> bool;
    /// The success value type.
    type Value: ?Sized;
    /// The error as text, if the call failed.
    fn dw_error(&self) -> Option<String>;
    /// The success value, if the call succeeded.
    fn dw_value(&self) -> Option<&Self::Value>;
}

impl<T, E> ProbeResult for &Probe<'_, Result<T, E>> {
    type Value = T;
    fn dw_failed(&self) -> bool {
        self.0.is_err()
    }
    fn dw_error(&self) -> Option<String> {
        self.0
            .as_ref()
            .err()
            .map(|_| format!("an error of type `{}`", core::any::type_name::<E>()))
    }
    fn dw_value(&self) -> Option<&T> {
        self.0.as_ref().ok()
    }
}

/// Any other type: the call cannot fail and the whole value is compared.
pub trait ProbeAny {
    /// Whether the call failed (no formatting).
    fn dw_failed(&self) -> bool;
    /// The value type.
    type Value: ?Sized;
    /// Always `None`.
    fn dw_error(&self) -> Option<String>;
    /// Always the value.
    fn dw_value(&self) -> Option<&Self::Value>;
}

impl<T: ?Sized> ProbeAny for Probe<'_, T> {
    type Value = T;
    fn dw_failed(&self) -> bool {
        false
    }
    fn dw_error(&self) -> Option<String> {
        None
    }
    fn dw_value(&self) -> Option<&T> {
        Some(self.0)
    }
}

/// An argument that must be copied: once for the second store, and into the
/// write command that can replay the call.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must implement `Clone`: this argument must reach both stores",
    label = "copied for the second store and for the write command that replays the call",
    note = "derive or implement `Clone` for `{Self}`"
)]
pub trait SecondaryClone {
    /// A copy for the second store.
    fn dw_clone(&self) -> Self;
}

#[diagnostic::do_not_recommend]
impl<T: Clone> SecondaryClone for T {
    #[inline]
    fn dw_clone(&self) -> Self {
        self.clone()
    }
}

/// Clones a by-value argument for the second store.
#[inline]
pub fn keep<T: SecondaryClone>(value: &T) -> T {
    value.dw_clone()
}

/// A by-reference argument that the command enum owns.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must implement `Clone` (or `ToOwned`): the write command that replays this call owns its arguments",
    label = "owned by the write command",
    note = "derive or implement `Clone` for `{Self}`"
)]
pub trait OwnedArg {
    /// The owned form (`String` for `str`, `Vec<T>` for `[T]`, `T` for `T: Clone`).
    type Owned: Borrow<Self>;
    /// An owned copy.
    fn dw_to_owned(&self) -> Self::Owned;
}

#[diagnostic::do_not_recommend]
impl<T: ToOwned + ?Sized> OwnedArg for T {
    type Owned = T::Owned;
    #[inline]
    fn dw_to_owned(&self) -> T::Owned {
        self.to_owned()
    }
}

/// Owned copy of a by-reference argument.
#[inline]
pub fn to_owned<T: OwnedArg + ?Sized>(value: &T) -> T::Owned {
    value.dw_to_owned()
}

/// Borrows an owned command field as the argument type.
#[inline]
pub fn borrow<T: ?Sized, O: Borrow<T>>(owned: &O) -> &T {
    owned.borrow()
}

/// Formats a command field: with `Debug` when the type has it, else by its
/// type name, so the command enum is `Debug` without asking every argument
/// type to be.
pub struct DebugProbe<'a, T>(pub &'a T);

/// A command field that is `Debug`.
pub trait DebugViaDebug<'a> {
    /// The field, formatted with its own `Debug`.
    fn dw_debug(&self) -> DebugField<'a>;
}

impl<'a, T: Debug> DebugViaDebug<'a> for &DebugProbe<'a, T> {
    fn dw_debug(&self) -> DebugField<'a> {
        DebugField::Value(self.0)
    }
}

/// A command field that is not `Debug`.
pub trait DebugViaName<'a> {
    /// The field, shown as `<type name>`.
    fn dw_debug(&self) -> DebugField<'a>;
}

impl<'a, T> DebugViaName<'a> for DebugProbe<'a, T> {
    fn dw_debug(&self) -> DebugField<'a> {
        DebugField::Opaque(core::any::type_name::<T>())
    }
}

/// What [`DebugProbe`] shows.
pub enum DebugField<'a> {
    /// A `Debug` value.
    Value(&'a dyn Debug),
    /// The type name of a value that is not `Debug`.
    Opaque(&'static str),
}

impl Debug for DebugField<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DebugField::Value(value) => value.fmt(f),
            DebugField::Opaque(name) => write!(f, "<{name}>"),
        }
    }
}

/// A read's value compared in the shadow phase.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be compared in the shadow-read phase",
    label = "this read's value is compared between the two stores",
    note = "derive `PartialEq` for `{Self}`, give a comparator with #[dual_write(compare = path::to::fn)], or skip comparison with #[dual_write(no_compare)]"
)]
pub trait ShadowEq {
    /// Whether the two answers agree.
    fn dw_eq(&self, other: &Self) -> bool;
}

#[diagnostic::do_not_recommend]
impl<T: PartialEq + ?Sized> ShadowEq for T {
    #[inline]
    fn dw_eq(&self, other: &Self) -> bool {
        self == other
    }
}

/// Default comparator of shadow reads.
#[inline]
pub fn shadow_eq<T: ShadowEq + ?Sized>(a: &T, b: &T) -> bool {
    a.dw_eq(b)
}

/// Joins the two reads of a shadow comparison (`tokio::join!`).
pub use tokio;

/// Marks a trait whose write methods take `&mut self`.
pub struct MutReceiverWrites<Old: ?Sized, New: ?Sized>(StoresMarker<Old>, StoresMarker<New>);

type StoresMarker<T> = core::marker::PhantomData<fn() -> Box<T>>;

/// Holds only for traits whose writes take `&self`.
#[diagnostic::on_unimplemented(
    message = "async secondary writes need a trait whose routed methods take `&self`",
    label = "this trait has `&mut self` methods",
    note = "the secondary store is shared with background lanes, which cannot hold it while a `&mut self` method borrows it; keep the synchronous strategy (`with_sync_mode`) or give the methods `&self` receivers with interior mutability in the store"
)]
pub trait SharedReceivers {}

/// Names an adapter's old store type, so that the bound of `with_outbox`
/// (the command can be journaled) is checked where it is called, not where
/// the macro defines it (a bound on the command type alone would fail to
/// compile for every trait without `#[dual_write(serde)]`).
pub struct OutboxCommand<Old: ?Sized>(StoresMarker<Old>);

/// Holds when the command `C` can be kept in an outbox journal.
#[diagnostic::on_unimplemented(
    message = "`{C}` cannot be kept in the outbox journal: it must be serialisable",
    label = "the outbox journals this adapter's write commands",
    note = "add `serde` to the trait's `#[dual_write(..)]` attribute and enable the `serde` feature of dualwrite-runtime"
)]
pub trait JournalReady<C> {
    /// How the adapter encodes and decodes its commands.
    fn codec() -> crate::outbox::JournalCodec<C>;
}

#[diagnostic::do_not_recommend]
impl<Old: ?Sized, C: crate::outbox::JournalCommand> JournalReady<C> for OutboxCommand<Old> {
    fn codec() -> crate::outbox::JournalCodec<C> {
        crate::outbox::JournalCodec::of()
    }
}

/// serde, for command enums of traits marked `#[dual_write(serde)]`.
#[cfg(feature = "serde")]
pub use serde;

/// Asks, from the method's return type alone, whether a refused write can be
/// returned to the caller as an error: `Result<T, E>` with
/// `E: From<WriteRefused>` can; anything else cannot (the write then falls
/// back to a dead letter, see `WhenFull::FailCall`). Resolved by auto-ref
/// like [`Probe`].
pub struct RefuseProbe<R>(core::marker::PhantomData<fn() -> R>);

impl<R> RefuseProbe<R> {
    /// The probe for return type `R`.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        RefuseProbe(core::marker::PhantomData)
    }
}

/// `Result<T, E>` whose error converts from [`crate::WriteRefused`].
pub trait RefuseViaFrom {
    /// The method's return type.
    type Ret;
    /// Whether a refusal can be returned.
    fn dw_can_refuse(&self) -> bool;
    /// The refusal as the method's return value.
    fn dw_refuse(&self, refused: crate::WriteRefused) -> Option<Self::Ret>;
}

impl<T, E: From<crate::WriteRefused>> RefuseViaFrom for &RefuseProbe<Result<T, E>> {
    type Ret = Result<T, E>;
    fn dw_can_refuse(&self) -> bool {
        true
    }
    fn dw_refuse(&self, refused: crate::WriteRefused) -> Option<Result<T, E>> {
        Some(Err(E::from(refused)))
    }
}

/// Any other return type: a refusal cannot be expressed.
pub trait RefuseNever {
    /// The method's return type.
    type Ret;
    /// Always false.
    fn dw_can_refuse(&self) -> bool;
    /// Always `None`.
    fn dw_refuse(&self, refused: crate::WriteRefused) -> Option<Self::Ret>;
}

impl<R> RefuseNever for RefuseProbe<R> {
    type Ret = R;
    fn dw_can_refuse(&self) -> bool {
        false
    }
    fn dw_refuse(&self, refused: crate::WriteRefused) -> Option<R> {
        let _ = refused;
        None
    }
}

/// Copies a read's answer for a background shadow comparison when its type
/// is `Clone`; otherwise the comparison runs inline. Resolved by auto-ref
/// like [`Probe`].
pub struct CloneProbe<R>(core::marker::PhantomData<fn() -> R>);

impl<R> CloneProbe<R> {
    /// The probe for answer type `R`.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        CloneProbe(core::marker::PhantomData)
    }
}

/// An answer type that is `Clone`.
pub trait CloneViaClone {
    /// The answer type.
    type Answer;
    /// Whether answers can be copied.
    fn dw_can_clone(&self) -> bool;
    /// A copy of the answer.
    fn dw_try_clone(&self, answer: &Self::Answer) -> Option<Self::Answer>;
}

impl<R: Clone> CloneViaClone for &CloneProbe<R> {
    type Answer = R;
    fn dw_can_clone(&self) -> bool {
        true
    }
    fn dw_try_clone(&self, answer: &R) -> Option<R> {
        Some(answer.clone())
    }
}

/// Any other answer type.
pub trait CloneNever {
    /// The answer type.
    type Answer;
    /// Always false.
    fn dw_can_clone(&self) -> bool;
    /// Always `None`.
    fn dw_try_clone(&self, answer: &Self::Answer) -> Option<Self::Answer>;
}

impl<R> CloneNever for CloneProbe<R> {
    type Answer = R;
    fn dw_can_clone(&self) -> bool {
        false
    }
    fn dw_try_clone(&self, answer: &R) -> Option<R> {
        let _ = answer;
        None
    }
}

/// The field paths at which two answers of a shadow read differ: through
/// `serde` when the answer type is `Serialize` (runtime feature `serde`),
/// else none. Resolved by auto-ref like [`Probe`].
pub struct DiffProbe<'a, T: ?Sized>(pub &'a T, pub &'a T);

/// An answer type that is `Serialize` (implemented with the runtime's
/// `serde` feature).
pub trait DiffViaSerde {
    /// The differing paths (values are never included).
    fn dw_diff(&self) -> Vec<String>;
}

#[cfg(feature = "serde")]
impl<T: serde::Serialize + ?Sized> DiffViaSerde for &DiffProbe<'_, T> {
    fn dw_diff(&self) -> Vec<String> {
        match (serde_json::to_value(self.0), serde_json::to_value(self.1)) {
            (Ok(a), Ok(b)) => crate::read::diff_paths(&a, &b),
            _ => Vec::new(),
        }
    }
}

/// Without `serde` (or for other types), the structure is not known.
pub trait DiffNone {
    /// Always empty.
    fn dw_diff(&self) -> Vec<String>;
}

impl<T: ?Sized> DiffNone for DiffProbe<'_, T> {
    fn dw_diff(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The comparison outcome of two answers that differ: with their differing
/// field paths when they can be found.
pub fn mismatch(fields: Vec<String>) -> crate::Comparison {
    if fields.is_empty() {
        crate::Comparison::Mismatched
    } else {
        crate::Comparison::MismatchedFields(fields)
    }
}

/// Strong mode: the secondary call timed out but the method's error type
/// cannot carry a [`crate::WriteRefused`]; the call returns the primary's
/// result, and this says so loudly.
pub fn strong_unreported(method: &'static str) {
    tracing::error!(
        method,
        "strong mode: the secondary call timed out but the method's error type cannot report it (implement From<WriteRefused>); the call returns the primary's result, the write is a dead letter"
    );
}

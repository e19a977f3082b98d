//! `tracing` spans of routed calls.
//!
//! Every routed call gets a span at debug level, made where the runtime
//! routes it ([`crate::DualWriteCore::begin_write`],
//! [`crate::StripeHold::route`], [`crate::DualWriteCore::begin_read`]); the
//! lanes give each secondary write they apply one too:
//!
//! | span                  | fields                                                         |
//! |-----------------------|----------------------------------------------------------------|
//! | `dualwrite.write`     | `trait`, `method`, `key`, `phase`, `route`, `primary_ok`, `secondary_ok` |
//! | `dualwrite.read`      | `trait`, `method`, `key`, `phase`, `route`                     |
//! | `dualwrite.secondary` | `trait`, `method`, `key`, `target`, `lane` (a lane's job)      |
//!
//! `route` reads `old`, `old -> new` (primary, then secondary) or, for a
//! read, `old ~ new` (answered by Old, compared with New). `primary_ok` and
//! `secondary_ok` are recorded when known. The key is rendered only when a
//! subscriber records the span.
//!
//! The events already logged on the way (a secondary write failed and kept
//! as a dead letter, a retry, a mismatch) happen inside these spans, so a
//! subscriber shows them with the call's trait, method and key.
//!
//! Cost: with debug disabled (no subscriber, or one at info), a call pays
//! one relaxed atomic load (`LevelFilter::current`) and a branch; the span
//! is made out of line only when debug is enabled. A blocking call's span
//! is entered for the whole call; an async call's span is not held entered
//! across its awaits (that would leak it onto whatever the thread runs
//! next): it is entered around the runtime's own logging instead, so the
//! call's events still carry it.

use std::fmt;
use std::mem::ManuallyDrop;

use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
use tracing::{Level, Span};

use crate::key::RoutingKey;
use crate::phase::{Phase, ReadRoute, Store, WriteRoute};

/// Whether call spans are wanted: debug is enabled somewhere. One relaxed
/// atomic load; the span's own callsite then asks the subscriber.
#[inline(always)]
pub(crate) fn enabled() -> bool {
    Level::DEBUG <= STATIC_MAX_LEVEL && Level::DEBUG <= LevelFilter::current()
}

/// The span of one routed call, if debug is enabled: boxed, so a call
/// without one carries a null pointer.
///
/// It has no drop glue (`ManuallyDrop`): its owner closes it with
/// [`CallSpan::close`] on a path it takes anyway when a span exists (a
/// write ticket, on its slow path), so a call without a span pays nothing
/// to drop it (measured: the drop glue of `Span` cost 9 instructions a
/// call, a null check 2). A span never closed is leaked, never closed for
/// the subscriber: every owner closes it.
pub(crate) struct CallSpan(ManuallyDrop<Option<Box<Held>>>);

struct Held {
    span: Span,
    /// Entered when made, exited when dropped (blocking calls).
    entered: bool,
}

impl CallSpan {
    /// No span.
    #[inline(always)]
    pub(crate) const fn none() -> Self {
        CallSpan(ManuallyDrop::new(None))
    }

    /// Keeps `span` unless it is disabled; enters it for good when `enter`.
    fn held(span: Span, enter: bool) -> Self {
        if span.is_disabled() {
            return CallSpan::none();
        }
        if enter {
            span.with_subscriber(|(id, dispatch)| dispatch.enter(id));
        }
        CallSpan(ManuallyDrop::new(Some(Box::new(Held {
            span,
            entered: enter,
        }))))
    }

    /// Whether there is a span.
    #[inline(always)]
    pub(crate) fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// Records a boolean field of the span, if there is one.
    #[inline]
    pub(crate) fn record(&self, field: &'static str, value: bool) {
        if let Some(held) = &*self.0 {
            record(held, field, value);
        }
    }

    /// Exits the span if it was entered when made, and closes it.
    #[inline]
    pub(crate) fn close(&mut self) {
        if let Some(held) = self.0.take() {
            close(held);
        }
    }

    /// Runs `f` inside the span (entering it for `f` if it is not entered
    /// already), so the events `f` logs carry the call's fields.
    #[inline]
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        match &*self.0 {
            Some(held) if !held.entered => held.span.in_scope(f),
            _ => f(),
        }
    }

    /// The span, if there is one.
    #[cfg(test)]
    pub(crate) fn span(&self) -> Option<&Span> {
        self.0.as_ref().map(|held| &held.span)
    }
}

/// Exits a span entered when it was made, and closes it.
// Takes the box so that it is freed here, out of line, not in the caller.
#[allow(clippy::boxed_local)]
#[cold]
#[inline(never)]
fn close(held: Box<Held>) {
    if held.entered {
        held.span
            .with_subscriber(|(id, dispatch)| dispatch.exit(id));
    }
}

#[cold]
#[inline(never)]
fn record(held: &Held, field: &'static str, value: bool) {
    held.span.record(field, value);
}

impl fmt::Debug for CallSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CallSpan").field(&self.0.is_some()).finish()
    }
}

/// The span of a write routed `route` under `phase`.
#[cold]
#[inline(never)]
pub(crate) fn write_span(
    trait_name: &'static str,
    method: &'static str,
    key: Option<&dyn RoutingKey>,
    phase: Phase,
    route: WriteRoute,
    enter: bool,
) -> CallSpan {
    let span = tracing::debug_span!(
        "dualwrite.write",
        "trait" = trait_name,
        method,
        key = tracing::field::display(KeyText(key)),
        phase = phase.as_str(),
        route = tracing::field::display(RouteText(route.primary, route.secondary, " -> ")),
        primary_ok = tracing::field::Empty,
        secondary_ok = tracing::field::Empty,
    );
    CallSpan::held(span, enter)
}

/// The span of a read routed `route` under `phase`.
#[cold]
#[inline(never)]
pub(crate) fn read_span(
    trait_name: &'static str,
    method: &'static str,
    key: Option<&dyn RoutingKey>,
    phase: Phase,
    route: ReadRoute,
    enter: bool,
) -> CallSpan {
    let span = tracing::debug_span!(
        "dualwrite.read",
        "trait" = trait_name,
        method,
        key = tracing::field::display(KeyText(key)),
        phase = phase.as_str(),
        route = tracing::field::display(RouteText(route.primary, route.shadow, " ~ ")),
    );
    CallSpan::held(span, enter)
}

/// The span of a secondary write a lane applies, entered while it lives.
pub(crate) fn lane_span(
    trait_name: &'static str,
    method: &'static str,
    key: &dyn Fn() -> Option<String>,
    target: Store,
    lane: usize,
) -> Option<tracing::span::EnteredSpan> {
    if !enabled() {
        return None;
    }
    let span = tracing::debug_span!(
        "dualwrite.secondary",
        "trait" = trait_name,
        method,
        key = tracing::field::display(LazyText(key)),
        target = target.as_str(),
        lane,
    );
    (!span.is_disabled()).then(|| span.entered())
}

/// A routing key, rendered when formatted; `-` for a keyless call.
struct KeyText<'a>(Option<&'a dyn RoutingKey>);

impl fmt::Display for KeyText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => f.write_str(&key.render()),
            None => f.write_str("-"),
        }
    }
}

/// Text made when formatted; `-` when there is none.
struct LazyText<'a>(&'a dyn Fn() -> Option<String>);

impl fmt::Display for LazyText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0)() {
            Some(text) => f.write_str(&text),
            None => f.write_str("-"),
        }
    }
}

/// A route as `old`, or `old -> new` / `old ~ new` with the second store.
struct RouteText(Store, Option<Store>, &'static str);

impl fmt::Display for RouteText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(second) => write!(f, "{}{}{}", self.0, self.2, second),
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_read_as_text() {
        assert_eq!(
            RouteText(Store::Old, Some(Store::New), " -> ").to_string(),
            "old -> new"
        );
        assert_eq!(RouteText(Store::New, None, " -> ").to_string(), "new");
        assert_eq!(KeyText(None).to_string(), "-");
        assert_eq!(KeyText(Some(&42_u64)).to_string(), "42");
        assert_eq!(LazyText(&|| None).to_string(), "-");
    }

    #[test]
    fn without_a_subscriber_there_is_no_span() {
        let span = write_span(
            "T",
            "put",
            None,
            Phase::Prepare,
            WriteRoute {
                primary: Store::Old,
                secondary: None,
            },
            true,
        );
        assert!(span.span().is_none());
        // Recording, scoping and closing a missing span are no-ops.
        let mut span = span;
        span.record("primary_ok", true);
        assert_eq!(span.in_scope(|| 7), 7);
        span.close();
    }
}

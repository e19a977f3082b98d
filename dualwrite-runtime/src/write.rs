//! The write path: route -> primary -> secondary -> failure policy, as plain
//! Rust that generated adapters call into.
//!
//! A generated write method only builds the write command and calls the
//! stores; every decision is made here, through a [`WriteTicket`]:
//!
//! ```text
//! let mut ticket = core.begin_write("put", Some(&key), Some(&key), true); // stripe, route, room
//! if let Some(refused) = ticket.refused() { return refused.into() }  // lane full, FailCall
//! let ret = call(ticket.primary());                          // the primary store
//! if !ticket.primary_done(failed(&ret)) { return ret }       // no secondary write
//! match ticket.secondary() { None => return ret, Some(s) => s };
//! if ticket.is_async() { ticket.submit(command); return ret } // to the key's lane
//! let mut armed = ticket.arm(command);                       // kept until the outcome
//! let ret2 = armed.run_secondary(|| call(secondary));        // panics caught
//! if armed.secondary_done(error(&ret2)) { ret2 } else { ret }
//! ```
//!
//! Invariants, each held here rather than in generated code:
//! - a failed primary write is never followed by a secondary write;
//! - writes to one key reach the secondary in the order the primary
//!   committed them: the ticket holds the key's stripe from routing until
//!   the secondary write is handed to the lane (async strategy) or done
//!   (sync strategy), so a second writer of the key waits;
//! - a route change waits for the writes routed before it (a fence takes
//!   every stripe; see [`crate::Migration`]);
//! - every acknowledged write ends applied or as a dead letter: a ticket
//!   dropped between the primary's success and the secondary's outcome (the
//!   caller's future was cancelled, or the secondary panicked) dead-letters
//!   its armed command;
//! - the lanes hold a bounded number of writes: room is checked before the
//!   primary write ([`crate::WhenFull`]).

use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use crate::by_method::MethodEvent;
use crate::command::WriteCommand;
use crate::core::{DualWriteCore, SyncMode};
use crate::helpers::Deadline;
use crate::key::RoutingKey;
use crate::lanes::{Job, WhenFull};
use crate::phase::{Store, WriteRoute};
use crate::stats::{Role, write_cell};
use crate::stripes::{KeyStripes, StripeGuard};
use crate::trace::{self, CallSpan};

/// Why a write was refused before either store was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefused {
    /// The key's lane stayed full for [`crate::LaneConfig::full_wait`] and
    /// the policy is [`WhenFull::FailCall`].
    QueueFull {
        /// The method refused.
        method: &'static str,
        /// How long the write waited for room.
        waited: Duration,
    },
    /// [`crate::SyncMode::Strong`]: the primary was written, but the
    /// secondary call did not answer within the secondary timeout, so the
    /// call fails (the write is kept as a dead letter).
    SecondaryTimedOut {
        /// The method.
        method: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// [`crate::SyncMode::Strong`] with a bounded blocking secondary call
    /// ([`DualWriteCore::set_blocking_secondary_timeout`]): the primary was
    /// written, but the secondary write failed (or was not made, to keep the
    /// key's order behind an earlier call still outstanding), so the call
    /// fails (the write is kept as a dead letter).
    SecondaryFailed {
        /// The method.
        method: &'static str,
        /// What the secondary write reported.
        error: String,
    },
}

impl fmt::Display for WriteRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteRefused::QueueFull { method, waited } => write!(
                f,
                "`{method}` refused before any store was written: the secondary queue stayed full for {waited:?}"
            ),
            WriteRefused::SecondaryTimedOut { method, after } => write!(
                f,
                "`{method}` failed: the primary store was written but the secondary did not answer within {after:?} (kept as a dead letter)"
            ),
            WriteRefused::SecondaryFailed { method, error } => write!(
                f,
                "`{method}` failed: the primary store was written but the secondary write failed (kept as a dead letter): {error}"
            ),
        }
    }
}

impl std::error::Error for WriteRefused {}

/// What an [`ArmedWrite`] holds until the secondary's outcome, so a dropped
/// write can still leave a dead letter.
enum Armed<C> {
    None,
    Command(C, fn(&C) -> Option<String>),
    /// A write the command enum cannot carry (a generic method): only its
    /// key can be recorded.
    Untracked(Option<String>),
}

/// One write in progress through an adapter; see the module docs.
///
/// Holds the stripe of the write's key while it lives. It is small and
/// does not hold the write's command (the primary-only path moves it
/// around and never builds one): [`WriteTicket::arm`] turns it into an
/// [`ArmedWrite`] for the secondary call.
#[must_use = "a write ticket holds its key's stripe: finish the write through it"]
pub struct WriteTicket<'a, C> {
    core: &'a DualWriteCore<C>,
    stripe: StripeGuard<'a>,
    method: &'static str,
    key_hash: Option<u64>,
    /// The lane of the key, when the strategy is async and it had room.
    /// `u32` keeps the ticket small: an armed write (ticket and command)
    /// above 128 bytes is moved with a call to `memcpy` (measured: 29
    /// instructions a dual write).
    lane: Option<u32>,
    route: WriteRoute,
    /// The async strategy applies but the lane had no room.
    no_room: bool,
    /// The lane had no room and the policy refuses the call.
    refused: bool,
    /// The primary call is under way and a secondary write is due: if the
    /// ticket is dropped now (the caller's future cancelled, or a panic),
    /// the primary may have committed with no secondary write. No command
    /// exists yet, so this is counted and logged
    /// (`primary_outcome_unknown`), not dead-lettered.
    primary_in_flight: bool,
    /// The secondary write made on the caller's path succeeded: recorded
    /// on the span when the ticket ends (a byte store here is cheaper than
    /// a span check on every write).
    secondary_ok: bool,
    /// When a timed call started (see [`crate::latency`]); `0` when the
    /// call has no slow-path work at its end; [`UNTIMED`] when it is not
    /// timed but has a span to close. One check of this field tells the
    /// fast path it has nothing else to do.
    started: u64,
    /// The call's `tracing` span, when debug is enabled (module `trace`).
    span: CallSpan,
}

/// A write whose primary succeeded, with its command kept until the
/// secondary's outcome: dropped before [`ArmedWrite::secondary_done`] (the
/// caller's future was cancelled, or the secondary panicked), it records
/// the command as a dead letter. Made by [`WriteTicket::arm`].
#[must_use = "an armed write dead-letters its command unless finished with `secondary_done`"]
pub struct ArmedWrite<'a, C> {
    ticket: WriteTicket<'a, C>,
    armed: Armed<C>,
    /// Strong mode: the secondary call timed out, so the call fails
    /// although the call returned nothing (see `take_refusal`).
    strong_timed_out: bool,
}

impl<C> DualWriteCore<C> {
    /// Starts a write of `method` for `key`, blocking while another write of
    /// the key's stripe is in flight or a phase change fences the adapter,
    /// then routes it. When the key's lane stayed full and the policy is
    /// [`WhenFull::FailCall`], the ticket is refused
    /// ([`WriteTicket::refused`]): return that, and write nothing.
    ///
    /// `key` orders the write (its stripe and lane); `route_key` picks the
    /// phase override (the tenant, when a method names one apart from the
    /// key; else the key again). `can_refuse` says whether the method can
    /// return a refusal (its error type converts from [`WriteRefused`]);
    /// when it cannot, a full lane dead-letters the secondary write instead.
    // Always inlined, and no `Result`: the ticket is then built where the
    // caller keeps it rather than copied out (measured: 20 instructions of
    // the primary-only path).
    #[inline(always)]
    pub fn begin_write(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
        route_key: Option<&dyn RoutingKey>,
        can_refuse: bool,
    ) -> WriteTicket<'_, C> {
        let key_hash = key.map(RoutingKey::route_hash);
        // Timed from before the wait for the stripe: that wait is latency the
        // adapter adds too.
        let started = if self.migration().may_dual_write() {
            self.shared().latency.start()
        } else {
            0
        };
        let stripe = self.stripes().lock(KeyStripes::index(key_hash));
        let mut ticket = self.ticket(method, route_key, key_hash, stripe, started);
        if trace::enabled() {
            ticket.open_span(key, route_key, true);
        }
        if ticket.needs_room() {
            ticket.admit_blocking(can_refuse);
        }
        ticket
    }

    /// The route hash of a key, for [`DualWriteCore::begin_write_async`]
    /// (computed before the first await so the future holds no key).
    pub fn key_hash(&self, key: Option<&dyn RoutingKey>) -> Option<u64> {
        key.map(RoutingKey::route_hash)
    }

    /// Waits, without blocking the thread, for the stripe of a key with
    /// `key_hash` (see [`DualWriteCore::key_hash`]); then route the write
    /// with [`StripeHold::route`] and admit it with [`WriteTicket::admit`].
    /// Cancel-safe.
    pub async fn begin_write_async(&self, key_hash: Option<u64>) -> StripeHold<'_, C> {
        let started = self.shared().latency.start();
        let stripe = self
            .shared()
            .stripes
            .lock_async(KeyStripes::index(key_hash))
            .await;
        StripeHold {
            core: self,
            key_hash,
            stripe,
            started,
        }
    }

    #[inline(always)]
    fn ticket<'a>(
        &'a self,
        method: &'static str,
        route_key: Option<&dyn RoutingKey>,
        key_hash: Option<u64>,
        stripe: StripeGuard<'a>,
        started: u64,
    ) -> WriteTicket<'a, C> {
        // Routed with the stripe held: a phase change either happened
        // before (this write takes the new route) or waits for this write.
        let route = self.write_route(route_key);
        WriteTicket {
            core: self,
            stripe,
            method,
            key_hash,
            lane: None,
            route,
            no_room: false,
            refused: false,
            primary_in_flight: route.secondary.is_some(),
            secondary_ok: false,
            started: if route.secondary.is_some() {
                started
            } else {
                0
            },
            span: CallSpan::none(),
        }
    }
}

/// A key's stripe held by an async write, before it is routed.
#[must_use = "route the write with `route`"]
pub struct StripeHold<'a, C> {
    core: &'a DualWriteCore<C>,
    key_hash: Option<u64>,
    stripe: StripeGuard<'a>,
    started: u64,
}

impl<'a, C> StripeHold<'a, C> {
    /// Routes the write by the phase of `route_key` (see
    /// [`DualWriteCore::begin_write`]); admit it with [`WriteTicket::admit`]
    /// next.
    pub fn route(
        self,
        method: &'static str,
        route_key: Option<&dyn RoutingKey>,
    ) -> WriteTicket<'a, C> {
        let mut ticket =
            self.core
                .ticket(method, route_key, self.key_hash, self.stripe, self.started);
        if trace::enabled() {
            // The span names the key the phase is looked up by: the
            // write's own key was hashed before the await and is not kept.
            ticket.open_span(route_key, route_key, false);
        }
        ticket
    }
}

impl<'a, C> WriteTicket<'a, C> {
    /// Opens the write's span (debug is enabled); entered until the ticket
    /// is dropped when `enter` (a blocking call).
    #[cold]
    #[inline(never)]
    fn open_span(
        &mut self,
        key: Option<&dyn RoutingKey>,
        route_key: Option<&dyn RoutingKey>,
        enter: bool,
    ) {
        let core = self.core;
        self.span = trace::write_span(
            core.trait_info().name,
            self.method,
            key,
            core.migration().phase_for(route_key),
            self.route,
            enter,
        );
        if self.span.is_some() && self.started == 0 {
            // Not timed: the end of the call still closes the span.
            self.started = UNTIMED;
        }
    }

    /// Whether admitting the write checks a lane for room: a secondary
    /// write is due and the strategy is async.
    #[inline]
    fn needs_room(&self) -> bool {
        self.route.secondary.is_some() && self.core.lanes().is_some()
    }

    /// The key's lane, and whether it has room now (a full lane is counted).
    fn room(&self) -> Option<(usize, bool)> {
        let lanes = self.core.lanes()?;
        let lane = lanes.lane_of(self.key_hash);
        let room = lanes.has_room(lane);
        if !room {
            self.core.stats().record_queue_full();
        }
        Some((lane, room))
    }

    /// Applies the queue-full policy after the wait for room.
    fn settle(&mut self, lane: usize, room: bool, can_refuse: bool) {
        if room {
            // Lane counts are far below 2^32; a lane beyond it (never made)
            // would dead-letter the write rather than lose it.
            self.lane = u32::try_from(lane).ok();
            return;
        }
        let Some(lanes) = self.core.lanes() else {
            return;
        };
        if can_refuse && lanes.config().when_full == WhenFull::FailCall {
            self.core.stats().record_write_refused();
            // Refused before the primary call: nothing is in flight.
            self.primary_in_flight = false;
            self.refused = true;
            return;
        }
        self.no_room = true;
    }

    /// Checks that the key's lane has room, blocking up to
    /// [`crate::LaneConfig::full_wait`] for it, then applies
    /// [`crate::LaneConfig::when_full`].
    #[cold]
    fn admit_blocking(&mut self, can_refuse: bool) {
        let Some((lane, room)) = self.room() else {
            return;
        };
        let room = room
            || self
                .core
                .lanes()
                .is_some_and(|lanes| lanes.wait_for_room(lane));
        self.settle(lane, room, can_refuse);
    }

    /// Why the write must not be made: its lane stayed full and the policy
    /// is [`WhenFull::FailCall`]. Nothing was written; return it (converted
    /// into the method's error type) at once.
    #[inline]
    pub fn refused(&self) -> Option<WriteRefused> {
        if !self.refused {
            return None;
        }
        Some(WriteRefused::QueueFull {
            method: self.method,
            waited: self
                .core
                .lanes()
                .map_or(Duration::ZERO, |lanes| lanes.config().full_wait),
        })
    }

    /// Checks, before the primary write, that the key's lane has room for
    /// the secondary write, waiting without blocking the thread up to
    /// [`crate::LaneConfig::full_wait`] (with a tokio runtime's timer; without
    /// one a full lane is not waited for), then applies
    /// [`crate::LaneConfig::when_full`]: `Err` when the call is to fail
    /// (`can_refuse`: see [`DualWriteCore::begin_write`]).
    pub async fn admit(mut self, can_refuse: bool) -> Result<Self, WriteRefused> {
        if !self.needs_room() {
            return Ok(self);
        }
        let Some((lane, room)) = self.room() else {
            return Ok(self);
        };
        let room = room
            || match self.core.lanes() {
                Some(lanes) => lanes.wait_for_room_async(lane).await,
                None => false,
            };
        self.settle(lane, room, can_refuse);
        match self.refused() {
            Some(refused) => Err(refused),
            None => Ok(self),
        }
    }
}

impl<'a, C> WriteTicket<'a, C> {
    /// The store to write first; its result is the caller's.
    #[inline]
    pub fn primary(&self) -> Store {
        self.route.primary
    }

    /// The store that gets a copy after the primary succeeded, if any.
    #[inline]
    pub fn secondary(&self) -> Option<Store> {
        self.route.secondary
    }

    /// Records the primary's outcome; `true` when it succeeded and a
    /// secondary write follows. A failed primary is never followed by a
    /// secondary write.
    #[inline]
    pub fn primary_done(&mut self, ok: bool) -> bool {
        self.primary_in_flight = false;
        self.stripe
            .record_write(write_cell(self.route.primary, Role::Primary, ok));
        if !ok {
            self.primary_failed();
        }
        if self.started != 0 {
            self.primary_done_slow(ok);
        }
        ok && self.route.secondary.is_some()
    }

    /// The primary's outcome of a timed call, or one with a span.
    #[cold]
    #[inline(never)]
    fn primary_done_slow(&mut self, ok: bool) {
        self.span.record("primary_ok", ok);
        if self.started == UNTIMED {
            return;
        }
        if ok {
            self.core.shared().latency.primary_done(self.started);
        } else {
            // A failed call is not timed; its span is still closed.
            self.started = if self.span.is_some() { UNTIMED } else { 0 };
        }
    }

    /// Counts a failed primary write for its method.
    #[cold]
    fn primary_failed(&self) {
        self.core
            .stats()
            .record_method(self.method, MethodEvent::PrimaryFailed(self.route.primary));
    }

    /// Whether the secondary write goes to a lane ([`WriteTicket::submit`])
    /// rather than being made on the caller's path.
    #[inline]
    pub fn is_async(&self) -> bool {
        self.core.is_async()
    }

    /// Hands the secondary write to its key's lane (or, under the outbox
    /// strategy, journals it), while the key's stripe is still held. Dead-letters it instead (0 attempts) when the lane had
    /// no room, the adapter is shut down, or no lane runs.
    pub fn submit(self, command: C)
    where
        C: WriteCommand,
    {
        let Some(target) = self.route.secondary else {
            return;
        };
        if self.core.left_to_follower(target) {
            // Change data capture carries the primary's change.
            self.core.stripes().left_to_follower(self.stripe.index());
            return;
        }
        if let Some(outbox) = self.core.outbox() {
            return outbox.submit(
                self.stripe.index(),
                self.key_hash,
                self.method,
                target,
                command,
                WriteCommand::key_text,
            );
        }
        let job = Job {
            method: command.method(),
            key: None,
            render_key: Some(|command: &C| command.key_text()),
            key_hash: self.key_hash,
            stripe: KeyStripes::index(self.key_hash),
            target,
            command,
        };
        let refusal = self.no_room.then_some("the secondary queue stayed full");
        let lane = self.lane.and_then(|lane| usize::try_from(lane).ok());
        self.core.hand_off(job, lane, refusal);
    }

    /// Under the outbox strategy, builds the write's journal record before
    /// the primary call and makes it the thread's
    /// [`WriteContext`](crate::outbox::WriteContext) for that call, so the
    /// primary store can journal it in its own transaction; otherwise
    /// (`command` is not called) an inert scope. Keep the scope until the
    /// method returns. For blocking methods whose command holds the
    /// arguments as they are before the call (no `&mut` argument).
    #[inline]
    pub fn outbox_scope(&self, command: impl FnOnce() -> C) -> crate::outbox::OutboxScope
    where
        C: WriteCommand,
    {
        match (self.core.outbox(), self.route.secondary) {
            (Some(outbox), Some(target)) if !self.core.left_to_follower(target) => outbox.prepare(
                self.stripe.index(),
                self.key_hash,
                self.method,
                target,
                command(),
            ),
            _ => crate::outbox::OutboxScope::inert(),
        }
    }

    /// Keeps the write's command until [`ArmedWrite::secondary_done`]: if
    /// the armed write is dropped first, the command becomes a dead letter.
    pub fn arm(self, command: C) -> ArmedWrite<'a, C>
    where
        C: WriteCommand,
    {
        self.armed_with(Armed::Command(command, WriteCommand::key_text))
    }

    /// Like [`WriteTicket::arm`], for a write the command enum cannot
    /// carry: a dropped armed write records its key only.
    pub fn arm_untracked(self, key: Option<String>) -> ArmedWrite<'a, C> {
        self.armed_with(Armed::Untracked(key))
    }

    fn armed_with(mut self, armed: Armed<C>) -> ArmedWrite<'a, C> {
        self.primary_in_flight = false;
        ArmedWrite {
            ticket: self,
            armed,
            strong_timed_out: false,
        }
    }
}

impl<C> ArmedWrite<'_, C> {
    /// Makes the secondary call on the caller's path. A panic in it is
    /// caught and recorded as a failed secondary write with a dead letter;
    /// then `None` is returned in the tolerant mode (the caller gets the
    /// primary's result), and the panic resumes in the strong mode (the
    /// call cannot succeed, and there is no error value to return).
    pub fn run_secondary<R>(&mut self, call: impl FnOnce() -> R) -> Option<R>
    where
        C: WriteCommand,
    {
        if self.behind_abandoned() {
            self.secondary_failed_now(BEHIND_ABANDONED.to_owned(), 0);
            return None;
        }
        match catch_unwind(AssertUnwindSafe(call)) {
            Ok(ret) => Some(ret),
            Err(payload) => self.secondary_panicked(payload),
        }
    }

    /// Records a panicking secondary call; resumes the panic in the strong
    /// mode (see [`ArmedWrite::run_secondary`]).
    fn secondary_panicked<R>(&mut self, payload: Box<dyn std::any::Any + Send>) -> Option<R>
    where
        C: WriteCommand,
    {
        self.secondary_failed_now(panic_error(payload.as_ref()), 1);
        if self.ticket.core.sync_mode() == Some(SyncMode::Strong) {
            resume_unwind(payload);
        }
        None
    }

    /// Like [`ArmedWrite::run_secondary`], for an async secondary call.
    /// With a secondary timeout ([`DualWriteCore::set_secondary_timeout`])
    /// and a tokio runtime with timers, a call that overruns it is dropped
    /// and recorded as a failed write with a dead letter (`None`).
    pub async fn run_secondary_async<R, F>(&mut self, call: F) -> Option<R>
    where
        C: WriteCommand,
        F: Future<Output = R>,
    {
        let caught = catch_unwind_async(call);
        let core = self.ticket.core;
        let outcome = match core.secondary_timeout() {
            Some(limit) if tokio::runtime::Handle::try_current().is_ok() => {
                match tokio::time::timeout(limit, caught).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        self.secondary_failed_now(
                            format!("secondary write timed out after {limit:?}"),
                            1,
                        );
                        if core.sync_mode() == Some(SyncMode::Strong) {
                            self.strong_timed_out = true;
                        }
                        return None;
                    }
                }
            }
            _ => caught.await,
        };
        match outcome {
            Ok(ret) => Some(ret),
            Err(payload) => self.secondary_panicked(payload),
        }
    }

    /// Whether an earlier blocking secondary call of this key's stripe was
    /// abandoned at its deadline and has not returned: a secondary write
    /// made now could land before it and then be overwritten by it.
    #[inline]
    fn behind_abandoned(&self) -> bool {
        let ticket = &self.ticket;
        ticket.core.blocking().is_some()
            && ticket.core.stripes().pending_of(ticket.stripe.index()) > 0
    }

    /// Whether the secondary call is bounded
    /// ([`DualWriteCore::set_blocking_secondary_timeout`]): make it with
    /// [`ArmedWrite::run_secondary_bounded`] rather than on this thread.
    #[inline]
    pub fn is_bounded(&self) -> bool {
        self.ticket.core.blocking().is_some()
    }

    /// Makes the secondary write by applying the armed command on a helper
    /// thread, and waits for it up to the bound (see
    /// [`DualWriteCore::set_blocking_secondary_timeout`]). A failure, a panic
    /// or the deadline is recorded with a dead letter; `Some` when the call
    /// must fail (the strong mode): return it in the method's error type.
    pub fn run_secondary_bounded(mut self) -> Option<WriteRefused>
    where
        C: WriteCommand,
    {
        let core = self.ticket.core;
        let method = self.ticket.method;
        let strong = core.sync_mode() == Some(SyncMode::Strong);
        let (Some(blocking), Some(target), Armed::Command(command, _)) =
            (core.blocking(), self.ticket.route.secondary, &self.armed)
        else {
            // Nothing to bound (no command: a generic method's write is
            // made on this thread by `run_secondary`).
            return None;
        };
        let fail = |this: &mut Self, error: String, attempts: u32| {
            this.secondary_failed_now(error.clone(), attempts);
            strong.then_some(WriteRefused::SecondaryFailed { method, error })
        };
        if self.behind_abandoned() {
            return fail(&mut self, BEHIND_ABANDONED.to_owned(), 0);
        }
        let stripe = self.ticket.stripe.index();
        let stripes = std::sync::Arc::clone(&core.shared().stripes);
        let late_stripes = std::sync::Arc::clone(&stripes);
        let stats = core.stats().clone();
        let job = (blocking.job)(target, command);
        let outcome = blocking.helpers.run(
            blocking.timeout,
            job,
            |payload| Err(panic_error(payload)),
            move |result: Result<(), String>| {
                // Logging first: the count releases whoever waits for it.
                stats.record_late_completion();
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    tracing::warn!(
                        method,
                        target = %target,
                        ok = result.is_ok(),
                        "a secondary write abandoned at its deadline returned late; its dead letter names the key to reconcile"
                    );
                }));
                late_stripes.finish_pending(stripe);
            },
            || stripes.add_pending(stripe),
            || stripes.finish_pending(stripe),
        );
        match outcome {
            Ok(Deadline::Returned(Ok(()))) => {
                let _ = self.secondary_done(None);
                None
            }
            Ok(Deadline::Returned(Err(error))) | Err(error) => fail(&mut self, error, 1),
            Ok(Deadline::Abandoned) => {
                self.secondary_failed_now(
                    format!(
                        "secondary write timed out after {:?}: its outcome is unknown (the call may still complete)",
                        blocking.timeout
                    ),
                    1,
                );
                strong.then_some(WriteRefused::SecondaryTimedOut {
                    method,
                    after: blocking.timeout,
                })
            }
        }
    }

    /// Why the call must fail although its secondary call returned no
    /// value: strong mode, and the call timed out. Convert it into the
    /// method's error type where it has `From<WriteRefused>`.
    pub fn take_refusal(&mut self) -> Option<WriteRefused> {
        std::mem::take(&mut self.strong_timed_out).then(|| WriteRefused::SecondaryTimedOut {
            method: self.ticket.method,
            after: self.ticket.core.secondary_timeout().unwrap_or_default(),
        })
    }

    /// Records the secondary's outcome (`error` is `None` on success) and
    /// dead-letters the armed command on failure. `true` when the caller
    /// must get the secondary's result (it failed in the strong mode).
    pub fn secondary_done(mut self, error: Option<String>) -> bool
    where
        C: WriteCommand,
    {
        match error {
            None => {
                if let Some(target) = self.ticket.route.secondary {
                    self.ticket
                        .stripe
                        .record_write(write_cell(target, Role::Secondary, true));
                }
                self.ticket.secondary_ok = true;
                self.armed = Armed::None;
                false
            }
            Some(error) => {
                self.secondary_failed_now(error, 1);
                self.ticket.core.sync_mode() == Some(SyncMode::Strong)
            }
        }
    }

    /// Counts a failed secondary write and dead-letters what is armed, with
    /// the number of attempts made.
    fn secondary_failed_now(&mut self, error: String, attempts: u32) {
        let ticket = &self.ticket;
        let Some(target) = ticket.route.secondary else {
            return;
        };
        ticket
            .stripe
            .record_write(write_cell(target, Role::Secondary, false));
        ticket
            .core
            .stats()
            .record_method(ticket.method, MethodEvent::SecondaryFailed(target));
        ticket.span.record("secondary_ok", false);
        let armed = std::mem::replace(&mut self.armed, Armed::None);
        // Logged inside the call's span (an async call's is not entered).
        ticket.span.in_scope(|| match armed {
            Armed::None => {}
            Armed::Command(command, render) => {
                ticket.core.dead_letter_with(
                    ticket.method,
                    render(&command),
                    command,
                    target,
                    error,
                    attempts,
                );
            }
            Armed::Untracked(key) => {
                ticket
                    .core
                    .dead_letter_untracked(ticket.method, key, target, error)
            }
        });
    }
}

impl<C> Drop for WriteTicket<'_, C> {
    #[inline]
    fn drop(&mut self) {
        if self.primary_in_flight {
            self.primary_outcome_unknown();
        } else if self.started != 0 {
            self.finish_slow();
        }
    }
}

impl<C> WriteTicket<'_, C> {
    /// The end of a timed call, or one with a span.
    #[cold]
    #[inline(never)]
    fn finish_slow(&mut self) {
        if self.started != UNTIMED {
            self.core
                .shared()
                .latency
                .call_done(self.started, self.method);
        }
        if self.secondary_ok {
            self.span.record("secondary_ok", true);
        }
        self.span.close();
    }

    /// The ticket was dropped during its primary call with a secondary
    /// write due: the primary may have committed with no secondary write.
    #[cold]
    fn primary_outcome_unknown(&mut self) {
        self.primary_outcome_unknown_logged();
        self.span.close();
    }

    fn primary_outcome_unknown_logged(&mut self) {
        let Some(target) = self.route.secondary else {
            return;
        };
        self.core.stats().record_primary_outcome_unknown();
        let _ = catch_unwind(AssertUnwindSafe(|| {
            self.span.in_scope(|| {
                tracing::warn!(
                    method = self.method,
                    target = %target,
                    "the call ended during its primary write: the primary may have committed with no secondary write; reconcile"
                );
            })
        }));
    }
}

impl<C> Drop for ArmedWrite<'_, C> {
    #[inline]
    fn drop(&mut self) {
        if !matches!(self.armed, Armed::None) {
            self.dead_letter_armed();
        }
    }
}

impl<C> ArmedWrite<'_, C> {
    /// Dropped between the primary's success and the secondary's outcome:
    /// the armed write becomes a dead letter.
    #[cold]
    fn dead_letter_armed(&mut self) {
        let armed = std::mem::replace(&mut self.armed, Armed::None);
        let ticket = &self.ticket;
        let Some(target) = ticket.route.secondary else {
            return;
        };
        let error = if std::thread::panicking() {
            "the call unwound before its secondary write finished"
        } else {
            "the call was cancelled before its secondary write finished"
        };
        match armed {
            Armed::None => {}
            Armed::Command(command, render) => {
                let key = catch_unwind(AssertUnwindSafe(|| render(&command))).unwrap_or(None);
                ticket.core.dead_letter_with(
                    ticket.method,
                    key,
                    command,
                    target,
                    error.to_owned(),
                    0,
                );
            }
            Armed::Untracked(key) => {
                ticket
                    .core
                    .dead_letter_untracked(ticket.method, key, target, error.to_owned());
            }
        }
    }
}

impl<C> fmt::Debug for WriteTicket<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteTicket")
            .field("method", &self.method)
            .field("route", &self.route)
            .field("lane", &self.lane)
            .field("no_room", &self.no_room)
            .finish_non_exhaustive()
    }
}

impl<C> fmt::Debug for ArmedWrite<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArmedWrite")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl<C> fmt::Debug for StripeHold<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeHold")
            .field("stripe", &self.stripe.index())
            .finish_non_exhaustive()
    }
}

/// Polls a future inside `catch_unwind`, so a panicking secondary call
/// becomes a recorded failure.
async fn catch_unwind_async<F: Future>(future: F) -> std::thread::Result<F::Output> {
    let mut future = pin!(future);
    poll_fn(
        move |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(payload)),
        },
    )
    .await
}

/// `WriteTicket::started` of a call that is not timed but has a span.
const UNTIMED: u64 = u64::MAX;

/// The dead letter's error for a write not made because an earlier call of
/// its stripe is still outstanding.
const BEHIND_ABANDONED: &str = "not applied: an earlier secondary write of this key's stripe was abandoned at its deadline and has not returned, and this one could land before it";

/// The dead letter's error for a panicking secondary call.
fn panic_error(payload: &(dyn std::any::Any + Send)) -> String {
    format!(
        "secondary write panicked: {}",
        crate::helpers::panic_message(payload)
    )
}

/// Lets a repository whose errors are plain strings return a refusal.
impl From<WriteRefused> for String {
    fn from(refused: WriteRefused) -> String {
        refused.to_string()
    }
}

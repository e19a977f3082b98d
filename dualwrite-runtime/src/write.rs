//! The write path: route -> primary -> secondary -> failure policy, as plain
//! Rust that generated adapters call into.
//!
//! A generated write method only builds the write command and calls the
//! stores; every decision is made here, through a [`WriteTicket`]:
//!
//! ```text
//! let mut ticket = core.begin_write("put", Some(&key), Some(&key), true)?; // stripe, route, room
//! let ret = call(ticket.primary());                          // the primary store
//! if !ticket.primary_done(failed(&ret)) { return ret }       // no secondary write
//! match ticket.secondary() { None => return ret, Some(s) => s };
//! if ticket.is_async() { ticket.submit(command); return ret } // to the key's lane
//! ticket.arm(command);                                       // kept until the outcome
//! let ret2 = ticket.run_secondary(|| call(secondary));       // panics caught
//! if ticket.secondary_done(error(&ret2)) { ret2 } else { ret }
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

use crate::command::WriteCommand;
use crate::core::{DualWriteCore, SyncMode};
use crate::key::RoutingKey;
use crate::lanes::{Job, WhenFull};
use crate::phase::{Store, WriteRoute};
use crate::stats::{Role, write_cell};
use crate::stripes::{KeyStripes, StripeGuard};

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
        }
    }
}

impl std::error::Error for WriteRefused {}

/// What the ticket holds between the primary's success and the secondary's
/// outcome, so a dropped ticket can still leave a dead letter.
enum Armed<C> {
    None,
    /// The primary call is under way: if the ticket is dropped now (the
    /// caller's future cancelled, or a panic), the primary may have
    /// committed with no secondary write. No command exists yet, so this is
    /// counted and logged (`primary_outcome_unknown`), not dead-lettered.
    PrimaryInFlight,
    Command(C, fn(&C) -> Option<String>),
    /// A write the command enum cannot carry (a generic method): only its
    /// key can be recorded.
    Untracked(Option<String>),
}

/// One write in progress through an adapter; see the module docs.
///
/// Holds the stripe of the write's key while it lives. Dropped between a
/// successful primary write and the secondary's outcome, it records the
/// armed command as a dead letter, so a cancelled or unwinding call leaves
/// a record.
#[must_use = "a write ticket holds its key's stripe: finish the write through it"]
pub struct WriteTicket<'a, C> {
    core: &'a DualWriteCore<C>,
    _stripe: StripeGuard<'a>,
    route: WriteRoute,
    method: &'static str,
    key_hash: Option<u64>,
    /// The lane of the key, when the strategy is async and it had room.
    lane: Option<usize>,
    /// The async strategy applies but the lane had no room.
    no_room: bool,
    armed: Armed<C>,
    /// Strong mode: the secondary call timed out, so the call fails
    /// although the call returned nothing (see `take_refusal`).
    strong_timed_out: bool,
}

impl<C> DualWriteCore<C> {
    /// Starts a write of `method` for `key`, blocking while another write of
    /// the key's stripe is in flight or a phase change fences the adapter,
    /// then routes it. `Err` when the key's lane stayed full and the policy
    /// is [`WhenFull::FailCall`]: nothing was written.
    ///
    /// `key` orders the write (its stripe and lane); `route_key` picks the
    /// phase override (the tenant, when a method names one apart from the
    /// key; else the key again). `can_refuse` says whether the method can
    /// return a refusal (its error type converts from [`WriteRefused`]);
    /// when it cannot, a full lane dead-letters the secondary write instead.
    #[inline]
    pub fn begin_write(
        &self,
        method: &'static str,
        key: Option<&dyn RoutingKey>,
        route_key: Option<&dyn RoutingKey>,
        can_refuse: bool,
    ) -> Result<WriteTicket<'_, C>, WriteRefused> {
        let key_hash = key.map(RoutingKey::route_hash);
        let stripe = self.stripes().lock(KeyStripes::index(key_hash));
        self.ticket(method, route_key, key_hash, stripe)
            .admit_blocking(can_refuse)
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
        let stripe = self
            .shared()
            .stripes
            .lock_async(KeyStripes::index(key_hash))
            .await;
        StripeHold {
            core: self,
            key_hash,
            stripe,
        }
    }

    #[inline]
    fn ticket<'a>(
        &'a self,
        method: &'static str,
        route_key: Option<&dyn RoutingKey>,
        key_hash: Option<u64>,
        stripe: StripeGuard<'a>,
    ) -> WriteTicket<'a, C> {
        // Routed with the stripe held: a phase change either happened
        // before (this write takes the new route) or waits for this write.
        let route = self.write_route(route_key);
        WriteTicket {
            core: self,
            _stripe: stripe,
            route,
            method,
            key_hash,
            lane: None,
            no_room: false,
            armed: if route.secondary.is_some() {
                Armed::PrimaryInFlight
            } else {
                Armed::None
            },
            strong_timed_out: false,
        }
    }
}

/// A key's stripe held by an async write, before it is routed.
#[must_use = "route the write with `route`"]
pub struct StripeHold<'a, C> {
    core: &'a DualWriteCore<C>,
    key_hash: Option<u64>,
    stripe: StripeGuard<'a>,
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
        self.core
            .ticket(method, route_key, self.key_hash, self.stripe)
    }
}

/// What the room check of a write decided.
enum Room {
    /// No lane is involved (no secondary, or the synchronous strategy).
    NotNeeded,
    /// The key's lane has room.
    Lane(usize),
    /// The key's lane is full.
    Full(usize),
}

impl<'a, C> WriteTicket<'a, C> {
    #[inline]
    fn room(&self) -> Room {
        let Some(lanes) = self.core.lanes() else {
            return Room::NotNeeded;
        };
        if self.route.secondary.is_none() {
            return Room::NotNeeded;
        }
        let lane = lanes.lane_of(self.key_hash);
        if lanes.has_room(lane) {
            Room::Lane(lane)
        } else {
            self.core.stats().record_queue_full();
            Room::Full(lane)
        }
    }

    /// Applies the queue-full policy after the wait for room.
    fn settle(mut self, lane: usize, room: bool, can_refuse: bool) -> Result<Self, WriteRefused> {
        if room {
            self.lane = Some(lane);
            return Ok(self);
        }
        let Some(lanes) = self.core.lanes() else {
            return Ok(self);
        };
        if can_refuse && lanes.config().when_full == WhenFull::FailCall {
            self.core.stats().record_write_refused();
            return Err(WriteRefused::QueueFull {
                method: self.method,
                waited: lanes.config().full_wait,
            });
        }
        self.no_room = true;
        Ok(self)
    }

    /// Checks that the key's lane has room, blocking up to
    /// [`crate::LaneConfig::full_wait`] for it, then applies
    /// [`crate::LaneConfig::when_full`].
    #[inline]
    fn admit_blocking(self, can_refuse: bool) -> Result<Self, WriteRefused> {
        match self.room() {
            Room::NotNeeded => Ok(self),
            Room::Lane(lane) => self.settle(lane, true, can_refuse),
            Room::Full(lane) => {
                let room = self
                    .core
                    .lanes()
                    .is_some_and(|lanes| lanes.wait_for_room(lane));
                self.settle(lane, room, can_refuse)
            }
        }
    }

    /// Checks, before the primary write, that the key's lane has room for
    /// the secondary write, waiting without blocking the thread up to
    /// [`crate::LaneConfig::full_wait`] (with a tokio runtime's timer; without
    /// one a full lane is not waited for), then applies
    /// [`crate::LaneConfig::when_full`]: `Err` when the call is to fail
    /// (`can_refuse`: see [`DualWriteCore::begin_write`]).
    pub async fn admit(self, can_refuse: bool) -> Result<Self, WriteRefused> {
        match self.room() {
            Room::NotNeeded => Ok(self),
            Room::Lane(lane) => self.settle(lane, true, can_refuse),
            Room::Full(lane) => {
                let room = match self.core.lanes() {
                    Some(lanes) => lanes.wait_for_room_async(lane).await,
                    None => false,
                };
                self.settle(lane, room, can_refuse)
            }
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
        self.armed = Armed::None;
        self._stripe
            .record_write(write_cell(self.route.primary, Role::Primary, ok));
        ok && self.route.secondary.is_some()
    }

    /// Whether the secondary write goes to a lane ([`WriteTicket::submit`])
    /// rather than being made on the caller's path.
    #[inline]
    pub fn is_async(&self) -> bool {
        self.core.is_async()
    }

    /// Hands the secondary write to its key's lane, while the key's stripe
    /// is still held. Dead-letters it instead (0 attempts) when the lane had
    /// no room, the adapter is shut down, or no lane runs.
    pub fn submit(self, command: C)
    where
        C: WriteCommand,
    {
        let Some(target) = self.route.secondary else {
            return;
        };
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
        self.core.hand_off(job, self.lane, refusal);
    }

    /// Keeps the write's command until [`WriteTicket::secondary_done`]: if
    /// the ticket is dropped first, the command becomes a dead letter.
    pub fn arm(&mut self, command: C)
    where
        C: WriteCommand,
    {
        self.armed = Armed::Command(command, WriteCommand::key_text);
    }

    /// Like [`WriteTicket::arm`], for a write the command enum cannot
    /// carry: a dropped ticket records its key only.
    pub fn arm_untracked(&mut self, key: Option<String>) {
        self.armed = Armed::Untracked(key);
    }

    /// Makes the secondary call on the caller's path. A panic in it is
    /// caught and recorded as a failed secondary write with a dead letter;
    /// then `None` is returned in the tolerant mode (the caller gets the
    /// primary's result), and the panic resumes in the strong mode (the
    /// call cannot succeed, and there is no error value to return).
    pub fn run_secondary<R>(&mut self, call: impl FnOnce() -> R) -> Option<R>
    where
        C: WriteCommand,
    {
        match catch_unwind(AssertUnwindSafe(call)) {
            Ok(ret) => Some(ret),
            Err(payload) => self.secondary_panicked(payload),
        }
    }

    /// Records a panicking secondary call; resumes the panic in the strong
    /// mode (see [`WriteTicket::run_secondary`]).
    fn secondary_panicked<R>(&mut self, payload: Box<dyn std::any::Any + Send>) -> Option<R>
    where
        C: WriteCommand,
    {
        self.secondary_failed_now(panic_error(payload.as_ref()));
        if self.core.sync_mode() == Some(SyncMode::Strong) {
            resume_unwind(payload);
        }
        None
    }

    /// Like [`WriteTicket::run_secondary`], for an async secondary call.
    /// With a secondary timeout ([`DualWriteCore::set_secondary_timeout`])
    /// and a tokio runtime with timers, a call that overruns it is dropped
    /// and recorded as a failed write with a dead letter (`None`).
    pub async fn run_secondary_async<R, F>(&mut self, call: F) -> Option<R>
    where
        C: WriteCommand,
        F: Future<Output = R>,
    {
        let caught = catch_unwind_async(call);
        let outcome = match self.core.secondary_timeout() {
            Some(limit) if tokio::runtime::Handle::try_current().is_ok() => {
                match tokio::time::timeout(limit, caught).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        self.secondary_failed_now(format!(
                            "secondary write timed out after {limit:?}"
                        ));
                        if self.core.sync_mode() == Some(SyncMode::Strong) {
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

    /// Why the call must fail although its secondary call returned no
    /// value: strong mode, and the call timed out. Convert it into the
    /// method's error type where it has `From<WriteRefused>`.
    pub fn take_refusal(&mut self) -> Option<WriteRefused> {
        std::mem::take(&mut self.strong_timed_out).then(|| WriteRefused::SecondaryTimedOut {
            method: self.method,
            after: self.core.secondary_timeout().unwrap_or_default(),
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
                if let Some(target) = self.route.secondary {
                    self._stripe
                        .record_write(write_cell(target, Role::Secondary, true));
                }
                self.armed = Armed::None;
                false
            }
            Some(error) => {
                self.secondary_failed_now(error);
                self.core.sync_mode() == Some(SyncMode::Strong)
            }
        }
    }

    /// Counts a failed secondary attempt and dead-letters what is armed.
    fn secondary_failed_now(&mut self, error: String) {
        let Some(target) = self.route.secondary else {
            return;
        };
        self._stripe
            .record_write(write_cell(target, Role::Secondary, false));
        match std::mem::replace(&mut self.armed, Armed::None) {
            // The secondary failed, so the primary answered: nothing is in
            // flight any more.
            Armed::None | Armed::PrimaryInFlight => {}
            Armed::Command(command, render) => {
                self.core.dead_letter_with(
                    self.method,
                    render(&command),
                    command,
                    target,
                    error,
                    1,
                );
            }
            Armed::Untracked(key) => {
                self.core
                    .dead_letter_untracked(self.method, key, target, error)
            }
        }
    }
}

impl<C> Drop for WriteTicket<'_, C> {
    #[inline]
    fn drop(&mut self) {
        if matches!(self.armed, Armed::None) {
            return;
        }
        self.dead_letter_armed();
    }
}

impl<C> WriteTicket<'_, C> {
    /// The ticket was dropped between the primary's success and the
    /// secondary's outcome: its armed write becomes a dead letter.
    #[cold]
    fn dead_letter_armed(&mut self) {
        let armed = std::mem::replace(&mut self.armed, Armed::None);
        let Some(target) = self.route.secondary else {
            return;
        };
        let error = if std::thread::panicking() {
            "the call unwound before its secondary write finished"
        } else {
            "the call was cancelled before its secondary write finished"
        };
        match armed {
            Armed::None => {}
            Armed::PrimaryInFlight => {
                self.core.stats().record_primary_outcome_unknown();
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    tracing::warn!(
                        method = self.method,
                        target = %target,
                        "the call ended during its primary write: the primary may have committed with no secondary write; reconcile"
                    );
                }));
            }
            Armed::Command(command, render) => {
                let key = catch_unwind(AssertUnwindSafe(|| render(&command))).unwrap_or(None);
                self.core
                    .dead_letter_with(self.method, key, command, target, error.to_owned(), 0);
            }
            Armed::Untracked(key) => {
                self.core
                    .dead_letter_untracked(self.method, key, target, error.to_owned());
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

/// The dead letter's error for a panicking secondary call.
fn panic_error(payload: &(dyn std::any::Any + Send)) -> String {
    let message = if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "non-string panic payload"
    };
    format!("secondary write panicked: {message}")
}

/// Lets a repository whose errors are plain strings return a refusal.
impl From<WriteRefused> for String {
    fn from(refused: WriteRefused) -> String {
        refused.to_string()
    }
}

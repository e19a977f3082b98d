//! [`WriteContext`]: the journal record of the write in progress, reachable
//! by the stores through a thread-local.
//!
//! Two moments set it:
//!
//! - **the primary call** of a blocking write method under the outbox
//!   strategy ([`OutboxScope`], made by
//!   [`WriteTicket::outbox_scope`](crate::WriteTicket::outbox_scope) right
//!   before it): a store that keeps the journal in its own database inserts
//!   the record in the transaction of its write
//!   (`outbox::sqlite::append_in`), which marks the context journaled, and
//!   the runtime does not append it again. Native `async fn` methods do not
//!   set it (a thread-local is not the task's across an `.await`): their
//!   records are always appended after the primary call.
//! - **the secondary call** made by an applier: the store can read the
//!   record's idempotency id, sequence and attempt to apply it once, or
//!   only if newer ([`WriteContext::version`]). Async stores see it while
//!   the applier polls their future (not in tasks they spawn).

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::ids::IdempotencyId;
use super::{NewRecord, applier::OutboxShared};
use crate::phase::Store;

/// Which call a [`WriteContext`] is current for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The primary store's call, before the record is journaled by the
    /// runtime: the store may journal it in its own transaction.
    Primary,
    /// An applier's call of the secondary store.
    Apply,
}

/// The journal record of the write in progress on this thread; see the
/// module docs. Cheap to clone.
#[derive(Clone)]
pub struct WriteContext {
    inner: Arc<Inner>,
}

struct Inner {
    record: NewRecord,
    side: Side,
    attempt: u32,
    journal: Arc<str>,
    journaled: AtomicBool,
}

/// A context installed on a thread, with the runtime that installed it.
pub(crate) struct Frame {
    pub(crate) ctx: WriteContext,
    /// The address of the outbox runtime's shared state, so a runtime
    /// takes back only its own frame.
    pub(crate) owner: usize,
}

thread_local! {
    static CURRENT: RefCell<Option<Frame>> = const { RefCell::new(None) };
}

impl WriteContext {
    /// The context of the write in progress on this thread: during the
    /// primary call of a write under the outbox strategy, or while an
    /// applier applies a record. `None` elsewhere.
    pub fn current() -> Option<WriteContext> {
        CURRENT
            .try_with(|current| current.borrow().as_ref().map(|frame| frame.ctx.clone()))
            .ok()
            .flatten()
    }

    pub(crate) fn new(record: NewRecord, side: Side, attempt: u32, journal: Arc<str>) -> Self {
        WriteContext {
            inner: Arc::new(Inner {
                record,
                side,
                attempt,
                journal,
                journaled: AtomicBool::new(false),
            }),
        }
    }

    /// Which call this is.
    pub fn side(&self) -> Side {
        self.inner.side
    }

    /// The record to journal (primary side) or being applied.
    pub fn record(&self) -> &NewRecord {
        &self.inner.record
    }

    /// The write's routing key as text, if the method has one.
    pub fn key_text(&self) -> Option<&str> {
        self.inner.record.key_text.as_deref()
    }

    /// The route hash of the write's key.
    pub fn key_hash(&self) -> Option<u64> {
        self.inner.record.key_hash
    }

    /// The record's sequence: strictly increasing across the journal, so
    /// per key in the order the primary committed the writes.
    pub fn sequence(&self) -> u64 {
        self.inner.record.sequence
    }

    /// The sequence as a SQL integer, for a conditional write that keeps a
    /// row's newest version:
    ///
    /// ```sql
    /// INSERT INTO users (id, name, version) VALUES (?1, ?2, ?3)
    ///   ON CONFLICT(id) DO UPDATE SET name = excluded.name, version = excluded.version
    ///   WHERE users.version < excluded.version
    /// ```
    ///
    /// A record applied twice, or an older record replayed after a newer
    /// one, then changes nothing. Sequences above `i64::MAX` (not reached
    /// before the year 292 000) saturate.
    pub fn version(&self) -> i64 {
        i64::try_from(self.inner.record.sequence).unwrap_or(i64::MAX)
    }

    /// The record's idempotency id, the same on every attempt and replay.
    pub fn idempotency_id(&self) -> IdempotencyId {
        self.inner.record.idempotency_id
    }

    /// The attempt being made (1 for the first) on the apply side; 0 on the
    /// primary side.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The repository method of the write.
    pub fn method(&self) -> &str {
        &self.inner.record.method
    }

    /// The store the record is for.
    pub fn target(&self) -> Store {
        self.inner.record.target
    }

    /// The adapter's stream in the journal.
    pub fn stream(&self) -> &str {
        &self.inner.record.stream
    }

    /// The command, encoded as the journal keeps it.
    pub fn payload(&self) -> &str {
        &self.inner.record.payload
    }

    /// Where the adapter's journal lives ([`super::Journal::location`]).
    pub fn journal_location(&self) -> &str {
        &self.inner.journal
    }

    /// Whether the primary store journaled the record in its own
    /// transaction.
    pub fn is_journaled(&self) -> bool {
        self.inner.journaled.load(Ordering::SeqCst)
    }

    /// Tells the runtime that the record is in the journal, written in the
    /// primary store's transaction, so it is not appended again. Call it
    /// after inserting the record (what `outbox::sqlite::append_in` does),
    /// before the transaction commits: if the transaction then fails, the
    /// primary call fails too, and the runtime looks the record up before
    /// counting it.
    pub fn mark_journaled(&self) {
        self.inner.journaled.store(true, Ordering::SeqCst);
    }
}

impl fmt::Debug for WriteContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteContext")
            .field("side", &self.inner.side)
            .field("stream", &self.inner.record.stream)
            .field("method", &self.inner.record.method)
            .field("key", &self.inner.record.key_text)
            .field("sequence", &self.inner.record.sequence)
            .field("idempotency_id", &self.inner.record.idempotency_id)
            .field("attempt", &self.attempt())
            .field("journaled", &self.is_journaled())
            .finish()
    }
}

/// Installs `frame` as the current context; returns the one it replaces.
pub(crate) fn install(frame: Frame) -> Option<Frame> {
    CURRENT
        .try_with(|current| current.borrow_mut().replace(frame))
        .ok()
        .flatten()
}

/// Puts `previous` back as the current context (after [`install`]).
pub(crate) fn restore(previous: Option<Frame>) {
    let _ = CURRENT.try_with(|current| *current.borrow_mut() = previous);
}

/// Takes the current context if `owner` installed it and `wanted` accepts
/// it.
pub(crate) fn take_matching(
    owner: usize,
    wanted: impl FnOnce(&WriteContext) -> bool,
) -> Option<WriteContext> {
    CURRENT
        .try_with(|current| {
            let mut current = current.borrow_mut();
            let mine = current
                .as_ref()
                .is_some_and(|frame| frame.owner == owner && wanted(&frame.ctx));
            if mine {
                current.take().map(|frame| frame.ctx)
            } else {
                None
            }
        })
        .ok()
        .flatten()
}

/// The context of a primary call under the outbox strategy, current from
/// [`WriteTicket::outbox_scope`](crate::WriteTicket::outbox_scope) until
/// the write is handed to the outbox (or, when the primary failed, until
/// this is dropped). Generated code keeps it in a local for the rest of
/// the method.
#[must_use = "the write context is current only while the scope lives"]
pub struct OutboxScope {
    state: Option<ScopeState>,
}

struct ScopeState {
    previous: Option<Frame>,
    id: IdempotencyId,
    shared: Arc<OutboxShared>,
    stripe: usize,
}

impl OutboxScope {
    /// A scope that sets nothing (no outbox, or nothing to journal).
    #[inline]
    pub(crate) fn inert() -> Self {
        OutboxScope { state: None }
    }

    /// Installs `ctx` for the primary call of a write of `stripe`.
    pub(crate) fn enter(ctx: WriteContext, shared: Arc<OutboxShared>, stripe: usize) -> Self {
        let id = ctx.idempotency_id();
        let owner = shared.owner();
        let previous = install(Frame { ctx, owner });
        OutboxScope {
            state: Some(ScopeState {
                previous,
                id,
                shared,
                stripe,
            }),
        }
    }
}

impl Drop for OutboxScope {
    #[inline]
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            leave(state);
        }
    }
}

/// Restores the previous context; a record still current was not handed
/// to the outbox (the primary call failed, or the call unwound).
fn leave(state: ScopeState) {
    let left = take_matching(state.shared.owner(), |ctx| ctx.idempotency_id() == state.id);
    restore(state.previous);
    if let Some(ctx) = left {
        state.shared.not_submitted(&ctx, state.stripe);
    }
}

impl fmt::Debug for OutboxScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxScope")
            .field("active", &self.state.is_some())
            .finish()
    }
}

/// The context of an applier's call, current while it lives.
pub(crate) struct ApplyScope {
    previous: Option<Frame>,
}

impl ApplyScope {
    pub(crate) fn enter(ctx: WriteContext, owner: usize) -> Self {
        ApplyScope {
            previous: install(Frame { ctx, owner }),
        }
    }
}

impl Drop for ApplyScope {
    fn drop(&mut self) {
        restore(self.previous.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: u64) -> NewRecord {
        NewRecord {
            stream: "s".to_owned(),
            idempotency_id: IdempotencyId::generate(),
            sequence,
            key_text: Some("7".to_owned()),
            key_hash: Some(7),
            method: "put".to_owned(),
            target: Store::New,
            payload: "{}".to_owned(),
        }
    }

    #[test]
    fn scopes_nest_and_restore() {
        assert!(WriteContext::current().is_none());
        let outer = ApplyScope::enter(WriteContext::new(record(1), Side::Apply, 1, "j".into()), 1);
        assert_eq!(WriteContext::current().map(|c| c.sequence()), Some(1));
        {
            let _inner =
                ApplyScope::enter(WriteContext::new(record(2), Side::Apply, 3, "j".into()), 2);
            let ctx = WriteContext::current().unwrap();
            assert_eq!((ctx.sequence(), ctx.attempt()), (2, 3));
            // Another owner's frame is not taken.
            assert!(take_matching(1, |_| true).is_none());
        }
        assert_eq!(WriteContext::current().map(|c| c.sequence()), Some(1));
        drop(outer);
        assert!(WriteContext::current().is_none());
    }

    #[test]
    fn a_context_reports_its_record() {
        let ctx = WriteContext::new(record(u64::MAX), Side::Primary, 0, "db".into());
        assert_eq!(ctx.version(), i64::MAX);
        assert_eq!(ctx.key_text(), Some("7"));
        assert_eq!(ctx.target(), Store::New);
        assert_eq!(ctx.side(), Side::Primary);
        assert_eq!(ctx.journal_location(), "db");
        assert!(!ctx.is_journaled());
        ctx.clone().mark_journaled();
        assert!(ctx.is_journaled());
        assert!(format!("{ctx:?}").contains("journaled: true"));
    }
}

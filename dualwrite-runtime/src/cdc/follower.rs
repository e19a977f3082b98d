//! The follower thread: reads the source, journals the mapped commands,
//! then confirms the source's position; answers catch-up requests of
//! fences and flushes.
//!
//! ```text
//! follower thread                         fence / flush (another thread)
//! open the source -> report to with_cdc   catch_up_hook:
//! loop:                                     request -> wait for the answer
//!   a catch-up request? read until the      (until the deadline)
//!     source's head then is confirmed;
//!     answer
//!   else every poll interval: one round
//! round: read -> map -> journal (counted pending first) -> confirm
//!
//! standby (another follower holds the source; shared journal only):
//!   every standby interval: take the source over if its lock is free,
//!     else observe (head, confirmed) -> shadow reads follow
//!   catch-up: head now -> wait for confirmed >= head (or take over)
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::runtime::{Handle, RuntimeFlavor};

use super::{
    Cdc, CdcConfig, CdcError, CdcStatus, ChangeSource, MapFn, Position, REJECTED_MARKER, RowChange,
};
use crate::command::WriteCommand;
use crate::helpers::panic_message;
use crate::key::RoutingKey;
use crate::migration::Migration;
use crate::outbox::{NewRecord, OutboxShared};
use crate::phase::Store;

/// A request to the follower thread.
enum Request {
    /// Read until the source's head (as of now) is confirmed, then answer.
    /// Catch up by the deadline (source faults are retried until then).
    CatchUp(Sender<Result<(), CdcError>>, Instant),
}

/// The running follower of an adapter.
pub(crate) struct CdcFollower {
    /// Hands the follower thread its journal once its source is open.
    go: Mutex<Option<Sender<Arc<OutboxShared>>>>,
    requests: Sender<Request>,
    exit: Arc<AtomicBool>,
    status: Arc<Mutex<CdcStatus>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    source: String,
}

impl CdcFollower {
    /// Starts the follower thread and waits until its source is open;
    /// fails when it cannot be opened within the configured time. It reads
    /// nothing until [`CdcFollower::run`] hands it the journal. With
    /// `may_stand_by` (the journal is shared by every instance), a source
    /// another follower reads makes this one a standby instead of an
    /// error.
    pub(crate) fn open<C>(
        cdc: Cdc<C>,
        migration: Migration,
        encode: fn(&C) -> Result<String, String>,
        may_stand_by: bool,
    ) -> Result<Self, CdcError>
    where
        C: WriteCommand + 'static,
    {
        let Cdc {
            source,
            map,
            config,
        } = cdc;
        let description = source.describe();
        let (requests, requests_rx) = crossbeam_channel::unbounded();
        let (opened_tx, opened_rx) = crossbeam_channel::bounded(1);
        let (go, go_rx) = crossbeam_channel::bounded::<Arc<OutboxShared>>(1);
        let exit = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(CdcStatus::default()));
        let open_timeout = config.open_timeout;
        let mut runner = Runner {
            source,
            map,
            encode,
            outbox: None,
            migration,
            config,
            status: Arc::clone(&status),
            exit: Arc::clone(&exit),
            check_duplicates: true,
            reported: None,
            leading: false,
            may_stand_by,
            watch: None,
        };
        let thread = thread::Builder::new()
            .name("dualwrite-cdc".to_owned())
            .spawn(move || {
                let opened = catch_unwind(AssertUnwindSafe(|| runner.source.open()))
                    .unwrap_or_else(|payload| {
                        Err(CdcError::Source {
                            source: runner.source.describe(),
                            during: "opening the source",
                            error: format!("panicked: {}", panic_message(payload.as_ref())),
                        })
                    });
                let ok = match opened {
                    Ok(position) => {
                        runner.leading = true;
                        runner.status().confirmed = position;
                        let _ = opened_tx.send(Ok(()));
                        true
                    }
                    Err(CdcError::Busy { detail, .. }) if may_stand_by => {
                        tracing::info!(
                            source = runner.source.describe(),
                            detail,
                            "change data capture: another instance's follower reads the source; standing by to take it over"
                        );
                        runner.status().standby = true;
                        let _ = opened_tx.send(Ok(()));
                        true
                    }
                    Err(error) => {
                        let _ = opened_tx.send(Err(error));
                        false
                    }
                };
                if !ok {
                    return;
                }
                // Dropped unsent when the adapter gives up the start.
                if let Ok(outbox) = go_rx.recv() {
                    runner.outbox = Some(outbox);
                    runner.run(&requests_rx);
                }
            })
            .map_err(|error| CdcError::Source {
                source: description.clone(),
                during: "starting the follower thread",
                error: error.to_string(),
            })?;
        let follower = CdcFollower {
            go: Mutex::new(Some(go)),
            requests,
            exit,
            status,
            thread: Mutex::new(Some(thread)),
            source: description,
        };
        let opened = blocking(|| opened_rx.recv_timeout(open_timeout));
        match opened {
            Ok(Ok(())) => Ok(follower),
            Ok(Err(error)) => {
                follower.stop(Instant::now() + Duration::from_secs(5));
                Err(error)
            }
            Err(_) => {
                follower.stop(Instant::now());
                Err(CdcError::TimedOut {
                    waiting_for: "the change source to open",
                })
            }
        }
    }

    /// Starts reading: records go to `outbox`'s journal.
    pub(crate) fn run(&self, outbox: Arc<OutboxShared>) {
        if let Some(go) = self
            .go
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = go.send(outbox);
        }
    }

    /// What a fence runs (see `KeyStripes::catch_up`): the follower's
    /// catch-up, `false` (logged) when it fails.
    pub(crate) fn catch_up_hook(&self) -> crate::stripes::CatchUp {
        let requests = self.requests.clone();
        let source = self.source.clone();
        Arc::new(move |deadline| match catch_up_with(&requests, deadline) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, source, "fence: the change-data-capture follower did not catch up");
                false
            }
        })
    }

    /// The source, for messages.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// The status the follower updates, for a metrics publisher.
    pub(crate) fn status_handle(&self) -> Arc<Mutex<CdcStatus>> {
        Arc::clone(&self.status)
    }

    /// What the follower has done so far.
    pub(crate) fn status(&self) -> CdcStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the follower thread (a round under way is finished first),
    /// waiting for it until `deadline`; whether it stopped. Changes not
    /// confirmed stay in the source, for the next follower.
    pub(crate) fn stop(&self, deadline: Instant) -> bool {
        self.exit.store(true, Ordering::SeqCst);
        // A thread still waiting for its journal stops.
        drop(
            self.go
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let mut slot = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(thread) = slot.take() else {
            return true;
        };
        let mut nap = Duration::from_micros(100);
        while !thread.is_finished() {
            let now = Instant::now();
            if now >= deadline {
                *slot = Some(thread);
                return false;
            }
            thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(10));
        }
        let _ = thread.join();
        true
    }
}

impl Drop for CdcFollower {
    fn drop(&mut self) {
        if !self.stop(Instant::now() + Duration::from_secs(5)) {
            tracing::warn!(
                source = self.source,
                "the change-data-capture follower was still busy when the adapter was dropped; it stops after its current round"
            );
        }
    }
}

/// Asks the follower thread behind `requests` to catch up; waits for its
/// answer until `deadline`.
fn catch_up_with(requests: &Sender<Request>, deadline: Instant) -> Result<(), CdcError> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    requests
        .send(Request::CatchUp(reply, deadline))
        .map_err(|_| CdcError::Stopped)?;
    let wait = deadline.saturating_duration_since(Instant::now());
    match blocking(|| answer.recv_timeout(wait)) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(CdcError::TimedOut {
            waiting_for: "the change-data-capture follower to catch up",
        }),
        Err(RecvTimeoutError::Disconnected) => Err(CdcError::Stopped),
    }
}

/// Waits on the current thread, letting a multi-thread tokio runtime move
/// this worker's other tasks meanwhile.
fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    match Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

/// The follower thread's state.
struct Runner<C> {
    source: Box<dyn ChangeSource>,
    map: Arc<MapFn<C>>,
    encode: fn(&C) -> Result<String, String>,
    /// The journal's side of the outbox; set before `run`.
    outbox: Option<Arc<OutboxShared>>,
    migration: Migration,
    config: CdcConfig,
    status: Arc<Mutex<CdcStatus>>,
    exit: Arc<AtomicBool>,
    /// Changes read first after a start may be in the journal already
    /// (journaled, then the process stopped before the source was
    /// confirmed): they are looked up until one is not there.
    check_duplicates: bool,
    /// The last error logged, so a failing source is logged once.
    reported: Option<String>,
    /// This follower holds the source; otherwise it stands by.
    leading: bool,
    /// The journal is shared: while another follower holds the source,
    /// its progress counts (it journals where this adapter's appliers
    /// read). Otherwise a follower that lost the source only tries to open
    /// it again, and its catch-ups fail meanwhile.
    may_stand_by: bool,
    /// A standby's last observation not yet passed by the leading
    /// follower: when it was made and the source's head then.
    watch: Option<(Instant, Position)>,
}

/// What one round did.
struct Round {
    /// The position confirmed after it.
    through: crate::cdc::Position,
    /// The source said more changes may be waiting (the read stopped at
    /// its limit).
    full: bool,
}

impl<C: WriteCommand> Runner<C> {
    fn status(&self) -> std::sync::MutexGuard<'_, CdcStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&mut self, requests: &Receiver<Request>) {
        let mut wait = Duration::ZERO;
        loop {
            if self.exit.load(Ordering::SeqCst) {
                return;
            }
            // Short waits, so a stop is seen within 50 ms.
            match requests.recv_timeout(wait.min(Duration::from_millis(50))) {
                Ok(Request::CatchUp(reply, deadline)) => {
                    // A request whose asker gave up (queued behind a long
                    // catch-up) is answered without reading.
                    let result = if Instant::now() >= deadline {
                        Err(CdcError::TimedOut {
                            waiting_for: "the change-data-capture follower to catch up",
                        })
                    } else {
                        self.catch_up_by(deadline)
                    };
                    let _ = reply.send(result);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if wait > Duration::from_millis(50) {
                wait -= Duration::from_millis(50);
                continue;
            }
            if !self.leading {
                self.stand_by();
                wait = if self.leading {
                    Duration::ZERO
                } else {
                    self.config.standby_interval
                };
                continue;
            }
            wait = match self.guarded(Runner::round) {
                Ok(round) if round.full => Duration::ZERO,
                Ok(_) => self.config.poll_interval,
                Err(error @ (CdcError::Busy { .. } | CdcError::LockLost { .. })) => {
                    self.lose_lead(&error);
                    self.config.standby_interval
                }
                Err(error) => {
                    self.report(&error);
                    // The failed round may have journaled what it read
                    // (a confirm that failed after): the next one looks
                    // its records up before inserting them again.
                    self.check_duplicates = true;
                    self.config.retry_interval
                }
            };
        }
    }

    /// Runs `work`, turning a panic (of the source) into an error.
    fn guarded<T>(
        &mut self,
        work: impl FnOnce(&mut Self) -> Result<T, CdcError>,
    ) -> Result<T, CdcError> {
        catch_unwind(AssertUnwindSafe(|| work(self))).unwrap_or_else(|payload| {
            Err(CdcError::Source {
                source: self.source.describe(),
                during: "reading changes",
                error: format!("panicked: {}", panic_message(payload.as_ref())),
            })
        })
    }

    fn report(&mut self, error: &CdcError) {
        let text = error.to_string();
        self.status().last_error = Some(text.clone());
        if self.reported.as_deref() != Some(text.as_str()) {
            tracing::error!(%error, "change data capture: reading the source failed; retrying");
            self.reported = Some(text);
        }
    }

    /// The lock on the source was found lost (or taken by another
    /// follower): stand by, and open the source again when it is free.
    fn lose_lead(&mut self, error: &CdcError) {
        tracing::warn!(
            %error,
            "change data capture: this follower no longer holds the source; standing by until it can open it again"
        );
        self.leading = false;
        self.watch = None;
        self.status().standby = true;
    }

    /// Takes the source over if the lock is free; whether this follower
    /// leads now.
    fn try_lead(&mut self) -> Result<bool, CdcError> {
        match self.source.open() {
            Ok(position) => {
                tracing::info!(
                    source = self.source.describe(),
                    %position,
                    "change data capture: took the source over from the follower that held it"
                );
                self.leading = true;
                self.watch = None;
                // The last follower may have journaled changes it did not
                // confirm.
                self.check_duplicates = true;
                let mut status = self.status();
                status.standby = false;
                status.takeovers += 1;
                status.confirmed = position;
                Ok(true)
            }
            Err(CdcError::Busy { .. }) if self.may_stand_by => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// A standby's round: takes the source over if the follower that held
    /// it is gone; else notes how far that follower has come, so shadow
    /// reads and the lag follow it.
    fn stand_by(&mut self) {
        match self.guarded(Runner::try_lead) {
            Ok(true) => return,
            Ok(false) => {}
            Err(error) => {
                self.report(&error);
                return;
            }
        }
        let asked = Instant::now();
        let observed = match self.guarded(|runner| runner.source.observe()) {
            Ok(observed) => observed,
            Err(error) => {
                self.report(&error);
                return;
            }
        };
        {
            let mut status = self.status();
            status.confirmed = observed.confirmed;
            status.last_error = None;
        }
        self.reported = None;
        // Every change committed before `at` is at or before `head`.
        if let Some((at, head)) = self.watch
            && observed.confirmed >= head
        {
            self.followed_until(at);
            self.watch = None;
        }
        if self.watch.is_none() {
            self.watch = Some((asked, observed.head));
        }
    }

    fn followed_until(&self, as_of: Instant) {
        if let Some(outbox) = &self.outbox {
            outbox.stripes().followed_until(as_of);
        }
    }

    /// A standby's catch-up: waits until the leading follower confirmed
    /// the source's head as of the call (every change committed before it
    /// is journaled, in the shared journal), until `deadline`; `Ok(true)`
    /// when this follower took the source over meanwhile (it catches up
    /// itself then).
    fn stand_by_until(&mut self, deadline: Instant) -> Result<bool, CdcError> {
        let asked = Instant::now();
        let mut head = None;
        let mut next_try = asked;
        let pause = self
            .config
            .poll_interval
            .clamp(Duration::from_millis(5), Duration::from_millis(50));
        loop {
            if Instant::now() >= next_try {
                match self.guarded(Runner::try_lead) {
                    Ok(true) => return Ok(true),
                    Ok(false) => {}
                    Err(error @ CdcError::Source { .. }) => self.report(&error),
                    Err(error) => return Err(error),
                }
                next_try = Instant::now() + self.config.standby_interval;
            }
            match self.guarded(|runner| runner.source.observe()) {
                Ok(observed) => {
                    self.status().confirmed = observed.confirmed;
                    let head = *head.get_or_insert(observed.head);
                    if observed.confirmed >= head {
                        self.followed_until(asked);
                        return Ok(false);
                    }
                }
                Err(error) => {
                    self.report(&error);
                    if !matches!(error, CdcError::Source { .. }) {
                        return Err(error);
                    }
                }
            }
            if self.exit.load(Ordering::SeqCst) {
                return Err(CdcError::Stopped);
            }
            if Instant::now() + pause >= deadline {
                return Err(CdcError::TimedOut {
                    waiting_for: "the leading change-data-capture follower (another instance's) to catch up",
                });
            }
            thread::sleep(pause);
        }
    }

    /// Reads until the source's current head is confirmed.
    /// Catches up, retrying failed reads of the source or the journal
    /// (a connection the server ended, a busy journal) until `deadline`:
    /// a fence or a flush during a short fault waits for it to pass. A
    /// standby waits for the leading follower instead.
    fn catch_up_by(&mut self, deadline: Instant) -> Result<(), CdcError> {
        loop {
            if !self.leading && !self.stand_by_until(deadline)? {
                return Ok(());
            }
            let error = match self.guarded(|runner| runner.catch_up()) {
                Ok(()) => return Ok(()),
                Err(error @ (CdcError::Busy { .. } | CdcError::LockLost { .. })) => {
                    self.lose_lead(&error);
                    if self.exit.load(Ordering::SeqCst) || Instant::now() >= deadline {
                        return Err(error);
                    }
                    continue;
                }
                Err(error) => error,
            };
            self.report(&error);
            self.check_duplicates = true;
            let pause = self
                .config
                .retry_interval
                .clamp(Duration::from_millis(10), Duration::from_millis(100));
            // Faults of a connection or of the journal pass; what the
            // source cannot decode, a missing slot or set-up does not.
            let transient = matches!(error, CdcError::Source { .. } | CdcError::Journal(_));
            if !transient || self.exit.load(Ordering::SeqCst) || Instant::now() + pause >= deadline
            {
                return Err(error);
            }
            thread::sleep(pause);
        }
    }

    fn catch_up(&mut self) -> Result<(), CdcError> {
        let asked = Instant::now();
        let head = self.source.head()?;
        loop {
            let round = self.round()?;
            if round.through >= head {
                self.followed_until(asked);
                return Ok(());
            }
            if self.exit.load(Ordering::SeqCst) {
                return Err(CdcError::Stopped);
            }
            if !round.full {
                // The read reached the source's end and not the head yet
                // (PostgreSQL's WAL written and not flushed, events on
                // their way): a short pause rather than a spin.
                thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Reads a batch, journals it, confirms it.
    fn round(&mut self) -> Result<Round, CdcError> {
        let Some(outbox) = self.outbox.clone() else {
            return Err(CdcError::Stopped);
        };
        let limit = self.config.batch.max(1);
        let started = Instant::now();
        let batch = self.source.read(limit)?;
        let read = batch.changes.len();
        let mut records = Vec::with_capacity(read);
        let (mut skipped, mut rejected, mut duplicates) = (0_u64, 0_u64, 0_u64);
        for change in &batch.changes {
            let Some(record) = self.record(&outbox, change, &mut rejected) else {
                skipped += 1;
                continue;
            };
            if self.check_duplicates {
                if outbox.journal().contains(&record.idempotency_id)? {
                    duplicates += 1;
                    continue;
                }
                self.check_duplicates = false;
            }
            records.push(record);
        }
        if !records.is_empty() {
            outbox.journal_external(&records)?;
        }
        // Counted once journaled, whether or not the confirm below works
        // (a round after a failed confirm finds them as duplicates).
        {
            let mut status = self.status();
            status.changes_read += read as u64;
            status.journaled += records.len() as u64;
            status.skipped += skipped;
            status.rejected += rejected;
            status.duplicates += duplicates;
        }
        self.source.confirm(batch.through)?;
        {
            let mut status = self.status();
            status.confirmed = status.confirmed.max(batch.through);
            status.last_error = None;
        }
        self.reported = None;
        let full = batch.more;
        if !full {
            // A batch short of the limit reached the source's end as of the
            // read: every change committed before it is journaled now (for
            // shadow reads, `KeyStripes::followed`).
            outbox.stripes().followed_until(started);
        }
        Ok(Round {
            through: batch.through,
            full,
        })
    }

    /// The journal record of a change: its mapped command for the new
    /// store, a rejected change kept as a dead letter, or `None` when it
    /// is skipped.
    fn record(
        &self,
        outbox: &OutboxShared,
        change: &RowChange,
        rejected: &mut u64,
    ) -> Option<NewRecord> {
        let stream = outbox.stream();
        let mapped =
            catch_unwind(AssertUnwindSafe(|| (self.map)(change))).unwrap_or_else(|payload| {
                Some(Err(format!(
                    "the mapping function panicked: {}",
                    panic_message(payload.as_ref())
                )))
            });
        let error = match mapped? {
            Ok(command) => {
                let key_text = command.key_text();
                // Carried only where the adapter would write the new store
                // as the secondary: not before `DualWrite`, and not once
                // the new store is primary (the old store's change is then
                // the appliers' copy of the adapter's write).
                let route = self
                    .migration
                    .write_route(key_text.as_ref().map(|text| text as &dyn RoutingKey));
                if route.primary != Store::Old || route.secondary != Some(Store::New) {
                    return None;
                }
                match (self.encode)(&command) {
                    Ok(payload) => {
                        return Some(NewRecord {
                            stream: stream.to_owned(),
                            idempotency_id: change.idempotency_id(stream),
                            sequence: outbox.journal().next_sequence(),
                            key_text,
                            key_hash: command.key_hash(),
                            method: command.method().to_owned(),
                            target: Store::New,
                            payload,
                        });
                    }
                    Err(error) => format!("cannot encode the mapped command: {error}"),
                }
            }
            Err(error) => error,
        };
        *rejected += 1;
        tracing::error!(
            change = %change,
            %error,
            "change data capture: a row change could not be mapped; kept as a dead letter in the journal"
        );
        Some(NewRecord {
            stream: stream.to_owned(),
            idempotency_id: change.idempotency_id(stream),
            sequence: outbox.journal().next_sequence(),
            key_text: None,
            key_hash: None,
            method: format!("cdc {}.{}", change.schema, change.table),
            target: Store::New,
            payload: format!("{REJECTED_MARKER}{error}; the change: {change}"),
        })
    }
}

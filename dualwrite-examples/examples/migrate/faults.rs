//! Faults injected into a store's writes, as a wrapper that implements the
//! same repository traits.
//!
//! - **transient**: one write in N fails with a connection error; the
//!   adapter's retries absorb it.
//! - **outage**: every write fails until a deadline (the store is down);
//!   writes whose retries run out become dead letters, drift that the
//!   reconciliation must find.
//! - **silent drop**: one save in N is acknowledged and not applied (a
//!   buggy trigger, a lost replica write): drift that nothing reports,
//!   which only reconciliation finds.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::model::{Order, OrderRepo, StoreError, User, UserRepo};

/// What to inject, changed while the run goes on.
#[derive(Default)]
pub struct FaultPlan {
    transient_one_in: AtomicU64,
    drop_one_in: AtomicU64,
    down_until: Mutex<Option<Instant>>,
    writes: AtomicU64,
    /// What was injected, for the report.
    pub injected_transient: AtomicU64,
    pub injected_outage: AtomicU64,
    pub injected_drops: AtomicU64,
}

impl FaultPlan {
    /// One write in `n` fails (0: none).
    pub fn transient(&self, one_in: u64) {
        self.transient_one_in.store(one_in, Ordering::Relaxed);
    }

    /// One save in `n` is acknowledged and lost (0: none).
    pub fn silent_drops(&self, one_in: u64) {
        self.drop_one_in.store(one_in, Ordering::Relaxed);
    }

    /// Every write fails for `length`, from now.
    pub fn outage(&self, length: Duration) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + length);
    }

    /// No more faults.
    pub fn heal(&self) {
        self.transient(0);
        self.silent_drops(0);
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A fixed, well-mixed sequence (splitmix64 of a counter): the same
    /// writes fail in the same order on every run with the same traffic.
    fn roll(&self) -> u64 {
        let mut z = self
            .writes
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `Err` for a failing write; `Ok(true)` for a write to drop silently.
    fn before_write(&self, may_drop: bool) -> Result<bool, StoreError> {
        let down = *self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_some_and(|until| Instant::now() < until) {
            self.injected_outage.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Injected("store unavailable"));
        }
        let roll = self.roll();
        let transient = self.transient_one_in.load(Ordering::Relaxed);
        if transient > 0 && roll.is_multiple_of(transient) {
            self.injected_transient.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Injected("connection reset"));
        }
        let drop = self.drop_one_in.load(Ordering::Relaxed);
        if may_drop && drop > 0 && (roll >> 32).is_multiple_of(drop) {
            self.injected_drops.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        Ok(false)
    }
}

/// A store whose writes go through a [`FaultPlan`] first.
pub struct Faulty<S> {
    pub inner: S,
    pub plan: std::sync::Arc<FaultPlan>,
}

impl<S: UserRepo> UserRepo for Faulty<S> {
    fn save_user(&self, user: &User) -> Result<(), StoreError> {
        if self.plan.before_write(true)? {
            return Ok(());
        }
        self.inner.save_user(user)
    }

    fn get_user(&self, id: i64) -> Result<Option<User>, StoreError> {
        self.inner.get_user(id)
    }
}

impl<S: OrderRepo> OrderRepo for Faulty<S> {
    fn save_order(&self, order: &Order) -> Result<(), StoreError> {
        if self.plan.before_write(true)? {
            return Ok(());
        }
        self.inner.save_order(order)
    }

    fn delete_order(&self, id: i64) -> Result<bool, StoreError> {
        self.plan.before_write(false)?;
        self.inner.delete_order(id)
    }

    fn get_order(&self, id: i64) -> Result<Option<Order>, StoreError> {
        self.inner.get_order(id)
    }
}

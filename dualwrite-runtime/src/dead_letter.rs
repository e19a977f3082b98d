//! Dead letters: the secondary writes given up on, kept for reconciliation.
//!
//! Both the caller's path (synchronous strategy) and the lanes (async
//! strategy) put dead letters here, so this module sits below both and
//! neither imports the other.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::by_method::MethodEvent;
use crate::phase::Store;
use crate::stats::Stats;

/// The default most dead letters an adapter keeps in memory.
pub const DEFAULT_DEAD_LETTER_CAPACITY: usize = 100_000;

/// A secondary write that was given up on, kept so reconciliation can repair
/// the drift it left.
#[derive(Debug, Clone)]
pub struct DeadLetter<C> {
    /// The repository method that made the write.
    pub method: &'static str,
    /// The rendered routing key, if the method has one.
    pub key: Option<String>,
    /// The store the write was meant for.
    pub target: Store,
    /// The write itself, ready to be applied again.
    pub command: C,
    /// The error of the last attempt.
    pub error: String,
    /// Attempts made; 0 if the write was never tried (refused by a full
    /// queue, cancelled before its attempt, or left at shutdown).
    pub attempts: u32,
    /// When the write was given up on.
    pub at: SystemTime,
}

impl<C> DeadLetter<C> {
    /// A write given up on now.
    pub(crate) fn now(
        method: &'static str,
        key: Option<String>,
        target: Store,
        command: C,
        error: String,
        attempts: u32,
    ) -> Self {
        DeadLetter {
            method,
            key,
            target,
            command,
            error,
            attempts,
            at: SystemTime::now(),
        }
    }
}

/// A bounded list of dead letters.
///
/// When it is full the oldest letter is evicted to make room: the eviction
/// is logged at error level with the letter's method, key and error, and
/// counted in [`crate::StatsSnapshot::dead_letters_evicted`], so no write
/// leaves without a record. Take letters out regularly (a reconciliation
/// job) to keep them all.
pub(crate) struct DeadLetterSink<C> {
    letters: Mutex<VecDeque<DeadLetter<C>>>,
    capacity: usize,
    stats: Stats,
}

impl<C> DeadLetterSink<C> {
    /// A sink keeping at most `capacity` letters (at least one).
    pub(crate) fn new(capacity: usize, stats: Stats) -> Self {
        DeadLetterSink {
            letters: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            stats,
        }
    }

    /// The most letters kept.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps, counts and logs a write given up on. The letter is stored
    /// before anything is logged, so a panicking log subscriber cannot lose
    /// it.
    pub(crate) fn push(&self, letter: DeadLetter<C>) {
        self.stats.record_dead_letter();
        self.stats
            .record_method(letter.method, MethodEvent::DeadLetter(letter.target));
        let line = (
            letter.method,
            letter.key.clone(),
            letter.target,
            letter.error.clone(),
            letter.attempts,
        );
        let evicted = {
            let mut letters = self.lock();
            let evicted = if letters.len() >= self.capacity {
                letters.pop_front()
            } else {
                None
            };
            letters.push_back(letter);
            evicted
        };
        let _ = std::panic::catch_unwind(|| {
            let (method, key, target, error, attempts) = &line;
            tracing::warn!(
                method,
                key = key.as_deref().unwrap_or("-"),
                target = %target,
                error = %error,
                attempts,
                "secondary write failed, kept as a dead letter"
            );
        });
        if let Some(evicted) = evicted {
            self.stats.record_dead_letter_evicted();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tracing::error!(
                    method = evicted.method,
                    key = evicted.key.as_deref().unwrap_or("-"),
                    target = %evicted.target,
                    error = %evicted.error,
                    capacity = self.capacity,
                    "dead-letter list full: the oldest letter was evicted; take dead letters out to reconcile them"
                );
            }));
        }
    }

    /// The number of letters kept.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// A copy of the letters, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<DeadLetter<C>>
    where
        C: Clone,
    {
        self.lock().iter().cloned().collect()
    }

    /// Removes and returns the letters, oldest first.
    pub(crate) fn take(&self) -> Vec<DeadLetter<C>> {
        std::mem::take(&mut *self.lock()).into()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<DeadLetter<C>>> {
        // Pushes and pops are the only mutations made under the lock; a
        // panic cannot leave the queue half-updated.
        self.letters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(n: u32) -> DeadLetter<u32> {
        DeadLetter {
            method: "put",
            key: Some(n.to_string()),
            target: Store::New,
            command: n,
            error: "down".into(),
            attempts: 1,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn a_full_sink_evicts_the_oldest_and_counts_it() {
        let stats = Stats::new();
        let sink = DeadLetterSink::new(2, stats.clone());
        for n in 0..5 {
            sink.push(letter(n));
        }
        let kept: Vec<u32> = sink.snapshot().iter().map(|l| l.command).collect();
        assert_eq!(kept, vec![3, 4]);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.dead_letters, 5);
        assert_eq!(snapshot.dead_letters_evicted, 3);
        assert_eq!(
            stats
                .by_method()
                .get("put", MethodEvent::DeadLetter(Store::New)),
            5
        );
        assert_eq!(sink.take().len(), 2);
        assert_eq!(sink.len(), 0);
    }

    #[test]
    fn capacity_is_at_least_one() {
        let sink = DeadLetterSink::<u32>::new(0, Stats::new());
        assert_eq!(sink.capacity(), 1);
        sink.push(letter(1));
        assert_eq!(sink.len(), 1);
    }
}

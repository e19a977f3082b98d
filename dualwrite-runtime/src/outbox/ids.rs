//! Idempotency ids: unique per journal record, in the layout of a UUID
//! version 7 (time first, so ids sort roughly by creation).
//!
//! ```text
//! 48 bits  Unix time in milliseconds
//!  4 bits  version (7)
//! 12 bits  per-process random
//!  2 bits  variant (0b10)
//! 30 bits  per-process random
//! 32 bits  per-process counter
//! ```
//!
//! Unique within a process as long as fewer than 2^32 ids are made in one
//! millisecond (the counter and the time both move); across processes the
//! 42 random bits, drawn once per process from the standard library's
//! randomly keyed hasher, make a collision unlikely. The journal's unique
//! index refuses a duplicate anyway: the append fails, nothing is
//! overwritten.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A journal record's idempotency id; rendered like a UUID
/// (`0190f1e2-3c4d-7abc-8def-0123456789ab`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdempotencyId(u128);

impl IdempotencyId {
    /// A new id.
    pub fn generate() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis())
            & 0xFFFF_FFFF_FFFF;
        let random = process_random();
        let random_a = u128::from(random >> 30 & 0xFFF);
        let random_b = u128::from(random & 0x3FFF_FFFF);
        IdempotencyId(
            millis << 80
                | 0x7 << 76
                | random_a << 64
                | 0b10 << 62
                | random_b << 32
                | u128::from(counter),
        )
    }

    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// An id from its number.
    pub fn from_u128(value: u128) -> Self {
        IdempotencyId(value)
    }
}

/// 42 random bits, the same for the whole process.
fn process_random() -> u64 {
    static RANDOM: OnceLock<u64> = OnceLock::new();
    *RANDOM.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos()),
        );
        hasher.finish() & ((1 << 42) - 1)
    })
}

impl fmt::Display for IdempotencyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            v >> 96,
            v >> 80 & 0xFFFF,
            v >> 64 & 0xFFFF,
            v >> 48 & 0xFFFF,
            v & 0xFFFF_FFFF_FFFF
        )
    }
}

/// Why a text is not an idempotency id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError(String);

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not an idempotency id (32 hexadecimal digits, hyphens allowed)",
            self.0
        )
    }
}

impl std::error::Error for ParseIdError {}

impl FromStr for IdempotencyId {
    type Err = ParseIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits: String = text.chars().filter(|c| *c != '-').collect();
        if digits.len() != 32 {
            return Err(ParseIdError(text.to_owned()));
        }
        u128::from_str_radix(&digits, 16)
            .map(IdempotencyId)
            .map_err(|_| ParseIdError(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_round_trip_through_text() {
        let ids: Vec<IdempotencyId> = (0..10_000).map(|_| IdempotencyId::generate()).collect();
        let distinct: HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids[..10] {
            let text = id.to_string();
            assert_eq!(text.len(), 36);
            assert_eq!(&text[14..15], "7", "version nibble: {text}");
            assert_eq!(text.parse::<IdempotencyId>(), Ok(*id));
        }
    }

    #[test]
    fn ids_made_on_several_threads_are_unique() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..5_000)
                        .map(|_| IdempotencyId::generate())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(all.insert(id));
            }
        }
        assert_eq!(all.len(), 20_000);
    }

    #[test]
    fn bad_text_is_refused_with_a_message() {
        for bad in [
            "",
            "xyz",
            "0190f1e2-3c4d-7abc-8def-0123456789",
            "g".repeat(32).as_str(),
        ] {
            let error = bad.parse::<IdempotencyId>().unwrap_err();
            assert!(error.to_string().contains("not an idempotency id"));
        }
    }
}

//! The routing key: what a write is ordered by and a phase override applies to.

use std::fmt::Display;
use std::hash::{DefaultHasher, Hash, Hasher};

/// A value that identifies the tenant or entity a call is about.
///
/// The key picks the secondary lane (so writes to one key stay in order) and
/// the per-key phase override (see [`Migration::set_phase_for`]). Every type
/// that is [`Hash`] and [`Display`] is a routing key.
///
/// [`Migration::set_phase_for`]: crate::Migration::set_phase_for
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a dual-write routing key",
    label = "this key must implement `Hash` and `Display`",
    note = "name an argument or field that does with #[dual_write(key = arg)] or #[dual_write(key = arg.field)]"
)]
pub trait RoutingKey {
    /// Stable within a process: same key, same hash (used to pick the secondary lane).
    fn route_hash(&self) -> u64;
    /// The key as text: per-key phase overrides and logs use it.
    fn render(&self) -> String;
}

#[diagnostic::do_not_recommend]
impl<T: Hash + Display + ?Sized> RoutingKey for T {
    fn route_hash(&self) -> u64 {
        // `DefaultHasher::new()` uses fixed keys, unlike `RandomState`, so the
        // same key always lands on the same lane.
        let mut hasher = DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }

    fn render(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_deterministic_and_render_is_display() {
        assert_eq!(42_u64.route_hash(), 42_u64.route_hash());
        assert_eq!(
            "tenant-a".route_hash(),
            String::from("tenant-a").route_hash()
        );
        assert_ne!("tenant-a".route_hash(), "tenant-b".route_hash());
        assert_eq!(42_u64.render(), "42");
        assert_eq!("tenant-a".render(), "tenant-a");
    }

    #[test]
    fn works_through_a_trait_object() {
        let key: &dyn RoutingKey = &7_i32;
        assert_eq!(key.route_hash(), 7_i32.route_hash());
        assert_eq!(key.render(), "7");
    }
}

//! The routing key: what a write is ordered by and a phase override applies to.

use std::fmt::{self, Display, Write as _};
use std::hash::{BuildHasher as _, Hash, Hasher};

/// A value that identifies the tenant or entity a call is about.
///
/// The key picks the secondary lane (so writes to one key stay in order) and
/// the per-key phase override (see [`Migration::set_phase_for`]). Every type
/// that is [`Hash`] and [`Display`] is a routing key; a type that is
/// [`Hash`] and only [`Debug`](fmt::Debug) becomes one, rendered in its
/// `Debug` form, with [`routing_key_via_debug!`](crate::routing_key_via_debug);
/// several values make one with [`Composite`].
///
/// [`Migration::set_phase_for`]: crate::Migration::set_phase_for
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a dual-write routing key",
    label = "this key must implement `Hash` and `Display`",
    note = "name an argument or field that does with #[dual_write(key = arg)] or #[dual_write(key = arg.field)]",
    note = "a type of your crate that is `Hash + Debug` only becomes a key with `dualwrite_runtime::routing_key_via_debug!(Type);`"
)]
pub trait RoutingKey {
    /// Stable within a process: same key, same hash (used to pick the secondary lane).
    fn route_hash(&self) -> u64;
    /// The key as text: per-key phase overrides and logs use it.
    fn render(&self) -> String;
    /// A hash of the key's text, computed without building the text (per-key
    /// overrides are looked up by it on the hot path).
    fn text_hash(&self) -> u64;
    /// Whether the key's text is `text`, compared without building it.
    fn text_eq(&self, text: &str) -> bool;
}

/// The seed of [`RoutingKey::route_hash`].
const ROUTE_SEED: u64 = 0x6475_616c_7772_6974;

/// Hashes formatted text as it is written: FNV-1a (64-bit) over the bytes,
/// then the splitmix64 finalizer so the low bits (a rollout's bucket) are
/// well mixed. A fixed algorithm, unlike `std`'s `DefaultHasher`, which may
/// change between Rust releases: every process, build and toolchain puts a
/// key in the same rollout bucket.
struct HashWriter(u64);

impl HashWriter {
    const fn new() -> Self {
        HashWriter(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}

/// Compares formatted text, as it is written, with an expected string.
struct EqWriter<'a> {
    rest: &'a str,
}

impl fmt::Write for EqWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self.rest.strip_prefix(s) {
            Some(rest) => {
                self.rest = rest;
                Ok(())
            }
            None => Err(fmt::Error),
        }
    }
}

/// The hash of a text, as [`RoutingKey::text_hash`] computes it.
pub(crate) fn hash_text(text: &str) -> u64 {
    let mut hasher = HashWriter::new();
    hasher.write(text.as_bytes());
    hasher.finish()
}

#[diagnostic::do_not_recommend]
impl<T: Hash + Display + ?Sized> RoutingKey for T {
    fn route_hash(&self) -> u64 {
        // A fixed seed, unlike a random state, so the same key always lands
        // on the same stripe and lane; foldhash, because every write hashes
        // its key on the caller's path.
        foldhash::fast::FixedState::with_seed(ROUTE_SEED).hash_one(self)
    }

    fn render(&self) -> String {
        self.to_string()
    }

    fn text_hash(&self) -> u64 {
        let mut writer = HashWriter::new();
        // Writing to a hasher cannot fail; a failing `Display` impl leaves a
        // partial hash, which then simply matches no override.
        let _ = write!(writer, "{self}");
        writer.finish()
    }

    fn text_eq(&self, text: &str) -> bool {
        let mut writer = EqWriter { rest: text };
        write!(writer, "{self}").is_ok() && writer.rest.is_empty()
    }
}

/// A routing key made of several parts: `Composite((tenant, id))`. It
/// hashes every part and renders as the parts joined by `/` (`"acme/42"`),
/// so a per-key override set with `Composite(("acme", 42))` or with the text
/// `"acme/42"` applies to it. `#[dual_write(key = (a, b))]` builds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Composite<T>(pub T);

/// A `Hash + Debug` value seen as `Hash + Display` through its `Debug`
/// form; what [`routing_key_via_debug!`](crate::routing_key_via_debug)
/// implements [`RoutingKey`] with.
#[doc(hidden)]
pub struct ViaDebug<'a, T: ?Sized>(pub &'a T);

impl<T: Hash + ?Sized> Hash for ViaDebug<'_, T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl<T: fmt::Debug + ?Sized> Display for ViaDebug<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

/// Makes types that are `Hash + Debug` (and not `Display`) routing keys,
/// rendered in their `Debug` form, so `#[dual_write(key = id)]` accepts an
/// argument of such a type and `Migration::set_phase_for(&id, ..)` an
/// override for it:
///
/// ```
/// #[derive(Hash, Debug)]
/// struct OrderId(u64);
/// dualwrite_runtime::routing_key_via_debug!(OrderId);
///
/// use dualwrite_runtime::RoutingKey;
/// assert_eq!(OrderId(7).render(), "OrderId(7)");
/// ```
#[macro_export]
macro_rules! routing_key_via_debug {
    ($($ty:ty),+ $(,)?) => {$(
        impl $crate::RoutingKey for $ty {
            fn route_hash(&self) -> u64 {
                $crate::RoutingKey::route_hash(&$crate::__private::ViaDebug(self))
            }
            fn render(&self) -> ::std::string::String {
                $crate::RoutingKey::render(&$crate::__private::ViaDebug(self))
            }
            fn text_hash(&self) -> u64 {
                $crate::RoutingKey::text_hash(&$crate::__private::ViaDebug(self))
            }
            fn text_eq(&self, text: &str) -> bool {
                $crate::RoutingKey::text_eq(&$crate::__private::ViaDebug(self), text)
            }
        }
    )+};
}

macro_rules! composite {
    ($($part:ident . $index:tt),+) => {
        impl<$($part: Hash),+> Hash for Composite<($($part,)+)> {
            fn hash<H: Hasher>(&self, state: &mut H) {
                $(self.0.$index.hash(state);)+
            }
        }

        impl<$($part: Display),+> Display for Composite<($($part,)+)> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut separator = "";
                $(
                    f.write_str(separator)?;
                    self.0.$index.fmt(f)?;
                    separator = "/";
                )+
                let _ = separator;
                Ok(())
            }
        }
    };
}

composite!(A.0, B.1);
composite!(A.0, B.1, C.2);
composite!(A.0, B.1, C.2, D.3);

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
        assert_eq!(42_u64.text_hash(), "42".text_hash());
        assert_eq!(42_u64.text_hash(), hash_text("42"));
    }

    /// The text hash places keys in rollout buckets shared by every
    /// instance: its values are part of the contract and must not change
    /// with the build or the toolchain.
    #[test]
    fn the_text_hash_is_a_fixed_function() {
        assert_eq!(hash_text(""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(42_u64.text_hash(), 0xa428_ce54_7116_3b02);
        assert_eq!("tenant-7".text_hash(), 0xd410_a48a_2f93_679a);
        assert_eq!(Composite(("acme", 42)).text_hash(), 0x97b7_7d44_8365_11d0);
        assert!(42_u64.text_eq("42"));
        assert!(!42_u64.text_eq("4"));
        assert!(!42_u64.text_eq("420"));
        assert_eq!("tenant-a".render(), "tenant-a");
    }

    #[test]
    fn composite_keys_hash_every_part_and_render_joined() {
        let key = Composite(("acme", 42_u64));
        assert_eq!(key.render(), "acme/42");
        assert!(key.text_eq("acme/42"));
        assert_eq!(key.text_hash(), "acme/42".text_hash());
        assert_eq!(key.route_hash(), Composite(("acme", 42_u64)).route_hash());
        assert_ne!(key.route_hash(), Composite(("acme", 43_u64)).route_hash());
        // References to the parts key the same way as the parts.
        let (tenant, id) = ("acme".to_owned(), 42_u64);
        assert_eq!(
            Composite((&tenant, &id)).route_hash(),
            Composite((&tenant, &id)).route_hash()
        );
        assert_eq!(Composite((&tenant, &id, &7_u8)).render(), "acme/42/7");
    }

    #[test]
    fn works_through_a_trait_object() {
        let key: &dyn RoutingKey = &7_i32;
        assert_eq!(key.route_hash(), 7_i32.route_hash());
        assert_eq!(key.render(), "7");
    }
}

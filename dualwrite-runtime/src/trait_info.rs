//! What a generated adapter tells the runtime about its repository trait:
//! the trait's name and its routed methods, for metric labels and span
//! fields.

/// The repository trait behind an adapter, as `#[dual_write]` sees it.
///
/// Generated adapters pass it to [`DualWriteCore::for_trait`](crate::DualWriteCore::for_trait);
/// hand-written ones may too (a core made with
/// [`DualWriteCore::new`](crate::DualWriteCore::new) is
/// [`TraitInfo::UNNAMED`]). The method lists only let metrics show a zero
/// series for each method before its first event; a method missing from
/// them is still counted, from its first event on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraitInfo {
    /// The trait's name (`UserStore`): the `trait` label of every metric and
    /// the `trait` field of every span.
    pub name: &'static str,
    /// The methods routed as writes.
    pub writes: &'static [&'static str],
    /// The methods routed as reads.
    pub reads: &'static [&'static str],
}

impl TraitInfo {
    /// An adapter that did not name its trait.
    pub const UNNAMED: TraitInfo = TraitInfo {
        name: "-",
        writes: &[],
        reads: &[],
    };

    /// A trait named `name` with no methods listed.
    pub const fn named(name: &'static str) -> Self {
        TraitInfo {
            name,
            writes: &[],
            reads: &[],
        }
    }
}

impl Default for TraitInfo {
    fn default() -> Self {
        TraitInfo::UNNAMED
    }
}

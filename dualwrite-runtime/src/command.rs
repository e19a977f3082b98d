//! What the runtime needs to know of a generated write command.

/// A write captured as a value: the generated `<Trait>Write` enum implements
/// it, so lanes and dead letters can name the method and the key of a write
/// without knowing the trait.
pub trait WriteCommand {
    /// The trait method the command replays.
    fn method(&self) -> &'static str;
    /// The write's routing key as text (see
    /// [`RoutingKey::render`](crate::RoutingKey::render)), if the method has
    /// one.
    fn key_text(&self) -> Option<String>;
    /// The route hash of the write's key (see
    /// [`RoutingKey::route_hash`](crate::RoutingKey::route_hash)), which
    /// picks its lane.
    fn key_hash(&self) -> Option<u64>;
}

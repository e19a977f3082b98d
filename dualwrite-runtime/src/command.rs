//! What the runtime needs to know of a generated write command.

use crate::key::RoutingKey;

/// A write captured as a value: the generated `<Trait>Write` enum implements
/// it, so lanes and dead letters can name the method and the key of a write
/// without knowing the trait.
pub trait WriteCommand {
    /// The trait method the command replays.
    fn method(&self) -> &'static str;
    /// The write's routing key, if the method has one.
    fn key(&self) -> Option<&dyn RoutingKey>;
}

//! Runtime for dual-write data-store migrations.
//!
//! Annotate a repository trait with [`dual_write`] and the macro generates an
//! adapter, `<Trait>DualWrite<Old, New>`, that implements the trait over an old
//! and a new store. Every call is routed by the [`Phase`] held in a
//! [`Migration`] handle, globally or per tenant/entity key, exactly as the
//! phase table of the dual-write specification says:
//!
//! | Phase        | Reads               | Primary writes | Secondary writes |
//! |--------------|---------------------|----------------|------------------|
//! | `Prepare`    | Old                 | Old            | none             |
//! | `DualWrite`  | Old                 | Old            | New              |
//! | `Backfill`   | Old                 | Old            | New              |
//! | `ShadowRead` | Old, New compared   | Old            | New              |
//! | `Cutover`    | New                 | New            | Old (optional)   |
//! | `Cleanup`    | New                 | New            | none             |
//!
//! A failed primary write is returned and the secondary is not written.
//! Secondary writes are synchronous ([`SyncMode::Strong`] or
//! [`SyncMode::Tolerant`]) or handed to per-key ordered lanes that retry with
//! backoff and keep what they give up on as [`DeadLetter`]s
//! ([`WriteStrategy::AsyncSecondary`]).
//!
//! Where is a write routed? In the generated adapter method, which asks
//! [`DualWriteCore::write_route`] for the phase's [`WriteRoute`].

mod command;
mod core;
mod key;
mod lanes;
mod migration;
mod phase;
mod ring;
mod stats;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::core::{Comparison, DeadLetter, DualWriteCore, SyncMode, WriteStrategy};
pub use command::WriteCommand;
pub use dualwrite_macros::dual_write;
pub use key::RoutingKey;
pub use lanes::{LaneConfig, LaneContext};
pub use migration::{Migration, PhaseError};
pub use phase::{ParsePhaseError, Phase, ReadRoute, RouteOptions, Store, WriteRoute};
pub use stats::{Role, Stats, StatsSnapshot};

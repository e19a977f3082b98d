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
//! ([`WriteStrategy::AsyncSecondary`]), or kept in a durable journal first
//! and applied from there ([`WriteStrategy::Outbox`], module [`outbox`]),
//! so a crash of the process loses none of them; or, with change data
//! capture, not made on the caller's path at all: a follower reads the old
//! database's change stream into the same journal ([`WriteStrategy::Cdc`],
//! module [`cdc`]).
//!
//! Where is a write routed? In [`DualWriteCore::begin_write`] (module
//! `write`), which every generated write method calls: it takes the key's
//! stripe, asks [`Migration::write_route`] for the phase's [`WriteRoute`] and
//! returns the [`WriteTicket`] that carries the write through the primary
//! and the secondary store. Reads go through module `read`.
//!
//! Observability: every routed call has a `tracing` span at debug level
//! (module `trace`), and [`DualWriteCore::metrics_publisher`] copies the
//! adapter's counters into the `metrics` facade (feature `metrics`; the
//! metric names are listed in [`publisher`]). Neither adds work to a call
//! when unused.

pub mod backfill;
mod by_method;
pub mod cdc;
mod command;
mod core;
mod dead_letter;
pub mod gate;
mod helpers;
mod key;
mod lanes;
mod latency;
mod migration;
pub mod outbox;
mod phase;
pub mod phase_source;
#[cfg(feature = "metrics")]
pub mod publisher;
mod read;
pub mod reconcile;
mod ring;
mod rollout;
mod shared;
mod stats;
mod stripes;
mod sync;
mod trace;
mod trait_info;
mod write;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::core::{
    Comparison, DualWriteCore, FlushError, KeyGuard, KeysHold, ShadowWindow, ShutdownReport,
    SyncMode, WriteStrategy,
};
pub use command::WriteCommand;
pub use dead_letter::DeadLetter;
pub use dualwrite_macros::dual_write;
pub use gate::{CutoverGate, GateInputs, GateReport, GateThresholds};
pub use key::{Composite, RoutingKey};
pub use lanes::{LaneConfig, LaneContext, LaneQueue, WhenFull};
pub use latency::{LatencySnapshot, SAMPLE_EVERY};
pub use migration::{AdvanceError, Migration, PhaseChange, PhaseError, Transition};
pub use phase::{ParsePhaseError, Phase, ReadRoute, RouteOptions, Store, WriteRoute};
#[cfg(feature = "metrics")]
pub use publisher::{MetricsPublisher, PublisherThread};
pub use read::{ReadCall, ShadowConfig, ShadowContext, ShadowRead, ShadowRunner, ShadowWorker};
pub use stats::{Role, Stats, StatsSnapshot};
pub use trait_info::TraitInfo;
pub use write::{ArmedWrite, StripeHold, WriteRefused, WriteTicket};

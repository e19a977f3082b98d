//! Shared phase control: the spec's "feature flags" component, shared by
//! every instance of a service.
//!
//! A [`Migration`](crate::Migration) alone keeps its phases in one process's
//! memory, so two instances could route the same tenant differently. A
//! [`PhaseSource`] is a shared, versioned [`PhaseState`] (the global phase,
//! per-key overrides and percentage [`Rollout`]s) that every instance
//! follows through a [`PhaseSync`]:
//!
//! - a remote change is applied locally through the migration's fence (the
//!   writes routed before it drain first), within a bounded time;
//! - a local change ([`Migration::change`](crate::Migration::change),
//!   `advance`, `set_phase_for`, ...) is checked against the spec's rules
//!   as before, then stored with compare-and-set on the state's version
//!   together with an [`AuditRecord`] (when, who, from, to, scope, reason,
//!   forced, the gate's report); if another instance changed the state
//!   meanwhile, the change is refused with
//!   [`PhaseError::SourceChanged`](crate::PhaseError::SourceChanged) and
//!   the newer state is applied.
//!
//! Routing never waits on the source: `phase_for` reads the local copy.
//! The rules are checked by the instance that makes a change; a state
//! written into a source by other means is applied as it is.
//!
//! Implementations: [`MemoryPhaseSource`] (one process; tests),
//! [`SqlitePhaseSource`] (a SQLite file in WAL mode, feature `sqlite`,
//! changes found by polling `PRAGMA data_version`) and
//! [`PostgresPhaseSource`] (tables of a PostgreSQL database, feature
//! `postgres`, changes pushed with `LISTEN`/`NOTIFY`).
//!
//! ```
//! use dualwrite_runtime::phase_source::{MemoryPhaseSource, PhaseSync};
//! use dualwrite_runtime::{Migration, Phase, PhaseChange};
//! use std::time::Duration;
//!
//! let source = MemoryPhaseSource::new();
//! let a = Migration::new(Phase::DualWrite);
//! let b = Migration::new(Phase::Prepare);
//! let _follow_a = PhaseSync::follow(&a, source.clone())?; // the empty source takes a's state
//! let follow_b = PhaseSync::follow(&b, source.clone())?;  // b takes the source's
//! assert_eq!(b.phase(), Phase::DualWrite);
//!
//! a.change(PhaseChange::to(Phase::Backfill).reason("copy history"))?;
//! follow_b.wait_for_version(a.source_version(), Duration::from_secs(5));
//! assert_eq!(b.phase(), Phase::Backfill);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod follow;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::key::{RoutingKey, hash_text};
use crate::phase::Phase;
use crate::rollout::{Percent, bucket_of, normalize, phase_in_bucket};

pub use crate::rollout::{ROLLOUT_BUCKETS, Rollout};
pub use follow::{PhaseSync, SyncOptions};
pub use memory::MemoryPhaseSource;
#[cfg(feature = "postgres")]
pub use postgres::PostgresPhaseSource;
#[cfg(feature = "sqlite")]
pub use sqlite::SqlitePhaseSource;

/// The shared phase state: what every instance following the source routes
/// by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseState {
    /// Increases by one with every stored change; 0 for a source nothing
    /// was stored in yet.
    pub version: u64,
    /// The phase of every key without an override or a rollout.
    pub global: Phase,
    /// Per-key (tenant or entity) overrides, by the key's text.
    pub overrides: BTreeMap<String, Phase>,
    /// Percentage rollouts, in evaluation order (the later phase first: it
    /// wins where rollouts overlap).
    pub rollouts: Vec<Rollout>,
}

impl PhaseState {
    /// A state with only a global phase, at version 0.
    pub fn new(global: Phase) -> Self {
        PhaseState {
            version: 0,
            global,
            overrides: BTreeMap::new(),
            rollouts: Vec::new(),
        }
    }

    /// The phase that applies to `key`: its override, else the rollout
    /// covering it, else the global phase (what `Migration::phase_for`
    /// answers once the state is applied).
    pub fn phase_for<K: RoutingKey + ?Sized>(&self, key: &K) -> Phase {
        if let Some(phase) = self.overrides.get(&key.render()) {
            return *phase;
        }
        phase_in_bucket(&self.rollouts, bucket_of(key.text_hash())).unwrap_or(self.global)
    }

    /// [`PhaseState::phase_for`] of a key given as its text.
    pub fn phase_for_text(&self, key: &str) -> Phase {
        if let Some(phase) = self.overrides.get(key) {
            return *phase;
        }
        phase_in_bucket(&self.rollouts, bucket_of(hash_text(key))).unwrap_or(self.global)
    }

    /// Puts the rollouts in evaluation order, one per phase, without empty
    /// ones (what sources store).
    pub(crate) fn normalized(mut self) -> Self {
        normalize(&mut self.rollouts);
        self
    }
}

/// What a change applied to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChangeScope {
    /// The global phase.
    Global,
    /// One key's override.
    Key(String),
    /// The rollout of one phase, set to a share of keys.
    Rollout {
        /// The rollout's phase.
        phase: Phase,
        /// The rollout's share after the change, in basis points (0: the
        /// rollout was removed).
        basis_points: u16,
    },
}

impl fmt::Display for ChangeScope {
    /// `*` for the global phase, the key's text, or `rollout shadow_read 10%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeScope::Global => f.write_str("*"),
            ChangeScope::Key(key) => f.write_str(key),
            ChangeScope::Rollout {
                phase,
                basis_points,
            } => write!(f, "rollout {phase} {}", Percent(*basis_points)),
        }
    }
}

/// One stored change: the audit log of a [`PhaseSource`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The state version the change produced (set by the source).
    pub version: u64,
    /// When the change was made.
    pub at: SystemTime,
    /// Who made it: the instance or operator name of the [`PhaseSync`]
    /// ([`SyncOptions::actor`]).
    pub actor: String,
    /// What it changed.
    pub scope: ChangeScope,
    /// The phase in force before (for a key, its effective phase; for a
    /// rollout, the phase of the keys it moved).
    pub from: Phase,
    /// The phase in force after.
    pub to: Phase,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// Whether the spec's rules were overridden.
    pub forced: bool,
    /// The cutover gate's report (its text) for a change made by
    /// `Migration::advance`.
    pub gate: Option<String>,
}

impl AuditRecord {
    /// The record's time as microseconds since the Unix epoch (how sources
    /// store it).
    pub fn at_micros(&self) -> i64 {
        self.at
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    /// The time stored as microseconds since the Unix epoch.
    #[cfg(any(test, feature = "sqlite", feature = "postgres"))]
    pub(crate) fn time_from_micros(micros: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
    }
}

impl fmt::Display for AuditRecord {
    /// `v7 tenant-42: backfill -> shadow_read by ops-alice (forced): reason`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{} {}: {} -> {} by {}",
            self.version, self.scope, self.from, self.to, self.actor
        )?;
        if self.forced {
            f.write_str(" (forced)")?;
        }
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

/// Why a [`PhaseSource`] operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// Compare-and-set lost: the stored version is not the expected one.
    /// Holds the state stored now.
    Conflict {
        /// The state as stored now.
        current: Box<PhaseState>,
    },
    /// The database could not be reached (connection refused, file not
    /// openable, timed out).
    Unreachable {
        /// Which source, and what failed.
        reason: String,
    },
    /// The database answered with an error, or holds data that is not a
    /// phase state (an unknown phase name, a bad share).
    Storage {
        /// What failed.
        reason: String,
    },
    /// The source was set up wrongly (a table name that is not an
    /// identifier, a malformed URL).
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Conflict { current } => write!(
                f,
                "the phase state changed meanwhile (now at version {})",
                current.version
            ),
            SourceError::Unreachable { reason } => {
                write!(f, "the phase source is unreachable: {reason}")
            }
            SourceError::Storage { reason } => write!(f, "the phase source failed: {reason}"),
            SourceError::InvalidConfig { reason } => {
                write!(f, "the phase source is misconfigured: {reason}")
            }
        }
    }
}

impl std::error::Error for SourceError {}

/// A shared, versioned phase state with an audit log.
///
/// Implementations are blocking (a follower calls them from its own
/// thread; `Migration::change` from the thread making the change) and safe
/// to share between threads.
pub trait PhaseSource: Send + Sync + 'static {
    /// What the source is, for logs and errors (`sqlite file phase.db`).
    fn describe(&self) -> String;

    /// The state stored now (version 0 and [`Phase::Prepare`] if nothing
    /// was stored yet).
    fn load(&self) -> Result<PhaseState, SourceError>;

    /// Stores `next` (its `version` is ignored) and `record` (likewise) as
    /// one atomic step if the stored version is `expected_version`, and
    /// returns the new version (`expected_version + 1`); otherwise
    /// [`SourceError::Conflict`] with the state stored now, and nothing is
    /// written. Wakes the sources' waiters.
    fn compare_and_set(
        &self,
        expected_version: u64,
        next: &PhaseState,
        record: &AuditRecord,
    ) -> Result<u64, SourceError>;

    /// The audit records of versions after `after_version`, oldest first;
    /// at most the latest `limit` of them.
    fn audit(&self, after_version: u64, limit: usize) -> Result<Vec<AuditRecord>, SourceError>;

    /// Blocks until the stored version is above `known_version` and returns
    /// that state, or returns `None` after about `timeout`.
    fn wait_for_change(
        &self,
        known_version: u64,
        timeout: Duration,
    ) -> Result<Option<PhaseState>, SourceError>;
}

impl<S: PhaseSource + ?Sized> PhaseSource for std::sync::Arc<S> {
    fn describe(&self) -> String {
        (**self).describe()
    }

    fn load(&self) -> Result<PhaseState, SourceError> {
        (**self).load()
    }

    fn compare_and_set(
        &self,
        expected_version: u64,
        next: &PhaseState,
        record: &AuditRecord,
    ) -> Result<u64, SourceError> {
        (**self).compare_and_set(expected_version, next, record)
    }

    fn audit(&self, after_version: u64, limit: usize) -> Result<Vec<AuditRecord>, SourceError> {
        (**self).audit(after_version, limit)
    }

    fn wait_for_change(
        &self,
        known_version: u64,
        timeout: Duration,
    ) -> Result<Option<PhaseState>, SourceError> {
        (**self).wait_for_change(known_version, timeout)
    }
}

/// The names of the four tables a database phase source keeps (created if
/// absent). Each is an SQL identifier, optionally schema-qualified
/// (`ops.orders_phase_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseTables {
    /// One row: the version and the global phase.
    pub state: String,
    /// One row per key override.
    pub overrides: String,
    /// One row per rollout.
    pub rollouts: String,
    /// One row per stored change.
    pub audit: String,
}

impl PhaseTables {
    /// `{prefix}_state`, `{prefix}_override`, `{prefix}_rollout` and
    /// `{prefix}_audit`: one migration's tables, beside other migrations'
    /// in the same database.
    pub fn with_prefix(prefix: &str) -> Self {
        PhaseTables {
            state: format!("{prefix}_state"),
            overrides: format!("{prefix}_override"),
            rollouts: format!("{prefix}_rollout"),
            audit: format!("{prefix}_audit"),
        }
    }

    /// Checks that every name is an identifier (letters, digits and `_`,
    /// not starting with a digit, at most 63 characters a part), so it can
    /// be put in SQL as it is.
    pub fn validate(&self) -> Result<(), SourceError> {
        for name in [&self.state, &self.overrides, &self.rollouts, &self.audit] {
            let ok = !name.is_empty()
                && name.split('.').count() <= 2
                && name.split('.').all(|part| {
                    part.len() <= 63
                        && part
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !ok {
                return Err(SourceError::InvalidConfig {
                    reason: format!(
                        "table name `{name}` is not an SQL identifier (letters, digits and `_`, optionally `schema.table`)"
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Default for PhaseTables {
    /// `dualwrite_phase_state`, `dualwrite_phase_override`,
    /// `dualwrite_phase_rollout`, `dualwrite_phase_audit`.
    fn default() -> Self {
        PhaseTables::with_prefix("dualwrite_phase")
    }
}

/// Parses a stored phase name.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn stored_phase(text: &str) -> Result<Phase, SourceError> {
    text.parse().map_err(|error| SourceError::Storage {
        reason: format!("the phase table holds {error}"),
    })
}

/// A stored change scope from its columns: `global`; `key` with the key;
/// `rollout` with the rollout's phase in the key column, and its share.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn stored_scope(
    kind: &str,
    key: Option<String>,
    basis_points: Option<i64>,
) -> Result<ChangeScope, SourceError> {
    match (kind, key, basis_points) {
        ("global", _, _) => Ok(ChangeScope::Global),
        ("key", Some(key), _) => Ok(ChangeScope::Key(key)),
        ("rollout", Some(phase), Some(bp)) => Ok(ChangeScope::Rollout {
            phase: stored_phase(&phase)?,
            basis_points: stored_basis_points(bp)?,
        }),
        (kind, _, _) => Err(SourceError::Storage {
            reason: format!("the audit table holds an unknown change scope `{kind}`"),
        }),
    }
}

/// The columns of a change scope: kind, key (a rollout's phase), share.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn scope_columns(scope: &ChangeScope) -> (&'static str, Option<&str>, Option<i64>) {
    match scope {
        ChangeScope::Global => ("global", None, None),
        ChangeScope::Key(key) => ("key", Some(key), None),
        ChangeScope::Rollout {
            phase,
            basis_points,
        } => (
            "rollout",
            Some(phase.as_str()),
            Some(i64::from(*basis_points)),
        ),
    }
}

/// A stored rollout share, checked.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn stored_basis_points(value: i64) -> Result<u16, SourceError> {
    u16::try_from(value)
        .ok()
        .filter(|bp| *bp <= ROLLOUT_BUCKETS)
        .ok_or_else(|| SourceError::Storage {
            reason: format!("the rollout table holds a share of {value} basis points (0 to 10000)"),
        })
}

/// A stored version, checked.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn stored_version(value: i64) -> Result<u64, SourceError> {
    u64::try_from(value).map_err(|_| SourceError::Storage {
        reason: format!("the state table holds a negative version {value}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_must_be_identifiers() {
        assert!(PhaseTables::default().validate().is_ok());
        assert!(PhaseTables::with_prefix("ops.orders").validate().is_ok());
        for bad in ["", "1abc", "a-b", "a;drop table x", "a.b.c", "a b", "a."] {
            let tables = PhaseTables {
                audit: bad.to_owned(),
                ..PhaseTables::default()
            };
            assert!(
                matches!(tables.validate(), Err(SourceError::InvalidConfig { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn state_phase_for_follows_override_then_rollout_then_global() {
        let mut state = PhaseState::new(Phase::Backfill);
        state.overrides.insert("vip".into(), Phase::DualWrite);
        state.rollouts = vec![Rollout::percent(Phase::ShadowRead, 100)];
        assert_eq!(state.phase_for("vip"), Phase::DualWrite);
        assert_eq!(state.phase_for(&7_u64), Phase::ShadowRead);
        assert_eq!(state.phase_for_text("7"), Phase::ShadowRead);
        state.rollouts.clear();
        assert_eq!(state.phase_for(&7_u64), Phase::Backfill);
    }

    #[test]
    fn audit_record_text() {
        let record = AuditRecord {
            version: 7,
            at: SystemTime::now(),
            actor: "ops-alice".into(),
            scope: ChangeScope::Key("tenant-42".into()),
            from: Phase::Backfill,
            to: Phase::ShadowRead,
            reason: Some("validate".into()),
            forced: true,
            gate: None,
        };
        assert_eq!(
            record.to_string(),
            "v7 tenant-42: backfill -> shadow_read by ops-alice (forced): validate"
        );
        assert_eq!(ChangeScope::Global.to_string(), "*");
        assert_eq!(
            ChangeScope::Rollout {
                phase: Phase::Cutover,
                basis_points: 50
            }
            .to_string(),
            "rollout cutover 0.5%"
        );
        let micros = record.at_micros();
        let back = AuditRecord::time_from_micros(micros);
        assert!(record.at.duration_since(back).unwrap_or_default() < Duration::from_micros(1));
    }
}

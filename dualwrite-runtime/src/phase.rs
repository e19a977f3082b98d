//! The migration phases and the routing table that maps each phase to stores.
//!
//! This module is the single place that encodes the phase table of the
//! dual-write specification; everything else asks [`Phase::write_route`] and
//! [`Phase::read_route`].

use std::fmt;
use std::str::FromStr;

/// One step of a dual-write migration, in the order they are normally taken.
///
/// The discriminants are stable (`Prepare = 0` .. `Cleanup = 5`) so a phase
/// fits in an atomic byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Only the old store is used; the new one is being set up.
    Prepare = 0,
    /// Writes go to Old (primary) and New (secondary); reads stay on Old.
    DualWrite = 1,
    /// Like `DualWrite` while historical data is copied into New.
    Backfill = 2,
    /// Like `Backfill`, and reads are also sent to New and compared.
    ShadowRead = 3,
    /// New is authoritative for reads and writes; Old is optionally still written.
    Cutover = 4,
    /// Only the new store is used; the old one is decommissioned. Final.
    Cleanup = 5,
}

impl Phase {
    /// The phase after this one in migration order; `None` for Cleanup.
    pub fn next(self) -> Option<Phase> {
        let at = Phase::ALL.iter().position(|phase| *phase == self)?;
        Phase::ALL.get(at + 1).copied()
    }

    /// Every phase, in migration order.
    pub const ALL: [Phase; 6] = [
        Phase::Prepare,
        Phase::DualWrite,
        Phase::Backfill,
        Phase::ShadowRead,
        Phase::Cutover,
        Phase::Cleanup,
    ];

    /// The canonical snake_case name: `"prepare"`, `"dual_write"`, `"backfill"`,
    /// `"shadow_read"`, `"cutover"` or `"cleanup"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::DualWrite => "dual_write",
            Phase::Backfill => "backfill",
            Phase::ShadowRead => "shadow_read",
            Phase::Cutover => "cutover",
            Phase::Cleanup => "cleanup",
        }
    }

    /// Where a write goes in this phase: the primary store, whose result is the
    /// caller's result, and the secondary store that receives a copy, if any.
    pub fn write_route(self, options: &RouteOptions) -> WriteRoute {
        let (primary, secondary) = match self {
            Phase::Prepare => (Store::Old, None),
            Phase::DualWrite | Phase::Backfill | Phase::ShadowRead => {
                (Store::Old, Some(Store::New))
            }
            Phase::Cutover => (
                Store::New,
                options.write_old_after_cutover.then_some(Store::Old),
            ),
            Phase::Cleanup => (Store::New, None),
        };
        WriteRoute { primary, secondary }
    }

    /// Where a read goes in this phase: the store that answers, and the store
    /// read in the shadow and compared, if any.
    pub fn read_route(self, options: &RouteOptions) -> ReadRoute {
        let (primary, shadow) = match self {
            Phase::Prepare | Phase::DualWrite | Phase::Backfill => (Store::Old, None),
            Phase::ShadowRead => (Store::Old, Some(Store::New)),
            Phase::Cutover => (
                Store::New,
                options.shadow_after_cutover.then_some(Store::Old),
            ),
            Phase::Cleanup => (Store::New, None),
        };
        ReadRoute { primary, shadow }
    }

    /// The phase whose discriminant is `value`, if any.
    pub(crate) fn from_u8(value: u8) -> Option<Phase> {
        Phase::ALL.get(usize::from(value)).copied()
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = ParsePhaseError;

    /// Parses a phase name case-insensitively, with `-`, `_` or nothing
    /// between words: `"dual_write"`, `"dual-write"`, `"DualWrite"` and
    /// `"DUAL_WRITE"` all give [`Phase::DualWrite`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Phase::ALL
            .into_iter()
            .find(|phase| {
                let canonical = phase.as_str();
                lower == canonical
                    || lower == canonical.replace('_', "-")
                    || lower == canonical.replace('_', "")
            })
            .ok_or_else(|| ParsePhaseError {
                input: s.to_owned(),
            })
    }
}

/// The error of parsing a [`Phase`] from text that names no phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePhaseError {
    input: String,
}

impl ParsePhaseError {
    /// The text that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ParsePhaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown migration phase `{}`, expected one of ",
            self.input
        )?;
        for (i, phase) in Phase::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{phase}`")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParsePhaseError {}

/// One of the two data stores of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Store {
    /// The store being migrated away from.
    Old,
    /// The store being migrated to.
    New,
}

impl Store {
    /// The other store.
    pub fn other(self) -> Store {
        match self {
            Store::Old => Store::New,
            Store::New => Store::Old,
        }
    }

    /// `"old"` or `"new"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Old => "old",
            Store::New => "new",
        }
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one write goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRoute {
    /// The authoritative store: written first, its result is the caller's.
    pub primary: Store,
    /// The store that receives a copy after the primary succeeded, if any.
    pub secondary: Option<Store>,
}

/// Where one read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRoute {
    /// The store whose answer is returned.
    pub primary: Store,
    /// The store also read and compared against the primary's answer, if any.
    pub shadow: Option<Store>,
}

/// The choices the specification leaves open, for the cutover phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteOptions {
    /// Cutover keeps writing Old as the secondary (spec: "Old (optional)"), default true,
    /// so reads can roll back without data loss.
    pub write_old_after_cutover: bool,
    /// Cutover also shadow-reads Old and compares (mirrored validation), default false.
    pub shadow_after_cutover: bool,
}

impl RouteOptions {
    /// Sets [`RouteOptions::write_old_after_cutover`].
    #[must_use]
    pub fn with_write_old_after_cutover(mut self, enabled: bool) -> Self {
        self.write_old_after_cutover = enabled;
        self
    }

    /// Sets [`RouteOptions::shadow_after_cutover`].
    #[must_use]
    pub fn with_shadow_after_cutover(mut self, enabled: bool) -> Self {
        self.shadow_after_cutover = enabled;
        self
    }
}

impl Default for RouteOptions {
    fn default() -> Self {
        RouteOptions {
            write_old_after_cutover: true,
            shadow_after_cutover: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_round_trip_through_u8() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_u8(phase as u8), Some(phase));
        }
        assert_eq!(Phase::from_u8(6), None);
        assert_eq!(Phase::from_u8(u8::MAX), None);
    }

    #[test]
    fn parses_every_spelling() {
        for (text, phase) in [
            ("prepare", Phase::Prepare),
            ("PREPARE", Phase::Prepare),
            ("dual_write", Phase::DualWrite),
            ("dual-write", Phase::DualWrite),
            ("DualWrite", Phase::DualWrite),
            ("dualwrite", Phase::DualWrite),
            ("Backfill", Phase::Backfill),
            ("shadow-read", Phase::ShadowRead),
            ("SHADOW_READ", Phase::ShadowRead),
            ("ShadowRead", Phase::ShadowRead),
            ("cutover", Phase::Cutover),
            ("Cleanup", Phase::Cleanup),
        ] {
            assert_eq!(text.parse::<Phase>(), Ok(phase), "{text}");
        }
    }

    #[test]
    fn rejects_unknown_names_and_lists_the_valid_ones() {
        for text in [
            "",
            "dual write",
            "dual__write",
            "du_alwrite",
            "rollback",
            " cutover",
        ] {
            let error = text.parse::<Phase>().expect_err(text);
            assert_eq!(error.input(), text);
            let message = error.to_string();
            assert!(message.starts_with("unknown migration phase"), "{message}");
            for phase in Phase::ALL {
                assert!(message.contains(phase.as_str()), "{message}");
            }
        }
    }

    #[test]
    fn display_round_trips() {
        for phase in Phase::ALL {
            assert_eq!(phase.to_string().parse::<Phase>(), Ok(phase));
        }
    }

    #[test]
    fn store_other_and_names() {
        assert_eq!(Store::Old.other(), Store::New);
        assert_eq!(Store::New.other(), Store::Old);
        assert_eq!(Store::Old.to_string(), "old");
        assert_eq!(Store::New.as_str(), "new");
    }

    #[test]
    fn route_options_default() {
        let options = RouteOptions::default();
        assert!(options.write_old_after_cutover);
        assert!(!options.shadow_after_cutover);
    }
}

//! Percentage rollouts as phase changes: which keys a rollout change
//! moves, the rules for each group of them, and the fence.

use std::time::{Instant, SystemTime};

use super::source::AuditDraft;
use super::{
    Migration, PhaseChange, PhaseError, Transition, check_rules, fence_all, routes_differ,
};
use crate::phase::Phase;
use crate::phase_source::ChangeScope;
use crate::rollout::{self, Rollout};

impl Migration {
    /// [`Migration::change`] of a rollout, with the writer lock held.
    pub(super) fn change_rollout(
        &self,
        change: PhaseChange,
        basis_points: u16,
    ) -> Result<Transition, PhaseError> {
        let global = self.phase();
        let current = self.inner.overrides.load();
        let rollout = Rollout {
            phase: change.phase,
            basis_points: basis_points.min(rollout::ROLLOUT_BUCKETS),
        };
        let next = rollout::with_rollout(&current.rollouts, rollout.phase, rollout.basis_points);
        let moves = rollout::moves((global, &current.rollouts), (global, &next));
        for &(from, to) in &moves {
            check_rules(from, to, None, change.forced).map_err(|_| PhaseError::RolloutRefused {
                rollout,
                from,
                to,
            })?;
        }
        // The keys the rollout moved, for the record: into it when it grew,
        // out of it when it shrank; none, when no key changed phase.
        let (from, to) = moves
            .first()
            .copied()
            .unwrap_or((rollout.phase, rollout.phase));
        let moves_routes = moves
            .iter()
            .any(|&(from, to)| routes_differ(from, to, &self.inner.options));
        let draft = AuditDraft {
            scope: ChangeScope::Rollout {
                phase: rollout.phase,
                basis_points: rollout.basis_points,
            },
            from,
            to,
            reason: change.reason.clone(),
            forced: change.forced,
            gate: None,
        };
        let fence_started = Instant::now();
        let by_key = current.by_key.clone();
        if moves_routes {
            let timeout = change.fence_timeout.unwrap_or_else(|| self.fence_timeout());
            let fences = self.live_fences();
            let holds = fence_all(&fences, fence_started, timeout).map_err(|pending| {
                PhaseError::FenceTimedOut {
                    key: None,
                    from,
                    to,
                    waited: timeout,
                    pending,
                }
            })?;
            self.install(global, by_key, next, draft)?;
            drop(holds);
        } else {
            self.install(global, by_key, next, draft)?;
        }
        let transition = Transition {
            at: SystemTime::now(),
            key: None,
            from,
            to,
            previous_override: None,
            reason: change.reason,
            forced: change.forced,
            needs_reconciliation: from == Phase::Cutover && to < Phase::Cutover,
            fenced: moves_routes.then(|| fence_started.elapsed()),
            gate: None,
            rollout: Some(rollout),
            actor: self.binding().map(|binding| binding.actor.clone()),
        };
        self.record(&transition);
        Ok(transition)
    }

    /// Every percentage rollout, in evaluation order (the later phase
    /// first: it wins where rollouts overlap).
    pub fn rollouts(&self) -> Vec<Rollout> {
        self.inner.overrides.load().rollouts.clone()
    }
}

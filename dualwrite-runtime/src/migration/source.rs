//! A migration following a phase source ([`crate::phase_source`]): its
//! changes stored with compare-and-set and an audit record before they take
//! effect, and the source's changes applied through the fence.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Instant, SystemTime};

use super::{HISTORY, Migration, PhaseError, Transition, fence_all, routes_differ};
use crate::key::hash_text;
use crate::phase::Phase;
use crate::phase_source::follow::{SourceBinding, source_error};
use crate::phase_source::{AuditRecord, ChangeScope, PhaseState, SourceError};
use crate::rollout::{self, Rollout, bucket_of, phase_in_bucket};

/// What a change records in a phase source's audit log, besides who and
/// when.
pub(super) struct AuditDraft {
    pub(super) scope: ChangeScope,
    pub(super) from: Phase,
    pub(super) to: Phase,
    pub(super) reason: Option<String>,
    pub(super) forced: bool,
    pub(super) gate: Option<String>,
}

impl Migration {
    /// Stores the next phases in the followed source, if any (refused with
    /// [`PhaseError::SourceChanged`] if the source moved on), then installs
    /// them. Call with the writer lock held (and the fence, if routes move).
    pub(super) fn install(
        &self,
        global: Phase,
        by_key: HashMap<String, Phase>,
        rollouts: Vec<Rollout>,
        draft: AuditDraft,
    ) -> Result<(), PhaseError> {
        if let Some(binding) = self.binding() {
            let expected = binding.version();
            let next = PhaseState {
                version: expected + 1,
                global,
                overrides: by_key.iter().map(|(k, p)| (k.clone(), *p)).collect(),
                rollouts: rollouts.clone(),
            };
            let record = AuditRecord {
                version: expected + 1,
                at: SystemTime::now(),
                actor: binding.actor.clone(),
                scope: draft.scope.clone(),
                from: draft.from,
                to: draft.to,
                reason: draft.reason,
                forced: draft.forced,
                gate: draft.gate,
            };
            match binding.source.compare_and_set(expected, &next, &record) {
                Ok(version) => binding.set_version(version),
                Err(SourceError::Conflict { current }) => {
                    return Err(PhaseError::SourceChanged {
                        key: match draft.scope {
                            ChangeScope::Key(key) => Some(key),
                            _ => None,
                        },
                        expected_version: expected,
                        found_version: current.version,
                    });
                }
                Err(error) => return Err(source_error(error)),
            }
        }
        self.set_global(global);
        self.publish(by_key, rollouts);
        Ok(())
    }

    /// The followed source's binding, if any.
    pub(super) fn binding(&self) -> Option<Arc<SourceBinding>> {
        self.inner
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// After a change refused because the source moved on, applies the
    /// source's newer phases now (the watcher would, a little later). Call
    /// with the writer lock held.
    pub(super) fn reload_after_conflict<T>(&self, result: &Result<T, PhaseError>) {
        if !matches!(result, Err(PhaseError::SourceChanged { .. })) {
            return;
        }
        let Some(binding) = self.binding() else {
            return;
        };
        let applied = binding
            .source
            .load()
            .map_err(source_error)
            .and_then(|state| self.apply_state_locked(&binding, state));
        if let Err(error) = applied {
            tracing::warn!(%error, "phase source: the newer shared phases are left to the watcher");
        }
    }

    /// The phases this migration routes by, as a [`PhaseState`] at the
    /// source version they come from (0 without a source).
    pub fn state(&self) -> PhaseState {
        let _writer = self.lock_writer();
        let current = self.inner.overrides.load();
        PhaseState {
            version: self.binding().map_or(0, |binding| binding.version()),
            global: self.phase(),
            overrides: current
                .by_key
                .iter()
                .map(|(k, p)| (k.clone(), *p))
                .collect(),
            rollouts: current.rollouts.clone(),
        }
    }

    /// The version of the followed source's state that the phases are at;
    /// 0 without a source.
    pub fn source_version(&self) -> u64 {
        self.binding().map_or(0, |binding| binding.version())
    }

    /// Starts following `binding`'s source: an empty source takes this
    /// migration's phases, otherwise this migration takes the source's
    /// (fenced).
    pub(crate) fn attach_source(&self, binding: &Arc<SourceBinding>) -> Result<(), PhaseError> {
        let _writer = self.lock_writer();
        if self.binding().is_some() {
            return Err(PhaseError::Source {
                reason: "the migration already follows a phase source".to_owned(),
            });
        }
        let mut state = binding.source.load().map_err(source_error)?;
        if state.version == 0 {
            let current = self.inner.overrides.load();
            let local = PhaseState {
                version: 1,
                global: self.phase(),
                overrides: current
                    .by_key
                    .iter()
                    .map(|(k, p)| (k.clone(), *p))
                    .collect(),
                rollouts: current.rollouts.clone(),
            };
            let record = AuditRecord {
                version: 1,
                at: SystemTime::now(),
                actor: binding.actor.clone(),
                scope: ChangeScope::Global,
                from: local.global,
                to: local.global,
                reason: Some("phase source initialized from this instance's phases".to_owned()),
                forced: false,
                gate: None,
            };
            match binding.source.compare_and_set(0, &local, &record) {
                Ok(version) => {
                    binding.set_version(version);
                    *self
                        .inner
                        .source
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(binding));
                    return Ok(());
                }
                // Another instance initialized it first: take its phases.
                Err(SourceError::Conflict { current }) => state = *current,
                Err(error) => return Err(source_error(error)),
            }
        }
        *self
            .inner
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(binding));
        if let Err(error) = self.apply_state_locked(binding, state) {
            *self
                .inner
                .source
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
            return Err(error);
        }
        Ok(())
    }

    /// Stops following `binding`'s source (if it is still the one
    /// followed).
    pub(crate) fn detach_source(&self, binding: &Arc<SourceBinding>) {
        let _writer = self.lock_writer();
        let mut source = self
            .inner
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if source.as_ref().is_some_and(|b| Arc::ptr_eq(b, binding)) {
            *source = None;
        }
    }

    /// Applies a state read from `binding`'s source if it is newer than the
    /// phases in force, fenced like any change that moves a route; whether
    /// it was newer.
    pub(crate) fn apply_source_state(
        &self,
        binding: &Arc<SourceBinding>,
        state: PhaseState,
    ) -> Result<bool, PhaseError> {
        let _writer = self.lock_writer();
        if !self.binding().is_some_and(|b| Arc::ptr_eq(&b, binding)) {
            return Ok(false);
        }
        self.apply_state_locked(binding, state)
    }

    /// [`Migration::apply_source_state`] with the writer lock held; the
    /// records of the versions applied go to [`Migration::history`].
    pub(super) fn apply_state_locked(
        &self,
        binding: &SourceBinding,
        state: PhaseState,
    ) -> Result<bool, PhaseError> {
        let known = binding.version();
        if state.version <= known {
            return Ok(false);
        }
        let records = binding.source.audit(known, HISTORY).unwrap_or_else(|error| {
            tracing::warn!(%error, "phase source: the audit records of a remote change were not read");
            Vec::new()
        });
        let global = self.phase();
        let current = self.inner.overrides.load();
        let by_key: HashMap<String, Phase> = state.overrides.into_iter().collect();
        let mut rollouts = state.rollouts;
        rollout::normalize(&mut rollouts);
        let options = &self.inner.options;
        let keys_move = rollout::moves((global, &current.rollouts), (state.global, &rollouts))
            .into_iter()
            .any(|(from, to)| routes_differ(from, to, options));
        let overrides_move = current.by_key.keys().chain(by_key.keys()).any(|key| {
            let hash = hash_text(key);
            let before = current
                .by_key
                .get(key)
                .copied()
                .or_else(|| current.rollout_phase(hash))
                .unwrap_or(global);
            let after = by_key
                .get(key)
                .copied()
                .or_else(|| phase_in_bucket(&rollouts, bucket_of(hash)))
                .unwrap_or(state.global);
            routes_differ(before, after, options)
        });
        let moves_routes = keys_move || overrides_move;
        let started = Instant::now();
        if moves_routes {
            let timeout = self.fence_timeout();
            let fences = self.live_fences();
            let holds = fence_all(&fences, started, timeout).map_err(|pending| {
                PhaseError::FenceTimedOut {
                    key: None,
                    from: global,
                    to: state.global,
                    waited: timeout,
                    pending,
                }
            })?;
            self.set_global(state.global);
            self.publish(by_key, rollouts);
            drop(holds);
        } else {
            self.set_global(state.global);
            self.publish(by_key, rollouts);
        }
        let fenced = moves_routes.then(|| started.elapsed());
        let last = records.len().saturating_sub(1);
        for (i, record) in records.into_iter().enumerate() {
            if record.version > state.version {
                break;
            }
            let (key, rollout) = match record.scope {
                ChangeScope::Global => (None, None),
                ChangeScope::Key(key) => (Some(key), None),
                ChangeScope::Rollout {
                    phase,
                    basis_points,
                } => (
                    None,
                    Some(Rollout {
                        phase,
                        basis_points,
                    }),
                ),
            };
            self.record(&Transition {
                at: record.at,
                key,
                from: record.from,
                to: record.to,
                previous_override: None,
                reason: record.reason,
                forced: record.forced,
                needs_reconciliation: record.from == Phase::Cutover && record.to < Phase::Cutover,
                fenced: if i == last { fenced } else { None },
                gate: None,
                rollout,
                actor: Some(record.actor),
            });
        }
        // Last, so a waiter on the version finds the history written.
        binding.set_version(state.version);
        Ok(true)
    }
}

//! The SPEC 8 JSON view of a rollout, and what each waiting step waits for.
//! Pure: derived from the stored [`Rollout`] and the time.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::model::*;
use crate::domain::{CommitSha, EnvName, ServiceName, WaveName};
use crate::plan::model::{Risk, StepKey};

/// What a pending step waits for (SPEC 7.3: "every waiting step with what it
/// waits for").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Waiting {
    /// The rollout is queued behind an earlier one of the same branch.
    Queued,
    Halted {
        wave: WaveName,
        failed: usize,
        allowed: usize,
    },
    Paused {
        by: String,
    },
    EmergencyFreeze {
        by: String,
        until: Option<DateTime<Utc>>,
        reason: Option<String>,
    },
    /// A newer rollout took over; this step will not start.
    Superseded {
        by: String,
    },
    /// A transient failure; the next attempt starts at `at`.
    Retry {
        at: DateTime<Utc>,
        attempt: u32,
    },
    /// An earlier wave is not done.
    EarlierWave {
        wave: WaveName,
    },
    Approval {
        wave: WaveName,
        /// Who may approve (`policy.approvers`); empty: anyone with write.
        approvers: Vec<String>,
    },
    Freeze {
        until: DateTime<Utc>,
        reason: Option<String>,
    },
    Dependency {
        step: StepKey,
    },
    /// The wave has `limit` environments in progress.
    MaxParallel {
        limit: u32,
    },
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

impl Waiting {
    /// One line for humans (comment, page).
    pub fn text(&self) -> String {
        match self {
            Waiting::Queued => "queued behind an earlier rollout of this branch".into(),
            Waiting::Halted {
                wave,
                failed,
                allowed,
            } => format!(
                "rollout halted: wave `{wave}` has {failed} failed step{} ({allowed} allowed)",
                if *failed == 1 { "" } else { "s" }
            ),
            Waiting::Paused { by } => format!("paused by {by}"),
            Waiting::EmergencyFreeze { by, until, reason } => {
                let mut s = format!("emergency freeze by {by}");
                match until {
                    Some(u) => s.push_str(&format!(" until {}", when(u))),
                    None => s.push_str(" until unfrozen"),
                }
                if let Some(r) = reason {
                    s.push_str(&format!(" ({r})"));
                }
                s
            }
            Waiting::Superseded { by } => format!("superseded by rollout {by}"),
            Waiting::Retry { at, attempt } => {
                format!("attempt {attempt} at {}", at.format("%H:%M:%S UTC"))
            }
            Waiting::EarlierWave { wave } => format!("waits for wave `{wave}`"),
            Waiting::Approval { wave, approvers } => {
                if approvers.is_empty() {
                    format!("waits for approval of wave `{wave}` by anyone with write access")
                } else {
                    format!(
                        "waits for approval of wave `{wave}` by {}",
                        approvers.join(" or ")
                    )
                }
            }
            Waiting::Freeze { until, reason } => {
                let mut s = format!("frozen until {} (freeze window", when(until));
                if let Some(r) = reason {
                    s.push_str(&format!(": {r}"));
                }
                s.push(')');
                s
            }
            Waiting::Dependency { step } => {
                format!("waits for {}/{}", step.environment, step.service)
            }
            Waiting::MaxParallel { limit } => {
                format!("waits for a free slot ({limit} environments in progress)")
            }
        }
    }
}

/// What the step at (wave `w`, index `i`) waits for, if it is pending and
/// the rollout has not ended.
pub fn waiting_reason(r: &Rollout, w: usize, i: usize) -> Option<Waiting> {
    let states = step_states(r);
    waiting_with(r, w, i, &states)
}

fn step_states(r: &Rollout) -> HashMap<StepKey, StepState> {
    r.steps().map(|s| (s.key(), s.state)).collect()
}

fn waiting_with(
    r: &Rollout,
    w: usize,
    i: usize,
    states: &HashMap<StepKey, StepState>,
) -> Option<Waiting> {
    let wave = r.waves.get(w)?;
    let s = wave.steps.get(i)?;
    if s.state != StepState::Pending || r.state.is_terminal() {
        return None;
    }
    if r.state == RolloutState::Queued {
        return Some(Waiting::Queued);
    }
    if let Some(h) = &r.halt {
        return Some(Waiting::Halted {
            wave: h.wave.clone(),
            failed: h.failed,
            allowed: h.allowed,
        });
    }
    if let Some(by) = &r.superseded_by {
        return Some(Waiting::Superseded { by: by.clone() });
    }
    if let Some(by) = &r.paused_by {
        return Some(Waiting::Paused { by: by.clone() });
    }
    if let Some(f) = &r.emergency_freeze {
        return Some(Waiting::EmergencyFreeze {
            by: f.by.clone(),
            until: f.until,
            reason: f.reason.clone(),
        });
    }
    // A freeze window that began while the wave ran holds its unstarted
    // steps (retries included) until it ends.
    if w == r.current_wave
        && wave.phase == WavePhase::Running
        && let Some(until) = r.frozen_until
    {
        return Some(Waiting::Freeze {
            until,
            reason: r.frozen_reason.clone(),
        });
    }
    if let Some(at) = s.retry_at {
        return Some(Waiting::Retry {
            at,
            attempt: s.attempts + 1,
        });
    }
    if w > r.current_wave {
        let current = r.waves.get(r.current_wave)?;
        return Some(Waiting::EarlierWave {
            wave: current.name.clone(),
        });
    }
    if wave.phase == WavePhase::Pending {
        if wave.approval && wave.approved_by.is_none() {
            return Some(Waiting::Approval {
                wave: wave.name.clone(),
                approvers: r.policy.approvers.clone(),
            });
        }
        if let Some(until) = r.frozen_until {
            return Some(Waiting::Freeze {
                until,
                reason: r.frozen_reason.clone(),
            });
        }
    }
    if let Some(dep) = s
        .waits_for
        .iter()
        .find(|k| states.get(*k).is_some_and(|st| !st.satisfies_dependents()))
    {
        return Some(Waiting::Dependency { step: dep.clone() });
    }
    Some(Waiting::MaxParallel {
        limit: wave.max_parallel,
    })
}

/// The SPEC 8 document without the fields only the store knows (`id`,
/// `repo`, `pull_request`, `created_at`, `updated_at`): wrap it with
/// `#[serde(flatten)]` to add those.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub commit: CommitSha,
    pub previous_commit: Option<CommitSha>,
    pub state: RolloutState,
    pub risk: Risk,
    /// Set while halted: which wave, how many failed, how many allowed.
    pub halt: Option<Halt>,
    pub paused_by: Option<String>,
    pub emergency_freeze: Option<EmergencyFreeze>,
    /// The freeze window the next wave, or the running wave's steps not
    /// yet started, wait for.
    pub frozen_until: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub counts: StepCounts,
    pub waves: Vec<WaveView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCounts {
    pub total: usize,
    pub pending: usize,
    pub in_progress: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    pub rolled_back: usize,
}

impl StepCounts {
    fn add(&mut self, state: StepState) {
        self.total += 1;
        match state {
            StepState::Pending => self.pending += 1,
            StepState::Preflight | StepState::Deploying | StepState::Verifying => {
                self.in_progress += 1
            }
            StepState::Succeeded => self.succeeded += 1,
            StepState::Failed => self.failed += 1,
            StepState::Skipped => self.skipped += 1,
            StepState::RolledBack => self.rolled_back += 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaveView {
    pub name: WaveName,
    /// `pending`, `awaiting_approval`, `frozen`, `running`, `halted`,
    /// `baking`, `succeeded` or `failed` (done with failures inside the
    /// budget).
    pub state: String,
    pub max_parallel: u32,
    /// Failed steps the wave tolerates.
    pub failure_budget: usize,
    pub approval: bool,
    pub approved_by: Option<String>,
    pub bake_until: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub counts: StepCounts,
    pub steps: Vec<StepView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub environment: EnvName,
    pub service: ServiceName,
    pub state: StepState,
    pub attempts: u32,
    pub version: CommitSha,
    pub error: Option<String>,
    pub note: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub waiting: Option<Waiting>,
    /// `waiting` in words.
    pub waiting_for: Option<String>,
}

fn ts(t: &Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// The JSON view of SPEC 8 (plus counts and each waiting step's reason).
pub fn view(r: &Rollout) -> RolloutView {
    let states = step_states(r);
    let mut total = StepCounts::default();
    let waves = r
        .waves
        .iter()
        .enumerate()
        .map(|(w, wave)| {
            let mut counts = StepCounts::default();
            let steps = wave
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    counts.add(s.state);
                    total.add(s.state);
                    let waiting = waiting_with(r, w, i, &states);
                    StepView {
                        environment: s.environment.clone(),
                        service: s.service.clone(),
                        state: s.state,
                        attempts: s.attempts,
                        version: s.version.clone(),
                        error: s.error.clone(),
                        note: s.note.clone(),
                        started_at: ts(&s.started_at),
                        finished_at: ts(&s.finished_at),
                        waiting_for: waiting.as_ref().map(Waiting::text),
                        waiting,
                    }
                })
                .collect();
            WaveView {
                name: wave.name.clone(),
                state: wave_state(r, w).into(),
                max_parallel: wave.max_parallel,
                failure_budget: wave.allowed_failures(),
                approval: wave.approval,
                approved_by: wave.approved_by.clone(),
                bake_until: ts(&wave.bake_until),
                started_at: ts(&wave.started_at),
                finished_at: ts(&wave.finished_at),
                counts,
                steps,
            }
        })
        .collect();
    RolloutView {
        commit: r.commit.clone(),
        previous_commit: r.previous_commit.clone(),
        state: r.state,
        risk: r.risk.clone(),
        halt: r.halt.clone(),
        paused_by: r.paused_by.clone(),
        emergency_freeze: r.emergency_freeze.clone(),
        frozen_until: ts(&r.frozen_until),
        started_at: ts(&r.started_at),
        finished_at: ts(&r.finished_at),
        counts: total,
        waves,
    }
}

/// A wave's state in words.
pub fn wave_state(r: &Rollout, w: usize) -> &'static str {
    let Some(wave) = r.waves.get(w) else {
        return "pending";
    };
    match wave.phase {
        WavePhase::Pending => {
            if w == r.current_wave && !r.state.is_terminal() {
                if wave.approval && wave.approved_by.is_none() {
                    return "awaiting_approval";
                }
                if r.frozen_until.is_some() {
                    return "frozen";
                }
            }
            "pending"
        }
        WavePhase::Running => {
            if r.halt.as_ref().is_some_and(|h| h.wave == wave.name) {
                "halted"
            } else if w == r.current_wave
                && r.state == RolloutState::Frozen
                && r.frozen_until.is_some()
            {
                "frozen"
            } else {
                "running"
            }
        }
        WavePhase::Baking => {
            if r.halt.as_ref().is_some_and(|h| h.wave == wave.name) {
                "halted"
            } else {
                "baking"
            }
        }
        WavePhase::Done => {
            if wave.steps.iter().any(|s| s.state == StepState::Failed) {
                "failed"
            } else {
                "succeeded"
            }
        }
    }
}

//! Building rollouts that are not plain merges: a rollback's plan from the
//! rollout it undoes. Pure.

use crate::domain::{CommitSha, WaveName};
use crate::engine::Rollout;
use crate::plan::model::{FailureBudget, OnDrift, Plan, PlannedStep, PlannedWave, Risk, StepKey};

/// A rollout that deploys, for each step of `versions` that has a known
/// good version, that version again. One wave, the original's dependency
/// order within each environment, no approval, no budget. Drift is
/// overwritten: what runs there now is the version being undone. `None`
/// when no step has a version to go back to.
pub fn rollback_rollout(
    original: &Rollout,
    versions: &[(StepKey, Option<CommitSha>)],
) -> Option<Rollout> {
    let chosen: Vec<(&StepKey, &CommitSha)> = versions
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
    if chosen.is_empty() {
        return None;
    }
    let keys: std::collections::BTreeSet<&StepKey> = chosen.iter().map(|(k, _)| *k).collect();
    let mut environments = Vec::new();
    let mut steps = Vec::new();
    for step in original.steps() {
        let key = step.key();
        if !keys.contains(&key) {
            continue;
        }
        if !environments.contains(&step.environment) {
            environments.push(step.environment.clone());
        }
        steps.push(PlannedStep {
            environment: step.environment.clone(),
            service: step.service.clone(),
            // Within the environment only: other environments are not
            // part of the rollback.
            waits_for: step
                .waits_for
                .iter()
                .filter(|w| w.environment == step.environment && keys.contains(w))
                .cloned()
                .collect(),
        });
    }
    let mut policy = original.policy.clone();
    policy.on_drift = OnDrift::Overwrite;
    let targets = original
        .targets
        .iter()
        .filter(|(env, _)| environments.contains(env))
        .map(|(e, t)| (e.clone(), t.clone()))
        .collect();
    let plan = Plan {
        commit: original.commit.clone(),
        previous_commit: None,
        affected_services: original.affected_services.clone(),
        waves: vec![PlannedWave {
            name: WaveName::new("rollback"),
            environments,
            max_parallel: policy.max_parallel,
            failure_budget: FailureBudget::Count(0),
            bake: std::time::Duration::ZERO,
            approval: false,
            steps,
        }],
        targets,
        policy,
        risk: Risk::default(),
    };
    let mut rollout = Rollout::new(plan);
    for wave in &mut rollout.waves {
        for step in &mut wave.steps {
            if let Some((_, v)) = chosen.iter().find(|(k, _)| **k == step.key()) {
                step.version = (*v).clone();
            }
        }
    }
    Some(rollout)
}

//! Submitting a rollout straight to the runtime and waiting for its end,
//! as the runtime's tests and the rollout bench do (no webhook, no GitHub).

use std::time::Duration;

use chrono::Utc;

use crate::domain::{BranchName, CommitSha, RepoName, RolloutId};
use crate::engine::RolloutState;
use crate::runtime::rollouts::{RolloutRuntime, is_terminal_state};
use crate::store::{RolloutKind, RolloutRecord, Store};

/// The record of a deploy of `repo`'s `main` at `commit`, queued: what a
/// merge hands the runtime with its rollout.
pub fn queued_deploy(id: RolloutId, repo: &str, commit: CommitSha) -> RolloutRecord {
    let now = Utc::now();
    RolloutRecord {
        id,
        repo: RepoName::new(repo),
        branch: BranchName::new("main"),
        commit,
        previous_commit: None,
        pull_request: None,
        installation: None,
        kind: RolloutKind::Deploy,
        parent: None,
        state: RolloutState::Queued.as_str().into(),
        created_at: now,
        updated_at: now,
        document: None,
        error: None,
    }
}

/// Waits until rollout `id` has ended: no task here drives it and the
/// store shows a terminal state, which it returns; an error says what was
/// left after `timeout`.
///
/// Whether a task drives it is asked before the state is read: a task
/// saves the final state before it goes, so a terminal state read after it
/// has gone is final. (Read the other way round, a state read just before
/// the final save passed for the end.) A task can also go without ending
/// the rollout (its lease lost), and a queued one has none yet: the state
/// is then not terminal, and the wait goes on. The stored rollout, steps
/// and all, is read only while no task drives it: it can be large.
pub async fn ended_state(
    runtime: &RolloutRuntime,
    store: &dyn Store,
    id: &RolloutId,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut left = "driven by a task".to_owned();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !runtime.is_live(id) {
            let state = store
                .rollout(id)
                .await
                .map_err(|e| format!("reading rollout {id}: {e}"))?
                .map(|r| r.state)
                .ok_or_else(|| format!("no rollout {id} is stored"))?;
            if is_terminal_state(&state) {
                return Ok(state);
            }
            left = format!("{state}, with no task driving it");
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("rollout {id} did not end in {timeout:?}: {left}"));
        }
    }
}

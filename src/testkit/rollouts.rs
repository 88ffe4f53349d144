//! Submitting a rollout straight to the runtime and waiting for its end,
//! as the runtime's tests and the rollout bench do (no webhook, no GitHub).

use std::time::Duration;

use chrono::Utc;

use crate::domain::{BranchName, CommitSha, RepoName, RolloutId};
use crate::engine::RolloutState;
use crate::runtime::rollouts::RolloutRuntime;
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

/// Waits until no task here drives rollout `id` and the store shows it past
/// queued, and returns its stored state; an error names the state it was
/// left in after `timeout`.
///
/// Whether a task drives it is asked before the state is read: a task
/// saves the final state before it goes, so a state read after it has gone
/// is final. Read the other way round, a state read just before the final
/// save would be taken for the end.
pub async fn ended_state(
    runtime: &RolloutRuntime,
    store: &dyn Store,
    id: &RolloutId,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let live = runtime.is_live(id);
        let state = store
            .rollout(id)
            .await
            .map_err(|e| format!("reading rollout {id}: {e}"))?
            .map(|r| r.state)
            .unwrap_or_default();
        if !live && state != RolloutState::Queued.as_str() {
            return Ok(state);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("rollout {id} is still {state} after {timeout:?}"));
        }
    }
}

//! From a merge to a rollout (SPEC 7.1, 6.1): a merged pull request or a
//! push to a configured branch names a commit; convoy fetches it, reads
//! `convoy.yml` there, plans against the last commit rolled out on the
//! branch and hands the rollout to the runtime. A merge sends both events,
//! in either order: whichever comes first creates the rollout, the other
//! attaches to it (the pull request adds its number).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;

use crate::config::{Config, Secret};
use crate::domain::{BranchName, CommitSha, DeliveryId, InstallationId, RepoName};
use crate::engine::{Rollout, RolloutState};
use crate::git::{self, ChangeSet, GitError, RepoCache, SpecLoadError};
use crate::plan::cli::plan_change;
use crate::plan::risk::{EnvHistory, History};
use crate::runtime::rollouts::{RolloutRuntime, new_rollout_id};
use crate::runtime::worker::{EventHandler, HandlerError};
use crate::spec::CheckContext;
use crate::store::{Created, RolloutKind, RolloutRecord};
use crate::webhook::{Envelope, Event};

/// Where fetch credentials come from: the GitHub App's installation token,
/// or nothing (local `file://` repositories, tests).
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    async fn installation_token(
        &self,
        installation: InstallationId,
    ) -> Result<Option<Secret>, String>;
}

/// No credentials: for `file://` and other open remotes.
pub struct NoToken;

#[async_trait]
impl TokenSource for NoToken {
    async fn installation_token(&self, _: InstallationId) -> Result<Option<Secret>, String> {
        Ok(None)
    }
}

/// The GitHub App's installation token: git fetches over https as
/// `x-access-token`.
#[async_trait]
impl TokenSource for crate::github::GitHubClient {
    async fn installation_token(
        &self,
        installation: InstallationId,
    ) -> Result<Option<Secret>, String> {
        self.token(installation)
            .await
            .map(Some)
            .map_err(|e| format!("cannot get an installation token from GitHub: {e}"))
    }
}

/// A merge convoy should roll out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merge {
    pub repo: RepoName,
    pub branch: BranchName,
    pub commit: CommitSha,
    pub pull_request: Option<u64>,
    pub installation: InstallationId,
    pub default_branch: Option<BranchName>,
}

/// The merge an event announces, if any (pure).
pub fn merge_of(envelope: &Envelope) -> Option<Merge> {
    let installation = envelope.installation?;
    match &envelope.event {
        Event::PullRequest(pr) => pr.merged_commit().map(|sha| Merge {
            repo: pr.repo.clone(),
            branch: pr.base_ref.clone(),
            commit: sha.clone(),
            pull_request: Some(pr.number),
            installation,
            default_branch: pr.default_branch.clone(),
        }),
        Event::Push(push) => {
            let branch = push.branch()?;
            let zero = push.after.as_str().chars().all(|c| c == '0');
            if push.deleted || zero {
                return None;
            }
            Some(Merge {
                repo: push.repo.clone(),
                branch,
                commit: push.after.clone(),
                pull_request: None,
                installation,
                default_branch: push.default_branch.clone(),
            })
        }
        _ => None,
    }
}

/// Whether merges into `branch` start rollouts: `policy.branches` when set,
/// else the repository's default branch (pure).
pub fn branch_configured(
    branches: &[String],
    default_branch: Option<&BranchName>,
    branch: &BranchName,
) -> bool {
    if branches.is_empty() {
        default_branch.is_some_and(|d| d == branch)
    } else {
        branches.iter().any(|b| b == branch.as_str())
    }
}

pub struct MergeHandler {
    config: Arc<Config>,
    runtime: RolloutRuntime,
    tokens: Arc<dyn TokenSource>,
    cache: RepoCache,
}

impl MergeHandler {
    pub fn new(
        config: Arc<Config>,
        runtime: RolloutRuntime,
        tokens: Arc<dyn TokenSource>,
    ) -> MergeHandler {
        let cache = RepoCache::new(config.server.data_dir.join("git"));
        MergeHandler {
            config,
            runtime,
            tokens,
            cache,
        }
    }

    async fn history(&self, repo: &RepoName) -> Result<History, HandlerError> {
        history_of(self.runtime.store().as_ref(), repo).await
    }

    /// Creates the rollout of a merge, or attaches to the one a sibling
    /// event created.
    pub async fn on_merge(&self, merge: Merge) -> Result<Option<RolloutRecord>, HandlerError> {
        let store = self.runtime.store().clone();
        let transient = |e: crate::store::StoreError| HandlerError::Transient(e.to_string());
        if let Some(existing) = store
            .rollout_for_commit(&merge.repo, &merge.branch, &merge.commit)
            .await
            .map_err(transient)?
        {
            if let Some(pr) = merge.pull_request
                && existing.pull_request.is_none()
            {
                store
                    .attach_pull_request(&existing.id, pr)
                    .await
                    .map_err(transient)?;
                tracing::info!(rollout = %existing.id, pull_request = pr, "pull request attached to its rollout");
            }
            return Ok(None);
        }
        let previous = store
            .last_succeeded_commit(&merge.repo, &merge.branch)
            .await
            .map_err(transient)?;
        let change = self.read_change(&merge, previous).await?;
        let now = Utc::now();
        let mut record = RolloutRecord {
            id: new_rollout_id(),
            repo: merge.repo.clone(),
            branch: merge.branch.clone(),
            commit: merge.commit.clone(),
            // What the change was read against: none when the last commit
            // rolled out could not be found.
            previous_commit: change.previous_commit.clone(),
            pull_request: merge.pull_request,
            installation: Some(merge.installation),
            kind: RolloutKind::Deploy,
            parent: None,
            state: RolloutState::Queued.as_str().into(),
            created_at: now,
            updated_at: now,
            document: None,
            error: None,
        };
        let spec_ok = match &change.spec {
            Ok(spec) => Some(spec.policy.branches.clone()),
            Err(SpecLoadError::Missing(_)) => {
                tracing::info!(commit = %merge.commit, "no convoy.yml at the merged commit; nothing to roll out");
                return Ok(None);
            }
            Err(_) => None,
        };
        if let Some(branches) = &spec_ok
            && !branch_configured(branches, merge.default_branch.as_ref(), &merge.branch)
        {
            tracing::debug!(branch = %merge.branch, "branch does not start rollouts");
            return Ok(None);
        }
        if spec_ok.is_none() && merge.default_branch.as_ref() != Some(&merge.branch) {
            // A broken convoy.yml cannot say which branches roll out; only
            // the default branch's merges report it.
            return Ok(None);
        }
        let history = self.history(&merge.repo).await?;
        let plan = match plan_change(change, &history) {
            Ok(plan) => plan,
            Err(e) => {
                // Recorded as failed with the errors, for the reporter.
                record.state = RolloutState::Failed.as_str().into();
                record.error = Some(describe_spec_error(&e));
                return match store.create_rollout(&record).await.map_err(transient)? {
                    Created::New => {
                        tracing::warn!(rollout = %record.id, error = %e, "convoy.yml is invalid; rollout failed");
                        Ok(Some(record))
                    }
                    Created::Existing(_) => Ok(None),
                };
            }
        };
        let rollout = Rollout::new(plan);
        tracing::info!(
            rollout = %record.id,
            commit = %merge.commit,
            steps = rollout.step_count(),
            state = rollout.state.as_str(),
            "rollout created"
        );
        match self.runtime.submit(record.clone(), rollout).await {
            Ok(Created::New) => Ok(Some(record)),
            Ok(Created::Existing(_)) => Ok(None),
            Err(e) => Err(HandlerError::Transient(e.to_string())),
        }
    }

    async fn read_change(
        &self,
        merge: &Merge,
        previous: Option<CommitSha>,
    ) -> Result<ChangeSet, HandlerError> {
        read_change(
            &self.config,
            &self.cache,
            self.tokens.as_ref(),
            merge.installation,
            &merge.repo,
            merge.commit.clone(),
            previous.map(|p| (p, Against::Previous)),
        )
        .await
    }
}

/// Per environment, first-attempt outcomes of recent deploys (SPEC 6.7):
/// the risk estimate's input. Shared with the PR-time preflight.
pub async fn history_of(
    store: &dyn crate::store::Store,
    repo: &RepoName,
) -> Result<History, HandlerError> {
    let counts = store
        .first_attempts(repo)
        .await
        .map_err(|e| HandlerError::Transient(e.to_string()))?;
    Ok(counts
        .into_iter()
        .map(|(env, c)| {
            (
                env,
                EnvHistory {
                    attempts: c.attempts,
                    first_attempt_successes: c.successes,
                },
            )
        })
        .collect())
}

/// Fetches `commit` (and `previous`) into the cache and reads what the
/// planner needs: `convoy.yml` at both, validated against the operator's
/// config, and the changed paths. Shared with the PR-time preflight.
pub async fn read_change(
    config: &Arc<Config>,
    cache: &RepoCache,
    tokens: &dyn TokenSource,
    installation: InstallationId,
    repo: &RepoName,
    commit: CommitSha,
    previous: Option<(CommitSha, Against)>,
) -> Result<ChangeSet, HandlerError> {
    let (previous, against) = match previous {
        Some((p, against)) => (Some(p), against),
        None => (None, Against::Previous),
    };
    let Remote {
        owner,
        name,
        url,
        token,
    } = Remote::of(config, tokens, installation, repo).await?;
    let cache = cache.clone();
    let config = config.clone();
    git::run_blocking(move || {
        let mut wanted = vec![commit.clone()];
        wanted.extend(previous.clone());
        let (repo, previous) = match cache.sync(&owner, &name, &url, token.as_ref(), &wanted) {
            Ok(repo) => (repo, previous),
            // The last commit rolled out is gone from the repository (a
            // force push, and this cache never had it): nothing to diff
            // against, so the merge rolls out as a first one would, every
            // service (SPEC 6.1), rather than never.
            Err(GitError::UnknownRevision(missing))
                if previous.as_ref().is_some_and(|p| p.as_str() == missing) =>
            {
                tracing::warn!(
                    %missing,
                    "the last commit rolled out is not in the repository any more; \
                     rolling out every service"
                );
                let only = std::slice::from_ref(&commit);
                let repo = cache.sync(&owner, &name, &url, token.as_ref(), only)?;
                (repo, None)
            }
            Err(e) => return Err(e),
        };
        // A pull request's head is compared from where it and the last
        // commit rolled out meet: what the base gained since the branch
        // left it is not the pull request's change (from `previous`, the
        // head would seem to take it all back).
        let previous = match (against, previous) {
            (Against::MergeBase, Some(p)) => Some(repo.merge_base(&p, &commit)?.unwrap_or(p)),
            (_, previous) => previous,
        };
        let ctx = CheckContext::from_config(&config);
        ChangeSet::read(&repo, commit, previous, &ctx)
    })
    .await
    .map_err(git_failure)
}

/// The head of `branch` as the repository has it now: the cache fetches
/// the branches first, and in the same fetch the commits in `also` it
/// lacks (a fork's pull request head), so that reading them next fetches
/// nothing more.
pub async fn branch_head(
    config: &Config,
    cache: &RepoCache,
    tokens: &dyn TokenSource,
    installation: InstallationId,
    repo: &RepoName,
    branch: &BranchName,
    also: Vec<CommitSha>,
) -> Result<CommitSha, HandlerError> {
    let Remote {
        owner,
        name,
        url,
        token,
    } = Remote::of(config, tokens, installation, repo).await?;
    let cache = cache.clone();
    let tracking = format!("refs/remotes/origin/{branch}");
    git::run_blocking(move || {
        cache
            .refresh(&owner, &name, &url, token.as_ref(), &also)?
            .reference_commit(&tracking)
    })
    .await
    .map_err(git_failure)
}

fn git_failure(e: GitError) -> HandlerError {
    match e {
        GitError::Auth { .. } | GitError::UnknownRevision(_) => {
            HandlerError::Permanent(e.to_string())
        }
        _ => HandlerError::Transient(e.to_string()),
    }
}

/// Where a repository is fetched from, and with what.
struct Remote {
    owner: String,
    name: String,
    url: String,
    token: Option<Secret>,
}

impl Remote {
    async fn of(
        config: &Config,
        tokens: &dyn TokenSource,
        installation: InstallationId,
        repo: &RepoName,
    ) -> Result<Remote, HandlerError> {
        let token = tokens
            .installation_token(installation)
            .await
            .map_err(HandlerError::Transient)?;
        let Some((owner, name)) = repo.split() else {
            return Err(HandlerError::Permanent(format!(
                "repository name `{repo}` is not owner/name"
            )));
        };
        Ok(Remote {
            url: git::repo_url(&config.github.git_url, owner, name),
            owner: owner.to_owned(),
            name: name.to_owned(),
            token,
        })
    }
}

/// What a commit's change is read against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Against {
    /// The last commit rolled out itself: a merge deploys whatever differs
    /// from it, a change taken back included.
    Previous,
    /// Where the commit and the last one rolled out meet: a pull request's
    /// head, whose branch may be behind its base.
    MergeBase,
}

/// Every error of an invalid `convoy.yml`, one `convoy.yml:LINE:COL:
/// message` per line.
pub fn describe_spec_error(e: &SpecLoadError) -> String {
    match e {
        SpecLoadError::Invalid { errors, .. } => errors
            .iter()
            .map(|err| err.render(crate::plan::impact::SPEC_FILE))
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

#[async_trait]
impl EventHandler for MergeHandler {
    async fn handle(&self, _: &DeliveryId, envelope: &Envelope) -> Result<(), HandlerError> {
        if let Some(merge) = merge_of(envelope) {
            self.on_merge(merge).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_branches() {
        let main = BranchName::new("main");
        let dev = BranchName::new("dev");
        assert!(branch_configured(&[], Some(&main), &main));
        assert!(!branch_configured(&[], Some(&main), &dev));
        assert!(!branch_configured(&[], None, &main));
        assert!(branch_configured(&["dev".into()], Some(&main), &dev));
        assert!(!branch_configured(&["dev".into()], Some(&main), &main));
    }
}

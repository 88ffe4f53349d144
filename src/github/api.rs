//! The GitHub port: every call convoy makes, behind one object-safe trait,
//! so the engine and the reporter can be tested with a fake.

use async_trait::async_trait;

use super::types::*;
use crate::domain::{InstallationId, RepoName};

/// What went wrong talking to GitHub, in the shape callers branch on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitHubError {
    /// 404: the object (or the installation's access to it) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// 401 after a fresh token, or the App key was refused.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 403 that is not a rate limit: the App lacks a permission.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 422 or 400: GitHub refused the request's content. A bug in convoy.
    #[error("GitHub refused the request ({status}): {message}")]
    Invalid { status: u16, message: String },
    /// Still rate limited after all retries.
    #[error("rate limited by GitHub: {0}")]
    RateLimited(String),
    /// 5xx after all retries.
    #[error("GitHub server error {status}")]
    Server { status: u16 },
    /// No answer in time after all retries.
    #[error("GitHub did not answer in time")]
    Timeout,
    /// Connection refused, reset, DNS, TLS.
    #[error("cannot reach GitHub: {0}")]
    Transport(String),
    /// GitHub answered with something we cannot read.
    #[error("unexpected answer from GitHub: {0}")]
    Decode(String),
    /// Convoy's own side: a bad key, a repo name without a slash, a request
    /// that breaks a documented GitHub limit.
    #[error("{0}")]
    Request(String),
}

impl GitHubError {
    /// Worth trying again later (an outage, not a refusal).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitHubError::RateLimited(_)
                | GitHubError::Server { .. }
                | GitHubError::Timeout
                | GitHubError::Transport(_)
        )
    }
}

pub type GitHubResult<T> = Result<T, GitHubError>;

/// Every GitHub call convoy makes. Repository calls act as the installation
/// `inst`; `repo` is `owner/name`.
#[async_trait]
pub trait GitHubApi: Send + Sync {
    /// Creates a check run. Output text is cut to GitHub's byte limit;
    /// annotations beyond 50 are appended with follow-up updates. When the
    /// POST's fate is unknown (timeout, 5xx) and the run has an
    /// `external_id`, an identical check run on the commit is looked for
    /// before anything is re-sent.
    async fn create_check_run(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        run: &NewCheckRun,
    ) -> GitHubResult<CheckRun>;

    /// Updates a check run (PATCH); same limits as create.
    async fn update_check_run(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        check_run_id: u64,
        update: &CheckRunUpdate,
    ) -> GitHubResult<CheckRun>;

    /// Check runs on a commit (`git_ref` is a SHA or ref), all of them (not
    /// only the latest per name), optionally of one name.
    async fn list_check_runs(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        git_ref: &str,
        name: Option<&str>,
    ) -> GitHubResult<Vec<CheckRun>>;

    /// Creates a comment on an issue or pull request. If the body carries a
    /// hidden marker and the POST's fate is unknown (timeout, 5xx), the
    /// comment is looked up by marker before anything is re-sent.
    async fn create_comment(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        issue_number: u64,
        body: &str,
    ) -> GitHubResult<IssueComment>;

    /// Edits a comment in place (PATCH).
    async fn update_comment(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        comment_id: u64,
        body: &str,
    ) -> GitHubResult<IssueComment>;

    /// All comments of an issue or pull request, oldest first.
    async fn list_comments(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        issue_number: u64,
    ) -> GitHubResult<Vec<IssueComment>>;

    async fn add_reaction(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        comment_id: u64,
        reaction: Reaction,
    ) -> GitHubResult<()>;

    /// A user's permission on the repository (permission and role_name).
    async fn get_permission(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        user: &str,
    ) -> GitHubResult<Permission>;

    async fn get_pull_request(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        number: u64,
    ) -> GitHubResult<PullRequest>;

    async fn create_issue(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        issue: &NewIssue,
    ) -> GitHubResult<Issue>;

    async fn update_issue(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        number: u64,
        update: &IssueUpdate,
    ) -> GitHubResult<Issue>;

    /// Issues (not pull requests) carrying `label`.
    async fn list_issues_by_label(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        label: &str,
        filter: IssueFilter,
    ) -> GitHubResult<Vec<Issue>>;

    async fn get_repository(
        &self,
        inst: InstallationId,
        repo: &RepoName,
    ) -> GitHubResult<Repository>;

    /// `user`'s membership of `org/team_slug`; `None` when not a member.
    async fn get_team_membership(
        &self,
        inst: InstallationId,
        org: &str,
        team_slug: &str,
        user: &str,
    ) -> GitHubResult<Option<TeamMembership>>;
}

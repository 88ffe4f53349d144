//! Typed requests and results of the GitHub calls convoy makes.
//!
//! Only the fields convoy reads or writes; everything else GitHub sends is
//! ignored on decode. Request types serialize to exactly the JSON GitHub
//! documents (optional fields are omitted, never sent as `null`, because
//! most of GitHub's request schemas do not allow `null`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `status` of a check run as convoy sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckRunStatus {
    Queued,
    InProgress,
    Completed,
}

/// The conclusions convoy uses (a subset of GitHub's enum: never `stale`,
/// which only GitHub may set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckRunConclusion {
    Success,
    Failure,
    Neutral,
    Cancelled,
    ActionRequired,
    Skipped,
    TimedOut,
}

/// A button on a check run. GitHub limits: label ≤ 20 characters,
/// description ≤ 40, identifier ≤ 20, at most 3 per check run. The client
/// enforces these before sending (see [`crate::github::limits`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckRunAction {
    pub label: String,
    pub description: String,
    pub identifier: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotationLevel {
    Notice,
    Warning,
    Failure,
}

/// A line annotation, for example a `convoy.yml` error at line:col.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Annotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_column: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_column: Option<u32>,
    pub annotation_level: AnnotationLevel,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// The visible body of a check run. `summary` and `text` are cut to GitHub's
/// byte limit by the client; annotations beyond 50 are sent in follow-up
/// requests.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckRunOutput {
    pub title: String,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
}

/// `POST /repos/{owner}/{repo}/check-runs`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewCheckRun {
    pub name: String,
    pub head_sha: String,
    pub status: CheckRunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<CheckRunConclusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<CheckRunOutput>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<CheckRunAction>,
}

impl NewCheckRun {
    pub fn new(name: impl Into<String>, head_sha: impl Into<String>) -> Self {
        NewCheckRun {
            name: name.into(),
            head_sha: head_sha.into(),
            status: CheckRunStatus::InProgress,
            conclusion: None,
            details_url: None,
            external_id: None,
            started_at: None,
            completed_at: None,
            output: None,
            actions: Vec::new(),
        }
    }
}

/// `PATCH /repos/{owner}/{repo}/check-runs/{id}`: only the fields that are
/// `Some` change. `actions: Some(vec![])` removes all buttons.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckRunUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckRunStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<CheckRunConclusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<CheckRunOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<CheckRunAction>>,
}

impl From<&NewCheckRun> for CheckRunUpdate {
    /// The update that makes an existing check run look like `run` (used
    /// when the reporter replaces a check run's whole state).
    fn from(run: &NewCheckRun) -> Self {
        CheckRunUpdate {
            name: Some(run.name.clone()),
            status: Some(run.status),
            conclusion: run.conclusion,
            details_url: run.details_url.clone(),
            external_id: run.external_id.clone(),
            completed_at: run.completed_at,
            output: run.output.clone(),
            actions: Some(run.actions.clone()),
        }
    }
}

/// A check run as GitHub returns it (the fields convoy reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRun {
    pub id: u64,
    pub name: String,
    pub head_sha: String,
    pub status: String,
    #[serde(default)]
    pub conclusion: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub details_url: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
    #[serde(default)]
    pub output: Option<CheckRunOutputSummary>,
}

/// A check run's output as GitHub returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRunOutputSummary {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub annotations_count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub login: String,
    #[serde(default)]
    pub id: u64,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// An issue or pull-request comment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueComment {
    pub id: u64,
    #[serde(default)]
    pub body: Option<String>,
    pub user: Option<User>,
    #[serde(default)]
    pub html_url: Option<String>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

/// Reactions GitHub accepts on a comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reaction {
    #[serde(rename = "+1")]
    PlusOne,
    #[serde(rename = "-1")]
    MinusOne,
    #[serde(rename = "laugh")]
    Laugh,
    #[serde(rename = "confused")]
    Confused,
    #[serde(rename = "heart")]
    Heart,
    #[serde(rename = "hooray")]
    Hooray,
    #[serde(rename = "rocket")]
    Rocket,
    #[serde(rename = "eyes")]
    Eyes,
}

/// `permission` from the collaborator-permission call: GitHub folds
/// maintain into write and triage into read; `role_name` has the exact role.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionLevel {
    Admin,
    Write,
    Read,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub permission: PermissionLevel,
    pub role_name: String,
}

impl PermissionLevel {
    /// GitHub's spelling (`admin`, `write`, `read`, `none`).
    pub fn as_str(&self) -> &'static str {
        match self {
            PermissionLevel::Admin => "admin",
            PermissionLevel::Write => "write",
            PermissionLevel::Read => "read",
            PermissionLevel::None => "none",
        }
    }
}

impl Permission {
    /// Admin and write count as write (SPEC 7.4).
    pub fn can_write(&self) -> bool {
        matches!(
            self.permission,
            PermissionLevel::Admin | PermissionLevel::Write
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRef {
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub sha: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    pub state: String,
    #[serde(default)]
    pub title: String,
    pub user: Option<User>,
    pub head: GitRef,
    pub base: GitRef,
    #[serde(default)]
    pub merged: Option<bool>,
    /// Present on closed *unmerged* PRs too: never infer a merge from it.
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueState {
    Open,
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    pub state: IssueState,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub html_url: Option<String>,
    /// Set when the "issue" is a pull request (the issues API lists both).
    #[serde(default)]
    pub pull_request: Option<serde_json::Value>,
}

/// `POST /repos/{owner}/{repo}/issues`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewIssue {
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
}

/// `PATCH /repos/{owner}/{repo}/issues/{number}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<IssueState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// Which issues [`crate::github::GitHubApi::list_issues_by_label`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IssueFilter {
    Open,
    Closed,
    All,
}

impl IssueFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueFilter::Open => "open",
            IssueFilter::Closed => "closed",
            IssueFilter::All => "all",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    pub id: u64,
    pub full_name: String,
    pub default_branch: String,
    #[serde(default)]
    pub private: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamMembership {
    /// `member` or `maintainer`.
    pub role: String,
    /// `active` or `pending` (invited, not yet accepted).
    pub state: String,
}

impl TeamMembership {
    pub fn is_active(&self) -> bool {
        self.state == "active"
    }
}

/// An installation access token as GitHub returns it.
#[derive(Clone, Deserialize)]
pub struct InstallationTokenResponse {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for InstallationTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationTokenResponse")
            .field("token", &"***")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

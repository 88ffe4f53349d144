//! Typed events: the parts of GitHub's payloads that convoy acts on.
//!
//! Parsed from the raw body with our own small serde structs rather than
//! octocrab's models: they keep what octocrab drops (`requested_action`),
//! tolerate what GitHub adds, and make a missing field an error that names it.

use serde::Deserialize;

use crate::domain::{BranchName, CommitSha, InstallationId, RepoName};

/// An event convoy handles, with the installation it came through (absent in
/// some deliveries: those are dropped by the worker, except `ping`).
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub installation: Option<InstallationId>,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Ping {
        zen: Option<String>,
        hook_id: Option<i64>,
    },
    Installation(InstallationEvent),
    InstallationRepositories(InstallationRepositoriesEvent),
    PullRequest(PullRequestEvent),
    IssueComment(IssueCommentEvent),
    CheckRun(CheckRunEvent),
    Push(PushEvent),
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Ping { .. } => "ping",
            Event::Installation(_) => "installation",
            Event::InstallationRepositories(_) => "installation_repositories",
            Event::PullRequest(_) => "pull_request",
            Event::IssueComment(_) => "issue_comment",
            Event::CheckRun(_) => "check_run",
            Event::Push(_) => "push",
        }
    }

    /// The repository the event is about, when there is one.
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Event::PullRequest(e) => Some(&e.repo),
            Event::IssueComment(e) => Some(&e.repo),
            Event::CheckRun(e) => Some(&e.repo),
            Event::Push(e) => Some(&e.repo),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct InstallationEvent {
    /// created, deleted, suspend, unsuspend, new_permissions_accepted
    pub action: String,
    pub account: String,
    pub repositories: Vec<RepoName>,
    /// When GitHub made this change, as far as the payload says:
    /// `installation.suspended_at` for a suspension, else
    /// `installation.updated_at` (an RFC 3339 text or, in older payloads,
    /// seconds since 1970). `None` when it says neither legibly.
    pub changed_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InstallationRepositoriesEvent {
    pub action: String,
    pub account: String,
    pub added: Vec<RepoName>,
    pub removed: Vec<RepoName>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PullRequestEvent {
    pub action: String,
    pub repo: RepoName,
    pub number: u64,
    pub author: String,
    pub head_sha: CommitSha,
    pub base_ref: BranchName,
    /// True only when GitHub says the PR was merged: a closed, unmerged PR
    /// still carries a `merge_commit_sha`.
    pub merged: bool,
    pub merge_commit_sha: Option<CommitSha>,
    pub default_branch: Option<BranchName>,
}

impl PullRequestEvent {
    /// The merge commit, only for an actual merge.
    pub fn merged_commit(&self) -> Option<&CommitSha> {
        if self.action == "closed" && self.merged {
            self.merge_commit_sha.as_ref()
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct IssueCommentEvent {
    pub action: String,
    pub repo: RepoName,
    pub issue_number: u64,
    /// Whether the issue is a pull request (`issue.pull_request` present).
    pub on_pull_request: bool,
    pub issue_labels: Vec<String>,
    pub issue_author: String,
    pub comment_id: i64,
    pub body: String,
    pub author: String,
    /// `User`, `Bot`, `Organization`.
    pub author_type: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CheckRunEvent {
    /// created, completed, rerequested, requested_action
    pub action: String,
    pub repo: RepoName,
    pub check_run_id: i64,
    pub name: String,
    pub head_sha: CommitSha,
    pub external_id: Option<String>,
    /// The button's identifier, for `requested_action`.
    pub requested_action: Option<String>,
    pub sender: String,
    pub app_id: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PushEvent {
    pub repo: RepoName,
    /// Full ref, e.g. `refs/heads/main`.
    pub git_ref: String,
    pub before: CommitSha,
    pub after: CommitSha,
    pub deleted: bool,
    pub forced: bool,
    pub pusher: String,
    pub default_branch: Option<BranchName>,
}

impl PushEvent {
    /// The branch pushed to, for a push to a branch (not a tag).
    pub fn branch(&self) -> Option<BranchName> {
        self.git_ref
            .strip_prefix("refs/heads/")
            .map(BranchName::from)
    }
}

/// Why a body could not be turned into an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{event} payload is not what GitHub sends: {message}")]
    Shape { event: String, message: String },
}

/// What [`parse`] made of a delivery: the event, `None` for events convoy
/// does not handle, or why the body is not what GitHub sends.
pub type Parsed = Result<Option<Envelope>, ParseError>;

/// The body is not JSON at all: the intake answers 400 and stores nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct NotJson;

/// The intake's check and parse in one pass over the body: [`parse`]'s
/// result for a JSON body, `NotJson` for anything else. The typed parse
/// reads the whole document (serde_json checks what it skips), so only a
/// body of the wrong shape or an event convoy does not handle is read a
/// second time, to tell JSON of another shape from no JSON. Pure.
pub fn parse_received(event: &str, body: &str) -> Result<Parsed, NotJson> {
    let parsed = parse(event, body);
    if matches!(parsed, Ok(Some(_))) {
        return Ok(parsed);
    }
    match serde_json::from_str::<serde::de::IgnoredAny>(body) {
        Ok(_) => Ok(parsed),
        Err(_) => Err(NotJson),
    }
}

/// The event names convoy acts on.
pub const HANDLED: &[&str] = &[
    "ping",
    "installation",
    "installation_repositories",
    "pull_request",
    "issue_comment",
    "check_run",
    "push",
];

// --- the raw shapes --------------------------------------------------------

#[derive(Deserialize)]
struct RawInstallationRef {
    id: i64,
    #[serde(default)]
    account: Option<RawAccount>,
}

#[derive(Deserialize)]
struct RawAccount {
    login: String,
}

#[derive(Deserialize)]
struct RawUser {
    login: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RawRepo {
    full_name: String,
    #[serde(default)]
    default_branch: Option<String>,
}

#[derive(Deserialize)]
struct RawRepoRef {
    full_name: String,
}

// Each event's shape names `installation` itself, so a body is read once:
// a pull_request body is tens of KB.

#[derive(Deserialize)]
struct RawPing {
    #[serde(default)]
    installation: Option<RawInstallationRef>,
    #[serde(default)]
    zen: Option<String>,
    #[serde(default)]
    hook_id: Option<i64>,
}

#[derive(Deserialize)]
struct RawInstallation {
    action: String,
    installation: RawInstallationObject,
    #[serde(default)]
    repositories: Option<Vec<RawRepoRef>>,
}

/// The installation as an `installation` event carries it: with its
/// times, which other events leave out.
#[derive(Deserialize)]
struct RawInstallationObject {
    id: i64,
    #[serde(default)]
    account: Option<RawAccount>,
    #[serde(default)]
    suspended_at: Option<RawTime>,
    #[serde(default)]
    updated_at: Option<RawTime>,
}

/// A time as GitHub writes it in an installation: RFC 3339 text, or
/// seconds since 1970 in older payloads. Anything else is read as no
/// time rather than refusing the whole event.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawTime {
    Seconds(i64),
    Text(String),
    Other(serde::de::IgnoredAny),
}

impl RawTime {
    fn to_utc(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            RawTime::Seconds(s) => chrono::DateTime::from_timestamp(*s, 0),
            RawTime::Text(t) => chrono::DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc)),
            RawTime::Other(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct RawInstallationRepositories {
    action: String,
    installation: RawInstallationRef,
    #[serde(default)]
    repositories_added: Vec<RawRepoRef>,
    #[serde(default)]
    repositories_removed: Vec<RawRepoRef>,
}

#[derive(Deserialize)]
struct RawPullRequest {
    #[serde(default)]
    installation: Option<RawInstallationRef>,
    action: String,
    number: u64,
    pull_request: RawPr,
    repository: RawRepo,
}

#[derive(Deserialize)]
struct RawPr {
    user: RawUser,
    head: RawGitRef,
    base: RawGitRef,
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    merge_commit_sha: Option<String>,
}

#[derive(Deserialize)]
struct RawGitRef {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
}

#[derive(Deserialize)]
struct RawIssueComment {
    #[serde(default)]
    installation: Option<RawInstallationRef>,
    action: String,
    issue: RawIssue,
    comment: RawComment,
    repository: RawRepo,
}

#[derive(Deserialize)]
struct RawIssue {
    number: u64,
    user: RawUser,
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
    #[serde(default)]
    labels: Vec<RawLabel>,
}

#[derive(Deserialize)]
struct RawLabel {
    name: String,
}

#[derive(Deserialize)]
struct RawComment {
    id: i64,
    #[serde(default)]
    body: Option<String>,
    user: RawUser,
}

#[derive(Deserialize)]
struct RawCheckRunEvent {
    #[serde(default)]
    installation: Option<RawInstallationRef>,
    action: String,
    check_run: RawCheckRun,
    repository: RawRepo,
    sender: RawUser,
    #[serde(default)]
    requested_action: Option<RawRequestedAction>,
}

#[derive(Deserialize)]
struct RawCheckRun {
    id: i64,
    name: String,
    head_sha: String,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    app: Option<RawApp>,
}

#[derive(Deserialize)]
struct RawApp {
    id: i64,
}

#[derive(Deserialize)]
struct RawRequestedAction {
    identifier: String,
}

#[derive(Deserialize)]
struct RawPush {
    #[serde(default)]
    installation: Option<RawInstallationRef>,
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    pusher: Option<RawPusher>,
    repository: RawRepo,
}

#[derive(Deserialize)]
struct RawPusher {
    name: String,
}

/// From a `&str`, not bytes: serde_json then does not check each string it
/// reads for UTF-8 again.
fn shape<T: serde::de::DeserializeOwned>(event: &str, body: &str) -> Result<T, ParseError> {
    serde_json::from_str(body).map_err(|e| ParseError::Shape {
        event: event.to_owned(),
        message: e.to_string(),
    })
}

fn repos(list: Vec<RawRepoRef>) -> Vec<RepoName> {
    list.into_iter()
        .map(|r| RepoName::new(r.full_name))
        .collect()
}

fn account(i: &RawInstallationRef) -> String {
    i.account
        .as_ref()
        .map(|a| a.login.clone())
        .unwrap_or_default()
}

/// Parses a delivery of `event` (the `X-GitHub-Event` header). `Ok(None)`
/// for events convoy does not handle.
pub fn parse(event: &str, body: &str) -> Result<Option<Envelope>, ParseError> {
    if !HANDLED.contains(&event) {
        return Ok(None);
    }
    let (installation, parsed) = match event {
        "ping" => {
            let raw: RawPing = shape(event, body)?;
            let ping = Event::Ping {
                zen: raw.zen,
                hook_id: raw.hook_id,
            };
            (raw.installation, ping)
        }
        "installation" => {
            let raw: RawInstallation = shape(event, body)?;
            let object = raw.installation;
            let legible = |t: &Option<RawTime>| t.as_ref().and_then(RawTime::to_utc);
            let updated = legible(&object.updated_at);
            let changed_at = match raw.action.as_str() {
                "suspend" => legible(&object.suspended_at).or(updated),
                _ => updated,
            };
            let reference = RawInstallationRef {
                id: object.id,
                account: object.account,
            };
            let installation = Event::Installation(InstallationEvent {
                account: account(&reference),
                action: raw.action,
                repositories: repos(raw.repositories.unwrap_or_default()),
                changed_at,
            });
            (Some(reference), installation)
        }
        "installation_repositories" => {
            let raw: RawInstallationRepositories = shape(event, body)?;
            let change = Event::InstallationRepositories(InstallationRepositoriesEvent {
                account: account(&raw.installation),
                action: raw.action,
                added: repos(raw.repositories_added),
                removed: repos(raw.repositories_removed),
            });
            (Some(raw.installation), change)
        }
        "pull_request" => {
            let raw: RawPullRequest = shape(event, body)?;
            let pr = raw.pull_request;
            let pull_request = Event::PullRequest(PullRequestEvent {
                action: raw.action,
                repo: RepoName::new(raw.repository.full_name),
                number: raw.number,
                author: pr.user.login,
                head_sha: CommitSha::new(pr.head.sha),
                base_ref: BranchName::new(pr.base.git_ref),
                merged: pr.merged.unwrap_or(false),
                merge_commit_sha: pr.merge_commit_sha.map(CommitSha::new),
                default_branch: raw.repository.default_branch.map(BranchName::new),
            });
            (raw.installation, pull_request)
        }
        "issue_comment" => {
            let raw: RawIssueComment = shape(event, body)?;
            let comment = Event::IssueComment(IssueCommentEvent {
                action: raw.action,
                repo: RepoName::new(raw.repository.full_name),
                issue_number: raw.issue.number,
                on_pull_request: raw.issue.pull_request.is_some_and(|v| !v.is_null()),
                issue_labels: raw.issue.labels.into_iter().map(|l| l.name).collect(),
                issue_author: raw.issue.user.login,
                comment_id: raw.comment.id,
                body: raw.comment.body.unwrap_or_default(),
                author: raw.comment.user.login,
                author_type: raw.comment.user.kind.unwrap_or_else(|| "User".into()),
            });
            (raw.installation, comment)
        }
        "check_run" => {
            let raw: RawCheckRunEvent = shape(event, body)?;
            let check_run = Event::CheckRun(CheckRunEvent {
                action: raw.action,
                repo: RepoName::new(raw.repository.full_name),
                check_run_id: raw.check_run.id,
                name: raw.check_run.name,
                head_sha: CommitSha::new(raw.check_run.head_sha),
                external_id: raw.check_run.external_id.filter(|s| !s.is_empty()),
                requested_action: raw.requested_action.map(|a| a.identifier),
                sender: raw.sender.login,
                app_id: raw.check_run.app.map(|a| a.id),
            });
            (raw.installation, check_run)
        }
        "push" => {
            let raw: RawPush = shape(event, body)?;
            let push = Event::Push(PushEvent {
                repo: RepoName::new(raw.repository.full_name),
                git_ref: raw.git_ref,
                before: CommitSha::new(raw.before),
                after: CommitSha::new(raw.after),
                deleted: raw.deleted,
                forced: raw.forced,
                pusher: raw.pusher.map(|p| p.name).unwrap_or_default(),
                default_branch: raw.repository.default_branch.map(BranchName::new),
            });
            (raw.installation, push)
        }
        _ => return Ok(None),
    };
    let installation = installation.map(|i| InstallationId(i.id));
    Ok(Some(Envelope {
        installation,
        event: parsed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_intake_parses_once_and_tells_other_json_from_no_json() {
        let ping = r#"{"zen":"hi","hook_id":3,"installation":{"id":7}}"#;
        assert_eq!(parse_received("ping", ping), Ok(parse("ping", ping)));
        assert!(matches!(parse_received("ping", ping), Ok(Ok(Some(_)))));
        // JSON of another shape is kept (the worker records why it failed).
        let odd = r#"{"zen":5}"#;
        assert!(matches!(parse_received("ping", odd), Ok(Err(_))));
        assert!(matches!(
            parse_received("star", r#"{"a":[1]}"#),
            Ok(Ok(None))
        ));
        // Not JSON, whether or not the event is handled; the typed parse
        // of a handled event checks what it skips and what trails.
        for (event, body) in [
            ("star", "{\"a\":"),
            ("ping", "{\"zen\":\"hi\",\"x\":[1,}"),
            ("ping", "{\"zen\":\"hi\"} trailing"),
            ("ping", ""),
        ] {
            assert_eq!(parse_received(event, body), Err(NotJson), "{event}");
        }
    }

    /// GitHub writes the installation's times both ways (RFC 3339 in its
    /// suspend and unsuspend examples, seconds in the older ones).
    #[test]
    fn an_installation_change_is_dated_as_github_dates_it() {
        let at = |body: &str| {
            let env = parse("installation", body).unwrap().unwrap();
            let Event::Installation(e) = env.event else {
                panic!("not an installation event")
            };
            assert_eq!(env.installation, Some(InstallationId(7)));
            assert_eq!(e.account, "acme");
            e.changed_at.map(|t| t.to_rfc3339())
        };
        let body = |action: &str, times: &str| {
            format!(
                r#"{{"action":"{action}","installation":{{"id":7,"account":{{"login":"acme"}}{times}}}}}"#
            )
        };
        // A suspension is dated by `suspended_at`; `updated_at` in
        // another zone is the same instant.
        assert_eq!(
            at(&body(
                "suspend",
                r#","suspended_at":"2021-04-29T02:32:50Z","updated_at":"2021-04-28T22:32:51.000-04:00""#
            ))
            .as_deref(),
            Some("2021-04-29T02:32:50+00:00")
        );
        assert_eq!(
            at(&body(
                "unsuspend",
                r#","suspended_at":null,"updated_at":"2021-04-28T22:32:51.000-04:00""#
            ))
            .as_deref(),
            Some("2021-04-29T02:32:51+00:00")
        );
        // Seconds since 1970, as the older examples have it.
        assert_eq!(
            at(&body("created", r#","updated_at":1557933591"#)).as_deref(),
            Some("2019-05-15T15:19:51+00:00")
        );
        // Illegible or absent: no time, and the event still parses.
        assert_eq!(at(&body("suspend", r#","suspended_at":"soon""#)), None);
        assert_eq!(at(&body("unsuspend", r#","updated_at":1.5"#)), None);
        assert_eq!(at(&body("unsuspend", "")), None);
    }

    #[test]
    fn unhandled_events_are_none() {
        assert_eq!(parse("star", "{}"), Ok(None));
    }

    #[test]
    fn missing_field_is_an_error_naming_the_event() {
        let e = parse("push", r#"{"ref":"refs/heads/main"}"#).unwrap_err();
        assert!(e.to_string().starts_with("push payload"), "{e}");
    }

    #[test]
    fn requested_action_is_kept() {
        let body = r#"{"action":"requested_action","installation":{"id":7},
            "check_run":{"id":1,"name":"convoy/rollout","head_sha":"abc","external_id":"r1"},
            "repository":{"full_name":"acme/app"},"sender":{"login":"alice"},
            "requested_action":{"identifier":"retry-failed"}}"#;
        let env = parse("check_run", body).unwrap().unwrap();
        assert_eq!(env.installation, Some(InstallationId(7)));
        let Event::CheckRun(cr) = env.event else {
            panic!("not a check run")
        };
        assert_eq!(cr.requested_action.as_deref(), Some("retry-failed"));
        assert_eq!(cr.external_id.as_deref(), Some("r1"));
    }

    #[test]
    fn closed_unmerged_pr_is_not_a_merge() {
        let pr = PullRequestEvent {
            action: "closed".into(),
            repo: RepoName::new("a/b"),
            number: 1,
            author: "x".into(),
            head_sha: CommitSha::new("h"),
            base_ref: BranchName::new("main"),
            merged: false,
            merge_commit_sha: Some(CommitSha::new("m")),
            default_branch: None,
        };
        assert_eq!(pr.merged_commit(), None);
        let merged = PullRequestEvent { merged: true, ..pr };
        assert_eq!(merged.merged_commit(), Some(&CommitSha::new("m")));
    }
}

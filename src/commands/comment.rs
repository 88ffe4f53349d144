//! Which `issue_comment` deliveries carry commands. Pure: the edge copies a
//! few facts out of the payload and asks.

use serde::Serialize;

/// The label of the repository's drift tracking issue (SPEC 6.6).
pub const DRIFT_LABEL: &str = "convoy-drift";

/// The facts of a delivery that decide whether its comment is read.
#[derive(Clone, Copy, Debug)]
pub struct CommentFacts<'a> {
    /// `X-GitHub-Event`.
    pub event: &'a str,
    /// The payload's `action`.
    pub action: &'a str,
    /// `issue.pull_request` is present.
    pub on_pull_request: bool,
    /// `issue.labels[].name`.
    pub issue_labels: &'a [&'a str],
    /// `comment.user.login`.
    pub author_login: &'a str,
    /// `comment.user.type` (`User`, `Bot`, `Organization`).
    pub author_type: &'a str,
}

/// Where a comment that is read was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommentPlace {
    PullRequest,
    DriftIssue,
}

/// Why a comment is not read (for a debug log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ignored {
    NotAComment,
    /// `edited` or `deleted`: only new comments are commands.
    NotCreated,
    /// Written by a bot, convoy included, so bots never steer (or loop).
    ByBot,
    /// An ordinary issue, not a pull request nor the drift issue.
    OtherIssue,
    /// The payload lacks `action`, `issue` or `comment.user`.
    Malformed,
}

/// `Ok(place)` when the comment may hold commands.
pub fn comment_place(facts: &CommentFacts<'_>) -> Result<CommentPlace, Ignored> {
    if facts.event != "issue_comment" {
        return Err(Ignored::NotAComment);
    }
    if facts.action != "created" {
        return Err(Ignored::NotCreated);
    }
    if is_bot(facts.author_login, facts.author_type) {
        return Err(Ignored::ByBot);
    }
    if facts.on_pull_request {
        return Ok(CommentPlace::PullRequest);
    }
    if facts
        .issue_labels
        .iter()
        .any(|label| label.eq_ignore_ascii_case(DRIFT_LABEL))
    {
        return Ok(CommentPlace::DriftIssue);
    }
    Err(Ignored::OtherIssue)
}

/// [`comment_place`] straight from an `issue_comment` payload (`event` is
/// the `X-GitHub-Event` header). Reads `action`, `issue.pull_request`,
/// `issue.labels[].name`, `comment.user.login` and `comment.user.type`;
/// never `author_association`.
pub fn comment_place_from_payload(
    event: &str,
    payload: &serde_json::Value,
) -> Result<CommentPlace, Ignored> {
    if event != "issue_comment" {
        return Err(Ignored::NotAComment);
    }
    let text = |pointer: &str| payload.pointer(pointer).and_then(serde_json::Value::as_str);
    let (Some(action), Some(issue), Some(login)) = (
        text("/action"),
        payload.get("issue").filter(|i| i.is_object()),
        text("/comment/user/login"),
    ) else {
        return Err(Ignored::Malformed);
    };
    let labels: Vec<&str> = issue
        .get("labels")
        .and_then(serde_json::Value::as_array)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|l| l.get("name").and_then(serde_json::Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    comment_place(&CommentFacts {
        event,
        action,
        on_pull_request: issue.get("pull_request").is_some_and(|pr| !pr.is_null()),
        issue_labels: &labels,
        author_login: login,
        author_type: text("/comment/user/type").unwrap_or(""),
    })
}

/// The reactions convoy puts on a command comment (GitHub's `content`
/// values): 👀 on receipt, 🚀 when done, 😕 when refused, invalid or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reaction {
    Eyes,
    Rocket,
    Confused,
}

impl Reaction {
    /// The `content` field of `POST …/comments/{id}/reactions`.
    pub fn content(self) -> &'static str {
        match self {
            Reaction::Eyes => "eyes",
            Reaction::Rocket => "rocket",
            Reaction::Confused => "confused",
        }
    }
}

/// A bot account: `type` `Bot`, or a login ending in `[bot]` (how GitHub
/// Apps, convoy itself among them, appear).
pub fn is_bot(login: &str, user_type: &str) -> bool {
    user_type.eq_ignore_ascii_case("bot") || login.to_ascii_lowercase().ends_with("[bot]")
}

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

/// A bot account: `type` `Bot`, or a login ending in `[bot]` (how GitHub
/// Apps, convoy itself among them, appear).
pub fn is_bot(login: &str, user_type: &str) -> bool {
    user_type.eq_ignore_ascii_case("bot") || login.to_ascii_lowercase().ends_with("[bot]")
}

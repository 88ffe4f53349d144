//! Replies to commands: `/convoy help` and one reply per kind of error, each
//! a Tera template under `templates/commands/`, embedded at build time.
//! Pure: a value in, Markdown out.
//!
//! Everything a user typed reaches a reply only through the `code` filter
//! (a Markdown code span that survives any backticks, newlines or
//! `@mentions` inside), so a reply can never ping people or break its own
//! formatting.

use std::sync::LazyLock;

use serde::Serialize;
use tera::{Context as TeraContext, Kwargs, State, Tera};

use super::auth::{Permission, Refusal};
use super::parse::ParseError;
use super::table::{COMMANDS, Verb};
use super::validate::{NotApplicable, ValidationError};
use crate::report::render::tidy;

/// Longest user text quoted back in a reply, in characters.
const MAX_QUOTED: usize = 120;
/// Names listed in a reply (valid, unknown or unexpected ones); the rest
/// are counted, so a reply stays short whatever was typed.
const MAX_LISTED_NAMES: usize = 20;

const TEMPLATES: [(&str, &str); 7] = [
    ("help.md", include_str!("../../templates/commands/help.md")),
    (
        "unknown_command.md",
        include_str!("../../templates/commands/unknown_command.md"),
    ),
    (
        "unknown_name.md",
        include_str!("../../templates/commands/unknown_name.md"),
    ),
    (
        "permission_refused.md",
        include_str!("../../templates/commands/permission_refused.md"),
    ),
    (
        "invalid_arguments.md",
        include_str!("../../templates/commands/invalid_arguments.md"),
    ),
    (
        "not_applicable.md",
        include_str!("../../templates/commands/not_applicable.md"),
    ),
    (
        "notice.md",
        include_str!("../../templates/commands/notice.md"),
    ),
];

static ENGINE: LazyLock<Result<Tera, String>> = LazyLock::new(|| {
    let mut tera = Tera::default();
    tera.autoescape_on(Vec::<&str>::new());
    tera.register_filter("code", |text: &str, _: Kwargs, _: &State| code_span(text));
    tera.add_raw_templates(TEMPLATES)
        .map_err(|e| format!("command templates: {e}"))?;
    Ok(tera)
});

/// Any reason a command was not carried out that the commenter should hear
/// about (each becomes a 😕 reaction and a reply).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    NotApplicable(#[from] NotApplicable),
}

/// Facts around a reply that are not part of the error itself.
#[derive(Clone, Copy, Debug)]
pub struct ReplyInput<'a> {
    /// The configured command prefix (`github.command_prefix`).
    pub prefix: &'a str,
    /// The command line as written ([`super::ParsedLine::text`]); `None` for
    /// a button click.
    pub line: Option<&'a str>,
}

/// `/convoy help`, generated from the command table.
pub fn render_help(prefix: &str) -> String {
    let mut context = TeraContext::new();
    context.insert("prefix", prefix);
    context.insert("commands", &command_rows(prefix));
    render("help.md", &context)
}

/// The reply explaining a rejection and what would work instead.
pub fn render_rejection(rejection: &Rejection, input: ReplyInput<'_>) -> String {
    let mut context = TeraContext::new();
    context.insert("prefix", input.prefix);
    context.insert("help_command", &format!("{} help", input.prefix));
    context.insert("line", &input.line);
    let template = match rejection {
        Rejection::Parse(ParseError::MissingCommand) => {
            context.insert("missing", &true);
            context.insert("commands", &command_rows(input.prefix));
            "unknown_command.md"
        }
        Rejection::Parse(ParseError::UnknownCommand { name, suggestion }) => {
            context.insert("missing", &false);
            context.insert("name", name);
            context.insert(
                "suggested",
                &suggestion.map(|s| corrected_command(input, name, s)),
            );
            context.insert("commands", &command_rows(input.prefix));
            "unknown_command.md"
        }
        Rejection::Parse(error) => {
            context.insert("error", &ArgumentsView::new(error, input.prefix));
            "invalid_arguments.md"
        }
        Rejection::Invalid(ValidationError::UnknownNames { unknown, valid }) => {
            let listed = &unknown[..unknown.len().min(MAX_LISTED_NAMES)];
            context.insert("unknown", listed);
            context.insert("unknown_more", &(unknown.len() - listed.len()));
            context.insert(
                "valid",
                &valid
                    .iter()
                    .map(|v| ValidView {
                        kind: v.kind.label(),
                        shown: v.names.iter().take(MAX_LISTED_NAMES).cloned().collect(),
                        more: v.names.len().saturating_sub(MAX_LISTED_NAMES),
                    })
                    .collect::<Vec<_>>(),
            );
            context.insert("corrected", &input.line.and_then(|l| corrected(l, unknown)));
            "unknown_name.md"
        }
        Rejection::Refused(refusal) => {
            context.insert("refusal", &RefusalView::new(refusal, input.prefix));
            "permission_refused.md"
        }
        Rejection::NotApplicable(na) => {
            context.insert("command", &format!("{} {}", input.prefix, na.verb.name()));
            context.insert("reason", &na.reason.text());
            "not_applicable.md"
        }
    };
    render(template, &context)
}

/// What convoy tells a commenter about a command it read: why it was not
/// carried out (beyond a [`Rejection`]), or what a command with wide effects
/// did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// The engine (or runtime) declined: the rollout's state does not allow
    /// it, e.g. "nothing to retry: no failed steps".
    NotDone {
        reason: String,
    },
    /// Carrying it out failed (database, GitHub): worth another try.
    Failed {
        reason: String,
    },
    /// A merged pull request without a rollout.
    NoRollout,
    /// This convoy cannot do it (no preflight or drift support configured).
    Unavailable {
        reason: String,
    },
    /// A rollback started as its own rollout.
    RolledBack {
        rollout: String,
        url: Option<String>,
    },
    /// `freeze` applied to `count` rollouts; `until` already formatted.
    Frozen {
        count: usize,
        until: Option<String>,
        reason: Option<String>,
    },
    Unfrozen {
        count: usize,
    },
    /// `/convoy status` when no reporter refreshes the comment.
    Status {
        rollout: String,
        state: String,
        url: Option<String>,
        steps: usize,
        succeeded: usize,
        failed: usize,
    },
}

impl Notice {
    /// What the audit log says of the command it answers: the state of
    /// the rollout or an error failed it; a missing rollout or capability
    /// refused it; the rest were carried out.
    pub fn outcome(&self) -> super::dispatch::Outcome {
        use super::dispatch::Outcome;
        match self {
            Notice::NotDone { reason } | Notice::Failed { reason } => {
                Outcome::Failed(reason.clone())
            }
            Notice::Unavailable { reason } => Outcome::Refused(reason.clone()),
            Notice::NoRollout => Outcome::Refused("this pull request has no rollout".into()),
            Notice::RolledBack { .. }
            | Notice::Frozen { .. }
            | Notice::Unfrozen { .. }
            | Notice::Status { .. } => Outcome::Accepted,
        }
    }

    /// Whether the command it answers counts as refused or failed (😕).
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            Notice::NotDone { .. }
                | Notice::Failed { .. }
                | Notice::NoRollout
                | Notice::Unavailable { .. }
        )
    }
}

/// The reply for a notice about `command` (the line as written, or the
/// command a button stands for).
pub fn render_notice(notice: &Notice, prefix: &str, command: &str) -> String {
    let mut context = TeraContext::new();
    context.insert("notice", notice);
    context.insert("command", command);
    context.insert("help_command", &format!("{prefix} help"));
    context.insert("unfreeze_command", &format!("{prefix} unfreeze"));
    render("notice.md", &context)
}

fn render(template: &str, context: &TeraContext) -> String {
    let rendered = match &*ENGINE {
        Ok(tera) => tera.render(template, context).map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    match rendered {
        Ok(text) => tidy(&text),
        // The templates are embedded and every one is rendered in tests, so
        // this is a bug; say something rather than nothing.
        Err(error) => {
            tracing::error!(template, %error, "rendering a command reply failed");
            "convoy could not render its reply; the error is in its log.\n".to_owned()
        }
    }
}

/// A Markdown code span holding `text` literally: newlines become spaces,
/// long text is shortened, and the backtick fence is longer than any run of
/// backticks inside.
pub fn code_span(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let mut shown: String = flat.chars().take(MAX_QUOTED).collect();
    if flat.chars().count() > MAX_QUOTED {
        shown.push('…');
    }
    let longest_run = shown.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run + 1);
    if shown.is_empty() {
        return "` `".to_owned();
    }
    let pad = if shown.starts_with('`') || shown.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{shown}{pad}{fence}")
}

#[derive(Serialize)]
struct CommandRow {
    name: &'static str,
    /// `/convoy retry [ENV…|failed]`.
    syntax: String,
    /// The same with `|` escaped, for a Markdown table cell.
    syntax_in_table: String,
    access: &'static str,
    summary: &'static str,
}

fn command_rows(prefix: &str) -> Vec<CommandRow> {
    COMMANDS
        .iter()
        .map(|spec| {
            let syntax = format!("{prefix} {}", spec.syntax());
            CommandRow {
                name: spec.name,
                syntax_in_table: syntax.replace('|', "\\|"),
                syntax,
                access: spec.access.label(),
                summary: spec.summary,
            }
        })
        .collect()
}

fn usage(verb: Verb, prefix: &str) -> String {
    format!("{prefix} {}", verb.spec().syntax())
}

#[derive(Serialize)]
struct ArgumentsView {
    kind: &'static str,
    /// `/convoy retry`.
    command: String,
    usage: String,
    summary: &'static str,
    argument: Option<&'static str>,
    /// At most [`MAX_LISTED_NAMES`] of them; `extra_more` counts the rest.
    extra: Vec<String>,
    extra_more: usize,
    keyword: Option<&'static str>,
    input: Option<String>,
    message: Option<String>,
    limit: Option<usize>,
}

impl ArgumentsView {
    fn new(error: &ParseError, prefix: &str) -> Self {
        let verb = match error {
            ParseError::MissingArgument { verb, .. }
            | ParseError::UnexpectedArguments { verb, .. }
            | ParseError::KeywordWithNames { verb, .. }
            | ParseError::InvalidDuration { verb, .. } => Some(*verb),
            ParseError::MissingCommand
            | ParseError::UnknownCommand { .. }
            | ParseError::TooManyCommands { .. } => None,
        };
        let mut view = ArgumentsView {
            kind: "",
            command: verb
                .map(|v| format!("{prefix} {}", v.name()))
                .unwrap_or_default(),
            usage: verb.map(|v| usage(v, prefix)).unwrap_or_default(),
            summary: verb.map(|v| v.spec().summary).unwrap_or_default(),
            argument: None,
            extra: Vec::new(),
            extra_more: 0,
            keyword: None,
            input: None,
            message: None,
            limit: None,
        };
        match error {
            ParseError::MissingArgument { argument, .. } => {
                view.kind = "missing_argument";
                view.argument = Some(argument);
            }
            ParseError::UnexpectedArguments { extra, .. } => {
                view.kind = "unexpected_arguments";
                view.extra = extra.iter().take(MAX_LISTED_NAMES).cloned().collect();
                view.extra_more = extra.len() - view.extra.len();
            }
            ParseError::KeywordWithNames { keyword, .. } => {
                view.kind = "keyword_with_names";
                view.keyword = Some(keyword);
            }
            ParseError::InvalidDuration { input, problem, .. } => {
                view.kind = "invalid_duration";
                view.input = Some(input.clone());
                view.message = Some(problem.to_string());
            }
            ParseError::TooManyCommands { limit } => {
                view.kind = "too_many_commands";
                view.limit = Some(*limit);
            }
            // Rendered by the unknown-command template; kept total here.
            ParseError::MissingCommand | ParseError::UnknownCommand { .. } => {
                view.kind = "unknown_command";
            }
        }
        view
    }
}

#[derive(Serialize)]
struct ValidView {
    kind: &'static str,
    shown: Vec<String>,
    more: usize,
}

#[derive(Serialize)]
struct RefusalView {
    kind: &'static str,
    command: String,
    /// `@login` when the login looks like a GitHub login, else `None`.
    mention: Option<String>,
    have: Option<&'static str>,
    approvers: Vec<String>,
}

impl RefusalView {
    fn new(refusal: &Refusal, prefix: &str) -> Self {
        let (kind, verb, user, have, approvers) = match refusal {
            Refusal::NeedsWrite { verb, user, have } => {
                ("needs_write", *verb, user, Some(*have), Vec::new())
            }
            Refusal::NotAnApprover {
                verb,
                user,
                approvers,
            } => ("not_an_approver", *verb, user, None, approvers.clone()),
            Refusal::SelfApproval { verb, user } => {
                ("self_approval", *verb, user, None, Vec::new())
            }
        };
        RefusalView {
            kind,
            command: format!("{prefix} {}", verb.name()),
            mention: mention(user),
            have: have.map(Permission::label),
            approvers,
        }
    }
}

/// GitHub logins are ASCII letters, digits and single hyphens; anything else
/// is not mentioned (it could be markup).
pub fn mention(login: &str) -> Option<String> {
    let plausible = !login.is_empty()
        && login.len() <= 39
        && login.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    plausible.then(|| format!("@{login}"))
}

/// The command line with its unknown command word replaced by `suggestion`,
/// arguments kept; just the command when the line is not known.
fn corrected_command(input: ReplyInput<'_>, name: &str, suggestion: &str) -> String {
    let rest = input
        .line
        .and_then(|line| line.trim_start().strip_prefix(input.prefix.trim()))
        .and_then(|rest| rest.trim_start().strip_prefix(name));
    match rest {
        Some(rest) => format!("{} {suggestion}{rest}", input.prefix),
        None => format!("{} {suggestion}", input.prefix),
    }
}

/// The command line with every unknown name replaced by its suggestion, when
/// every unknown name has one.
fn corrected(line: &str, unknown: &[super::validate::UnknownName]) -> Option<String> {
    if unknown.is_empty() || unknown.iter().any(|u| u.suggestion.is_none()) {
        return None;
    }
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|word| {
            unknown
                .iter()
                .find(|u| u.name == word)
                .and_then(|u| u.suggestion.as_deref())
                .unwrap_or(word)
        })
        .collect();
    Some(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_survive_backticks_and_newlines() {
        assert_eq!(code_span("abc"), "`abc`");
        assert_eq!(code_span("a`b"), "``a`b``");
        assert_eq!(code_span("`x"), "`` `x ``");
        assert_eq!(code_span("a\nb"), "`a b`");
        assert_eq!(code_span(""), "` `");
        let long = "x".repeat(500);
        assert_eq!(code_span(&long).chars().count(), MAX_QUOTED + 3);
    }

    #[test]
    fn mentions_only_plausible_logins() {
        assert_eq!(mention("alice-b"), Some("@alice-b".into()));
        assert_eq!(mention("evil[bot]"), None);
        assert_eq!(mention("a b"), None);
        assert_eq!(mention(""), None);
    }

    /// Golden replies for every notice (review with `cargo insta review`).
    #[test]
    fn notices() {
        let cases = [
            (
                "not_done",
                Notice::NotDone {
                    reason: "nothing to retry: no failed steps".into(),
                },
                "/convoy retry",
            ),
            (
                "failed",
                Notice::Failed {
                    reason: "database error: disk full".into(),
                },
                "/convoy pause",
            ),
            ("no_rollout", Notice::NoRollout, "/convoy abort"),
            (
                "unavailable",
                Notice::Unavailable {
                    reason: "preflight checks are not set up in this convoy".into(),
                },
                "/convoy plan",
            ),
            (
                "rolled_back",
                Notice::RolledBack {
                    rollout: "20261126-abc".into(),
                    url: Some("https://convoy.example.com/rollouts/20261126-abc".into()),
                },
                "/convoy rollback acme-eu",
            ),
            (
                "frozen_until",
                Notice::Frozen {
                    count: 2,
                    until: Some("2026-11-26 10:00 UTC".into()),
                    reason: Some("incident `4711` @here".into()),
                },
                "/convoy freeze 2h incident `4711` @here",
            ),
            (
                "frozen_open_ended",
                Notice::Frozen {
                    count: 1,
                    until: None,
                    reason: None,
                },
                "/convoy freeze",
            ),
            (
                "unfrozen",
                Notice::Unfrozen { count: 1 },
                "/convoy unfreeze",
            ),
            (
                "status",
                Notice::Status {
                    rollout: "20261126-abc".into(),
                    state: "halted".into(),
                    url: None,
                    steps: 30,
                    succeeded: 27,
                    failed: 3,
                },
                "/convoy status",
            ),
        ];
        for (name, notice, line) in cases {
            insta::assert_snapshot!(
                format!("notice_{name}"),
                render_notice(&notice, "/convoy", line)
            );
        }
    }

    #[test]
    fn problems_are_the_notices_that_refuse_or_fail() {
        assert!(Notice::NoRollout.is_problem());
        assert!(
            Notice::NotDone {
                reason: String::new()
            }
            .is_problem()
        );
        assert!(!Notice::Unfrozen { count: 1 }.is_problem());
        for notice in [
            Notice::NoRollout,
            Notice::Failed { reason: "x".into() },
            Notice::Unfrozen { count: 2 },
        ] {
            assert_eq!(notice.is_problem(), !notice.outcome().is_accepted());
        }
    }

    #[test]
    fn tidy_collapses_blank_runs() {
        assert_eq!(tidy("\n a  \n\n\n\nb\n\n"), "a\n\nb\n");
    }
}

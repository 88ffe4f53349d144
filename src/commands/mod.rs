//! Slash commands and check-run buttons, the pure part: the command table
//! (which also generates `/convoy help`), a Markdown-aware parser, argument
//! validation against a rollout, the authorization decision, which comments
//! are read at all, button identifiers, and the replies. No I/O here: the
//! edge looks facts up on GitHub, asks these functions, and acts.
//!
//! The flow for one comment, as the edge is meant to run it:
//! 1. [`comment_place`] (or [`comment_place_from_payload`]) — is this
//!    delivery a command comment at all? If so, react [`Reaction::Eyes`].
//! 2. [`parse_comment`] — the command lines, in order (typed errors).
//! 3. per command: [`precheck`] ([`applicable`] at the venue, [`validate`]
//!    against the rollout's names), then [`teams_to_check`] → look up →
//!    [`authorize`].
//! 4. any [`Rejection`] → [`Reaction::Confused`] and [`render_rejection`];
//!    `help` → [`render_help`]; done → [`Reaction::Rocket`].
//!
//! A button click skips 1–2: [`command_for_action`] gives the command, and
//! 3–4 are the same.
//!
//! [`action_for`] turns an accepted command into the work to do, and
//! [`TtlCache`] keeps looked-up permissions for at most 60 s. The edge that
//! runs all this is `crate::runtime::commands`.

pub mod auth;
pub mod buttons;
pub mod cache;
pub mod command;
pub mod comment;
pub mod dispatch;
pub mod parse;
pub mod reply;
pub mod table;
pub mod validate;

pub use auth::{
    Approver, AuthInput, Decision, Permission, Refusal, TeamRef, authorize, teams_to_check,
};
pub use buttons::{Button, ButtonError, button_for, command_for_action};
pub use cache::TtlCache;
pub use command::{Command, RetryTarget, RollbackTarget};
pub use comment::{
    CommentFacts, CommentPlace, DRIFT_LABEL, Ignored, Reaction, comment_place,
    comment_place_from_payload, is_bot,
};
pub use dispatch::{Action, Outcome, action_for, check_run_location, comment_location, context_of};
pub use parse::{
    DurationProblem, MAX_COMMANDS_PER_COMMENT, ParseError, ParsedLine, parse_comment, parse_line,
};
pub use reply::{
    Notice, Rejection, ReplyInput, code_span, render_help, render_notice, render_rejection,
};
pub use table::{Access, ArgShape, ButtonSpec, COMMANDS, CommandSpec, Verb};
pub use validate::{
    Context, NameKind, NotApplicable, NotApplicableReason, UnknownName, ValidNames,
    ValidationError, Venue, applicable, precheck, validate,
};

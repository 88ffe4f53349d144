//! Checking a parsed command against the rollout it acts on, and where a
//! command makes sense at all. Pure.

use serde::Serialize;

use crate::domain::{EnvName, ServiceName, WaveName};
use crate::plan::model::Plan;

use super::command::{Command, RetryTarget, RollbackTarget};
use super::table::Verb;

/// The names a command may use: those of the rollout it acts on (or, on the
/// drift issue, of the repository's `convoy.yml`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    pub environments: Vec<EnvName>,
    pub waves: Vec<WaveName>,
    pub services: Vec<ServiceName>,
}

impl Context {
    /// The environments, waves and affected services of a plan.
    pub fn from_plan(plan: &Plan) -> Self {
        Context {
            environments: plan
                .waves
                .iter()
                .flat_map(|w| w.environments.iter().cloned())
                .collect(),
            waves: plan.waves.iter().map(|w| w.name.clone()).collect(),
            services: plan.affected_services.clone(),
        }
    }
}

/// What kind of name was not found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NameKind {
    Environment,
    Wave,
    Service,
}

impl NameKind {
    pub fn label(self) -> &'static str {
        match self {
            NameKind::Environment => "environment",
            NameKind::Wave => "wave",
            NameKind::Service => "service",
        }
    }
}

/// A name the command used that this rollout does not have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnknownName {
    pub kind: NameKind,
    pub name: String,
    /// The closest valid name, when one is close enough to be a typo.
    pub suggestion: Option<String>,
}

/// The valid names of one kind, for the reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ValidNames {
    pub kind: NameKind,
    pub names: Vec<String>,
}

/// Why a well-formed command does not fit the rollout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{}", describe_unknown(unknown))]
    UnknownNames {
        /// Every unknown name, in the order typed.
        unknown: Vec<UnknownName>,
        /// For each kind that had an unknown name, the valid ones.
        valid: Vec<ValidNames>,
    },
}

fn describe_unknown(unknown: &[UnknownName]) -> String {
    unknown
        .iter()
        .map(|u| format!("unknown {} `{}`", u.kind.label(), u.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A name differing only in case, else the closest by edit distance.
fn suggest(name: &str, known: &[&str]) -> Option<String> {
    known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name))
        .copied()
        .or_else(|| closest_or_swapped(&name.to_lowercase(), known.iter().copied()))
        .map(str::to_owned)
}

/// The closest candidate by plain edit distance, else by edit distance with
/// a swap of neighbouring letters as one edit (`retyr` for `retry`, the
/// most common typo). Plain distance goes first so that one substituted
/// letter (`acme-ue` → `acme-us`) beats a swap (`acme-eu`). At most a third
/// of the input's length, at least 1; ties go to the earliest candidate.
pub(crate) fn closest_or_swapped<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str> + Clone,
{
    let limit = (input.chars().count() / 3).max(1);
    let best = |distance: fn(&str, &str) -> usize| {
        candidates
            .clone()
            .into_iter()
            .map(|c| (distance(input, c), c))
            .filter(|(d, _)| *d <= limit)
            .min_by_key(|(d, _)| *d)
            .map(|(_, c)| c)
    };
    best(strsim::levenshtein).or_else(|| best(strsim::osa_distance))
}

/// Checks every environment, wave and service the command names against the
/// context. Keywords (`retry failed`, `rollback all`) and defaults need no
/// names and always pass: the engine decides what they cover.
pub fn validate(command: &Command, context: &Context) -> Result<(), ValidationError> {
    let mut unknown = Vec::new();
    let mut check = |kind: NameKind, name: &str, known: &[&str]| {
        if !known.contains(&name) {
            unknown.push(UnknownName {
                kind,
                name: name.to_owned(),
                suggestion: suggest(name, known),
            });
        }
    };
    let envs: Vec<&str> = context.environments.iter().map(EnvName::as_str).collect();
    let waves: Vec<&str> = context.waves.iter().map(WaveName::as_str).collect();
    let services: Vec<&str> = context.services.iter().map(ServiceName::as_str).collect();
    match command {
        Command::Retry {
            target: RetryTarget::Environments(names),
        }
        | Command::Rollback {
            target: RollbackTarget::Environments(names),
        }
        | Command::Skip {
            environments: names,
        } => {
            for name in names {
                check(NameKind::Environment, name.as_str(), &envs);
            }
        }
        Command::Approve { wave: Some(wave) } => check(NameKind::Wave, wave.as_str(), &waves),
        Command::Adopt {
            environment,
            service,
        } => {
            check(NameKind::Environment, environment.as_str(), &envs);
            if let Some(service) = service {
                check(NameKind::Service, service.as_str(), &services);
            }
        }
        Command::Resync { environment } => {
            check(NameKind::Environment, environment.as_str(), &envs)
        }
        Command::Help
        | Command::Status
        | Command::Plan
        | Command::Retry {
            target: RetryTarget::Failed,
        }
        | Command::Rollback {
            target: RollbackTarget::All,
        }
        | Command::Pause
        | Command::Resume
        | Command::Abort
        | Command::Approve { wave: None }
        | Command::Freeze { .. }
        | Command::Unfreeze => {}
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let mut kinds: Vec<NameKind> = unknown.iter().map(|u| u.kind).collect();
    kinds.sort();
    kinds.dedup();
    let valid = kinds
        .into_iter()
        .map(|kind| ValidNames {
            kind,
            names: match kind {
                NameKind::Environment => &envs,
                NameKind::Wave => &waves,
                NameKind::Service => &services,
            }
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        })
        .collect();
    Err(ValidationError::UnknownNames { unknown, valid })
}

/// Where a command was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Venue {
    /// An open pull request: only its preflight exists.
    OpenPullRequest,
    /// A merged pull request: commands act on the latest rollout of its
    /// merge commit.
    MergedPullRequest,
    /// Closed without merging: nothing to steer.
    ClosedPullRequest,
    /// The repository's drift tracking issue (label `convoy-drift`).
    DriftIssue,
}

/// Why a valid command does nothing here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{}` {}", verb.name(), reason.text())]
pub struct NotApplicable {
    pub verb: Verb,
    pub reason: NotApplicableReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotApplicableReason {
    /// The pull request is not merged, so there is no rollout yet.
    NoRolloutYet,
    /// `plan` after the merge: the rollout already runs.
    AlreadyMerged,
    /// `plan` anywhere but an open pull request.
    OnlyOpenPullRequests,
    /// The pull request was closed without merging.
    ClosedUnmerged,
    /// Rollout commands on the drift issue.
    DriftIssue,
    /// The engine's own reason, e.g. "the rollout is not paused".
    State(String),
}

impl NotApplicableReason {
    pub fn text(&self) -> String {
        match self {
            NotApplicableReason::NoRolloutYet => {
                "acts on a rollout, and this pull request is not merged yet".into()
            }
            NotApplicableReason::AlreadyMerged => {
                "checks an open pull request, and this one is merged: its rollout is under way"
                    .into()
            }
            NotApplicableReason::OnlyOpenPullRequests => {
                "checks an open pull request; write it on one".into()
            }
            NotApplicableReason::ClosedUnmerged => {
                "has nothing to act on: this pull request was closed without merging".into()
            }
            NotApplicableReason::DriftIssue => {
                "acts on a rollout; write it on the merged pull request instead".into()
            }
            NotApplicableReason::State(text) => text.clone(),
        }
    }
}

/// Whether `verb` makes sense at `venue`. `help`, `freeze` and `unfreeze`
/// (repository-wide) work everywhere; `plan` on open pull requests; drift
/// commands (`adopt`, `resync`) and `status` on merged pull requests and the
/// drift issue; the rest on merged pull requests.
pub fn applicable(verb: Verb, venue: Venue) -> Result<(), NotApplicable> {
    use Venue::*;
    let reason = match (verb, venue) {
        (Verb::Help | Verb::Freeze | Verb::Unfreeze, _) => return Ok(()),
        (Verb::Plan, OpenPullRequest) => return Ok(()),
        (Verb::Plan, MergedPullRequest) => NotApplicableReason::AlreadyMerged,
        (Verb::Plan, _) => NotApplicableReason::OnlyOpenPullRequests,
        (Verb::Status | Verb::Adopt | Verb::Resync, MergedPullRequest | DriftIssue) => {
            return Ok(());
        }
        (_, MergedPullRequest) => return Ok(()),
        (_, OpenPullRequest) => NotApplicableReason::NoRolloutYet,
        (_, ClosedPullRequest) => NotApplicableReason::ClosedUnmerged,
        (_, DriftIssue) => NotApplicableReason::DriftIssue,
    };
    Err(NotApplicable { verb, reason })
}

/// Both checks that need no GitHub lookup, in the order a reply should
/// report them: does the command apply at this venue, and do its names exist
/// in the context.
pub fn precheck(
    command: &Command,
    venue: Venue,
    context: &Context,
) -> Result<(), super::reply::Rejection> {
    applicable(command.verb(), venue)?;
    validate(command, context)?;
    Ok(())
}

//! What a rollout looks like on GitHub: the PR comment (SPEC 7.3) and the
//! `convoy/rollout` check run (SPEC 7.2). Pure: a stored rollout in,
//! Markdown and a check-run body out; the same input always gives the same
//! bytes, so the transport can drop unchanged bodies by digest.
//!
//! Size: GitHub refuses a comment or check-run output over 65,535 bytes.
//! The body is rendered at the most detailed level first and, while it does
//! not fit, again at a more folded one: successes become counts, then
//! waiting steps become counts and failures are grouped by error with
//! shortened messages. Every failed environment stays listed with the
//! commands that recover it, and the text says what was folded.

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tera::{Context as TeraContext, Tera};

use crate::commands::{Command, RetryTarget, RollbackTarget, button_for};
use crate::domain::{EnvName, WaveName};
use crate::engine::{self, Rollout, RolloutState, RolloutView, StepState, Waiting};
use crate::github::limits::{CHECK_RUN_OUTPUT_MAX_BYTES, check_actions, truncate_bytes};
use crate::github::types::{
    Annotation, AnnotationLevel, CheckRunAction, CheckRunConclusion, CheckRunOutput,
    CheckRunStatus, NewCheckRun,
};
use crate::plan::render::format_percent;
use crate::store::{RolloutKind, RolloutRecord};

use super::text::{code, inline, plural, short_sha, thousands};

/// The check run every rollout gets on its commit.
pub const ROLLOUT_CHECK: &str = "convoy/rollout";
/// The check run of a rollback (a rollout of its own on the same commit).
pub const ROLLBACK_CHECK: &str = "convoy/rollback";
/// The check run of a resync.
pub const RESYNC_CHECK: &str = "convoy/resync";

/// GitHub's limit, with room for the tidy-up and a final newline.
pub const BODY_LIMIT: usize = CHECK_RUN_OUTPUT_MAX_BYTES - 64;

const TEMPLATES: [(&str, &str); 9] = [
    (
        "comment.md",
        include_str!("../../templates/report/comment.md"),
    ),
    (
        "rollout_summary.md",
        include_str!("../../templates/report/rollout_summary.md"),
    ),
    (
        "rollout_text.md",
        include_str!("../../templates/report/rollout_text.md"),
    ),
    (
        "preflight_summary.md",
        include_str!("../../templates/report/preflight_summary.md"),
    ),
    (
        "preflight_text.md",
        include_str!("../../templates/report/preflight_text.md"),
    ),
    (
        "partials/header.md",
        include_str!("../../templates/report/partials/header.md"),
    ),
    (
        "partials/waves.md",
        include_str!("../../templates/report/partials/waves.md"),
    ),
    (
        "partials/details.md",
        include_str!("../../templates/report/partials/details.md"),
    ),
    (
        "partials/next.md",
        include_str!("../../templates/report/partials/next.md"),
    ),
];

static ENGINE: LazyLock<Result<Tera, String>> = LazyLock::new(|| {
    let mut tera = Tera::default();
    tera.autoescape_on(Vec::<&str>::new());
    tera.add_raw_templates(TEMPLATES)
        .map_err(|e| format!("report templates: {e}"))?;
    Ok(tera)
});

/// Renders an embedded template. The templates are rendered in every state
/// by the snapshot tests, so a failure here is a bug: it is logged and a
/// short apology is shown instead of nothing.
pub(crate) fn render_template(name: &str, context: &TeraContext) -> String {
    let rendered = match &*ENGINE {
        Ok(tera) => tera.render(name, context).map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    match rendered {
        Ok(text) => tidy(&text),
        Err(error) => {
            tracing::error!(template = name, %error, "rendering a report failed");
            "convoy could not render this report; the error is in its log.\n".to_owned()
        }
    }
}

/// Trailing spaces off every line, at most one blank line in a row, one
/// final newline: the templates can be laid out for reading.
pub(crate) fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.trim().lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Drift notes (skipped or overwritten steps) shown in the comment at most.
const MAX_DRIFT_NOTES: usize = 5;

/// Steps whose drift `on_drift` skipped or overwrote, one line each (one
/// more than shown, to know there are more).
fn drift_notes(r: &engine::Rollout) -> Vec<String> {
    let line = |s: &engine::StepRun| {
        let note = s.note.as_deref()?;
        let drift = note.starts_with("skipped: drifted") || note.starts_with("overwrote drift");
        drift.then(|| {
            format!(
                "{} {}: {}",
                code(s.environment.as_str()),
                code(s.service.as_str()),
                inline(note, 300)
            )
        })
    };
    r.steps()
        .filter_map(line)
        .take(MAX_DRIFT_NOTES + 1)
        .collect()
}

/// Where links point and how commands are written.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// `server.public_url`, without a trailing slash.
    pub public_url: String,
    /// `github.command_prefix`, e.g. `/convoy`.
    pub prefix: String,
}

impl RenderOptions {
    pub fn rollout_url(&self, id: &str) -> String {
        format!("{}/rollouts/{id}", self.public_url.trim_end_matches('/'))
    }
}

/// Everything a rollout shows on GitHub.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutReport {
    /// The PR comment, hidden marker first.
    pub comment: String,
    pub check_run: NewCheckRun,
}

impl RolloutReport {
    /// The check run ended with `action_required` (a human must act).
    pub fn action_required(&self) -> bool {
        self.check_run.conclusion == Some(CheckRunConclusion::ActionRequired)
    }
}

/// The hidden marker that finds a rollout's comment again.
pub fn comment_marker(id: &str) -> String {
    format!("<!-- convoy:rollout:{id} -->")
}

/// The check-run name of a rollout of this kind.
pub fn check_run_name(kind: &RolloutKind) -> &'static str {
    match kind {
        RolloutKind::Deploy => ROLLOUT_CHECK,
        RolloutKind::Rollback => ROLLBACK_CHECK,
        RolloutKind::Resync => RESYNC_CHECK,
    }
}

/// How much detail a body carries; each level folds more than the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// Everything: succeeded environments listed, each failure in full.
    Full,
    /// Succeeded environments as counts.
    FoldSuccesses,
    /// Also waiting steps as counts; failures one table row each, errors
    /// cut to 100 characters, with commands that recover them all.
    Compact,
    /// Errors cut to 40 characters.
    Tight,
    /// Failed environments by name only, in one list, with the commands.
    NamesOnly,
}

const LEVELS: [Level; 5] = [
    Level::Full,
    Level::FoldSuccesses,
    Level::Compact,
    Level::Tight,
    Level::NamesOnly,
];

impl Level {
    fn error_chars(self) -> usize {
        match self {
            Level::Full | Level::FoldSuccesses => 500,
            Level::Compact => 100,
            Level::Tight | Level::NamesOnly => 40,
        }
    }
    fn waiting_items(self) -> usize {
        match self {
            Level::Full => 20,
            Level::FoldSuccesses => 10,
            _ => 0,
        }
    }
}

#[derive(Serialize, Clone, Debug)]
struct WaveRow {
    name: String,
    state: String,
    done: String,
    in_progress: String,
    failed: String,
    pending: String,
    skipped: String,
    budget: String,
}

#[derive(Serialize, Clone, Debug)]
struct FailedStep {
    service: String,
    error: String,
    attempts: u32,
}

#[derive(Serialize, Clone, Debug)]
struct Failure {
    environment: String,
    steps: Vec<FailedStep>,
    commands: Vec<String>,
}

/// One failed environment as a table row (folded levels).
#[derive(Serialize, Clone, Debug)]
struct FailureRow {
    environment: String,
    services: String,
    error: String,
}

#[derive(Serialize, Clone, Debug)]
struct WaitGroup {
    label: String,
    count: String,
    /// Some of the steps, joined; empty at folded levels.
    items: String,
    more: usize,
}

#[derive(Serialize, Clone, Debug)]
struct SuccessList {
    /// Plain (for inside `<summary>`, where Markdown does not render);
    /// wave names are validated to `[a-z0-9._-]`-like characters, and
    /// defused anyway.
    wave: String,
    count: String,
    environments: String,
}

#[derive(Serialize, Clone, Debug)]
struct NextStep {
    command: String,
    what: String,
}

#[derive(Serialize, Clone, Debug)]
struct RiskFacts {
    sentence: String,
    riskiest: String,
}

/// The template context of a rollout, at one level of detail.
#[derive(Serialize, Clone, Debug)]
struct Ctx {
    id: String,
    marker: String,
    emoji: &'static str,
    headline: String,
    state: &'static str,
    commit: String,
    short_commit: String,
    /// As code.
    branch: String,
    kind: &'static str,
    parent: Option<String>,
    pull_request: Option<u64>,
    url: String,
    notices: Vec<String>,
    risk: Option<RiskFacts>,
    /// The errors, one a line, for a fenced block.
    config_errors: String,
    config_errors_more: usize,
    waves: Vec<WaveRow>,
    show_skipped: bool,
    total: String,
    failed_environments: String,
    failures: Vec<Failure>,
    failure_rows: Vec<FailureRow>,
    /// Failed environments by name only (the most folded level).
    failed_names: String,
    /// Commands that recover every failed environment at once (folded
    /// levels), one per code block so each copies on its own.
    bulk_commands: Vec<String>,
    waiting: Vec<WaitGroup>,
    successes: Vec<SuccessList>,
    folded: Option<String>,
    next_steps: Vec<NextStep>,
}

/// The rollout's comment and check run, each within GitHub's limits.
/// `rollout`: the engine state (`None` when the rollout failed before it
/// was planned; `record.error` then says why).
pub fn render_rollout(
    record: &RolloutRecord,
    rollout: Option<&Rollout>,
    opts: &RenderOptions,
) -> RolloutReport {
    let view = rollout.map(engine::view);
    let facts = Facts::new(record, rollout, view.as_ref(), opts);

    let comment = fit(|level| {
        let ctx = facts.context(level);
        render_template(
            "comment.md",
            &TeraContext::from_serialize(&ctx).unwrap_or_default(),
        )
    });
    let summary = fit(|level| {
        let ctx = facts.context(level);
        render_template(
            "rollout_summary.md",
            &TeraContext::from_serialize(&ctx).unwrap_or_default(),
        )
    });
    let text = fit(|level| {
        let ctx = facts.context(level);
        render_template(
            "rollout_text.md",
            &TeraContext::from_serialize(&ctx).unwrap_or_default(),
        )
    });
    RolloutReport {
        comment,
        check_run: facts.check_run(summary, text),
    }
}

/// The most detailed rendering that fits, else the last one cut (with a
/// visible note) at the limit.
fn fit(render: impl Fn(Level) -> String) -> String {
    let mut last = String::new();
    for level in LEVELS {
        last = render(level);
        if last.len() <= BODY_LIMIT {
            return last;
        }
    }
    truncate_bytes(&last, BODY_LIMIT)
}

/// (service, error, attempts) of a failed step.
type FailedStepFacts = (String, String, u32);

/// What every level shares, computed once.
struct Facts<'a> {
    record: &'a RolloutRecord,
    rollout: Option<&'a Rollout>,
    view: Option<&'a RolloutView>,
    opts: &'a RenderOptions,
    state: RolloutState,
    /// Environments where a step was attempted (SPEC 6.8: the ones a
    /// rollback may touch).
    touched: HashSet<EnvName>,
}

fn parse_state(s: &str) -> RolloutState {
    match s {
        "queued" => RolloutState::Queued,
        "running" => RolloutState::Running,
        "awaiting_approval" => RolloutState::AwaitingApproval,
        "frozen" => RolloutState::Frozen,
        "paused" => RolloutState::Paused,
        "halted" => RolloutState::Halted,
        "succeeded" => RolloutState::Succeeded,
        "aborted" => RolloutState::Aborted,
        "superseded" => RolloutState::Superseded,
        "noop" => RolloutState::Noop,
        _ => RolloutState::Failed,
    }
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

impl<'a> Facts<'a> {
    fn new(
        record: &'a RolloutRecord,
        rollout: Option<&'a Rollout>,
        view: Option<&'a RolloutView>,
        opts: &'a RenderOptions,
    ) -> Self {
        let state = rollout
            .map(|r| r.state)
            .unwrap_or_else(|| parse_state(&record.state));
        let touched = rollout
            .map(|r| r.touched_environments().into_iter().collect())
            .unwrap_or_default();
        Facts {
            record,
            rollout,
            view,
            opts,
            state,
            touched,
        }
    }

    fn url(&self) -> String {
        self.opts.rollout_url(self.record.id.as_str())
    }

    fn line(&self, c: &Command) -> String {
        c.to_line(&self.opts.prefix)
    }

    fn environment_count(&self) -> usize {
        self.rollout.map(|r| r.environments().len()).unwrap_or(0)
    }

    fn approval_wave(&self) -> Option<&'a WaveName> {
        let r = self.rollout?;
        engine::waiting_for_approval(r).and_then(|w| r.waves.get(w).map(|w| &w.name))
    }

    fn counts(&self) -> engine::view::StepCounts {
        self.view.map(|v| v.counts.clone()).unwrap_or_default()
    }

    /// Emoji, headline and the check run's title.
    fn headline(&self) -> (&'static str, String, String) {
        let sha = code(short_sha(self.record.commit.as_str()));
        let counts = self.counts();
        let envs = plural(self.environment_count(), "environment", "environments");
        let what = match self.record.kind {
            RolloutKind::Deploy => "Rollout",
            RolloutKind::Rollback => "Rollback",
            RolloutKind::Resync => "Resync",
        };
        let done = format!(
            "{}/{} steps done",
            thousands(counts.succeeded + counts.skipped),
            thousands(counts.total)
        );
        let r = self.rollout;
        match self.state {
            RolloutState::Queued => (
                "⏳",
                format!("{what} of {sha} is queued behind an earlier rollout of this branch"),
                "Queued".into(),
            ),
            RolloutState::Running => {
                let wave = r
                    .and_then(|r| r.waves.get(r.current_wave))
                    .map(|w| format!(", wave {} running", code(w.name.as_str())))
                    .unwrap_or_default();
                (
                    "🚀",
                    format!("{what} of {sha} to {envs} in progress{wave}"),
                    format!("Running: {done}"),
                )
            }
            RolloutState::AwaitingApproval => {
                let wave = self
                    .approval_wave()
                    .map(|w| code(w.as_str()))
                    .unwrap_or_else(|| "the next wave".into());
                (
                    "✋",
                    format!("{what} of {sha} waits for approval of wave {wave}"),
                    "Waiting for approval".into(),
                )
            }
            RolloutState::Frozen => {
                let until = r
                    .and_then(|r| r.frozen_until)
                    .map(|t| format!(" until {}", when(&t)))
                    .unwrap_or_default();
                (
                    "🧊",
                    format!("{what} of {sha} waits for a freeze window{until}"),
                    format!("Frozen{until}"),
                )
            }
            RolloutState::Paused => {
                let by = r
                    .and_then(|r| r.paused_by.as_deref())
                    .map(|b| format!(" by {}", code(b)))
                    .unwrap_or_default();
                (
                    "⏸️",
                    format!("{what} of {sha} is paused{by}"),
                    format!("Paused: {done}"),
                )
            }
            RolloutState::Halted => {
                let detail = r
                    .and_then(|r| r.halt.as_ref())
                    .map(|h| {
                        format!(
                            ": wave {} has {} ({} allowed)",
                            code(h.wave.as_str()),
                            plural(h.failed, "failed step", "failed steps"),
                            thousands(h.allowed)
                        )
                    })
                    .unwrap_or_default();
                (
                    "🛑",
                    format!("{what} of {sha} halted{detail}"),
                    format!("Halted: {} failed", plural(counts.failed, "step", "steps")),
                )
            }
            RolloutState::Succeeded => (
                "✅",
                format!("{what} of {sha} to {envs} succeeded"),
                format!("Succeeded: {done}"),
            ),
            RolloutState::Failed if r.is_none() => (
                "❌",
                format!("{what} of {sha} failed before it started: `convoy.yml` is invalid"),
                "convoy.yml is invalid".into(),
            ),
            RolloutState::Failed => (
                "❌",
                format!(
                    "{what} of {sha} failed: {}",
                    plural(counts.failed, "step failed", "steps failed")
                ),
                format!("Failed: {} failed", plural(counts.failed, "step", "steps")),
            ),
            RolloutState::Aborted => {
                let by = r
                    .and_then(|r| r.aborted_by.as_deref())
                    .map(|b| format!(" by {}", code(b)))
                    .unwrap_or_default();
                (
                    "⏹️",
                    format!("{what} of {sha} was aborted{by}"),
                    format!("Aborted: {done}"),
                )
            }
            RolloutState::Superseded => {
                let by = r
                    .and_then(|r| r.superseded_by.as_deref())
                    .map(|b| format!(" by rollout [{b}]({})", self.opts.rollout_url(b)))
                    .unwrap_or_default();
                (
                    "⏭️",
                    format!("{what} of {sha} was superseded{by}"),
                    "Superseded by a newer rollout".into(),
                )
            }
            RolloutState::Noop => (
                "➖",
                format!("Nothing to roll out for {sha}: the change affects no service"),
                "Nothing to roll out".into(),
            ),
        }
    }

    fn notices(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(r) = self.rollout else {
            return out;
        };
        if let Some(f) = &r.emergency_freeze {
            let until = f
                .until
                .map(|t| format!(" until {}", when(&t)))
                .unwrap_or_else(|| " until unfrozen".into());
            let reason = f
                .reason
                .as_deref()
                .map(|x| format!(" ({})", inline(x, 200)))
                .unwrap_or_default();
            out.push(format!(
                "🧊 Emergency freeze by {}{until}{reason}: no new step starts.",
                code(&f.by)
            ));
        }
        if r.state == RolloutState::Frozen
            && let Some(reason) = &r.frozen_reason
        {
            out.push(format!("Freeze window: {}.", inline(reason, 200)));
        }
        if r.state == RolloutState::AwaitingApproval
            && let Some(wave) = self.approval_wave()
        {
            let who = if r.policy.approvers.is_empty() {
                "anyone with write access".to_owned()
            } else {
                r.policy
                    .approvers
                    .iter()
                    .map(|a| code(a))
                    .collect::<Vec<_>>()
                    .join(" or ")
            };
            let mut s = format!("Wave {} needs approval by {who}", code(wave.as_str()));
            if r.policy.forbid_self_approval {
                s.push_str(" (not by the author of the pull request)");
            }
            s.push('.');
            out.push(s);
        }
        if r.auto_rollback_done
            && let Some(h) = &r.halt
        {
            out.push(format!(
                "↩️ `auto_rollback` is on: the environments of wave {} are being rolled back.",
                code(h.wave.as_str())
            ));
        }
        // Drift that `on_drift` skipped or overwrote (SPEC 6.6) is said, not
        // only counted: a failure (halt) is listed with the failures.
        let drift = drift_notes(r);
        if !drift.is_empty() {
            let more = if drift.len() > MAX_DRIFT_NOTES {
                " (and more)"
            } else {
                ""
            };
            out.push(format!(
                "Changed outside convoy{more}: {}",
                drift[..drift.len().min(MAX_DRIFT_NOTES)].join("; ")
            ));
        }
        if self.record.kind == RolloutKind::Rollback
            && let Some(parent) = &self.record.parent
        {
            out.push(format!(
                "Rolls back [rollout {parent}]({}) to the last known good versions. \
                 Act on it with the buttons of its `{ROLLBACK_CHECK}` check run: commands \
                 commented on the pull request act on the rollout it rolls back.",
                self.opts.rollout_url(parent.as_str())
            ));
        }
        out
    }

    fn risk(&self) -> Option<RiskFacts> {
        let r = self.rollout?;
        if r.risk.steps == 0 {
            return None;
        }
        let sentence = format!(
            "{}: {} chance that some step fails on its first attempt; {} that a human is needed (with {})",
            plural(r.risk.steps, "step", "steps"),
            format_percent(r.risk.first_attempt_failure),
            format_percent(r.risk.needs_human),
            plural(r.policy.retries as usize, "retry", "retries"),
        );
        let riskiest = r
            .risk
            .riskiest
            .iter()
            .map(|e| format!("{} {}", code(e.environment.as_str()), format_percent(e.p)))
            .collect::<Vec<_>>()
            .join(", ");
        Some(RiskFacts { sentence, riskiest })
    }

    fn waves(&self) -> (Vec<WaveRow>, bool) {
        let Some(v) = self.view else {
            return (Vec::new(), false);
        };
        let show_skipped = v.counts.skipped + v.counts.rolled_back > 0;
        let rows = v
            .waves
            .iter()
            .map(|w| WaveRow {
                name: code(w.name.as_str()),
                state: wave_state_label(&w.state),
                done: thousands(w.counts.succeeded),
                in_progress: thousands(w.counts.in_progress),
                failed: thousands(w.counts.failed),
                pending: thousands(w.counts.pending),
                skipped: thousands(w.counts.skipped + w.counts.rolled_back),
                budget: thousands(w.failure_budget),
            })
            .collect();
        (rows, show_skipped)
    }

    /// Failed steps per environment, in plan order.
    fn failed_by_env(&self) -> Vec<(EnvName, Vec<FailedStepFacts>)> {
        let Some(v) = self.view else {
            return Vec::new();
        };
        let mut order: Vec<EnvName> = Vec::new();
        let mut by: BTreeMap<EnvName, Vec<FailedStepFacts>> = BTreeMap::new();
        for w in &v.waves {
            for s in w.steps.iter().filter(|s| s.state == StepState::Failed) {
                let entry = by.entry(s.environment.clone()).or_insert_with(|| {
                    order.push(s.environment.clone());
                    Vec::new()
                });
                entry.push((
                    s.service.to_string(),
                    s.error.clone().unwrap_or_else(|| "failed".into()),
                    s.attempts,
                ));
            }
        }
        order
            .into_iter()
            .filter_map(|e| by.remove(&e).map(|steps| (e, steps)))
            .collect()
    }

    /// An environment's recovery commands; a step that failed on drift
    /// (SPEC 6.6) is first offered `adopt` (then retry) and `resync`.
    fn drift_recovery(&self, env: &EnvName, steps: &[FailedStepFacts]) -> Vec<String> {
        let mut out = Vec::new();
        if !self.commands_reach_it() {
            return out;
        }
        if steps
            .iter()
            .any(|(_, error, _)| error.starts_with("drifted:"))
        {
            out.push(self.line(&Command::Adopt {
                environment: env.clone(),
                service: None,
            }));
            out.push(self.line(&Command::Resync {
                environment: env.clone(),
            }));
        }
        out.extend(self.recovery(std::slice::from_ref(env)));
        out
    }

    /// Whether a command commented on the pull request acts on this
    /// rollout. It acts on the pull request's deploy rollout, never on a
    /// rollback of it: a rollback's report offers no commands to type
    /// (they would retry or abort the deploy), only its check run's
    /// buttons, which do reach it.
    fn commands_reach_it(&self) -> bool {
        self.record.kind != RolloutKind::Rollback
    }

    fn recovery(&self, envs: &[EnvName]) -> Vec<String> {
        if !self.commands_reach_it() {
            return Vec::new();
        }
        let mut out = vec![
            self.line(&Command::Retry {
                target: RetryTarget::Environments(envs.to_vec()),
            }),
            self.line(&Command::Skip {
                environments: envs.to_vec(),
            }),
        ];
        // Only environments a step was attempted in can be rolled back; a
        // step that failed because its dependency failed never started.
        let touched: Vec<EnvName> = envs
            .iter()
            .filter(|e| self.touched.contains(*e))
            .cloned()
            .collect();
        if !touched.is_empty() {
            out.push(self.line(&Command::Rollback {
                target: RollbackTarget::Environments(touched),
            }));
        }
        out
    }

    fn waiting(&self, level: Level) -> Vec<WaitGroup> {
        let Some(v) = self.view else {
            return Vec::new();
        };
        let max_items = level.waiting_items();
        let mut groups: Vec<(String, Vec<String>, usize)> = Vec::new();
        for w in &v.waves {
            for s in &w.steps {
                let Some(waiting) = &s.waiting else { continue };
                let step = format!("{}/{}", s.environment, s.service);
                let (label, item) = match waiting {
                    Waiting::Dependency { step: dep } => (
                        "wait for a step they depend on".to_owned(),
                        format!(
                            "{} waits for {}",
                            code(&step),
                            code(&format!("{}/{}", dep.environment, dep.service))
                        ),
                    ),
                    Waiting::Retry { at, attempt } => (
                        "wait to be retried after a transient failure".to_owned(),
                        format!(
                            "{}: attempt {attempt} at {}",
                            code(&step),
                            at.format("%H:%M:%S UTC")
                        ),
                    ),
                    other => (waiting_label(other), code(&step)),
                };
                match groups.iter_mut().find(|g| g.0 == label) {
                    Some(g) => {
                        g.2 += 1;
                        if g.1.len() < max_items {
                            g.1.push(item);
                        }
                    }
                    None => {
                        let items = if max_items > 0 {
                            vec![item]
                        } else {
                            Vec::new()
                        };
                        groups.push((label, items, 1));
                    }
                }
            }
        }
        groups
            .into_iter()
            .map(|(label, items, count)| WaitGroup {
                more: count - items.len(),
                label,
                count: plural(count, "step", "steps"),
                items: items.join(", "),
            })
            .collect()
    }

    fn successes(&self) -> Vec<SuccessList> {
        let Some(v) = self.view else {
            return Vec::new();
        };
        v.waves
            .iter()
            .filter_map(|w| {
                // An environment is done when every one of its steps is.
                let mut envs: Vec<&EnvName> = Vec::new();
                let mut seen: HashSet<&EnvName> = HashSet::new();
                let mut not_done: HashSet<&EnvName> = HashSet::new();
                for s in &w.steps {
                    if s.state == StepState::Succeeded {
                        if seen.insert(&s.environment) {
                            envs.push(&s.environment);
                        }
                    } else {
                        not_done.insert(&s.environment);
                    }
                }
                envs.retain(|e| !not_done.contains(e));
                (!envs.is_empty()).then(|| SuccessList {
                    wave: inline(w.name.as_str(), 100),
                    count: plural(envs.len(), "environment", "environments"),
                    environments: envs
                        .iter()
                        .map(|e| code(e.as_str()))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            })
            .collect()
    }

    fn next_steps(&self) -> Vec<NextStep> {
        let p = |c: Command| self.line(&c);
        let mut out = Vec::new();
        let Some(r) = self.rollout else {
            return out;
        };
        if !self.commands_reach_it() {
            return out;
        }
        let failed = r.steps().any(|s| s.state == StepState::Failed);
        match self.state {
            RolloutState::Halted | RolloutState::Failed if failed => {
                out.push(NextStep {
                    command: p(Command::Retry {
                        target: RetryTarget::Failed,
                    }),
                    what: "retry every failed step and go on".into(),
                });
                if !self.touched.is_empty() {
                    out.push(NextStep {
                        command: p(Command::Rollback {
                            target: RollbackTarget::All,
                        }),
                        what: "deploy the last good versions back wherever this rollout deployed"
                            .into(),
                    });
                }
                if self.state == RolloutState::Halted {
                    out.push(NextStep {
                        command: p(Command::Abort),
                        what: "stop here; nothing new starts".into(),
                    });
                }
            }
            RolloutState::AwaitingApproval => {
                out.push(NextStep {
                    command: p(Command::Approve {
                        wave: self.approval_wave().cloned(),
                    }),
                    what: "release the wave".into(),
                });
                out.push(NextStep {
                    command: p(Command::Abort),
                    what: "stop here; nothing new starts".into(),
                });
            }
            RolloutState::Paused => {
                out.push(NextStep {
                    command: p(Command::Resume),
                    what: "start new steps again".into(),
                });
                out.push(NextStep {
                    command: p(Command::Abort),
                    what: "stop here; nothing new starts".into(),
                });
            }
            _ => {}
        }
        if r.emergency_freeze.is_some() && !self.state.is_terminal() {
            out.push(NextStep {
                command: p(Command::Unfreeze),
                what: "lift the emergency freeze".into(),
            });
        }
        out
    }

    fn config_errors(&self) -> (String, usize) {
        if self.rollout.is_some() {
            return (String::new(), 0);
        }
        let Some(err) = &self.record.error else {
            return (String::new(), 0);
        };
        fenced_lines(err, 100)
    }

    fn context(&self, level: Level) -> Ctx {
        let (emoji, headline, _) = self.headline();
        let (waves, show_skipped) = self.waves();
        let failed = self.failed_by_env();
        let counts = self.counts();
        let mut failures = Vec::new();
        let mut failure_rows = Vec::new();
        let mut failed_names = String::new();
        let mut bulk_commands = Vec::new();
        if level <= Level::FoldSuccesses {
            for (env, steps) in &failed {
                failures.push(Failure {
                    environment: env.to_string(),
                    steps: steps
                        .iter()
                        .map(|(service, error, attempts)| FailedStep {
                            service: service.clone(),
                            error: inline(error, level.error_chars()),
                            attempts: *attempts,
                        })
                        .collect(),
                    commands: self.drift_recovery(env, steps),
                });
            }
        } else if !failed.is_empty() {
            let envs: Vec<EnvName> = failed.iter().map(|(e, _)| e.clone()).collect();
            bulk_commands = self.recovery(&envs);
            if level == Level::NamesOnly {
                failed_names = envs
                    .iter()
                    .map(|e| code(e.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ");
            } else {
                for (env, steps) in &failed {
                    let mut errors: Vec<&str> = steps.iter().map(|s| s.1.as_str()).collect();
                    errors.dedup();
                    failure_rows.push(FailureRow {
                        environment: code(env.as_str()),
                        services: steps
                            .iter()
                            .map(|s| code(&s.0))
                            .collect::<Vec<_>>()
                            .join(" "),
                        error: inline(&errors.join("; "), level.error_chars()),
                    });
                }
            }
        }
        let successes = if level == Level::Full {
            self.successes()
        } else {
            Vec::new()
        };
        let folded = match level {
            Level::Full => None,
            Level::FoldSuccesses => Some(format!(
                "To stay within GitHub's 65,535-byte limit, the {} that succeeded are shown as counts only; every failure is listed.",
                plural(counts.succeeded, "step", "steps")
            )),
            Level::Compact | Level::Tight => Some(format!(
                "To stay within GitHub's 65,535-byte limit, the {} that succeeded and the {} waiting are shown as counts, and errors are shortened to {} characters; every failed environment is listed.",
                plural(counts.succeeded, "step", "steps"),
                plural(counts.pending, "step", "steps"),
                level.error_chars()
            )),
            Level::NamesOnly => Some(format!(
                "To stay within GitHub's 65,535-byte limit, only the names of the {} failed environments are listed, without errors; the rollout page has every error.",
                thousands(failed.len())
            )),
        };
        let (config_errors, config_errors_more) = self.config_errors();
        Ctx {
            id: self.record.id.to_string(),
            marker: comment_marker(self.record.id.as_str()),
            emoji,
            headline,
            state: self.state.as_str(),
            commit: self.record.commit.to_string(),
            short_commit: short_sha(self.record.commit.as_str()).to_owned(),
            branch: code(self.record.branch.as_str()),
            kind: self.record.kind.as_str(),
            parent: self.record.parent.as_ref().map(|p| p.to_string()),
            pull_request: self.record.pull_request,
            url: self.url(),
            notices: self.notices(),
            risk: self.risk(),
            config_errors,
            config_errors_more,
            waves,
            show_skipped,
            total: plural(counts.total, "step", "steps"),
            failed_environments: plural(failed.len(), "environment", "environments"),
            failures,
            failure_rows,
            failed_names,
            bulk_commands,
            waiting: self.waiting(level),
            successes,
            folded,
            next_steps: self.next_steps(),
        }
    }

    fn buttons(&self) -> Vec<CheckRunAction> {
        let Some(r) = self.rollout else {
            return Vec::new();
        };
        let waves: Vec<WaveName> = r.waves.iter().map(|w| w.name.clone()).collect();
        let commands: Vec<Command> = match self.state {
            RolloutState::Halted => {
                let mut c = vec![Command::Retry {
                    target: RetryTarget::Failed,
                }];
                if !self.touched.is_empty() {
                    c.push(Command::Rollback {
                        target: RollbackTarget::All,
                    });
                }
                c.push(Command::Abort);
                c
            }
            RolloutState::AwaitingApproval => vec![
                Command::Approve {
                    wave: self.approval_wave().cloned(),
                },
                Command::Abort,
            ],
            RolloutState::Paused => vec![Command::Resume, Command::Abort],
            _ => Vec::new(),
        };
        let actions: Vec<CheckRunAction> = commands
            .iter()
            .filter_map(|c| button_for(c, &waves))
            .map(|b| CheckRunAction {
                label: b.label,
                description: b.description,
                identifier: b.identifier,
            })
            .collect();
        // The command table guarantees the limits; never send what GitHub
        // would refuse.
        match check_actions(&actions) {
            Ok(()) => actions,
            Err(e) => {
                tracing::error!(error = %e, "check-run buttons dropped");
                Vec::new()
            }
        }
    }

    fn check_run(&self, summary: String, text: String) -> NewCheckRun {
        let (status, conclusion) = match self.state {
            RolloutState::Queued => (CheckRunStatus::Queued, None),
            RolloutState::Running | RolloutState::Frozen | RolloutState::Paused => {
                (CheckRunStatus::InProgress, None)
            }
            RolloutState::Halted | RolloutState::AwaitingApproval => (
                CheckRunStatus::Completed,
                Some(CheckRunConclusion::ActionRequired),
            ),
            RolloutState::Succeeded => {
                (CheckRunStatus::Completed, Some(CheckRunConclusion::Success))
            }
            RolloutState::Failed => (CheckRunStatus::Completed, Some(CheckRunConclusion::Failure)),
            RolloutState::Noop => (CheckRunStatus::Completed, Some(CheckRunConclusion::Neutral)),
            RolloutState::Aborted | RolloutState::Superseded => (
                CheckRunStatus::Completed,
                Some(CheckRunConclusion::Cancelled),
            ),
        };
        let (_, _, title) = self.headline();
        let id = self.record.id.to_string();
        let mut run = NewCheckRun::new(
            check_run_name(&self.record.kind),
            self.record.commit.as_str(),
        );
        run.status = status;
        run.conclusion = conclusion;
        run.details_url = Some(self.url());
        run.external_id = Some(id);
        run.started_at = Some(
            self.rollout
                .and_then(|r| r.started_at)
                .unwrap_or(self.record.created_at),
        );
        if self.state.is_terminal() {
            run.completed_at = Some(
                self.rollout
                    .and_then(|r| r.finished_at)
                    .unwrap_or(self.record.updated_at),
            );
        }
        let annotations = if self.rollout.is_none() {
            self.record
                .error
                .as_deref()
                .map(spec_error_annotations)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        run.output = Some(CheckRunOutput {
            title,
            summary,
            text: (!text.trim().is_empty()).then_some(text),
            annotations,
        });
        run.actions = self.buttons();
        run
    }
}

/// What a group of steps waits for, in words (names as code, untrusted
/// text defused).
fn waiting_label(w: &Waiting) -> String {
    match w {
        Waiting::Queued => "are queued behind an earlier rollout of this branch".into(),
        Waiting::Halted {
            wave,
            failed,
            allowed,
        } => format!(
            "are held: the rollout halted (wave {} has {}, {} allowed)",
            code(wave.as_str()),
            plural(*failed, "failed step", "failed steps"),
            thousands(*allowed)
        ),
        Waiting::Paused { by } => format!("are held: paused by {}", code(by)),
        Waiting::EmergencyFreeze { by, until, reason } => format!(
            "are held by an emergency freeze by {} {}{}",
            code(by),
            until
                .map(|u| format!("until {}", when(&u)))
                .unwrap_or_else(|| "until unfrozen".into()),
            reason
                .as_deref()
                .map(|r| format!(" ({})", inline(r, 200)))
                .unwrap_or_default()
        ),
        Waiting::Superseded { by } => format!("will not start: superseded by rollout {}", code(by)),
        Waiting::Retry { .. } => "wait to be retried after a transient failure".into(),
        Waiting::EarlierWave { wave } => format!("wait for wave {} to finish", code(wave.as_str())),
        Waiting::Approval { wave, approvers } => format!(
            "wait for approval of wave {} by {}",
            code(wave.as_str()),
            if approvers.is_empty() {
                "anyone with write access".to_owned()
            } else {
                approvers
                    .iter()
                    .map(|a| code(a))
                    .collect::<Vec<_>>()
                    .join(" or ")
            }
        ),
        Waiting::Freeze { until, reason } => format!(
            "wait for the freeze window to end at {}{}",
            when(until),
            reason
                .as_deref()
                .map(|r| format!(" ({})", inline(r, 200)))
                .unwrap_or_default()
        ),
        Waiting::Dependency { .. } => "wait for a step they depend on".into(),
        Waiting::MaxParallel { limit } => format!(
            "wait for a free slot (at most {} in progress)",
            plural(*limit as usize, "environment", "environments")
        ),
    }
}

fn wave_state_label(state: &str) -> String {
    match state {
        "pending" => "pending",
        "awaiting_approval" => "✋ awaiting approval",
        "frozen" => "🧊 frozen",
        "running" => "running",
        "halted" => "🛑 halted",
        "baking" => "baking",
        "succeeded" => "✅ done",
        "failed" => "done with failures",
        other => other,
    }
    .to_owned()
}

/// Lines for a fenced code block: at most `max` lines of at most 300
/// characters, none able to close the fence; and how many were left out.
pub(crate) fn fenced_lines(text: &str, max: usize) -> (String, usize) {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let shown: Vec<String> = lines
        .iter()
        .take(max)
        .map(|l| {
            let mut l: String = l.chars().take(300).collect();
            while l.contains("```") {
                l = l.replace("```", "'''");
            }
            l
        })
        .collect();
    (shown.join("\n"), lines.len() - shown.len())
}

/// Annotations on `convoy.yml` from error lines `convoy.yml:LINE:COL:
/// message` (as stored for a rollout that failed before planning); lines in
/// another form become an annotation on line 1.
pub fn spec_error_annotations(text: &str) -> Vec<Annotation> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (line, col, message) = parse_error_line(l);
            spec_annotation(line, col, message)
        })
        .collect()
}

/// One failure annotation on `convoy.yml`.
pub fn spec_annotation(line: u32, col: u32, message: &str) -> Annotation {
    Annotation {
        path: crate::plan::impact::SPEC_FILE.to_owned(),
        start_line: line.max(1),
        end_line: line.max(1),
        start_column: Some(col.max(1)),
        end_column: Some(col.max(1)),
        annotation_level: AnnotationLevel::Failure,
        message: message.chars().take(2000).collect(),
        title: Some("convoy.yml is invalid".to_owned()),
    }
}

fn parse_error_line(l: &str) -> (u32, u32, &str) {
    let rest = l
        .strip_prefix(crate::plan::impact::SPEC_FILE)
        .and_then(|r| r.strip_prefix(':'));
    if let Some(rest) = rest {
        let mut parts = rest.splitn(3, ':');
        if let (Some(line), Some(col), Some(msg)) = (parts.next(), parts.next(), parts.next())
            && let (Ok(line), Ok(col)) = (line.parse::<u32>(), col.parse::<u32>())
        {
            return (line, col, msg.trim());
        }
    }
    (1, 1, l.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_become_annotations_at_their_line() {
        let a = spec_error_annotations(
            "convoy.yml:4:7: unknown key `pathz`\nconvoy.yml:12:3: bad\nsomething else",
        );
        assert_eq!(a.len(), 3);
        assert_eq!((a[0].start_line, a[0].start_column), (4, Some(7)));
        assert_eq!(a[0].message, "unknown key `pathz`");
        assert_eq!(a[1].start_line, 12);
        assert_eq!(
            (a[2].start_line, a[2].message.as_str()),
            (1, "something else")
        );
    }

    #[test]
    fn tidy_keeps_one_blank_line() {
        assert_eq!(tidy("a  \n\n\n\nb\n\n"), "a\n\nb\n");
    }
}

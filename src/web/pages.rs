//! The HTML pages (SPEC 5): `/` lists recent rollouts, `/rollouts/{id}`
//! shows one: state, commit, pull request, risk, a grid with one small cell
//! per environment coloured by state and grouped by wave, failures with the
//! command that recovers them, what waiting steps wait for, and the audit
//! log. No JavaScript: a running rollout's page refreshes itself.
//!
//! Rendering is pure ([`rollout_page`], [`index_page`]); the handlers only
//! read the store (and the commit message from the cached clone). Templates
//! are `.html` Tera templates embedded at build time, so Tera escapes every
//! value (names, labels, errors, commit messages, comment text) unless a
//! template says otherwise, and none does.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::LazyLock;

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tera::{Context, Tera};

use super::AppState;
use crate::domain::{CommitSha, EnvName, RepoName, RolloutId};
use crate::engine::{self, Rollout, RolloutState, StepState, StepView, Waiting};
use crate::plan::render::format_percent;
use crate::store::{AuditEntry, RolloutRecord, RolloutSummary};

const TEMPLATES: [(&str, &str); 3] = [
    ("base.html", include_str!("../../templates/pages/base.html")),
    (
        "index.html",
        include_str!("../../templates/pages/index.html"),
    ),
    (
        "rollout.html",
        include_str!("../../templates/pages/rollout.html"),
    ),
];

static ENGINE: LazyLock<Result<Tera, String>> = LazyLock::new(|| {
    // Tera's defaults autoescape `.html` templates; set it explicitly so a
    // change of defaults can never turn escaping off unnoticed.
    let mut tera = Tera::default();
    tera.autoescape_on(vec![".html"]);
    tera.add_raw_templates(TEMPLATES)
        .map_err(|e| format!("page templates: {e}"))?;
    Ok(tera)
});

/// Seconds between refreshes of a page whose rollout has not ended.
pub const REFRESH_SECS: u32 = 2;
/// Failed steps listed one by one; the rest are counted.
const MAX_FAILURES: usize = 200;
/// Newest audit entries shown.
const MAX_AUDIT: usize = 200;
/// Longest text from outside (errors, labels, commit bodies) shown, in
/// characters; keeps the page small whatever an agent answers.
const MAX_TEXT: usize = 2000;

/// How an environment looks in the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    /// Held by something a human or the clock decides: an approval, a
    /// freeze, a pause, a halt, a retry backoff, a queue.
    Waiting,
    RolledBack,
}

impl EnvState {
    pub const ALL: [EnvState; 7] = [
        EnvState::Succeeded,
        EnvState::Running,
        EnvState::Waiting,
        EnvState::Pending,
        EnvState::Failed,
        EnvState::Skipped,
        EnvState::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnvState::Pending => "pending",
            EnvState::Running => "running",
            EnvState::Succeeded => "succeeded",
            EnvState::Failed => "failed",
            EnvState::Skipped => "skipped",
            EnvState::Waiting => "waiting",
            EnvState::RolledBack => "rolled_back",
        }
    }
}

fn holds(w: &Waiting) -> bool {
    matches!(
        w,
        Waiting::Queued
            | Waiting::Halted { .. }
            | Waiting::Paused { .. }
            | Waiting::EmergencyFreeze { .. }
            | Waiting::Retry { .. }
            | Waiting::Approval { .. }
            | Waiting::Freeze { .. }
    )
}

/// One environment's state from its steps in one wave (pure): any failure
/// shows; then work in progress (a step in flight, or some steps done and
/// others still to go); then a hold; then not started.
pub fn env_state(steps: &[&StepView]) -> EnvState {
    let any = |f: &dyn Fn(&StepView) -> bool| steps.iter().any(|s| f(s));
    if any(&|s| s.state == StepState::Failed) {
        return EnvState::Failed;
    }
    if any(&|s| {
        matches!(
            s.state,
            StepState::Preflight | StepState::Deploying | StepState::Verifying
        )
    }) {
        return EnvState::Running;
    }
    let pending = any(&|s| s.state == StepState::Pending);
    if pending {
        if any(&|s| s.waiting.as_ref().is_some_and(holds)) {
            return EnvState::Waiting;
        }
        if any(&|s| s.state == StepState::Succeeded) {
            return EnvState::Running;
        }
        return EnvState::Pending;
    }
    if any(&|s| s.state == StepState::RolledBack) {
        return EnvState::RolledBack;
    }
    if steps.iter().all(|s| s.state == StepState::Skipped) && !steps.is_empty() {
        return EnvState::Skipped;
    }
    EnvState::Succeeded
}

/// What the page needs besides the stored rollout.
#[derive(Clone, Debug, Default)]
pub struct PageOptions {
    /// `github.command_prefix`.
    pub prefix: String,
    /// Where pull requests are seen in a browser (`https://github.com`),
    /// if known.
    pub web_base: Option<String>,
}

impl PageOptions {
    pub fn from_config(config: &crate::config::Config) -> PageOptions {
        PageOptions {
            prefix: config.github.command_prefix.clone(),
            web_base: web_base(&config.github.api_url),
        }
    }
}

/// The browser address of a GitHub whose API is at `api_url`: github.com
/// for api.github.com, the host for an Enterprise `/api/v3`; `None` for
/// anything else (a stand-in has no pages).
pub fn web_base(api_url: &str) -> Option<String> {
    let url = api_url.trim_end_matches('/');
    if url == "https://api.github.com" {
        return Some("https://github.com".into());
    }
    url.strip_suffix("/api/v3").map(str::to_owned)
}

/// A commit's message: the first line, and the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitMessage {
    pub subject: String,
    pub body: String,
}

impl CommitMessage {
    pub fn parse(message: &str) -> CommitMessage {
        let (subject, body) = message.split_once('\n').unwrap_or((message, ""));
        CommitMessage {
            subject: clip(subject.trim()),
            body: clip(body.trim()),
        }
    }
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn short(sha: &str) -> String {
    sha.chars().take(7).collect()
}

fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[derive(Serialize)]
struct Cell {
    n: String,
    s: &'static str,
}

#[derive(Serialize)]
struct WaveRow {
    name: String,
    state: String,
    environments: usize,
    steps: usize,
    done: usize,
    failed: usize,
    max_parallel: u32,
    failure_budget: usize,
    approval: bool,
    approved_by: Option<String>,
    bake_until: Option<String>,
    cells: Vec<Cell>,
}

#[derive(Serialize)]
struct Failure {
    environment: String,
    service: String,
    attempts: u32,
    error: String,
    labels: String,
    commands: Vec<String>,
}

#[derive(Serialize)]
struct WaitRow {
    text: String,
    steps: usize,
    example: Option<String>,
}

#[derive(Serialize)]
struct CountRow {
    class: &'static str,
    n: usize,
}

#[derive(Serialize)]
struct AuditRow {
    at: String,
    actor: String,
    action: String,
    result: String,
    location: String,
    detail: Option<String>,
}

#[derive(Serialize)]
struct RiskRow {
    steps: usize,
    first_attempt_failure: String,
    needs_human: String,
    riskiest: Vec<BTreeMap<&'static str, String>>,
}

#[derive(Serialize)]
struct RolloutPageView {
    id: String,
    repo: String,
    branch: String,
    kind: String,
    parent: Option<String>,
    state: String,
    commit: String,
    commit_short: String,
    commit_subject: Option<String>,
    commit_body: Option<String>,
    previous_commit: Option<String>,
    previous_short: Option<String>,
    pull_request: Option<u64>,
    pr_url: Option<String>,
    risk: Option<RiskRow>,
    created_at: String,
    updated_at: String,
    finished_at: Option<String>,
    refresh: Option<u32>,
    error: Option<String>,
    banners: Vec<String>,
    next: Vec<String>,
    env_total: usize,
    step_total: usize,
    env_counts: Vec<CountRow>,
    waves: Vec<WaveRow>,
    failures: Vec<Failure>,
    failures_more: usize,
    waiting: Vec<WaitRow>,
    audit: Vec<AuditRow>,
    audit_more: usize,
    /// The repository's open drift (SPEC 6.6), with the commands.
    drift: Vec<DriftRow>,
    drift_more: usize,
}

#[derive(Serialize)]
struct DriftRow {
    environment: String,
    service: String,
    expected: String,
    found: String,
    since: String,
    commands: Vec<String>,
}

/// Drift rows shown on a rollout page at most.
const MAX_DRIFT_ROWS: usize = 50;

fn labels_text(rollout: &Rollout, env: &EnvName) -> String {
    rollout
        .targets
        .get(env)
        .map(|t| {
            clip(
                &t.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .unwrap_or_default()
}

/// What a human can do now, as commands (the same as on GitHub).
fn next_commands(rollout: &Rollout, view: &engine::RolloutView, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let failed = view.counts.failed > 0;
    match rollout.state {
        RolloutState::AwaitingApproval => {
            if let Some(w) = rollout.waves.get(rollout.current_wave) {
                out.push(format!("{prefix} approve {}", w.name));
            }
            out.push(format!("{prefix} abort"));
        }
        RolloutState::Halted => {
            out.push(format!("{prefix} retry failed"));
            out.push(format!("{prefix} skip ENV…"));
            out.push(format!("{prefix} rollback all"));
            out.push(format!("{prefix} abort"));
        }
        RolloutState::Paused => {
            out.push(format!("{prefix} resume"));
            out.push(format!("{prefix} abort"));
        }
        RolloutState::Frozen => {
            if rollout.emergency_freeze.is_some() {
                out.push(format!("{prefix} unfreeze"));
            }
            out.push(format!("{prefix} abort"));
        }
        RolloutState::Running | RolloutState::Queued => {
            out.push(format!("{prefix} pause"));
            out.push(format!("{prefix} abort"));
        }
        RolloutState::Failed if failed => {
            out.push(format!("{prefix} retry failed"));
            out.push(format!("{prefix} rollback all"));
        }
        _ => {}
    }
    out
}

/// The rollout page (pure). `message` is the commit's message when known.
pub fn rollout_page(
    record: &RolloutRecord,
    audit: &[AuditEntry],
    message: Option<&CommitMessage>,
    options: &PageOptions,
) -> Result<String, String> {
    rollout_page_with_drift(record, audit, message, options, &[])
}

/// [`rollout_page`] with the repository's open drift records shown.
pub fn rollout_page_with_drift(
    record: &RolloutRecord,
    audit: &[AuditEntry],
    message: Option<&CommitMessage>,
    options: &PageOptions,
    drift: &[crate::store::DriftRecord],
) -> Result<String, String> {
    let rollout = record
        .document
        .as_deref()
        .and_then(|d| serde_json::from_str::<Rollout>(d).ok());
    let view = rollout.as_ref().map(engine::view);
    let prefix = if options.prefix.is_empty() {
        "/convoy"
    } else {
        options.prefix.as_str()
    };
    let state = view
        .as_ref()
        .map(|v| v.state.as_str().to_owned())
        .unwrap_or_else(|| record.state.clone());
    let terminal = match &view {
        Some(v) => v.state.is_terminal(),
        None => matches!(
            record.state.as_str(),
            "succeeded" | "failed" | "aborted" | "superseded" | "noop"
        ),
    };

    let mut env_counts: HashMap<EnvState, usize> = HashMap::new();
    let mut waves = Vec::new();
    let mut failures = Vec::new();
    let mut failures_more = 0;
    let mut waiting: BTreeMap<String, (usize, Option<String>)> = BTreeMap::new();
    let mut env_total = 0;
    let mut step_total = 0;
    let mut banners = Vec::new();
    let mut next = Vec::new();
    let mut risk = None;
    if let (Some(rollout), Some(view)) = (&rollout, &view) {
        for (wave_run, wave) in rollout.waves.iter().zip(&view.waves) {
            let mut by_env: HashMap<&EnvName, Vec<&StepView>> = HashMap::new();
            for s in &wave.steps {
                by_env.entry(&s.environment).or_default().push(s);
                if let Some(text) = &s.waiting_for {
                    let e = waiting.entry(text.clone()).or_insert((0, None));
                    e.0 += 1;
                    if e.1.is_none() {
                        e.1 = Some(format!("{}/{}", s.environment, s.service));
                    }
                }
                if s.state == StepState::Failed {
                    if failures.len() < MAX_FAILURES {
                        let env = s.environment.as_str();
                        failures.push(Failure {
                            environment: env.to_owned(),
                            service: s.service.to_string(),
                            attempts: s.attempts,
                            error: clip(s.error.as_deref().unwrap_or("failed")),
                            labels: labels_text(rollout, &s.environment),
                            commands: vec![
                                format!("{prefix} retry {env}"),
                                format!("{prefix} skip {env}"),
                                format!("{prefix} rollback {env}"),
                            ],
                        });
                    } else {
                        failures_more += 1;
                    }
                }
            }
            // Environments in the wave's order; one cell each.
            let mut cells = Vec::with_capacity(wave_run.environments.len());
            let mut seen = std::collections::HashSet::new();
            let order = wave_run
                .environments
                .iter()
                .chain(wave.steps.iter().map(|s| &s.environment));
            for env in order {
                if !seen.insert(env) {
                    continue;
                }
                let Some(steps) = by_env.get(env) else {
                    continue;
                };
                let st = env_state(steps);
                *env_counts.entry(st).or_default() += 1;
                cells.push(Cell {
                    n: env.to_string(),
                    s: st.as_str(),
                });
            }
            env_total += cells.len();
            step_total += wave.steps.len();
            waves.push(WaveRow {
                name: wave.name.to_string(),
                state: wave.state.clone(),
                environments: cells.len(),
                steps: wave.steps.len(),
                done: wave.counts.succeeded + wave.counts.skipped,
                failed: wave.counts.failed,
                max_parallel: wave.max_parallel,
                failure_budget: wave.failure_budget,
                approval: wave.approval,
                approved_by: wave.approved_by.clone(),
                bake_until: wave.bake_until.clone(),
                cells,
            });
        }
        if let Some(h) = &view.halt {
            banners.push(format!(
                "Halted: wave {} has {} failed step{} ({} allowed).",
                h.wave,
                h.failed,
                if h.failed == 1 { "" } else { "s" },
                h.allowed
            ));
        }
        if let Some(by) = &view.paused_by {
            banners.push(format!("Paused by {by}."));
        }
        if let Some(f) = &view.emergency_freeze {
            let mut text = format!("Emergency freeze by {}", f.by);
            match &f.until {
                Some(u) => text.push_str(&format!(" until {}", ts(u))),
                None => text.push_str(" until lifted"),
            }
            if let Some(r) = &f.reason {
                text.push_str(&format!(": {r}"));
            }
            banners.push(clip(&text));
        }
        if let Some(until) = &view.frozen_until {
            banners.push(format!("Waiting for a freeze window to end at {until}."));
        }
        next = next_commands(rollout, view, prefix);
        risk = Some(RiskRow {
            steps: view.risk.steps,
            first_attempt_failure: format_percent(view.risk.first_attempt_failure),
            needs_human: format_percent(view.risk.needs_human),
            riskiest: view
                .risk
                .riskiest
                .iter()
                .take(5)
                .map(|e| {
                    BTreeMap::from([
                        ("environment", e.environment.to_string()),
                        ("p", format_percent(e.p)),
                    ])
                })
                .collect(),
        });
    }
    let env_counts = EnvState::ALL
        .iter()
        .filter_map(|s| {
            let n = env_counts.get(s).copied().unwrap_or(0);
            // The six colours always show; rolled back only when present.
            (n > 0 || *s != EnvState::RolledBack).then_some(CountRow {
                class: s.as_str(),
                n,
            })
        })
        .collect();
    let mut waiting: Vec<WaitRow> = waiting
        .into_iter()
        .map(|(text, (steps, example))| WaitRow {
            text: clip(&text),
            steps,
            example,
        })
        .collect();
    waiting.sort_by(|a, b| b.steps.cmp(&a.steps).then(a.text.cmp(&b.text)));

    let audit_more = audit.len().saturating_sub(MAX_AUDIT);
    let audit = audit
        .iter()
        .rev()
        .take(MAX_AUDIT)
        .map(|a| AuditRow {
            at: ts(&a.at),
            actor: clip(&a.actor),
            action: clip(&a.action),
            result: clip(&a.result),
            location: clip(a.location.as_deref().unwrap_or("")),
            detail: a.detail.as_deref().map(clip),
        })
        .collect();

    let page = RolloutPageView {
        id: record.id.to_string(),
        repo: record.repo.to_string(),
        branch: record.branch.to_string(),
        kind: record.kind.as_str().to_owned(),
        parent: record.parent.as_ref().map(|p| p.to_string()),
        state,
        commit: record.commit.to_string(),
        commit_short: short(record.commit.as_str()),
        commit_subject: message.map(|m| m.subject.clone()).filter(|s| !s.is_empty()),
        commit_body: message.map(|m| m.body.clone()).filter(|s| !s.is_empty()),
        previous_commit: record.previous_commit.as_ref().map(|c| c.to_string()),
        previous_short: record.previous_commit.as_ref().map(|c| short(c.as_str())),
        pull_request: record.pull_request,
        pr_url: match (&options.web_base, record.pull_request) {
            (Some(base), Some(n)) => Some(format!("{base}/{}/pull/{n}", record.repo)),
            _ => None,
        },
        risk,
        created_at: ts(&record.created_at),
        updated_at: ts(&record.updated_at),
        finished_at: rollout
            .as_ref()
            .and_then(|r| r.finished_at.as_ref())
            .map(ts),
        refresh: (!terminal).then_some(REFRESH_SECS),
        error: record.error.as_deref().map(clip),
        banners,
        next,
        env_total,
        step_total,
        env_counts,
        waves,
        failures,
        failures_more,
        waiting,
        audit,
        audit_more,
        drift: drift
            .iter()
            .filter(|d| d.is_open() && d.kind == crate::store::DriftKind::Drift)
            .take(MAX_DRIFT_ROWS)
            .map(|d| DriftRow {
                environment: d.environment.to_string(),
                service: d.service.to_string(),
                expected: crate::drift::issue::short(&d.expected),
                found: clip(&crate::drift::issue::short(
                    d.found.as_deref().unwrap_or(""),
                )),
                since: ts(&d.first_seen),
                commands: vec![
                    format!("{prefix} adopt {} {}", d.environment, d.service),
                    format!("{prefix} resync {}", d.environment),
                ],
            })
            .collect(),
        drift_more: drift
            .iter()
            .filter(|d| d.is_open() && d.kind == crate::store::DriftKind::Drift)
            .count()
            .saturating_sub(MAX_DRIFT_ROWS),
    };
    let mut context = Context::new();
    context.insert("r", &page);
    context.insert("refresh", &page.refresh);
    render("rollout.html", &context)
}

#[derive(Serialize)]
struct IndexRow {
    id: String,
    repo: String,
    commit: String,
    commit_short: String,
    pull_request: Option<u64>,
    state: String,
    created_at: String,
    updated_at: String,
}

/// The list of recent rollouts (pure); refreshes while one is active.
pub fn index_page(rollouts: &[RolloutSummary]) -> Result<String, String> {
    let rows: Vec<IndexRow> = rollouts
        .iter()
        .map(|r| IndexRow {
            id: r.id.to_string(),
            repo: r.repo.to_string(),
            commit: r.commit.to_string(),
            commit_short: short(r.commit.as_str()),
            pull_request: r.pull_request,
            state: r.state.clone(),
            created_at: ts(&r.created_at),
            updated_at: ts(&r.updated_at),
        })
        .collect();
    let active = rollouts.iter().any(|r| {
        !matches!(
            r.state.as_str(),
            "succeeded" | "failed" | "aborted" | "superseded" | "noop"
        )
    });
    let mut context = Context::new();
    context.insert("rollouts", &rows);
    context.insert("refresh", &active.then_some(5));
    render("index.html", &context)
}

fn render(name: &str, context: &Context) -> Result<String, String> {
    let tera = ENGINE.as_ref().map_err(Clone::clone)?;
    tera.render(name, context)
        .map_err(|e| format!("rendering {name}: {e:?}"))
}

/// Reads a commit's message from convoy's cached clone of the repository
/// (`<data_dir>/git`), if the commit is there. Never fetches.
pub fn cached_commit_message(
    data_dir: &Path,
    repo: &RepoName,
    commit: &CommitSha,
) -> Option<CommitMessage> {
    let (owner, name) = repo.split()?;
    let path = crate::git::RepoCache::new(data_dir.join("git")).path_for(owner, name);
    let git = git2::Repository::open_bare(path).ok()?;
    let oid = git2::Oid::from_str(commit.as_str()).ok()?;
    let c = git.find_commit(oid).ok()?;
    Some(CommitMessage::parse(&String::from_utf8_lossy(
        c.message_bytes(),
    )))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn failure(status: StatusCode, message: &str) -> Response {
    html(
        status,
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>convoy</title><p>{}</p><p><a href=\"/\">All rollouts</a></p>",
            escape(message)
        ),
    )
}

pub async fn index(State(state): State<AppState>) -> Response {
    match state.store.list_rollouts(None, 100).await {
        Ok(list) => match index_page(&list) {
            Ok(body) => html(StatusCode::OK, body),
            Err(e) => {
                tracing::error!(error = %e, "rendering the rollout list failed");
                failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page cannot be shown",
                )
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "listing rollouts failed");
            failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer",
            )
        }
    }
}

pub async fn rollout(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let id = RolloutId::new(id);
    let record = match state.store.rollout(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => return failure(StatusCode::NOT_FOUND, &format!("There is no rollout {id}.")),
        Err(e) => {
            tracing::error!(error = %e, "reading a rollout failed");
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer",
            );
        }
    };
    let audit = state.store.audit_for_rollout(&id).await.unwrap_or_default();
    let data_dir = state.config.server.data_dir.clone();
    let (repo, commit) = (record.repo.clone(), record.commit.clone());
    let message =
        tokio::task::spawn_blocking(move || cached_commit_message(&data_dir, &repo, &commit))
            .await
            .ok()
            .flatten();
    let options = PageOptions::from_config(&state.config);
    let drift = state
        .store
        .drift_records(&record.repo, false, 1000)
        .await
        .unwrap_or_default();
    // Rendering a large fleet is CPU work: keep it off the async threads.
    let rendered = tokio::task::spawn_blocking(move || {
        rollout_page_with_drift(&record, &audit, message.as_ref(), &options, &drift)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match rendered {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => {
            tracing::error!(rollout = %id, error = %e, "rendering a rollout page failed");
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page cannot be shown",
            )
        }
    }
}

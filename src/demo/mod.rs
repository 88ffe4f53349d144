//! `convoy demo`: the whole loop on this machine with nothing else
//! installed. A simulated fleet of agents (SPEC 4.1) on 127.0.0.1, a
//! stand-in for GitHub, a scratch git repository with a merge, and convoy
//! itself through the same code path as `convoy serve` ([`app::start`]),
//! fed the signed webhooks GitHub would send. The terminal shows a bar per
//! wave and every failure and retry as it happens; the gated wave is
//! approved by a demo user with `/convoy approve`; the final PR comment is
//! printed as Markdown.
//!
//! `--runs R` is the seed experiment instead: R rollouts over the same
//! fleet, measuring how often some step failed on its first attempt and
//! how often a human would have been needed, against SPEC 6.7's theory.

pub mod progress;
pub mod repo;
pub mod scenario;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::{self, Running, Services};
use crate::config::Config;
use crate::domain::{BranchName, CommitSha, RepoName, RolloutId, WaveName};
use crate::engine::{Command, Rollout, RolloutState, StepState};
use crate::testkit::fleet::Fleet;
use crate::testkit::github_standin::{
    GitHubStandIn, StandInConfig, TEST_APP_ID, TEST_APP_PRIVATE_KEY_PEM,
};
use crate::webhook::signature::sign;

use progress::{Screen, wave_lines};
use repo::ScratchRepo;
use scenario::*;

/// What `convoy demo` was asked for.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub environments: usize,
    pub failure_rate: f64,
    pub seed: u64,
    /// 0: any free port.
    pub port: u16,
    pub exit_when_done: bool,
    /// The seed experiment: this many rollouts.
    pub runs: Option<usize>,
    /// How long an agent takes to deploy.
    pub deploy_time: Duration,
    /// How long the demo user waits before approving the gated wave.
    pub approve_after: Duration,
    /// The canary wave's bake time.
    pub bake: Duration,
    /// The first canary's agent fails its first deploy (a 503), so a retry
    /// is always there to see.
    pub inject_failure: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            environments: 50,
            failure_rate: 0.02,
            seed: 1,
            port: 3000,
            exit_when_done: false,
            runs: None,
            deploy_time: Duration::from_millis(800),
            approve_after: Duration::from_secs(4),
            bake: Duration::from_secs(5),
            inject_failure: true,
        }
    }
}

/// The longest a demo rollout may take before the demo gives up.
const DEMO_LIMIT: Duration = Duration::from_secs(600);
const TICK: Duration = Duration::from_millis(100);
/// How long a `/convoy approve` comment may take to be acted on before the
/// demo approves through the runtime (a build without the command handler).
const COMMAND_GRACE: Duration = Duration::from_secs(5);

fn out(line: &str) {
    println!("{line}");
}

/// `convoy demo`: exit 0 when the rollout (or every experiment run) ended
/// as it should, 1 when not, 2 for bad arguments.
pub fn demo_main(opts: DemoOptions) -> ExitCode {
    if opts.environments == 0 || opts.environments > 10_000 {
        eprintln!("convoy demo: --environments must be between 1 and 10000");
        return ExitCode::from(2);
    }
    if !(0.0..1.0).contains(&opts.failure_rate) {
        eprintln!("convoy demo: --failure-rate must be at least 0 and below 1, e.g. 0.02");
        return ExitCode::from(2);
    }
    if opts.runs == Some(0) {
        eprintln!("convoy demo: --runs must be at least 1");
        return ExitCode::from(2);
    }
    // convoy's own log lines would drown the demo's output: warnings only,
    // unless RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("convoy demo: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match opts.runs {
            Some(runs) => experiment(&opts, runs).await.map(|r| {
                out("");
                out(&r.table());
                true
            }),
            None => demo(&opts).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("convoy demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// A scratch folder, removed at the end.
struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    fn new() -> Result<Workspace, String> {
        let dir = std::env::temp_dir().join(format!(
            "convoy-demo-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Workspace { dir })
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The port to listen on: the one asked for when free, else any.
fn pick_port(wanted: u16) -> (u16, bool) {
    if wanted == 0 {
        return (0, true);
    }
    match std::net::TcpListener::bind(("127.0.0.1", wanted)) {
        Ok(l) => {
            drop(l);
            (wanted, true)
        }
        Err(_) => (0, false),
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// The operator configuration the demo runs convoy with.
fn demo_config(
    work: &Workspace,
    port: u16,
    secret: &str,
    github: Option<(&str, &std::path::Path)>,
) -> Result<Config, String> {
    let git_root = work.dir.join("git");
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\ndata_dir = \"{data}\"\n\
         [github]\nwebhook_secret = \"{secret}\"\ngit_url = \"{git}\"\nmin_update_interval = \"1s\"\nprogress_interval = \"2s\"\n",
        data = work.dir.join("data").display(),
        git = ScratchRepo::url_template(&git_root),
    );
    if let Some((api, key)) = github {
        text.push_str(&format!(
            "app_id = {TEST_APP_ID}\nprivate_key_path = \"{}\"\napi_url = \"{api}\"\n",
            key.display()
        ));
    }
    text.push_str(&format!(
        "[database]\nurl = \"sqlite://{}\"\n[drivers.agent]\nkind = \"http-agent\"\nallowed_hosts = [\"127.0.0.1\"]\ntimeout = \"10s\"\n",
        work.dir.join("convoy.db").display()
    ));
    Config::from_toml(&text, "demo.toml", &[]).map_err(|e| e.to_string())
}

async fn deliver(running: &Running, secret: &str, event: &str, body: &Value) -> Result<(), String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let delivery = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..),
        fastrand::u16(..),
        fastrand::u64(..0x0001_0000_0000_0000)
    );
    let status = reqwest::Client::new()
        .post(format!("http://{}/webhook", running.addr))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sign(secret, &body))
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/demo")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("delivering {event}: {e}"))?
        .status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("convoy answered {status} to the {event} webhook"))
    }
}

async fn wait_for_rollout(
    running: &Running,
    commit: &CommitSha,
    limit: Duration,
) -> Result<RolloutId, String> {
    let started = Instant::now();
    let repo = RepoName::new(REPO);
    let main = BranchName::new("main");
    loop {
        if let Some(r) = running
            .store
            .rollout_for_commit(&repo, &main, commit)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(r.id);
        }
        if started.elapsed() > limit {
            return Err(format!("no rollout of {commit} within {limit:?}"));
        }
        tokio::time::sleep(TICK / 2).await;
    }
}

/// The stored rollout: its record's state and the engine's document.
async fn load(running: &Running, id: &RolloutId) -> Result<(String, Option<Rollout>), String> {
    let record = running
        .store
        .rollout(id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("rollout {id} disappeared"))?;
    let rollout = record
        .document
        .as_deref()
        .and_then(|d| serde_json::from_str::<Rollout>(d).ok());
    if rollout.is_none()
        && let Some(e) = &record.error
    {
        return Err(format!("the rollout could not start: {e}"));
    }
    Ok((record.state, rollout))
}

fn short(sha: &CommitSha) -> &str {
    &sha.as_str()[..sha.as_str().len().min(7)]
}

fn source_files() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "README.md",
            "# shop\n\nacme's online shop: `services/api`, `services/web`, `migrations`.\n",
        ),
        (
            "services/api/main.rs",
            "fn main() {\n    println!(\"api\");\n}\n",
        ),
        (
            "services/web/index.html",
            "<!doctype html><title>shop</title><h1>shop</h1>\n",
        ),
        (
            "migrations/0001_init.sql",
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, cart JSONB NOT NULL);\n",
        ),
        (
            "libs/money/lib.rs",
            "pub fn cents(e: u64) -> u64 {\n    e * 100\n}\n",
        ),
    ]
}

async fn demo(opts: &DemoOptions) -> Result<bool, String> {
    let work = Workspace::new()?;
    let tty = std::io::stdout().is_terminal();
    let names = environment_names(opts.environments);
    let fleet = Fleet::start(names.clone(), opts.seed)
        .await
        .map_err(|e| format!("starting the simulated fleet: {e}"))?;
    for name in &names {
        fleet.update_knobs(name, |k| {
            k.transient_failure_rate = opts.failure_rate;
            k.deploy_duration = opts.deploy_time;
        });
    }
    let injected = opts.inject_failure.then(|| names[0].clone());
    if let Some(env) = &injected {
        fleet.update_knobs(env, |k| k.transient_failure_rate = 1.0);
    }
    let envs: Vec<(String, String)> = names.iter().map(|n| (n.clone(), fleet.url(n))).collect();

    let github = GitHubStandIn::start(StandInConfig::for_demo())
        .await
        .map_err(|e| format!("starting the GitHub stand-in: {e}"))?;
    github.add_repo(REPO, "main");
    github.set_permission(REPO, AUTHOR, "write", "write");
    github.set_permission(REPO, APPROVER, "write", "maintain");
    github.add_team_member(OWNER, "sre", APPROVER, "member", "active");

    let timings = SpecTimings {
        bake: crate::duration::format_duration(opts.bake),
        backoff: "1s".into(),
        poll_interval: "250ms".into(),
    };
    let spec = demo_spec(&envs, &timings);
    let scratch = ScratchRepo::init(&work.dir.join("git"), OWNER, NAME)?;
    let mut files = source_files();
    files.push(("convoy.yml", &spec));
    let base = scratch.commit("main", &files, "Initial import of the shop", AUTHOR, None)?;
    let head = scratch.commit(
        HEAD_REF,
        &[
            (
                "services/api/checkout.rs",
                "pub fn checkout() { /* carts cached */ }\n",
            ),
            (
                "services/web/checkout.js",
                "export const checkout = () => fetch('/api/checkout');\n",
            ),
            (
                "migrations/0002_orders_index.sql",
                "CREATE INDEX orders_cart ON orders USING gin (cart);\n",
            ),
        ],
        "Faster checkout: cache carts, index orders",
        AUTHOR,
        Some(&[&base]),
    )?;
    let merge = scratch.commit(
        "main",
        &[],
        &format!(
            "Merge pull request #{PULL_REQUEST} from {OWNER}/{HEAD_REF}\n\nFaster checkout: cache carts, index orders"
        ),
        AUTHOR,
        Some(&[&base, &head]),
    )?;
    github.add_pull_request(
        REPO,
        PULL_REQUEST,
        AUTHOR,
        head.as_str(),
        HEAD_REF,
        "main",
        true,
    );

    let key = work.dir.join("demo-app.pem");
    std::fs::write(&key, TEST_APP_PRIVATE_KEY_PEM).map_err(|e| e.to_string())?;
    let (mut port, got) = pick_port(opts.port);
    if port == 0 {
        port = free_port()?;
    }
    let secret = format!("demo-{:016x}", fastrand::u64(..));
    let config = demo_config(&work, port, &secret, Some((&github.url(), &key)))?;
    let running = app::start(config, Services::default())
        .await
        .map_err(|e| format!("starting convoy: {e}"))?;
    let base_url = format!("http://{}", running.addr);

    out("convoy demo: everything runs on this machine.");
    out(&format!(
        "  fleet:  {} environments (simulated agents on 127.0.0.1), transient failure rate {}",
        names.len(),
        crate::plan::render::format_percent(opts.failure_rate)
    ));
    out(&format!("  GitHub: a local stand-in at {}", github.url()));
    out(&format!(
        "  repo:   {REPO} (scratch git repository), PR #{PULL_REQUEST} by {AUTHOR} merged as {}",
        short(&merge)
    ));
    if !got {
        out(&format!(
            "  port {} is taken: convoy listens on {port} instead",
            opts.port
        ));
    }
    out(&format!(
        "  convoy: {base_url} (the same code as `convoy serve`)"
    ));
    if let Some(env) = &injected {
        out(&format!(
            "  The agent of {env} will answer its first deploy with 503, so you can watch convoy retry it."
        ));
    }
    out("");

    deliver(&running, &secret, "installation", &installation_created()).await?;
    deliver(
        &running,
        &secret,
        "pull_request",
        &merged_pull_request(
            PULL_REQUEST,
            &head,
            &base,
            &merge,
            "Faster checkout: cache carts, index orders",
        ),
    )
    .await?;
    deliver(&running, &secret, "push", &push(&base, &merge)).await?;
    out(&format!(
        "GitHub sent the signed pull_request (closed, merged) and push webhooks for {}.",
        short(&merge)
    ));
    let id = wait_for_rollout(&running, &merge, Duration::from_secs(60)).await?;
    let page = format!("{base_url}/rollouts/{id}");
    out(&format!(
        "Rollout {id} started. Watch it in a browser: {page}"
    ));
    out("");

    let started = Instant::now();
    let mut screen = Screen::new(tty);
    let mut seen_deploys = 0;
    let mut injected_done = injected.is_none();
    let mut reported_failed = std::collections::BTreeSet::new();
    let mut awaiting_since: Option<Instant> = None;
    let mut comment_sent: Option<Instant> = None;
    let mut approved_shown = false;
    let mut transient = 0usize;
    let final_state;
    let final_rollout;
    loop {
        let (state, rollout) = load(&running, &id).await?;
        for d in fleet.deploys().iter().skip(seen_deploys) {
            seen_deploys += 1;
            if d.status >= 500 {
                transient += 1;
                screen.event(&format!(
                    "  ✗ {}/{}: attempt {} failed, the agent answered {} (transient): convoy retries it after a backoff",
                    d.environment, d.service, d.attempt, d.status
                ));
                if !injected_done && injected.as_deref() == Some(d.environment.as_str()) {
                    fleet.update_knobs(&d.environment, |k| {
                        k.transient_failure_rate = opts.failure_rate
                    });
                    injected_done = true;
                }
            } else if d.status >= 400 {
                screen.event(&format!(
                    "  ✗ {}/{}: attempt {} refused by the agent ({}): not retried",
                    d.environment, d.service, d.attempt, d.status
                ));
            } else if d.attempt > 1 && !d.repeat {
                screen.event(&format!(
                    "  ↻ {}/{}: attempt {} accepted: the automatic retry worked",
                    d.environment, d.service, d.attempt
                ));
            }
        }
        let Some(rollout) = rollout else {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("rollout {id} has no state ({state})"));
            }
            tokio::time::sleep(TICK).await;
            continue;
        };
        let view = crate::engine::view(&rollout);
        for s in rollout.steps().filter(|s| s.state == StepState::Failed) {
            if reported_failed.insert(s.key()) {
                screen.event(&format!(
                    "  ✗ {}/{} failed after {} attempt{}: {} (recover with `/convoy retry {}`)",
                    s.environment,
                    s.service,
                    s.attempts,
                    if s.attempts == 1 { "" } else { "s" },
                    s.error.as_deref().unwrap_or("failed"),
                    s.environment
                ));
            }
        }
        screen.block(wave_lines(&view));
        let gated = rollout.waves.iter().find(|w| w.name.as_str() == GATED_WAVE);
        if let Some(w) = gated
            && let Some(by) = &w.approved_by
            && !approved_shown
        {
            approved_shown = true;
            screen.event(&format!("  ✓ wave `{GATED_WAVE}` approved by {by}"));
        }
        if rollout.state == RolloutState::AwaitingApproval {
            let since = *awaiting_since.get_or_insert_with(|| {
                screen.event(&format!(
                    "  … wave `{GATED_WAVE}` waits for an approval (policy: approvers @acme/sre)"
                ));
                Instant::now()
            });
            match comment_sent {
                None if since.elapsed() >= opts.approve_after => {
                    screen.event(&format!(
                        "  → as {APPROVER} (write access, member of @acme/sre) the demo comments `/convoy approve {GATED_WAVE}` on PR #{PULL_REQUEST}"
                    ));
                    let body = format!("/convoy approve {GATED_WAVE}");
                    let comment = github.add_user_comment(REPO, PULL_REQUEST, APPROVER, &body);
                    deliver(
                        &running,
                        &secret,
                        "issue_comment",
                        &pr_comment(comment, APPROVER, &body),
                    )
                    .await?;
                    comment_sent = Some(Instant::now());
                }
                Some(at) if at.elapsed() >= COMMAND_GRACE => {
                    // A build without the slash-command handler: approve
                    // the way the handler would, through the runtime.
                    running
                        .runtime
                        .command(
                            &id,
                            Command::Approve {
                                wave: Some(WaveName::new(GATED_WAVE)),
                                by: APPROVER.to_owned(),
                            },
                        )
                        .await
                        .map_err(|e| format!("approving: {e}"))?;
                    // Audited as the handler would have audited it.
                    let entry = crate::store::AuditEntry {
                        at: chrono::Utc::now(),
                        actor: APPROVER.to_owned(),
                        repo: Some(RepoName::new(REPO)),
                        rollout_id: Some(id.clone()),
                        location: Some(format!("pr#{PULL_REQUEST} (demo)")),
                        action: format!("/convoy approve {GATED_WAVE}"),
                        result: "accepted".into(),
                        detail: Some("approved through convoy's runtime by the demo".into()),
                        line: None,
                    };
                    if let Err(e) = running.store.append_audit(&entry).await {
                        tracing::warn!(error = %e, "demo: the approval is not in the audit log");
                    }
                    screen.event(
                        "    (no slash-command handler acted on the comment in this build: the demo approved through convoy's runtime instead)",
                    );
                    comment_sent = Some(Instant::now() + DEMO_LIMIT);
                }
                _ => {}
            }
        }
        if rollout.state.is_terminal() {
            final_state = rollout.state;
            final_rollout = rollout;
            break;
        }
        if started.elapsed() > DEMO_LIMIT {
            return Err(format!(
                "the rollout did not end within {DEMO_LIMIT:?} (it is {state})"
            ));
        }
        tokio::time::sleep(TICK).await;
    }
    screen.finish();
    let retried = final_rollout
        .steps()
        .filter(|s| s.state == StepState::Succeeded && s.attempts > 1)
        .count();
    out("");
    out(&format!(
        "Rollout {} {} in {:.1} s: {} steps, {transient} transient failure{}, {retried} step{} succeeded after an automatic retry.",
        id,
        final_state.as_str(),
        started.elapsed().as_secs_f64(),
        final_rollout.steps().count(),
        if transient == 1 { "" } else { "s" },
        if retried == 1 { "" } else { "s" },
    ));
    out(&format!("Rollout page: {page}"));

    // The comment convoy posted, as the stand-in recorded it; a build
    // without the reporter shows the demo's own rendering instead.
    let marker = format!("<!-- convoy:rollout:{id} -->");
    let want = format!("**State**: `{}`", final_state.as_str());
    let wait = Instant::now();
    let mut posted: Option<String> = None;
    loop {
        let state = github.state();
        let body = state
            .comments_on(REPO, PULL_REQUEST)
            .iter()
            .filter_map(|c| c["body"].as_str())
            .find(|b| b.starts_with(&marker))
            .map(str::to_owned);
        // The comment and the check run are sent apart: wait for both to
        // show the end. The run the approval completed (`action_required`)
        // is not the end: the one after it may not be created yet.
        let run_done = state
            .check_runs
            .values()
            .rev()
            .filter_map(|v| v.last())
            .find(|r| r["name"] == "convoy/rollout" && r["head_sha"] == merge.as_str())
            .is_none_or(|r| r["status"] == "completed" && r["conclusion"] != "action_required");
        let done = run_done && body.as_deref().is_some_and(|b| b.contains(&want));
        if body.is_some() {
            posted = body;
        }
        if done
            || (posted.is_none() && wait.elapsed() > Duration::from_secs(3))
            || wait.elapsed() > Duration::from_secs(20)
        {
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    out("");
    match &posted {
        Some(body) => {
            out(&format!(
                "The comment convoy posted on PR #{PULL_REQUEST} (as the GitHub stand-in received it):"
            ));
            out("");
            out(body);
            let state = github.state();
            // The newest run: resuming after `action_required` (the
            // approval) starts a new one.
            if let Some(run) = state
                .check_runs
                .values()
                .rev()
                .filter_map(|v| v.last())
                .find(|r| r["name"] == "convoy/rollout" && r["head_sha"] == merge.as_str())
            {
                out(&format!(
                    "Check run convoy/rollout: {} / {}",
                    run["status"].as_str().unwrap_or("?"),
                    run["conclusion"].as_str().unwrap_or("-")
                ));
            }
            let reactions: Vec<&str> = state
                .reactions
                .iter()
                .map(|r| match r.content.as_str() {
                    "eyes" => "👀 (received)",
                    "rocket" => "🚀 (done)",
                    "confused" => "😕 (refused)",
                    other => other,
                })
                .collect();
            if !reactions.is_empty() {
                out(&format!(
                    "Reactions convoy left on {APPROVER}'s comment: {}",
                    reactions.join(", ")
                ));
            }
        }
        None => {
            out(&format!(
                "This build has no GitHub reporter, so nothing was posted; what the comment on PR #{PULL_REQUEST} shows:"
            ));
            out("");
            out(&summary_comment(
                id.as_str(),
                &final_rollout,
                &page,
                "/convoy",
            ));
        }
    }
    let ok = final_state == RolloutState::Succeeded;
    if !ok {
        out(&format!(
            "The rollout ended {}, not succeeded.",
            final_state.as_str()
        ));
    }
    if !opts.exit_when_done {
        out("");
        out(&format!(
            "convoy keeps serving {base_url} (the page above); press Ctrl-C to stop."
        ));
        running.until_signalled().await;
    }
    running.stop().await;
    drop(github);
    drop(fleet);
    Ok(ok)
}

/// The seed experiment: `runs` merges rolled out one after another over
/// one fleet with the given failure rate, one service per environment,
/// every step run (failure budget 100 %), two retries.
pub async fn experiment(opts: &DemoOptions, runs: usize) -> Result<ExperimentResult, String> {
    let work = Workspace::new()?;
    let names = environment_names(opts.environments);
    let fleet = Fleet::start(names.clone(), opts.seed)
        .await
        .map_err(|e| format!("starting the simulated fleet: {e}"))?;
    for name in &names {
        fleet.update_knobs(name, |k| k.transient_failure_rate = opts.failure_rate);
    }
    let envs: Vec<(String, String)> = names.iter().map(|n| (n.clone(), fleet.url(n))).collect();
    let scratch = ScratchRepo::init(&work.dir.join("git"), OWNER, NAME)?;
    let spec = experiment_spec(&envs);
    let mut previous = scratch.commit(
        "main",
        &[("convoy.yml", spec.as_str()), ("app/VERSION", "0\n")],
        "Initial import",
        AUTHOR,
        None,
    )?;
    let secret = format!("demo-{:016x}", fastrand::u64(..));
    let config = demo_config(&work, 0, &secret, None)?;
    let running = app::start(config, Services::default())
        .await
        .map_err(|e| format!("starting convoy: {e}"))?;
    out(&format!(
        "Seed experiment: {runs} rollouts over {} environments, transient failure rate {}, seed {}.",
        names.len(),
        crate::plan::render::format_percent(opts.failure_rate),
        opts.seed
    ));
    let mut result = ExperimentResult {
        runs,
        environments: names.len(),
        failure_rate: opts.failure_rate,
        retries: 2,
        some_first_attempt_failed: 0,
        needed_human: 0,
    };
    for run in 1..=runs {
        let version = format!("{run}\n");
        let sha = scratch.commit(
            "main",
            &[("app/VERSION", version.as_str())],
            &format!("Release {run}"),
            AUTHOR,
            None,
        )?;
        let number = 1000 + run as u64;
        deliver(
            &running,
            &secret,
            "pull_request",
            &merged_pull_request(number, &sha, &previous, &sha, &format!("Release {run}")),
        )
        .await?;
        let id = wait_for_rollout(&running, &sha, Duration::from_secs(60)).await?;
        let started = Instant::now();
        let state = loop {
            let (state, rollout) = load(&running, &id).await?;
            if let Some(r) = &rollout
                && r.state.is_terminal()
            {
                break r.state;
            }
            if started.elapsed() > DEMO_LIMIT {
                return Err(format!("run {run}: rollout {id} is still {state}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let deploys = fleet.deploys();
        let mine = deploys.iter().filter(|d| d.rollout == id.as_str());
        let first_failed = mine
            .clone()
            .filter(|d| d.attempt == 1 && d.status >= 500)
            .count();
        if first_failed > 0 {
            result.some_first_attempt_failed += 1;
        }
        let human = state != RolloutState::Succeeded;
        if human {
            result.needed_human += 1;
        }
        out(&format!(
            "  run {run}/{runs}: {} ({first_failed} first-attempt failure{}{})",
            state.as_str(),
            if first_failed == 1 { "" } else { "s" },
            if human {
                ", a step failed after its retries"
            } else {
                ""
            }
        ));
        previous = sha;
    }
    running.stop().await;
    Ok(result)
}

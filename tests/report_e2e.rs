//! Reporting end to end: signed webhooks in, a local fleet rolled out, and
//! what the GitHub stand-in was sent — check runs, one comment edited in
//! place, the PR-time preflight — every request valid against GitHub's
//! OpenAPI description, within the request budget and the pace.

mod common;

use std::time::{Duration, Instant};

use axum::http::Method;
use common::*;
use convoy::engine::Command;
use convoy::testkit::fleet::{AgentKnobs, Fleet};
use convoy::testkit::github_standin::{GitHubStandIn, StandInConfig, StandInState};
use serde_json::Value;

fn env_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("cust-{i:04}")).collect()
}

async fn fleet_of(n: usize) -> (Fleet, Vec<(String, String)>) {
    let names = env_names(n);
    let fleet = Fleet::start(names.clone(), 11).await.unwrap();
    let envs = names.iter().map(|n| (n.clone(), fleet.url(n))).collect();
    (fleet, envs)
}

async fn standin() -> GitHubStandIn {
    let s = GitHubStandIn::start(StandInConfig::for_tests())
        .await
        .unwrap();
    s.add_repo(REPO, "main");
    s
}

/// Every version of the check runs named `name` on `sha`, oldest run first.
fn runs_named(state: &StandInState, sha: &str, name: &str) -> Vec<Vec<Value>> {
    state
        .check_runs
        .values()
        .filter(|v| {
            v.last()
                .is_some_and(|r| r["name"] == name && r["head_sha"].as_str() == Some(sha))
        })
        .cloned()
        .collect()
}

/// Opens pull request `number` with head `head` and waits for its
/// `convoy/preflight` check run.
async fn open_and_preflight(
    running: &convoy::app::Running,
    gh: &GitHubStandIn,
    number: u64,
    head: &convoy::domain::CommitSha,
) -> Value {
    let delivery = format!("pr-{number}-open");
    deliver(
        running,
        "pull_request",
        &delivery,
        &pr_event("opened", number, head),
    )
    .await;
    eventually(30, "preflight posted", || {
        let runs = runs_named(&gh.state(), head.as_str(), "convoy/preflight");
        runs.first().and_then(|r| r.last().cloned())
    })
    .await
}

fn status_of(run: &Value) -> String {
    format!(
        "{}/{}",
        run["status"].as_str().unwrap_or("?"),
        run["conclusion"].as_str().unwrap_or("-")
    )
}

/// A one-service convoy.yml: canary (2 by label), then everything else
/// with `max_parallel` at once.
fn flat_spec(envs: &[(String, String)], max_parallel: usize) -> String {
    let mut s = String::from("version: 1\nservices:\n  app: {}\nenvironments:\n");
    for (i, (name, url)) in envs.iter().enumerate() {
        let ring = if i < 2 { "canary" } else { "main" };
        s.push_str(&format!(
            "  - name: {name}\n    labels: {{ ring: {ring} }}\n    driver: agent\n    url: {url}\n"
        ));
    }
    s.push_str(&format!(
        "waves:\n  - name: canary\n    selector: {{ ring: canary }}\n  - name: rest\n    percent: 100\n    max_parallel: {max_parallel}\npolicy:\n  poll_interval: 1s\n  backoff: 1s\n  retries: 0\n"
    ));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_gets_a_check_run_in_progress_then_success_and_one_comment_edited_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let gh = standin().await;
    let (fleet, envs) = fleet_of(6).await;
    // Deploys that take a while, so the rollout is seen running.
    for (name, _) in &envs {
        fleet.update_knobs(name, |k| k.deploy_duration = Duration::from_millis(1500));
    }
    let sha = git.commit(&[("convoy.yml", &fleet_spec(&envs, "", ""))], "first");
    gh.add_pull_request(REPO, 3, "dev", sha.as_str(), "feature", "main", true);
    let config = config_with_github(
        dir.path(),
        &git,
        "",
        &gh.url(),
        &[("CONVOY_GITHUB_MIN_UPDATE_INTERVAL", "1s")],
    );
    let running = start(config).await;
    assert_eq!(
        deliver(&running, "pull_request", "pr-3", &merged_pr(3, &sha)).await,
        202
    );
    let rollout = rollout_of(&running, &sha).await;
    let done = wait_state(
        &running,
        &rollout.id,
        &["succeeded", "failed", "halted"],
        120,
    )
    .await;
    assert_eq!(done.state, "succeeded");

    let runs = eventually(20, "the check run concludes success", || {
        let runs = runs_named(&gh.state(), sha.as_str(), "convoy/rollout");
        (runs.len() == 1 && status_of(runs[0].last()?) == "completed/success").then_some(runs)
    })
    .await;
    let history: Vec<String> = runs[0].iter().map(status_of).collect();
    assert!(
        history.iter().any(|s| s == "in_progress/-"),
        "went through in_progress: {history:?}"
    );
    let last = runs[0].last().unwrap();
    assert_eq!(last["external_id"], rollout.id.as_str());
    assert_eq!(
        last["details_url"],
        format!("http://convoy.test/rollouts/{}", rollout.id)
    );

    let state = eventually(20, "the comment shows success", || {
        let s = gh.state();
        let ok = s
            .comments_on(REPO, 3)
            .first()
            .and_then(|c| c["body"].as_str())
            .is_some_and(|b| b.contains("succeeded"));
        ok.then_some(s)
    })
    .await;
    let comments = state.comments_on(REPO, 3);
    assert_eq!(comments.len(), 1, "one comment per rollout");
    let body = comments[0]["body"].as_str().unwrap();
    assert!(body.starts_with(&format!("<!-- convoy:rollout:{} -->", rollout.id)));
    let versions = state
        .comments
        .values()
        .find(|v| v.last().is_some_and(|c| c["id"] == comments[0]["id"]))
        .unwrap()
        .len();
    assert!(versions >= 2, "edited in place ({versions} versions)");
    assert_eq!(state.count_requests(&Method::POST, "/issues/3/comments"), 1);
    assert_eq!(state.count_requests(&Method::POST, "/check-runs"), 1);
    running.stop().await;
    gh.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_rollout_asks_for_action_with_buttons_and_a_retry_starts_a_new_check_run() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let gh = standin().await;
    let (fleet, envs) = fleet_of(4).await;
    // cust-0000 is a canary and refuses every deploy.
    fleet.set_knobs(
        "cust-0000",
        AgentKnobs {
            permanent_failure: true,
            ..AgentKnobs::default()
        },
    );
    let sha = git.commit(&[("convoy.yml", &flat_spec(&envs, 10))], "first");
    // A push without a pull request: the check run still comes.
    let config = config_with_github(
        dir.path(),
        &git,
        "",
        &gh.url(),
        &[("CONVOY_GITHUB_MIN_UPDATE_INTERVAL", "1s")],
    );
    let running = start(config).await;
    deliver(
        &running,
        "push",
        "push-1",
        &push("0000000000000000000000000000000000000000", &sha),
    )
    .await;
    let rollout = rollout_of(&running, &sha).await;
    assert_eq!(rollout.pull_request, None);
    wait_state(&running, &rollout.id, &["halted"], 60).await;

    let halted = eventually(20, "the check run asks for action", || {
        let runs = runs_named(&gh.state(), sha.as_str(), "convoy/rollout");
        let last = runs.first()?.last()?.clone();
        (status_of(&last) == "completed/action_required").then_some(last)
    })
    .await;
    let ids: Vec<&str> = halted["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["retry-failed", "rollback", "abort"]);
    for a in halted["actions"].as_array().unwrap() {
        assert!(a["label"].as_str().unwrap().chars().count() <= 20);
        assert!(a["description"].as_str().unwrap().chars().count() <= 40);
        let command =
            convoy::commands::command_for_action(a["identifier"].as_str().unwrap(), &[]).unwrap();
        assert!(matches!(
            command,
            convoy::commands::Command::Retry { .. }
                | convoy::commands::Command::Rollback { .. }
                | convoy::commands::Command::Abort
        ));
    }
    let summary = halted["output"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("/convoy retry failed"), "{summary}");

    // Fixed, retried: a new check run of the same name; the old one stays.
    fleet.set_knobs("cust-0000", AgentKnobs::default());
    running
        .runtime
        .command(
            &rollout.id,
            Command::Retry {
                environments: vec![],
                by: "alice".into(),
            },
        )
        .await
        .unwrap();
    wait_state(&running, &rollout.id, &["succeeded"], 60).await;
    let runs = eventually(20, "a second check run concludes success", || {
        let runs = runs_named(&gh.state(), sha.as_str(), "convoy/rollout");
        (runs.len() == 2 && status_of(runs[1].last()?) == "completed/success").then_some(runs)
    })
    .await;
    assert_eq!(
        status_of(runs[0].last().unwrap()),
        "completed/action_required"
    );
    assert!(
        gh.state().comments.is_empty(),
        "no pull request, no comment"
    );
    running.stop().await;
    gh.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_with_a_broken_convoy_yml_fails_preflight_with_annotations_at_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let gh = standin().await;
    let (_fleet, envs) = fleet_of(3).await;
    let good = flat_spec(&envs, 10);
    let base = git.commit(&[("convoy.yml", &good)], "first");
    // Line 3 gets an unknown key; the policy's retries a wrong type.
    let broken = good
        .replacen("  app: {}\n", "  app:\n    pathz: [\"x/**\"]\n", 1)
        .replace("retries: 0", "retries: many");
    let head = git.commit(&[("convoy.yml", &broken)], "break it");
    let config = config_with_github(dir.path(), &git, "", &gh.url(), &[]);
    let running = start(config).await;
    let run = open_and_preflight(&running, &gh, 9, &head).await;
    assert_eq!(status_of(&run), "completed/failure");
    let id = run["id"].as_u64().unwrap();
    let annotations = gh.state().annotations.get(&id).cloned().unwrap_or_default();
    let lines: Vec<(String, u64)> = annotations
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap().to_owned(),
                a["start_line"].as_u64().unwrap(),
            )
        })
        .collect();
    let retries_line = broken
        .lines()
        .position(|l| l.contains("retries: many"))
        .unwrap() as u64
        + 1;
    assert!(
        lines.contains(&("convoy.yml".into(), 4)),
        "pathz at line 4: {lines:?}"
    );
    assert!(
        lines.contains(&("convoy.yml".into(), retries_line)),
        "retries at line {retries_line}: {lines:?}"
    );
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.contains("convoy.yml:4:"), "{summary}");

    // Fixed on the branch: the next push to the pull request passes.
    let fixed = git.commit(&[("convoy.yml", &good)], "fix it");
    deliver(
        &running,
        "pull_request",
        "pr-9-sync",
        &pr_event("synchronize", 9, &fixed),
    )
    .await;
    let run = eventually(30, "preflight posted for the fix", || {
        let runs = runs_named(&gh.state(), fixed.as_str(), "convoy/preflight");
        runs.first().and_then(|r| r.last().cloned())
    })
    .await;
    assert_eq!(status_of(&run), "completed/success");
    let text = run["output"]["text"].as_str().unwrap_or_default();
    assert!(text.contains("canary"), "the plan is shown: {text}");
    let _ = base;
    running.stop().await;
    gh.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_names_unreachable_and_drifted_environments() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let gh = standin().await;
    let (fleet, envs) = fleet_of(5).await;
    let sha = git.commit(&[("convoy.yml", &flat_spec(&envs, 10))], "first");
    let running = start(config_with_github(dir.path(), &git, "", &gh.url(), &[])).await;
    // Roll out once, so convoy knows what runs where.
    deliver(&running, "pull_request", "pr-1", &merged_pr(1, &sha)).await;
    gh.add_pull_request(REPO, 1, "dev", sha.as_str(), "f", "main", true);
    let rollout = rollout_of(&running, &sha).await;
    wait_state(&running, &rollout.id, &["succeeded"], 60).await;
    // Out-of-band change on cust-0003; cust-0004 goes away.
    fleet.set_version("cust-0003", "app", Some("hotfix"));
    fleet.update_knobs("cust-0004", |k| k.unreachable = true);
    // An unreachable agent's URL points at a closed port.
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(n, _)| (n.clone(), fleet.url(n)))
        .collect();
    let head = git.commit(&[("convoy.yml", &flat_spec(&envs, 10))], "move");
    let run = open_and_preflight(&running, &gh, 2, &head).await;
    assert_eq!(status_of(&run), "completed/success");
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.contains("unreachable: `cust-0004`"), "{summary}");
    assert!(summary.contains("drifted"), "{summary}");
    assert!(summary.contains("`cust-0003`"), "{summary}");
    running.stop().await;
    gh.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_shows_an_emergency_freeze_of_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let gh = standin().await;
    let (_fleet, envs) = fleet_of(2).await;
    let running = start(config_with_github(dir.path(), &git, "", &gh.url(), &[])).await;
    // `/convoy freeze 2h incident` earlier, and an expired one of all.
    let until = chrono::Utc::now() + chrono::Duration::hours(2);
    running
        .runtime
        .freeze(
            Some(&convoy::domain::RepoName::new(REPO)),
            Some(until),
            Some("incident".into()),
            "bob",
        )
        .await
        .unwrap();
    let head = git.commit(&[("convoy.yml", &flat_spec(&envs, 10))], "first");
    let run = open_and_preflight(&running, &gh, 3, &head).await;
    assert_eq!(status_of(&run), "completed/success");
    let summary = run["output"]["summary"].as_str().unwrap();
    let expected = format!(
        "An emergency freeze of this repository by `bob` is in force until {} (incident)",
        until.format("%Y-%m-%d %H:%M UTC")
    );
    assert!(summary.contains(&expected), "{summary}");
    assert!(summary.contains("`/convoy unfreeze` lifts"), "{summary}");
    running.stop().await;
    gh.assert_no_violations();
}

/// A pull request's branch is often behind its base. The preview shows
/// what the pull request changes, from where its branch and the last
/// commit rolled out meet: not the base's newer changes, which the head
/// only seems to take back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_of_a_branch_behind_its_base_shows_only_its_own_change() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let gh = standin().await;
    let (_fleet, envs) = fleet_of(2).await;
    git.commit(
        &[
            ("convoy.yml", &fleet_spec(&envs, "", "")),
            ("services/api/main.rs", "fn main() {}"),
            ("services/web/index.html", "<h1>one</h1>"),
        ],
        "first",
    );
    git.git(&["branch", "feature"]);
    // main moves on: an api change, rolled out.
    let api = git.commit(&[("services/api/main.rs", "fn main() { two() }")], "api");
    let running = start(config_with_github(dir.path(), &git, "", &gh.url(), &[])).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(1, &api)).await;
    let rollout = rollout_of(&running, &api).await;
    let done = wait_state(
        &running,
        &rollout.id,
        &["succeeded", "failed", "halted"],
        60,
    )
    .await;
    assert_eq!(done.state, "succeeded");
    // The branch, still without it, changes web only.
    git.git(&["checkout", "-q", "feature"]);
    let head = git.commit(&[("services/web/index.html", "<h1>two</h1>")], "web");
    let run = open_and_preflight(&running, &gh, 3, &head).await;
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.contains("rolls out `web` to"), "{summary}");
    assert!(!summary.contains("`api`"), "{summary}");
    running.stop().await;
    gh.assert_no_violations();
}

/// A repository whose first commit (services `api` and `web`, and their
/// `convoy.yml`) was merged into main and rolled out, convoy running
/// against the GitHub stand-in: where the preflight tests of the base
/// branch start.
struct BaseRolledOut {
    _dir: tempfile::TempDir,
    _fleet: Fleet,
    git: GitFixture,
    gh: GitHubStandIn,
    running: convoy::app::Running,
    first: convoy::domain::CommitSha,
    spec: String,
}

impl BaseRolledOut {
    async fn start() -> BaseRolledOut {
        let dir = tempfile::tempdir().unwrap();
        let git = GitFixture::new(dir.path());
        let gh = standin().await;
        let (fleet, envs) = fleet_of(2).await;
        let spec = fleet_spec(&envs, "", "");
        let first = git.commit(
            &[
                ("convoy.yml", &spec),
                ("services/api/main.rs", "fn main() {}"),
                ("services/web/index.html", "<h1>one</h1>"),
            ],
            "first",
        );
        let running = start(config_with_github(dir.path(), &git, "", &gh.url(), &[])).await;
        deliver(&running, "pull_request", "pr-1", &merged_pr(1, &first)).await;
        let rollout = rollout_of(&running, &first).await;
        let done = wait_state(
            &running,
            &rollout.id,
            &["succeeded", "failed", "halted"],
            60,
        )
        .await;
        assert_eq!(done.state, "succeeded");
        BaseRolledOut {
            _dir: dir,
            _fleet: fleet,
            git,
            gh,
            running,
            first,
            spec,
        }
    }

    async fn stop(self) {
        self.running.stop().await;
        self.gh.assert_no_violations();
    }
}

/// The base branch moved on since its last successful rollout, with a
/// change the pull request's branch does not have. A merge now is planned
/// from that rollout's commit, so it rolls the base's change out too: the
/// preview plans it and says where it comes from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_names_what_the_base_changed_since_its_last_rollout() {
    let base = BaseRolledOut::start().await;
    let (git, gh, running, first) = (&base.git, &base.gh, &base.running, &base.first);
    git.git(&["branch", "feature"]);
    // main moves on with a web change that is not rolled out (its rollout
    // never ran, as when one failed).
    let web = git.commit(&[("services/web/index.html", "<h1>two</h1>")], "web");
    git.git(&["checkout", "-q", "feature"]);
    let head = git.commit(&[("services/api/main.rs", "fn main() { two() }")], "api");
    let run = open_and_preflight(running, gh, 3, &head).await;
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.contains("rolls out `api`, `web` to"), "{summary}");
    let expected = format!(
        "`main` has changes not rolled out yet: its last successful rollout was `{}`, and up to `{}` it also changes `web`, which this pull request does not touch.",
        &first.as_str()[..7],
        &web.as_str()[..7]
    );
    assert!(summary.contains(&expected), "{summary}");
    assert_eq!(status_of(&run), "completed/success");

    // The base moves again; the same head, already in convoy's clone, is
    // checked again: the base's head is fetched anew, not taken from the
    // clone.
    git.git(&["checkout", "-q", "main"]);
    let web2 = git.commit(
        &[("services/web/index.html", "<h1>three</h1>")],
        "web again",
    );
    let reopened = pr_event("reopened", 3, &head);
    deliver(running, "pull_request", "pr-3-reopen", &reopened).await;
    let up_to = format!("and up to `{}` it also changes `web`", &web2.as_str()[..7]);
    eventually(30, "a preflight against the base's new head", || {
        let runs = runs_named(&gh.state(), head.as_str(), "convoy/preflight");
        runs.iter()
            .filter_map(|r| r.last()?["output"]["summary"].as_str().map(str::to_owned))
            .find(|s| s.contains(&up_to))
    })
    .await;

    // The branch catches up with its base: the web changes are in it now,
    // but they are still the base's, not the pull request's.
    git.git(&["checkout", "-q", "feature"]);
    git.git(&["merge", "-q", "--no-edit", "main"]);
    let merged = convoy::domain::CommitSha::new(git.git(&["rev-parse", "HEAD"]));
    let run = open_and_preflight(running, gh, 4, &merged).await;
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.contains("rolls out `api`, `web` to"), "{summary}");
    assert!(summary.contains(&up_to), "{summary}");
    base.stop().await;
}

/// The base branch cannot be read (gone from the repository, as after a
/// rename): the preflight is still posted, with the pull request's own
/// change, and says that a merge may roll out more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_says_so_when_it_cannot_read_the_base() {
    let base = BaseRolledOut::start().await;
    let (git, gh, running, first) = (&base.git, &base.gh, &base.running, &base.first);
    git.git(&["branch", "-m", "main", "trunk"]);
    git.git(&["checkout", "-q", "-b", "feature"]);
    let head = git.commit(&[("services/api/main.rs", "fn main() { two() }")], "api");
    let run = open_and_preflight(running, gh, 3, &head).await;
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.contains("rolls out `api` to"), "{summary}");
    let expected = format!(
        "convoy could not read what `main` changed since its last successful rollout (`{}`)",
        &first.as_str()[..7]
    );
    assert!(summary.contains(&expected), "{summary}");
    base.stop().await;
}

/// The base changed only `convoy.yml` since its last rollout, moving
/// `web` to other paths: judged with the base's file, `web` changed and a
/// merge rolls it out; the head's older file would not say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_judges_the_base_s_changes_by_the_base_s_convoy_yml() {
    let base = BaseRolledOut::start().await;
    let (git, gh, running, spec) = (&base.git, &base.gh, &base.running, &base.spec);
    git.git(&["branch", "feature"]);
    let moved = spec.replace("services/web/**", "web/**");
    assert_ne!(&moved, spec, "the spec names web's paths");
    git.commit(&[("convoy.yml", &moved)], "web moves");
    git.git(&["checkout", "-q", "feature"]);
    let head = git.commit(&[("services/api/main.rs", "fn main() { two() }")], "api");
    let run = open_and_preflight(running, gh, 3, &head).await;
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.contains("rolls out `api`, `web` to"), "{summary}");
    assert!(summary.contains("it also changes `web`"), "{summary}");
    base.stop().await;
}

/// SPEC 7.5: a 1,000-environment rollout that runs for about a minute or
/// less costs at most 40 GitHub requests in all (default intervals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_environment_rollout_costs_at_most_forty_requests() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let gh = standin().await;
    let (_fleet, envs) = fleet_of(1000).await;
    let sha = git.commit(&[("convoy.yml", &flat_spec(&envs, 100))], "first");
    gh.add_pull_request(REPO, 4, "dev", sha.as_str(), "feature", "main", true);
    let running = start(config_with_github(dir.path(), &git, "", &gh.url(), &[])).await;
    let began = Instant::now();
    deliver(&running, "pull_request", "pr-4", &merged_pr(4, &sha)).await;
    let rollout = rollout_of(&running, &sha).await;
    wait_state(
        &running,
        &rollout.id,
        &["succeeded", "failed", "halted"],
        300,
    )
    .await;
    let took = began.elapsed();
    eventually(30, "the final state is on GitHub", || {
        let runs = runs_named(&gh.state(), sha.as_str(), "convoy/rollout");
        (status_of(runs.first()?.last()?) == "completed/success").then_some(())
    })
    .await;
    // Nothing more goes out afterwards.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = gh.state();
    let total = state.requests.len();
    let list: Vec<String> = state
        .requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    eprintln!("1,000 environments: {total} GitHub requests for a rollout of {took:?}");
    assert!(
        total <= 40,
        "{total} requests for a rollout of {took:?}: {list:#?}"
    );
    assert_eq!(state.comments_on(REPO, 4).len(), 1);
    running.stop().await;
    gh.assert_no_violations();
}

/// SPEC 7.5: all content-creating requests of one installation share one
/// pace, however many rollouts run: three repositories at once, never more
/// than `writes_per_minute` in any minute, spaced 60/wpm seconds apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_repositories_of_one_installation_share_one_pace() {
    const WPM: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let gh = standin().await;
    let (_fleet, envs) = fleet_of(4).await;
    let repos = ["acme/app", "acme/billing", "acme/search"];
    let mut shas = Vec::new();
    let mut first = None;
    for (i, repo) in repos.iter().enumerate() {
        let git = GitFixture::named(dir.path(), repo);
        gh.add_repo(repo, "main");
        let sha = git.commit(&[("convoy.yml", &flat_spec(&envs, 10))], "first");
        gh.add_pull_request(repo, 10 + i as u64, "dev", sha.as_str(), "f", "main", true);
        shas.push(sha);
        first.get_or_insert(git);
    }
    let git = first.unwrap();
    let config = config_with_github(
        dir.path(),
        &git,
        "",
        &gh.url(),
        &[
            ("CONVOY_GITHUB_WRITES_PER_MINUTE", "30"),
            ("CONVOY_GITHUB_MIN_UPDATE_INTERVAL", "1s"),
            ("CONVOY_GITHUB_PROGRESS_INTERVAL", "2s"),
        ],
    );
    let running = start(config).await;
    for (i, repo) in repos.iter().enumerate() {
        let n = 10 + i as u64;
        deliver(
            &running,
            "pull_request",
            &format!("pr-{n}"),
            &merged_pr_in(repo, n, &shas[i]),
        )
        .await;
    }
    // Watch the writes arrive (the stand-in records order, not time).
    let mut seen = 0;
    let mut times: Vec<Instant> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let state = gh.state();
        let writes = state
            .requests
            .iter()
            .filter(|r| {
                matches!(r.method, Method::POST | Method::PATCH) && r.path.starts_with("/repos/")
            })
            .count();
        let now = Instant::now();
        times.extend(std::iter::repeat_n(now, writes - seen));
        seen = writes;
        let done = repos.iter().zip(&shas).all(|(repo, sha)| {
            state.check_runs.values().filter_map(|v| v.last()).any(|r| {
                r["head_sha"].as_str() == Some(sha.as_str())
                    && r["url"].as_str().is_some_and(|u| u.contains(repo))
                    && r["conclusion"] == "success"
            })
        });
        if done || now > deadline {
            assert!(done, "every repository's rollout reported success");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(times.len() >= 6, "{} writes", times.len());
    let spacing = Duration::from_secs(60) / WPM as u32;
    for pair in times.windows(2) {
        // The pace is kept when sending; arrival can bunch a little behind
        // a slow request (a token fetch), never by half the spacing.
        assert!(
            pair[1] - pair[0] >= spacing / 2,
            "two writes {:?} apart; the pace is {spacing:?}",
            pair[1] - pair[0]
        );
    }
    for (i, t) in times.iter().enumerate() {
        let in_minute = times[i..]
            .iter()
            .take_while(|u| **u - *t < Duration::from_secs(60))
            .count();
        assert!(in_minute <= WPM, "{in_minute} writes within a minute");
    }
    running.stop().await;
    gh.assert_no_violations();
}

/// An installation suspended while its rollout runs: GitHub refuses every
/// update, the rollout goes on to its end, and when the installation is
/// unsuspended the final state reaches GitHub without any other change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_refused_while_suspended_catch_up_when_unsuspended() {
    use convoy::testkit::github_standin::{Fault, FaultKind};
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let gh = standin().await;
    let (_fleet, envs) = fleet_of(3).await;
    let sha = git.commit(&[("convoy.yml", &flat_spec(&envs, 10))], "first");
    gh.add_pull_request(REPO, 5, "dev", sha.as_str(), "feature", "main", true);
    let running = start(config_with_github(dir.path(), &git, "", &gh.url(), &[])).await;
    let installation = |action: &str| {
        let mut e = example("installation", Some("created"));
        e["action"] = action.into();
        e["installation"]["id"] = INSTALLATION.into();
        e
    };
    deliver(
        &running,
        "installation",
        "i-suspend",
        &installation("suspend"),
    )
    .await;
    // GitHub refuses a suspended installation's calls (a 403 on its
    // token); any refusal convoy does not retry stands in for it here.
    for method in [Method::POST, Method::PATCH] {
        gh.inject(Fault::new(FaultKind::NotFound, 100_000).on(method, "/repos/acme/app/"));
    }
    deliver(&running, "pull_request", "pr-5", &merged_pr(5, &sha)).await;
    let rollout = rollout_of(&running, &sha).await;
    let done = wait_state(&running, &rollout.id, &["succeeded", "failed"], 60).await;
    assert_eq!(
        done.state, "succeeded",
        "the rollout goes on while suspended"
    );
    // The final state was sent, and refused: nothing is left to send.
    eventually(30, "the final state refused", || {
        gh.state()
            .requests
            .iter()
            .any(|r| {
                r.status == 404
                    && r.path.contains("check-runs")
                    && r.body
                        .as_ref()
                        .is_some_and(|b| b["conclusion"] == "success")
            })
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        runs_named(&gh.state(), sha.as_str(), "convoy/rollout")
            .iter()
            .all(|r| r.last().is_none_or(|r| status_of(r) != "completed/success")),
        "nothing reached GitHub while suspended"
    );

    gh.clear_faults();
    deliver(
        &running,
        "installation",
        "i-unsuspend",
        &installation("unsuspend"),
    )
    .await;
    eventually(
        30,
        "the final state reaches GitHub once unsuspended",
        || {
            let s = gh.state();
            let runs = runs_named(&s, sha.as_str(), "convoy/rollout");
            let ok = runs.len() == 1
                && status_of(runs[0].last()?) == "completed/success"
                && s.comments_on(REPO, 5).len() == 1;
            ok.then_some(())
        },
    )
    .await;
    running.stop().await;
    gh.assert_no_violations();
}

/// SPEC 7.5 and 6.9: GitHub down for a whole rollout delays reporting but
/// never stops the rollout; after a restart the reporter re-derives what
/// GitHub should show from stored state, and a second restart sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_what_github_missed_is_derived_again_and_sent_once() {
    use convoy::testkit::github_standin::{Fault, FaultKind};
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let gh = standin().await;
    let (_fleet, envs) = fleet_of(3).await;
    let sha = git.commit(&[("convoy.yml", &flat_spec(&envs, 10))], "first");
    gh.add_pull_request(REPO, 5, "dev", sha.as_str(), "feature", "main", true);
    for method in [Method::POST, Method::PATCH] {
        gh.inject(Fault::new(FaultKind::BadGateway, 100_000).on(method, "/repos/acme/app/"));
    }
    let config = || config_with_github(dir.path(), &git, "", &gh.url(), &[]);
    // The first process runs on a runtime of its own and dies with it, as
    // in a crash: its sends still retrying against the outage die too.
    let first = config();
    let sha1 = sha.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let running = start(first).await;
            deliver(&running, "pull_request", "pr-5", &merged_pr(5, &sha1)).await;
            let rollout = rollout_of(&running, &sha1).await;
            wait_state(&running, &rollout.id, &["succeeded"], 60).await;
            running.stop().await;
        });
        rt.shutdown_timeout(Duration::from_secs(1));
    })
    .join()
    .unwrap();
    let state = gh.state();
    assert!(state.check_runs.is_empty() && state.comments.is_empty());

    gh.clear_faults();
    let running = start(config()).await;
    eventually(
        30,
        "the final state reaches GitHub after the restart",
        || {
            let s = gh.state();
            let runs = runs_named(&s, sha.as_str(), "convoy/rollout");
            let ok = runs.len() == 1
                && status_of(runs[0].last()?) == "completed/success"
                && s.comments_on(REPO, 5).len() == 1;
            ok.then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.stop().await;
    let before = gh.state().requests.len();

    // Everything is on GitHub and in the ledger: a restart sends nothing.
    let running = start(config()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.stop().await;
    let after = gh.state();
    let writes: Vec<String> = after.requests[before..]
        .iter()
        .filter(|r| r.method != Method::GET && r.path.starts_with("/repos/"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(after.comments_on(REPO, 5).len(), 1);
    gh.take_violations();
}

/// A merge with an invalid convoy.yml fails before planning: the check run
/// fails with the errors annotated, and the pull request hears why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_with_an_invalid_convoy_yml_fails_its_check_run_with_annotations() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let gh = standin().await;
    let sha = git.commit(
        &[(
            "convoy.yml",
            "version: 1\nservices:\n  app:\n    pathz: [x]\nenvironments: []\nwaves: []\n",
        )],
        "broken",
    );
    gh.add_pull_request(REPO, 6, "dev", sha.as_str(), "feature", "main", true);
    let running = start(config_with_github(dir.path(), &git, "", &gh.url(), &[])).await;
    deliver(&running, "pull_request", "pr-6", &merged_pr(6, &sha)).await;
    let run = eventually(30, "the check run fails", || {
        let runs = runs_named(&gh.state(), sha.as_str(), "convoy/rollout");
        let last = runs.first()?.last()?.clone();
        (status_of(&last) == "completed/failure").then_some(last)
    })
    .await;
    let id = run["id"].as_u64().unwrap();
    let annotations = gh.state().annotations.get(&id).cloned().unwrap_or_default();
    assert!(
        annotations.iter().any(|a| a["start_line"] == 4),
        "{annotations:?}"
    );
    let comment = eventually(30, "the comment explains", || {
        gh.state()
            .comments_on(REPO, 6)
            .first()
            .and_then(|c| c["body"].as_str().map(str::to_owned))
    })
    .await;
    assert!(comment.contains("convoy.yml:4:"), "{comment}");
    running.stop().await;
    gh.assert_no_violations();
}

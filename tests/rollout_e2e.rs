//! Rollouts end to end: a merged-PR webhook in, a real local fleet rolled
//! out in waves and dependency order, halts and retries, and a crash in the
//! middle that the next process finishes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use convoy::engine::Command;
use convoy::testkit::fleet::{AgentKnobs, Fleet};

fn env_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("cust-{i:03}")).collect()
}

/// Every environment runs every service (db, api, web) at `sha`.
fn assert_all_at(fleet: &Fleet, envs: &[(String, String)], sha: &convoy::domain::CommitSha) {
    for (name, _) in envs {
        for service in ["db", "api", "web"] {
            assert_eq!(
                fleet.version_of(name, service).as_deref(),
                Some(sha.as_str()),
                "{name}/{service}"
            );
        }
    }
}

async fn fleet_of(n: usize) -> (Fleet, Vec<(String, String)>) {
    let names = env_names(n);
    let fleet = Fleet::start(names.clone(), 7).await.unwrap();
    let envs = names.iter().map(|n| (n.clone(), fleet.url(n))).collect();
    (fleet, envs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_pr_rolls_out_fifty_environments_in_three_waves() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(50).await;
    let sha = git.commit(
        &[
            ("convoy.yml", &fleet_spec(&envs, "", "")),
            ("services/api/main.rs", "fn main() {}"),
        ],
        "first",
    );
    let running = start(config(dir.path(), &git, "")).await;
    assert_eq!(
        deliver(&running, "pull_request", "pr-1", &merged_pr(1, &sha)).await,
        202
    );
    // The push of the same merge attaches to the same rollout.
    assert_eq!(
        deliver(
            &running,
            "push",
            "push-1",
            &push("0000000000000000000000000000000000000000", &sha)
        )
        .await,
        202
    );
    let rollout = rollout_of(&running, &sha).await;
    assert_eq!(rollout.pull_request, Some(1));
    let done = wait_state(
        &running,
        &rollout.id,
        &["succeeded", "failed", "halted"],
        120,
    )
    .await;
    assert_eq!(done.state, "succeeded", "{:?}", done.error);

    // Every environment runs every service at the merged commit.
    assert_all_at(&fleet, &envs, &sha);
    assert!(
        fleet.overlapping_deploys().is_empty(),
        "no deploys to one target overlap"
    );
    // Wave order: every deploy of a wave finished before the next wave's first.
    let view = api_rollout(&running, &rollout.id).await;
    let waves = view["waves"].as_array().unwrap();
    let sizes: Vec<usize> = waves
        .iter()
        .map(|w| w["steps"].as_array().unwrap().len() / 3)
        .collect();
    assert_eq!(
        sizes,
        vec![2, 8, 40],
        "canary 2, 20 % → 8 more, the rest 40"
    );
    let deploys = fleet.deploys();
    let wave_of: BTreeMap<String, usize> = waves
        .iter()
        .enumerate()
        .flat_map(|(i, w)| {
            w["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |s| (s["environment"].as_str().unwrap().to_owned(), i))
        })
        .collect();
    for w in 1..3 {
        let first_of_next = deploys
            .iter()
            .filter(|d| wave_of[&d.environment] == w)
            .map(|d| d.received)
            .min()
            .unwrap();
        let last_of_prev = deploys
            .iter()
            .filter(|d| wave_of[&d.environment] == w - 1)
            .map(|d| d.completed)
            .max()
            .unwrap();
        assert!(
            last_of_prev <= first_of_next,
            "wave {w} started before wave {} ended",
            w - 1
        );
    }
    // Dependency order inside each environment: db, then api, then web.
    for (name, _) in &envs {
        let at = |svc: &str| {
            deploys
                .iter()
                .find(|d| &d.environment == name && d.service == svc)
                .map(|d| d.received)
                .unwrap()
        };
        assert!(at("db") <= at("api") && at("api") <= at("web"), "{name}");
    }
    assert_eq!(view["state"], "succeeded");
    assert_eq!(view["pull_request"], 1);
    assert_eq!(view["risk"]["steps"], 150);
    let list: serde_json::Value = reqwest::get(format!(
        "http://{}/api/rollouts?repo=acme/app",
        running.addr
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    for bad in ["nonsense", "acme/", "/app", "a/b/c"] {
        let answer = reqwest::get(format!("http://{}/api/rollouts?repo={bad}", running.addr))
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{bad}");
    }

    // A second merge that only touches web deploys only web.
    let sha2 = git.commit(&[("services/web/index.html", "<h1>hi</h1>")], "web only");
    deliver(&running, "pull_request", "pr-2", &merged_pr(2, &sha2)).await;
    let second = rollout_of(&running, &sha2).await;
    let done = wait_state(
        &running,
        &second.id,
        &["succeeded", "failed", "halted"],
        120,
    )
    .await;
    assert_eq!(done.state, "succeeded");
    let view = api_rollout(&running, &second.id).await;
    assert_eq!(view["previous_commit"], sha.as_str());
    assert_eq!(view["risk"]["steps"], 50, "web only");
    assert_eq!(
        fleet.version_of("cust-000", "api").as_deref(),
        Some(sha.as_str())
    );
    assert_eq!(
        fleet.version_of("cust-000", "web").as_deref(),
        Some(sha2.as_str())
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_over_budget_halts_and_a_retry_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(10).await;
    let spec = fleet_spec(&envs, "  retries: 1\n", "");
    let sha = git.commit(&[("convoy.yml", &spec)], "first");
    // cust-005 lands in a later wave and refuses every deploy for good.
    fleet.set_knobs(
        "cust-005",
        AgentKnobs {
            permanent_failure: true,
            ..AgentKnobs::default()
        },
    );
    let running = start(config(dir.path(), &git, "")).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(7, &sha)).await;
    let rollout = rollout_of(&running, &sha).await;
    let halted = wait_state(&running, &rollout.id, &["halted", "succeeded"], 60).await;
    assert_eq!(halted.state, "halted");
    let view = api_rollout(&running, &rollout.id).await;
    let failed = steps_in(&view, &["failed"]);
    assert!(!failed.is_empty());
    assert!(
        failed.iter().all(|s| s["environment"] == "cust-005"),
        "{failed:?}"
    );
    assert_eq!(
        failed[0]["attempts"], 1,
        "a permanent failure is not retried"
    );

    // Retrying with nothing fixed is accepted; fix the agent first.
    fleet.set_knobs("cust-005", AgentKnobs::default());
    retry_all(&running, &rollout.id)
        .await
        .expect("retry accepted");
    let done = wait_state(
        &running,
        &rollout.id,
        &["succeeded", "halted", "failed"],
        60,
    )
    .await;
    assert_eq!(done.state, "succeeded");
    assert_eq!(
        fleet.version_of("cust-005", "web").as_deref(),
        Some(sha.as_str())
    );
    // Nothing left to retry now: a clear error.
    let err = retry_all(&running, &rollout.id).await.unwrap_err();
    assert!(
        err.to_string().contains("nothing to retry") || err.to_string().contains("ended"),
        "{err}"
    );
    running.stop().await;
}

/// A retry may run a failed rollout again only while it is the branch's
/// newest: once a later merge rolled out, the retry would put the older
/// commit back over it (and could run beside a rollout in progress).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollout_is_not_retried_once_a_later_one_came() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(4).await;
    let spec = fleet_spec(&envs, "", "    failure_budget: 3\n");
    let first = git.commit(&[("convoy.yml", &spec)], "first");
    // cust-003 lands in the last wave, whose budget lets the rollout end
    // `failed` instead of halting.
    fleet.set_knobs(
        "cust-003",
        AgentKnobs {
            permanent_failure: true,
            ..AgentKnobs::default()
        },
    );
    let running = start(config(dir.path(), &git, "")).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(1, &first)).await;
    let one = rollout_of(&running, &first).await;
    let ended = wait_state(&running, &one.id, &["failed", "halted", "succeeded"], 60).await;
    assert_eq!(ended.state, "failed");

    fleet.set_knobs("cust-003", AgentKnobs::default());
    let second = git.commit(&[("services/api/main.rs", "fn main() {}")], "second");
    deliver(&running, "pull_request", "pr-2", &merged_pr(2, &second)).await;
    let two = rollout_of(&running, &second).await;
    let ended = wait_state(&running, &two.id, &["failed", "halted", "succeeded"], 60).await;
    assert_eq!(ended.state, "succeeded");
    let deploys = fleet.deploys().len();

    let err = retry_all(&running, &one.id).await.unwrap_err().to_string();
    assert!(
        err.contains("cannot run again") && err.contains(two.id.as_str()),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fleet.deploys().len(), deploys, "nothing deployed");
    assert_eq!(
        running.store.rollout(&one.id).await.unwrap().unwrap().state,
        "failed"
    );
    assert_eq!(
        fleet.version_of("cust-003", "api").as_deref(),
        Some(second.as_str())
    );
    running.stop().await;
}

/// The last commit rolled out can vanish from the repository (a force
/// push); a replica whose cache never had it cannot diff against it. The
/// merge then rolls out every service, as a first rollout, not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_after_a_force_push_lost_the_last_rolled_out_commit_rolls_out_all() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(2).await;
    let first = git.commit(&[("convoy.yml", &fleet_spec(&envs, "", ""))], "first");
    let running = start(config(dir.path(), &git, "")).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(1, &first)).await;
    let one = rollout_of(&running, &first).await;
    let ended = wait_state(&running, &one.id, &["succeeded", "failed", "halted"], 60).await;
    assert_eq!(ended.state, "succeeded");
    running.stop().await;

    // History rewritten: `first` is unreachable and pruned.
    git.git(&["checkout", "-q", "--orphan", "rewritten"]);
    git.git(&["commit", "-q", "-m", "rewritten"]);
    git.git(&["branch", "-q", "-M", "rewritten", "main"]);
    git.git(&["reflog", "expire", "--expire=now", "--all"]);
    git.git(&["gc", "-q", "--prune=now"]);
    let second = convoy::domain::CommitSha::new(git.git(&["rev-parse", "HEAD"]));
    assert!(
        std::process::Command::new("git")
            .args(["cat-file", "-e", first.as_str()])
            .current_dir(&git.path)
            .status()
            .is_ok_and(|s| !s.success()),
        "the first commit is gone"
    );
    // A replica with a fresh cache.
    std::fs::remove_dir_all(dir.path().join("data").join("git")).unwrap();
    let running = start(config(dir.path(), &git, "")).await;
    deliver(&running, "pull_request", "pr-2", &merged_pr(2, &second)).await;
    let two = rollout_of(&running, &second).await;
    assert_eq!(two.previous_commit, None);
    let ended = wait_state(&running, &two.id, &["succeeded", "failed", "halted"], 60).await;
    assert_eq!(ended.state, "succeeded");
    let view = api_rollout(&running, &two.id).await;
    assert_eq!(
        view["risk"]["steps"], 6,
        "every service in both environments"
    );
    assert_eq!(
        fleet.version_of(&envs[1].0, "web").as_deref(),
        Some(second.as_str())
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(6).await;
    let sha = git.commit(
        &[("convoy.yml", &fleet_spec(&envs, "  retries: 5\n", ""))],
        "first",
    );
    for (name, _) in &envs {
        fleet.update_knobs(name, |k| k.transient_failure_rate = 0.3);
    }
    let running = start(config(dir.path(), &git, "")).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(3, &sha)).await;
    let rollout = rollout_of(&running, &sha).await;
    let done = wait_state(
        &running,
        &rollout.id,
        &["succeeded", "halted", "failed"],
        120,
    )
    .await;
    assert_eq!(done.state, "succeeded");
    let retried = fleet.deploys().iter().filter(|d| d.attempt > 1).count();
    assert!(
        retried > 0,
        "with a 30 % failure rate some deploys needed a second attempt"
    );
    running.stop().await;
}

/// Runs one statement on the test's database, beside the running convoy.
async fn sql_beside(dir: &std::path::Path, statement: &'static str) {
    use sqlx::Connection as _;
    let url = database_url(&dir.join("convoy.db"));
    if on_postgres() {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(statement).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(statement).execute(&mut c).await.unwrap();
    }
}

/// The preflights of a wave read the versions convoy last deployed (the
/// drift check's baselines) in one query. When that read fails, no step
/// deploys blind: each fails its preflight saying why, and once the
/// database answers again a retry finishes the rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_that_cannot_read_its_baselines_deploys_nothing() {
    if on_postgres() {
        // The fault is a renamed table. PostgreSQL's save records attempts
        // and baselines in one statement, so there it would break every
        // save too, not only the read this is about (SQLite writes
        // baselines only for a success). The runtime's handling of the
        // failed read is the same on both stores.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(3).await;
    let mut spec = String::from("version: 1\nservices:\n  api: {}\nenvironments:\n");
    for (name, url) in &envs {
        spec.push_str(&format!(
            "  - name: {name}\n    driver: agent\n    url: {url}\n"
        ));
    }
    // Retried: after the table comes back, a pooled connection may still
    // read from the snapshot it had (sqlx resets a statement read in part
    // on its own thread, a moment later), so the first read may still fail.
    spec.push_str(
        "waves:\n  - name: all\n    percent: 100\npolicy:\n  retries: 2\n  backoff: 1s\n  \
         poll_interval: 1s\n",
    );
    let sha = git.commit(&[("convoy.yml", &spec)], "first");
    // The table goes away between two runs of convoy: no connection of the
    // running one can still see it in an older snapshot.
    start(config(dir.path(), &git, "")).await.stop().await;
    sql_beside(dir.path(), "ALTER TABLE baselines RENAME TO baselines_away").await;
    let running = start(config(dir.path(), &git, "")).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(5, &sha)).await;
    let rollout = rollout_of(&running, &sha).await;
    let halted = wait_state(&running, &rollout.id, &["halted", "succeeded"], 60).await;
    assert_eq!(halted.state, "halted");
    assert!(fleet.deploys().is_empty(), "nothing deployed blind");
    let view = api_rollout(&running, &rollout.id).await;
    let failed = steps_in(&view, &["failed"]);
    assert!(!failed.is_empty(), "{view}");
    for step in &failed {
        let error = step["error"].as_str().unwrap_or_default();
        assert!(error.contains("convoy's database"), "{error}");
    }

    sql_beside(dir.path(), "ALTER TABLE baselines_away RENAME TO baselines").await;
    retry_all(&running, &rollout.id)
        .await
        .expect("retry accepted");
    let done = wait_state(
        &running,
        &rollout.id,
        &["succeeded", "halted", "failed"],
        60,
    )
    .await;
    assert_eq!(done.state, "succeeded");
    for (name, _) in &envs {
        assert_eq!(fleet.version_of(name, "api").as_deref(), Some(sha.as_str()));
    }
    running.stop().await;
}

#[tokio::test]
async fn a_host_outside_allowed_hosts_fails_validation_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, mut envs) = fleet_of(3).await;
    envs[1].1 = "http://evil.example.com:9000".into();
    let sha = git.commit(&[("convoy.yml", &fleet_spec(&envs, "", ""))], "first");
    let running = start(config(dir.path(), &git, "")).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(4, &sha)).await;
    let rollout = rollout_of(&running, &sha).await;
    assert_eq!(rollout.state, "failed");
    let error = rollout.error.unwrap_or_default();
    assert!(
        error.contains("convoy.yml:") && error.contains("evil.example.com"),
        "{error}"
    );
    assert_eq!(fleet.request_count(), 0, "no agent was contacted");
    running.stop().await;
}

/// The crash test runs convoy in a runtime of its own and drops that
/// runtime mid-rollout (every task dies at once, as in a crash); the fleet
/// lives on in another, and a second convoy on the same database finishes.
#[test]
fn a_crash_mid_rollout_is_resumed_without_double_deploys() {
    let fleet_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_rt.block_on(fleet_of(12));
    for (name, _) in &envs {
        // Slow enough that the crash lands while steps are in flight.
        fleet.update_knobs(name, |k| k.healthy_after = Duration::from_millis(700));
    }
    let sha = git.commit(&[("convoy.yml", &fleet_spec(&envs, "", ""))], "first");

    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let id = first.block_on(async {
        let running = start(config(dir.path(), &git, "")).await;
        deliver(&running, "pull_request", "pr-1", &merged_pr(5, &sha)).await;
        let rollout = rollout_of(&running, &sha).await;
        // Wait until some, but not all, steps are done.
        for _ in 0..400 {
            let view = api_rollout(&running, &rollout.id).await;
            let done = view["counts"]["succeeded"].as_u64().unwrap_or(0);
            if done >= 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        rollout.id
    });
    first.shutdown_background(); // the crash
    let deploys_before = fleet.deploys().len();
    assert!(deploys_before < 36, "the crash came before the end");

    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let running = start(config(dir.path(), &git, "")).await;
        let done = wait_state(&running, &id, &["succeeded", "failed", "halted"], 120).await;
        assert_eq!(done.state, "succeeded", "{:?}", done.error);
        running.stop().await;
    });
    assert_all_at(&fleet, &envs, &sha);
    assert!(
        fleet.overlapping_deploys().is_empty(),
        "{:?}",
        fleet.overlapping_deploys()
    );
    // A step in flight at the crash was re-verified, not blindly redeployed:
    // at most a few repeats, never more deploys than steps plus in-flight.
    let total = fleet.deploys().len();
    assert!(total <= 36 + 10, "{total} deploys for 36 steps");
    drop(fleet_rt);
}

/// An abort waits for the deploys it had in flight. When convoy stops
/// during that wait, the next process drives the aborted rollout until
/// those deploys end: their outcome is recorded (no step stays
/// `deploying` for ever), nothing is deployed again, and their locks are
/// released.
#[test]
fn a_crash_while_an_abort_waits_for_its_deploys_is_finished_by_the_next_process() {
    let fleet_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_rt.block_on(fleet_of(2));
    for (name, _) in &envs {
        // Accepted at once, at the new version only after a while: the
        // abort and the crash land while the deploys are being verified.
        fleet.update_knobs(name, |k| k.deploy_duration = Duration::from_millis(2500));
    }
    let sha = git.commit(&[("convoy.yml", &fleet_spec(&envs, "", ""))], "first");
    let in_flight_of = |view: &serde_json::Value| -> Vec<String> {
        steps_in(view, IN_FLIGHT)
            .iter()
            .map(|s| format!("{}/{}", s["environment"], s["service"]))
            .collect()
    };

    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let id = first.block_on(async {
        let running = start(config(dir.path(), &git, "")).await;
        deliver(&running, "pull_request", "pr-1", &merged_pr(1, &sha)).await;
        let rollout = rollout_of(&running, &sha).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while fleet.deploys().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no deploy started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running
            .runtime
            .command(&rollout.id, Command::Abort { by: "alice".into() })
            .await
            .unwrap();
        let view = api_rollout(&running, &rollout.id).await;
        assert_eq!(view["state"], "aborted");
        assert!(!in_flight_of(&view).is_empty(), "deploys in flight: {view}");
        rollout.id
    });
    first.shutdown_background(); // the crash, during the abort's wait
    let deploys_before = fleet.deploys().len();

    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let running = start(config(dir.path(), &git, "")).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let view = loop {
            let view = api_rollout(&running, &id).await;
            if in_flight_of(&view).is_empty() {
                break view;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still in flight: {:?}",
                in_flight_of(&view)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(view["state"], "aborted");
        let succeeded = steps_in(&view, &["succeeded"]).len();
        assert_eq!(
            succeeded, deploys_before,
            "each deploy in flight ended at its version"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !running.store.held_step_locks().await.unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "locks still held");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.stop().await;
    });
    assert_eq!(
        fleet.deploys().len(),
        deploys_before,
        "nothing deployed again"
    );
    drop(fleet_rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_freeze_holds_new_rollouts_until_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(4).await;
    let sha = git.commit(&[("convoy.yml", &fleet_spec(&envs, "", ""))], "first");
    let running = start(config(dir.path(), &git, "")).await;
    let repo = convoy::domain::RepoName::new(REPO);
    running
        .runtime
        .freeze(Some(&repo), None, Some("incident 42".into()), "alice")
        .await
        .unwrap();
    deliver(&running, "pull_request", "pr-1", &merged_pr(9, &sha)).await;
    let rollout = rollout_of(&running, &sha).await;
    let frozen = wait_state(&running, &rollout.id, &["frozen"], 30).await;
    assert_eq!(frozen.state, "frozen");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fleet.deploys().is_empty(), "nothing deploys while frozen");
    let view = api_rollout(&running, &rollout.id).await;
    assert_eq!(view["emergency_freeze"]["reason"], "incident 42");

    assert!(
        running
            .runtime
            .unfreeze(Some(&repo), "alice")
            .await
            .unwrap()
    );
    let done = wait_state(
        &running,
        &rollout.id,
        &["succeeded", "failed", "halted"],
        60,
    )
    .await;
    assert_eq!(done.state, "succeeded");
    assert!(
        !running
            .runtime
            .unfreeze(Some(&repo), "alice")
            .await
            .unwrap(),
        "nothing left to lift"
    );
    running.stop().await;
}

/// A rollout holds one freeze. The operator's freeze of every repository
/// must outlast a repository's shorter freeze and its `/convoy unfreeze`:
/// the rollout holds the freeze in force that lasts longest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_s_own_freeze_and_unfreeze_do_not_lift_the_operator_s() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(4).await;
    let sha = git.commit(&[("convoy.yml", &fleet_spec(&envs, "", ""))], "first");
    let running = start(config(dir.path(), &git, "")).await;
    let repo = convoy::domain::RepoName::new(REPO);
    running
        .runtime
        .freeze(None, None, Some("kill switch".into()), "operator")
        .await
        .unwrap();
    deliver(&running, "pull_request", "pr-1", &merged_pr(9, &sha)).await;
    let rollout = rollout_of(&running, &sha).await;
    wait_state(&running, &rollout.id, &["frozen"], 30).await;

    // A freeze of the repository for a second, then its unfreeze.
    let soon = chrono::Utc::now() + chrono::Duration::seconds(1);
    let held = running
        .runtime
        .freeze(Some(&repo), Some(soon), Some("short".into()), "alice")
        .await
        .unwrap();
    assert_eq!(held, 1);
    assert!(
        running
            .runtime
            .unfreeze(Some(&repo), "alice")
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(fleet.deploys().is_empty(), "the operator's freeze holds");
    let view = api_rollout(&running, &rollout.id).await;
    assert_eq!(view["state"], "frozen");
    assert_eq!(view["emergency_freeze"]["reason"], "kill switch");

    assert!(running.runtime.unfreeze(None, "operator").await.unwrap());
    let done = wait_state(
        &running,
        &rollout.id,
        &["succeeded", "failed", "halted"],
        60,
    )
    .await;
    assert_eq!(done.state, "succeeded");
    running.stop().await;
}

/// `convoy freeze --all` runs in another process: it only writes the
/// database. Running rollouts must still stop starting steps, and go on
/// when the freeze is lifted the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_written_by_another_process_reaches_running_rollouts() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(12).await;
    for (name, _) in &envs {
        // Slow enough that the rollout is still running when the freeze
        // is noticed (within 2 s).
        fleet.update_knobs(name, |k| k.healthy_after = Duration::from_millis(1500));
    }
    let sha = git.commit(&[("convoy.yml", &fleet_spec(&envs, "", ""))], "first");
    let running = start(config(dir.path(), &git, "")).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(11, &sha)).await;
    let rollout = rollout_of(&running, &sha).await;
    wait_state(&running, &rollout.id, &["running"], 30).await;

    let freeze = convoy::store::Freeze {
        scope: convoy::store::Freeze::ALL.into(),
        until: None,
        reason: Some("operator kill switch".into()),
        by: "operator".into(),
        at: chrono::Utc::now(),
    };
    running.store.set_freeze(&freeze).await.unwrap();
    let frozen = wait_state(&running, &rollout.id, &["frozen", "succeeded"], 30).await;
    assert_eq!(
        frozen.state, "frozen",
        "the freeze reached the running rollout"
    );
    // Steps in flight finish; then nothing new starts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = fleet.deploys().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        fleet.deploys().len(),
        settled,
        "no new deploys while frozen"
    );

    running
        .store
        .clear_freeze(convoy::store::Freeze::ALL)
        .await
        .unwrap();
    let done = wait_state(
        &running,
        &rollout.id,
        &["succeeded", "failed", "halted"],
        60,
    )
    .await;
    assert_eq!(done.state, "succeeded");
    running.stop().await;
}

/// Two merges on one branch, the second while the first still runs: with
/// `concurrency` (default `queue`) the second waits its turn and starts
/// when the first ends; with `supersede` the first is superseded and the
/// second runs. Returns the two rollouts' ends and the fleet.
async fn second_merge_while_the_first_runs(policy: &str) -> (String, String, Fleet) {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(4).await;
    for (name, _) in &envs {
        // Each step takes a while to turn healthy: the first rollout is
        // still running when the second merge arrives.
        fleet.update_knobs(name, |k| k.healthy_after = Duration::from_millis(400));
    }
    let spec = fleet_spec(&envs, policy, "");
    let first = git.commit(&[("convoy.yml", &spec)], "first");
    let running = start(config(dir.path(), &git, "")).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(1, &first)).await;
    let one = rollout_of(&running, &first).await;
    wait_state(&running, &one.id, &["running"], 30).await;

    let second = git.commit(&[("services/api/main.rs", "fn main() {}")], "second");
    deliver(&running, "pull_request", "pr-2", &merged_pr(2, &second)).await;
    let two = rollout_of(&running, &second).await;
    let one_end;
    if policy.contains("supersede") {
        one_end = wait_state(
            &running,
            &one.id,
            &["superseded", "succeeded", "failed"],
            30,
        )
        .await
        .state;
    } else {
        let waiting = wait_state(&running, &two.id, &["queued", "running", "succeeded"], 30).await;
        assert_eq!(waiting.state, "queued", "the second waits for the first");
        let first_state = running.store.rollout(&one.id).await.unwrap().unwrap().state;
        assert_eq!(first_state, "running", "…while the first runs");
        one_end = wait_state(&running, &one.id, &["succeeded", "failed", "halted"], 60)
            .await
            .state;
    }
    let two_end = wait_state(&running, &two.id, &["succeeded", "failed", "halted"], 60)
        .await
        .state;
    running.stop().await;
    (one_end, two_end, fleet)
}

/// An abort ends the rollout at once, but its deploys in flight go on at
/// the agents: the branch's next rollout must not deploy to the same
/// (environment, service) until they end, and their outcome is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_abort_the_next_rollout_waits_for_the_deploys_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(2).await;
    for (name, _) in &envs {
        fleet.update_knobs(name, |k| k.deploy_duration = Duration::from_millis(1500));
    }
    let first = git.commit(&[("convoy.yml", &fleet_spec(&envs, "", ""))], "first");
    let running = start(config(dir.path(), &git, "")).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(1, &first)).await;
    let one = rollout_of(&running, &first).await;
    let second = git.commit(&[("services/api/main.rs", "fn main() {}")], "second");
    deliver(&running, "pull_request", "pr-2", &merged_pr(2, &second)).await;
    let two = rollout_of(&running, &second).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fleet.deploys().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no deploy started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
        .runtime
        .command(
            &one.id,
            convoy::engine::Command::Abort { by: "alice".into() },
        )
        .await
        .unwrap();
    assert_eq!(
        running.store.rollout(&one.id).await.unwrap().unwrap().state,
        "aborted"
    );
    let done = wait_state(&running, &two.id, &["succeeded", "failed", "halted"], 60).await;
    assert_eq!(done.state, "succeeded");
    assert!(
        fleet.overlapping_deploys().is_empty(),
        "{:#?}",
        fleet.overlapping_deploys()
    );
    // The aborted rollout's step in flight ended and is recorded as such.
    let view = api_rollout(&running, &one.id).await;
    let in_flight = steps_in(&view, IN_FLIGHT);
    assert!(in_flight.is_empty(), "{in_flight:#?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_merge_queues_behind_the_branch_s_running_rollout() {
    let (one, two, fleet) = second_merge_while_the_first_runs("").await;
    assert_eq!((one.as_str(), two.as_str()), ("succeeded", "succeeded"));
    // Each rollout's deploys came after the other's, never between them.
    let deploys = fleet.deploys();
    let versions: Vec<&str> = deploys.iter().map(|d| d.version.as_str()).collect();
    let switched = versions.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switched, 1, "one rollout after the other: {versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_merge_supersedes_the_running_rollout_when_the_policy_says_so() {
    let (one, two, _fleet) = second_merge_while_the_first_runs("  concurrency: supersede\n").await;
    assert_eq!((one.as_str(), two.as_str()), ("superseded", "succeeded"));
}

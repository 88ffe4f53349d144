//! Drift end to end (SPEC 6.6, issue 8): a local fleet changed behind
//! convoy's back, the reconciler every second, the tracking issue on the
//! GitHub stand-in (every request checked against GitHub's description),
//! `on_drift` at deploy time, and `/convoy adopt` / `/convoy resync`
//! written on the drift issue itself.

mod common;

use std::time::Duration;

use common::*;
use convoy::app::Running;
use convoy::domain::CommitSha;
use convoy::testkit::fleet::Fleet;
use convoy::testkit::github_standin::GitHubStandIn;
use serde_json::Value;

const WRITER: &str = "wanda";
const DRIFT_LABEL: &str = "convoy-drift";

/// Four environments: cust-0..2 on one fleet, cust-3 on a fleet of its own
/// (dropping it makes cust-3 unreachable). One service, one wave that
/// tolerates `budget` failed steps.
struct World {
    _dir: tempfile::TempDir,
    git: GitFixture,
    fleet: Fleet,
    lonely: Option<Fleet>,
    envs: Vec<(String, String)>,
    standin: GitHubStandIn,
    running: Running,
    next_comment: std::sync::atomic::AtomicU64,
}

fn spec(envs: &[(String, String)], on_drift: &str, budget: u32) -> String {
    let mut s = String::from(
        "version: 1\nservices:\n  api:\n    paths: [\"services/api/**\"]\nenvironments:\n",
    );
    for (name, url) in envs {
        s.push_str(&format!(
            "  - name: {name}\n    driver: agent\n    url: {url}\n"
        ));
    }
    s.push_str(&format!(
        "waves:\n  - name: all\n    max_parallel: 4\n    failure_budget: {budget}\npolicy:\n  poll_interval: 1s\n  backoff: 1s\n  retries: 0\n  on_drift: {on_drift}\n"
    ));
    s
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let names: Vec<String> = (0..3).map(|i| format!("cust-{i}")).collect();
    let fleet = Fleet::start(names.clone(), 3).await.unwrap();
    let lonely = Fleet::start(["cust-3"], 4).await.unwrap();
    let mut envs: Vec<(String, String)> = names.iter().map(|n| (n.clone(), fleet.url(n))).collect();
    envs.push(("cust-3".into(), lonely.url("cust-3")));
    let (standin, github) = github_standin().await;
    standin.set_permission(REPO, WRITER, "write", "write");
    let config = config_with_github(
        dir.path(),
        &git,
        "[drift]\ninterval = \"1s\"\n",
        &standin.url(),
        &[("CONVOY_GITHUB_MIN_UPDATE_INTERVAL", "1s")],
    );
    let running = start_with(
        config,
        convoy::app::Services {
            github: Some(github),
            ..convoy::app::Services::default()
        },
    )
    .await;
    World {
        _dir: dir,
        git,
        fleet,
        lonely: Some(lonely),
        envs,
        standin,
        running,
        next_comment: std::sync::atomic::AtomicU64::new(0),
    }
}

impl World {
    /// Commits `convoy.yml` (with `on_drift`) and a change to the api,
    /// merges it as pull request `pr`, and waits for the rollout to end.
    async fn merge(&self, pr: u64, on_drift: &str, budget: u32) -> (CommitSha, Value) {
        let sha = self.git.commit(
            &[
                ("convoy.yml", &spec(&self.envs, on_drift, budget)),
                ("services/api/main.txt", &format!("release {pr}")),
            ],
            &format!("release {pr}"),
        );
        self.standin
            .add_pull_request(REPO, pr, "dev", sha.as_str(), "feature", "main", true);
        assert_eq!(
            deliver(
                &self.running,
                "pull_request",
                &format!("merge-{pr}"),
                &merged_pr(pr, &sha)
            )
            .await,
            202
        );
        let rollout = rollout_of(&self.running, &sha).await;
        wait_state(
            &self.running,
            &rollout.id,
            &["succeeded", "failed", "halted"],
            30,
        )
        .await;
        (sha, api_rollout(&self.running, &rollout.id).await)
    }

    fn version(&self, env: &str) -> Option<String> {
        self.fleet.version_of(env, "api")
    }

    /// The drift issue as the stand-in holds it now, with its number.
    fn drift_issue(&self) -> Option<(u64, Value)> {
        let state = self.standin.state();
        state
            .issues
            .iter()
            .filter(|((r, _), _)| r == REPO)
            .filter_map(|((_, n), v)| Some((*n, v.last()?.clone())))
            .find(|(_, i)| {
                i["labels"]
                    .as_array()
                    .is_some_and(|ls| ls.iter().any(|l| l["name"] == DRIFT_LABEL))
            })
    }

    /// Waits for the drift issue to be `state` ("open"/"closed") with a
    /// body satisfying `check`.
    async fn issue_until(&self, state: &str, check: impl Fn(&str) -> bool) -> (u64, String) {
        for _ in 0..300 {
            if let Some((n, issue)) = self.drift_issue()
                && issue["state"] == state
                && check(issue["body"].as_str().unwrap_or_default())
            {
                return (n, issue["body"].as_str().unwrap_or_default().to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the drift issue is not {state} as expected within 15 s: {:?}",
            self.drift_issue()
        );
    }

    /// `user` writes `body` on the drift issue `issue`; returns the
    /// comment id.
    async fn say_on_issue(&self, issue: u64, user: &str, body: &str) -> u64 {
        let id = self.standin.add_user_comment(REPO, issue, user, body);
        let mut event = pr_comment(issue, id, user, "convoy[bot]", body);
        // An issue, not a pull request, labelled as the drift issue.
        if let Some(i) = event["issue"].as_object_mut() {
            i.remove("pull_request");
        }
        event["issue"]["labels"] = serde_json::json!([{ "name": DRIFT_LABEL }]);
        let n = self
            .next_comment
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            deliver(
                &self.running,
                "issue_comment",
                &format!("comment-{n}"),
                &event
            )
            .await,
            202
        );
        id
    }

    async fn reaction(&self, comment: u64, content: &str) {
        for _ in 0..300 {
            if self
                .standin
                .state()
                .reactions
                .iter()
                .any(|r| r.comment_id == comment && r.content == content)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {content} on comment {comment}; convoy's replies: {:?}",
            self.bot_comments()
        );
    }

    fn bot_comments(&self) -> Vec<String> {
        self.standin
            .state()
            .comments
            .values()
            .filter_map(|v| v.last())
            .filter(|c| c["user"]["login"] == "convoy[bot]")
            .map(|c| c["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn drift_records(&self) -> Vec<Value> {
        let answer = reqwest::get(format!(
            "http://{}/api/drift?repo={REPO}",
            self.running.addr
        ))
        .await
        .unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    async fn finish(self) {
        self.standin.assert_no_violations();
        self.running.stop().await;
    }
}

fn step<'a>(view: &'a Value, env: &str) -> &'a Value {
    view["waves"][0]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["environment"] == env))
        .unwrap_or_else(|| panic!("no step for {env} in {view}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_shown_halts_only_its_environment_and_is_adopted_or_resynced() {
    let w = world().await;
    let (first, view) = w.merge(10, "halt", 1).await;
    assert_eq!(view["state"], "succeeded");

    // A hotfix by hand in cust-1: the issue appears, naming it.
    w.fleet.set_version("cust-1", "api", Some("hotfix-1"));
    let (issue, body) = w.issue_until("open", |b| b.contains("cust-1")).await;
    assert!(body.contains("`hotfix-1`"), "{body}");
    assert!(body.contains(&first.as_str()[..12]), "{body}");
    assert!(body.contains("/convoy adopt cust-1 api"), "{body}");
    assert!(body.contains("/convoy resync cust-1"), "{body}");
    for other in ["cust-0", "cust-2", "cust-3"] {
        assert!(!body.contains(other), "{other} has not drifted: {body}");
    }
    let records = w.drift_records().await;
    assert!(
        records.iter().any(|r| r["environment"] == "cust-1"
            && r["kind"] == "drift"
            && r["found"] == "hotfix-1"
            && r["expected"] == first.as_str()
            && r["resolved_at"].is_null()),
        "{records:?}"
    );

    // The next merge (on_drift: halt, no failure budget) fails cust-1's
    // preflight with the message, and only it: the held environment does
    // not spend the budget, so the others deploy.
    let (second, view) = w.merge(11, "halt", 0).await;
    assert_eq!(view["state"], "failed", "ends failed, not halted: {view}");
    let failed = step(&view, "cust-1");
    assert_eq!(failed["state"], "failed", "{view}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "drifted: expected {first}, found hotfix-1 (changed outside convoy since "
        )),
        "{error}"
    );
    for env in ["cust-0", "cust-2", "cust-3"] {
        assert_eq!(step(&view, env)["state"], "succeeded", "{view}");
    }
    assert_eq!(w.version("cust-0").as_deref(), Some(second.as_str()));
    assert_eq!(w.version("cust-2").as_deref(), Some(second.as_str()));
    assert_eq!(
        w.lonely
            .as_ref()
            .and_then(|f| f.version_of("cust-3", "api")),
        Some(second.to_string())
    );
    assert_eq!(w.version("cust-1").as_deref(), Some("hotfix-1"));
    // The pull request's comment shows the failure and how to decide.
    let comment = eventually(15, "the comment shows the drift", || {
        w.standin
            .state()
            .comments_on(REPO, 11)
            .iter()
            .filter_map(|c| c["body"].as_str())
            .find(|b| b.contains("changed outside convoy since"))
            .map(str::to_owned)
    })
    .await;
    assert!(comment.contains("/convoy adopt cust-1"), "{comment}");
    assert!(comment.contains("/convoy resync cust-1"), "{comment}");
    let page = reqwest::get(format!(
        "http://{}/rollouts/{}",
        w.running.addr,
        view["id"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(page.contains("id=\"drift\""), "the page shows the drift");
    assert!(page.contains("/convoy resync cust-1"));

    // `/convoy adopt` on the drift issue: hotfix-1 becomes the baseline,
    // the drift is resolved, the issue closes with a final comment.
    let c = w.say_on_issue(issue, WRITER, "/convoy adopt cust-1").await;
    w.reaction(c, "rocket").await;
    let (closed, _) = w.issue_until("closed", |_| true).await;
    assert_eq!(closed, issue);
    let closing = w
        .bot_comments()
        .into_iter()
        .find(|c| c.contains("No drift remains"))
        .expect("a closing comment");
    assert!(closing.contains("adopted by @wanda"), "{closing}");
    let records = w.drift_records().await;
    assert!(
        records.iter().any(|r| r["environment"] == "cust-1"
            && r["resolution"] == "adopted"
            && r["resolved_by"] == WRITER),
        "{records:?}"
    );
    assert!(records.iter().all(|r| !r["resolved_at"].is_null()));

    // Drift again (cust-2 this time): the same issue reopens.
    w.fleet.set_version("cust-2", "api", Some("hotfix-2"));
    let (reopened, body) = w.issue_until("open", |b| b.contains("cust-2")).await;
    assert_eq!(reopened, issue, "the issue is reopened, not a new one");
    assert!(!body.contains("cust-1"), "cust-1 was adopted: {body}");
    // Anyone may ask for the issue to be checked again.
    let c = w.say_on_issue(issue, "reggie", "/convoy status").await;
    w.reaction(c, "rocket").await;

    // `/convoy resync` puts the desired version back through a rollout of
    // its own, and the issue closes again.
    let c = w.say_on_issue(issue, WRITER, "/convoy resync cust-2").await;
    w.reaction(c, "rocket").await;
    eventually(15, "cust-2 runs the desired version again", || {
        (w.version("cust-2").as_deref() == Some(second.as_str())).then_some(())
    })
    .await;
    w.issue_until("closed", |_| true).await;
    assert_eq!(w.version("cust-1").as_deref(), Some("hotfix-1"));
    // The resync is a rollout of its own, and its audit log says who asked.
    let list: Vec<Value> = reqwest::get(format!(
        "http://{}/api/rollouts?repo={REPO}",
        w.running.addr
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let resync = list
        .iter()
        .filter_map(|r| r["id"].as_str())
        .map(convoy::domain::RolloutId::new)
        .collect::<Vec<_>>();
    let mut found = None;
    for id in &resync {
        let view = api_rollout(&w.running, id).await;
        if view["kind"] == "resync" {
            found = Some(view);
        }
    }
    let resync = found.expect("a resync rollout");
    assert_eq!(step(&resync, "cust-2")["version"], second.as_str());
    assert!(
        resync["audit"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["actor"] == WRITER
                && e["action"] == "/convoy resync cust-2"
                && e["result"] == "accepted")),
        "{}",
        resync["audit"]
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_is_not_drift_and_overwrite_and_skip_do_what_they_say() {
    let mut w = world().await;
    // The API needs to know which repository.
    for query in [
        "",
        "?repo=",
        "?repo=nonsense",
        "?repo=acme/",
        "?repo=/app",
        "?repo=a/b/c",
    ] {
        let answer = reqwest::get(format!("http://{}/api/drift{query}", w.running.addr))
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{query}");
        let body: Value = answer.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("owner/name")),
            "{body}"
        );
    }
    let (first, view) = w.merge(20, "overwrite", 1).await;
    assert_eq!(view["state"], "succeeded");

    // cust-3's agent goes away: recorded as unreachable, never as drift,
    // and no issue is opened for it.
    drop(w.lonely.take());
    let mut records = Vec::new();
    for _ in 0..100 {
        records = w.drift_records().await;
        if records.iter().any(|r| r["environment"] == "cust-3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        records
            .iter()
            .any(|r| r["environment"] == "cust-3" && r["kind"] == "unreachable"),
        "{records:?}"
    );
    assert!(
        records.iter().all(|r| r["kind"] != "drift"),
        "unreachable is not drift: {records:?}"
    );
    // Two more passes: still no issue.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(w.drift_issue().is_none(), "{:?}", w.drift_issue());

    // on_drift: overwrite deploys over the hotfix and records that it did.
    w.fleet.set_version("cust-1", "api", Some("hotfix-1"));
    w.issue_until("open", |b| b.contains("cust-1")).await;
    let (second, view) = w.merge(21, "overwrite", 1).await;
    let over = step(&view, "cust-1");
    assert_eq!(over["state"], "succeeded", "{view}");
    assert!(
        over["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("overwrote drift: drifted: expected")
                && n.contains("found hotfix-1")),
        "{over}"
    );
    assert_eq!(w.version("cust-1").as_deref(), Some(second.as_str()));
    assert_eq!(step(&view, "cust-3")["state"], "failed", "unreachable");
    let records = w.drift_records().await;
    assert!(
        records.iter().any(|r| r["environment"] == "cust-1"
            && r["resolution"] == "overwritten"
            && r["resolved_by"]
                .as_str()
                .is_some_and(|b| b.contains(view["id"].as_str().unwrap()))),
        "{records:?}"
    );
    w.issue_until("closed", |_| true).await;

    // on_drift: skip leaves the hotfix alone and says so.
    w.fleet.set_version("cust-2", "api", Some("hotfix-2"));
    w.issue_until("open", |b| b.contains("cust-2")).await;
    let (third, view) = w.merge(22, "skip", 1).await;
    let skipped = step(&view, "cust-2");
    assert_eq!(skipped["state"], "skipped", "{view}");
    assert!(
        skipped["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("skipped: drifted: expected") && n.contains("hotfix-2")),
        "{skipped}"
    );
    assert_eq!(w.version("cust-2").as_deref(), Some("hotfix-2"));
    assert_eq!(w.version("cust-0").as_deref(), Some(third.as_str()));
    // The pull request's comment says it too.
    let said = eventually(15, "the comment names the skipped drift", || {
        w.standin
            .state()
            .comments_on(REPO, 22)
            .iter()
            .filter_map(|c| c["body"].as_str())
            .find(|b| b.contains("skipped: drifted"))
            .map(str::to_owned)
    })
    .await;
    assert!(said.contains("cust-2"), "{said}");
    // Still drifted: the issue stays open.
    let (_, body) = w.issue_until("open", |b| b.contains("cust-2")).await;
    assert!(body.contains("hotfix-2"));
    assert_ne!(first, third);
    w.finish().await;
}

//! Several convoy replicas on one database, as real processes (issue 10):
//! deliveries sent to both alternately are each processed once; a rollout
//! whose replica is killed (`kill -9`) is finished by the other within the
//! lease; a replica paused (SIGSTOP) past its lease does not act on the
//! work the other took over once it resumes (fencing). Throughout: no two
//! deploys of one (environment, service) overlap, every environment ends
//! on the merged version, and the PR comment and check run end right with
//! no duplicates.
//!
//! Every scenario runs twice: on PostgreSQL (a throwaway server this test
//! process starts, `convoy::testkit::postgres`) and on one SQLite file
//! shared by both processes (WAL), which to the leases is also two
//! replicas on one database.

// both databases (scripts/test.sh runs this file once)
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{GitFixture, REPO, SECRET, merged_pr, push};
use convoy::config::DatabaseUrl;
use convoy::domain::{BranchName, CommitSha, DeliveryId, RepoName, RolloutId};
use convoy::runtime::leases::Replica;
use convoy::store::{DeliveryState, LEASE_ROLLOUT, Store};
use convoy::testkit::fleet::{AgentKnobs, Fleet};
use convoy::testkit::github_standin::{GitHubStandIn, StandInConfig, StandInState, TEST_APP_ID};
use convoy::webhook::signature::sign;
use serde_json::{Value, json};

/// Short, so that takeovers in these tests come quickly.
const LEASE: Duration = Duration::from_secs(2);

/// One `convoy serve` process.
struct Proc {
    name: &'static str,
    child: Child,
    addr: String,
    log: PathBuf,
    id: String,
}

impl Proc {
    fn start(
        name: &'static str,
        root: &Path,
        db: &str,
        git: &GitFixture,
        github: &str,
        lease: Duration,
    ) -> Proc {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = root.join(format!("data-{name}"));
        std::fs::create_dir_all(&data).unwrap();
        let data = std::fs::canonicalize(&data).unwrap();
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://convoy.test"
data_dir = "{data}"
lease = "{lease}s"
[github]
webhook_secret = "{SECRET}"
git_url = "{git_url}"
api_url = "{github}"
app_id = {TEST_APP_ID}
private_key_path = "{key}"
min_update_interval = "1s"
[database]
url = "{db}"
[drivers.agent]
kind = "http-agent"
allowed_hosts = ["127.0.0.1"]
headers = {{ X-Replica = "{name}" }}
timeout = "5s"
"#,
            data = data.display(),
            lease = lease.as_secs(),
            git_url = git.url_template(),
            key = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/test-app-key.pem"
            ),
        );
        let path = root.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = root.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_convoy"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .env_remove("CONVOY_GITHUB_WEBHOOK_SECRET")
            .env_remove("CONVOY_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("convoy starts");
        Proc {
            name,
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
            id: Replica::for_data_dir(&data, lease).id,
        }
    }

    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("http://{}/readyz", self.addr)).await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} not ready:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn deliver(&self, event: &str, delivery: &str, body: &Value) {
        let body = serde_json::to_vec(body).unwrap();
        let status = reqwest::Client::new()
            .post(format!("http://{}/webhook", self.addr))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", sign(SECRET, &body))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("webhook delivered")
            .status()
            .as_u16();
        // 202 when new, 200 for a delivery id already stored.
        assert!(
            status == 202 || status == 200,
            "{delivery} to {}: {status}",
            self.name
        );
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {}", self.name);
    }

    fn kill_9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        let _ = self.child.wait();
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
}

struct Setup {
    dir: tempfile::TempDir,
    db: Db,
    _git: GitFixture,
    fleet: Fleet,
    envs: Vec<String>,
    gh: GitHubStandIn,
    sha: CommitSha,
    store: Arc<dyn Store>,
    a: Proc,
    b: Proc,
}

/// `n` environments; three services (db ← api ← web), all changed by the
/// commit; a canary wave of two, then the rest 40 at a time.
fn spec(fleet: &Fleet, envs: &[String]) -> String {
    let mut s = String::from(
        "version: 1\nservices:\n  db:\n    paths: [\"migrations/**\"]\n  api:\n    paths: [\"services/api/**\"]\n    depends_on: [db]\n  web:\n    paths: [\"services/web/**\"]\n    depends_on: [api]\nenvironments:\n",
    );
    for (i, name) in envs.iter().enumerate() {
        let ring = if i < 2 { "canary" } else { "main" };
        s.push_str(&format!(
            "  - name: {name}\n    labels: {{ ring: {ring} }}\n    driver: agent\n    url: {}\n",
            fleet.url(name)
        ));
    }
    s.push_str(
        "waves:\n  - name: canary\n    selector: { ring: canary }\n  - name: rest\n    percent: 100\n    max_parallel: 40\npolicy:\n  poll_interval: 1s\n  backoff: 1s\n",
    );
    s
}

async fn setup(db: Db, n: usize, pr: u64, deploy: Duration) -> Setup {
    setup_with(db, n, pr, deploy, LEASE).await
}

async fn setup_with(db: Db, n: usize, pr: u64, deploy: Duration, lease: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let envs: Vec<String> = (0..n).map(|i| format!("env-{i:03}")).collect();
    let fleet = Fleet::start(envs.clone(), 11).await.unwrap();
    for name in &envs {
        fleet.set_knobs(
            name,
            AgentKnobs {
                deploy_duration: deploy,
                ..AgentKnobs::default()
            },
        );
    }
    let sha = git.commit(&[("convoy.yml", &spec(&fleet, &envs))], "first");
    let gh = GitHubStandIn::start(StandInConfig::for_tests())
        .await
        .expect("stand-in starts");
    gh.add_repo(REPO, "main");
    gh.add_pull_request(REPO, pr, "dev", sha.as_str(), "feature", "main", true);
    let (url, database) = match db {
        Db::Sqlite => {
            let path = dir.path().join("convoy.db");
            (
                format!("sqlite://{}", path.display()),
                DatabaseUrl::Sqlite(path),
            )
        }
        Db::Postgres => {
            let url = tokio::task::spawn_blocking(convoy::testkit::postgres::fresh_database)
                .await
                .unwrap()
                .expect("a throwaway PostgreSQL");
            (url.clone(), DatabaseUrl::Postgres(url))
        }
    };
    // The schema first, so the two replicas do not both migrate at once.
    let store = convoy::store::open(&database).await.unwrap();
    let a = Proc::start("a", dir.path(), &url, &git, &gh.url(), lease);
    let b = Proc::start("b", dir.path(), &url, &git, &gh.url(), lease);
    a.ready().await;
    b.ready().await;
    Setup {
        dir,
        db,
        _git: git,
        fleet,
        envs,
        gh,
        sha,
        store,
        a,
        b,
    }
}

impl Setup {
    async fn rollout_id(&self) -> RolloutId {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = self
                .store
                .rollout_for_commit(&RepoName::new(REPO), &BranchName::new("main"), &self.sha)
                .await
                .unwrap()
            {
                return r.id;
            }
            assert!(Instant::now() < deadline, "no rollout\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Steps that succeeded so far.
    async fn succeeded(&self, id: &RolloutId) -> usize {
        let r = self.store.rollout(id).await.unwrap().unwrap();
        let doc: Value = serde_json::from_str(r.document.as_deref().unwrap()).unwrap();
        doc["waves"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|w| w["steps"].as_array().into_iter().flatten())
            .filter(|s| s["state"] == "succeeded")
            .count()
    }

    async fn owner(&self, id: &RolloutId) -> Option<String> {
        self.store
            .lease(LEASE_ROLLOUT, id.as_str())
            .await
            .unwrap()
            .and_then(|(owner, lease)| owner.filter(|_| lease.expires_at > chrono::Utc::now()))
    }

    async fn wait_terminal(&self, id: &RolloutId, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.store.rollout(id).await.unwrap().unwrap();
            if ["succeeded", "failed", "halted", "aborted"].contains(&r.state.as_str()) {
                return r.state;
            }
            assert!(
                Instant::now() < deadline,
                "rollout still {} after {secs} s\n{}",
                r.state,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- a ---\n{}\n--- b ---\n{}",
            tail(&self.a.log()),
            tail(&self.b.log())
        )
    }

    /// Every environment at the merged version, no overlapping deploys.
    fn assert_fleet_right(&self) {
        for name in &self.envs {
            for service in ["db", "api", "web"] {
                assert_eq!(
                    self.fleet.version_of(name, service).as_deref(),
                    Some(self.sha.as_str()),
                    "{name}/{service}"
                );
            }
        }
        let overlaps = self.fleet.overlapping_deploys();
        assert!(overlaps.is_empty(), "overlapping deploys: {overlaps:?}");
    }

    /// One check run, concluded success; one PR comment, showing success;
    /// each created once.
    async fn assert_github_right(&self, pr: u64, id: &RolloutId) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.gh.state();
            let runs = runs_for(&state, self.sha.as_str());
            let comments = state.comments_on(REPO, pr);
            let run_done = runs.len() == 1
                && runs[0]["status"] == "completed"
                && runs[0]["conclusion"] == "success";
            let comment_done = comments.len() == 1
                && comments[0]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("succeeded"));
            if run_done && comment_done {
                assert_eq!(runs[0]["external_id"], id.as_str());
                assert_eq!(
                    state.count_requests(&reqwest::Method::POST, "/check-runs"),
                    1,
                    "one check run created"
                );
                assert_eq!(
                    state.count_requests(&reqwest::Method::POST, &format!("/issues/{pr}/comments")),
                    1,
                    "one comment created"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "GitHub shows runs {:?}, comments {:?}",
                runs.iter()
                    .map(|r| (
                        r["id"].clone(),
                        r["status"].clone(),
                        r["conclusion"].clone()
                    ))
                    .collect::<Vec<_>>(),
                comments
                    .iter()
                    .map(|c| c["body"]
                        .as_str()
                        .unwrap_or("")
                        .chars()
                        .take(120)
                        .collect::<String>())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn runs_for(state: &StandInState, sha: &str) -> Vec<Value> {
    state
        .check_runs
        .values()
        .filter_map(|v| v.last())
        .filter(|r| r["head_sha"] == sha && r["name"] == "convoy/rollout")
        .cloned()
        .collect()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Whether a write transaction can start on the SQLite file at once.
async fn write_lock_free(db: &Path) -> bool {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::ZERO);
    let Ok(mut conn) = sqlx::SqliteConnection::connect_with(&options).await else {
        return false;
    };
    let free = sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .is_ok();
    if free {
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
    }
    let _ = conn.close().await;
    free
}

/// Each scenario as two tests, `postgres::name` and `sqlite::name`.
macro_rules! on_both {
    ($($name:ident => $scenario:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$scenario(super::Db::Postgres).await;
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$scenario(super::Db::Sqlite).await;
            })*
        }
    };
}

on_both!(
    two_replicas_process_each_delivery_once_and_finish_a_rollout_after_kill_9 => deliveries_once_and_kill_9,
    a_replica_paused_past_its_lease_does_not_act_on_the_work_taken_over => paused_past_its_lease,
    a_replica_stopped_with_sigterm_hands_its_rollout_over_at_once => sigterm_hands_over,
    a_command_reaches_the_rollout_through_the_replica_driving_it => command_through_the_driver,
    the_replica_that_takes_over_continues_the_newest_check_run => newest_check_run,
);

fn ping(n: usize) -> Value {
    json!({ "zen": format!("ping {n}"), "hook_id": n })
}

/// A graceful stop gives the leases back: with a long lease, the other
/// replica takes the rollout over long before the lease would have run out.
async fn sigterm_hands_over(db: Db) {
    let pr = 11;
    let lease = Duration::from_secs(30);
    let mut s = setup_with(db, 12, pr, Duration::from_millis(300), lease).await;
    s.b.deliver("pull_request", "merge-pr", &merged_pr(pr, &s.sha))
        .await;
    let id = s.rollout_id().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.succeeded(&id).await < 4 {
        assert!(Instant::now() < deadline, "no progress\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner = s.owner(&id).await.expect("someone drives the rollout");
    let (leaving, staying) = if owner == s.a.id {
        (&mut s.a, &s.b)
    } else {
        (&mut s.b, &s.a)
    };
    let staying_id = staying.id.clone();
    leaving.signal("TERM");
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = leaving.child.try_wait().unwrap() {
            break status;
        }
        assert!(stopped.elapsed() < Duration::from_secs(20), "still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    loop {
        if s.owner(&id).await.as_deref() == Some(staying_id.as_str()) {
            break;
        }
        // Every third of a lease the other replica looks for work nobody
        // drives; a lease left to run out would take the whole lease.
        assert!(
            stopped.elapsed() < lease / 2,
            "not handed over before the lease would have run out\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.wait_terminal(&id, 90).await, "succeeded", "{}", s.logs());
    s.assert_fleet_right();
    s.assert_github_right(pr, &id).await;
}

async fn deliveries_once_and_kill_9(db: Db) {
    let pr = 7;
    let mut s = setup(db, 100, pr, Duration::from_millis(150)).await;

    // Deliveries to both, alternately, and a redelivery of each to the
    // other: every one stored once and processed once.
    let mut ids = Vec::new();
    for n in 0..40 {
        let id = format!("ping-{n}");
        let (to, again) = if n % 2 == 0 {
            (&s.a, &s.b)
        } else {
            (&s.b, &s.a)
        };
        to.deliver("ping", &id, &ping(n)).await;
        again.deliver("ping", &id, &ping(n)).await;
        ids.push(id);
    }
    // The merge arrives twice (pull_request and push), at different
    // replicas: one rollout.
    s.a.deliver("pull_request", "merge-pr", &merged_pr(pr, &s.sha))
        .await;
    s.b.deliver("push", "merge-push", &push(&"0".repeat(40), &s.sha))
        .await;
    ids.extend(["merge-pr".to_owned(), "merge-push".to_owned()]);
    let id = s.rollout_id().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = s.store.inbox_counts().await.unwrap();
        if counts.pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "inbox not drained\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for d in &ids {
        let item = s
            .store
            .delivery(&DeliveryId::new(d.clone()))
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(item.state, DeliveryState::Done | DeliveryState::Dropped),
            "{d}: {:?} {:?}",
            item.state,
            item.last_error
        );
        assert_eq!(item.attempts, 1, "{d} processed once");
    }

    // Mid-rollout, the replica driving it dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.succeeded(&id).await < 30 {
        assert!(Instant::now() < deadline, "no progress\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner = s.owner(&id).await.expect("someone drives the rollout");
    let (victim, survivor) = if owner == s.a.id {
        (&mut s.a, &s.b)
    } else {
        assert_eq!(owner, s.b.id, "the owner is one of the replicas");
        (&mut s.b, &s.a)
    };
    let survivor_id = survivor.id.clone();
    victim.kill_9();
    let killed = Instant::now();
    assert!(s.succeeded(&id).await < 300, "killed before the end");

    // The survivor takes it over once the lease ran out (renewals stop
    // with the process; it looks every third of a lease).
    loop {
        if s.owner(&id).await.as_deref() == Some(survivor_id.as_str()) {
            break;
        }
        assert!(
            killed.elapsed() < LEASE * 4,
            "not taken over within {:?}\n{}",
            LEASE * 4,
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.wait_terminal(&id, 90).await, "succeeded", "{}", s.logs());
    s.assert_fleet_right();
    s.assert_github_right(pr, &id).await;
    s.gh.assert_no_violations();
    drop(s.dir);
}

async fn paused_past_its_lease(db: Db) {
    let pr = 9;
    let mut s = setup(db, 30, pr, Duration::from_millis(300)).await;
    s.a.deliver("pull_request", "merge-pr", &merged_pr(pr, &s.sha))
        .await;
    let id = s.rollout_id().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.succeeded(&id).await < 10 {
        assert!(Instant::now() < deadline, "no progress\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner = s.owner(&id).await.expect("someone drives the rollout");
    let (paused, other) = if owner == s.a.id {
        (&mut s.a, &s.b)
    } else {
        (&mut s.b, &s.a)
    };
    let other_id = other.id.clone();
    let paused_name = paused.name;
    // SQLite has one write lock for the whole file: a process stopped
    // inside a write transaction stops every replica with it (PostgreSQL
    // locks rows). On SQLite, pause it at a moment it holds no write lock.
    let file = s.dir.path().join("convoy.db");
    let mut tries = 0;
    loop {
        paused.signal("STOP");
        tokio::time::sleep(Duration::from_millis(50)).await;
        if s.db == Db::Postgres || write_lock_free(&file).await {
            break;
        }
        paused.signal("CONT");
        tries += 1;
        assert!(tries < 100, "never found the replica outside a write");
        tokio::time::sleep(Duration::from_millis(fastrand::u64(10..60))).await;
    }
    let from_paused = |fleet: &Fleet| {
        fleet
            .requests()
            .iter()
            .filter(|r| r.headers.get("x-replica").map(String::as_str) == Some(paused_name))
            .count()
    };

    // The other replica takes the rollout over and goes on with it.
    let stopped = Instant::now();
    loop {
        if s.owner(&id).await.as_deref() == Some(other_id.as_str()) {
            break;
        }
        assert!(
            stopped.elapsed() < LEASE * 4,
            "not taken over\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counted only now: a request it sent just before it was stopped may
    // reach a busy fleet late; it cannot send anything while stopped.
    let before = from_paused(&s.fleet);
    assert!(before > 0, "the paused replica had been deploying");
    let progress = s.succeeded(&id).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.succeeded(&id).await == progress {
        assert!(Instant::now() < deadline, "no progress after takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Resumed mid-rollout: its timers, polls and queued driver calls all
    // come due at once; none may reach the fleet.
    let paused = if paused_name == "a" {
        &mut s.a
    } else {
        &mut s.b
    };
    paused.signal("CONT");
    assert_eq!(s.wait_terminal(&id, 90).await, "succeeded", "{}", s.logs());
    tokio::time::sleep(LEASE).await;
    let paused = if paused_name == "a" {
        &mut s.a
    } else {
        &mut s.b
    };
    assert!(paused.alive(), "the paused replica lives on");
    let log = paused.log();
    // A driver call that had passed its lease check when the process was
    // stopped completes when it resumes (no fencing reaches into the
    // agent: a stop can fall between the check and the send). What must
    // not come is new work: a deploy after the resume is allowed only for
    // a step that was already under way (its preflight went out before the
    // stop), and once.
    let mine: Vec<(String, String, String)> = s
        .fleet
        .requests()
        .into_iter()
        .filter(|r| r.headers.get("x-replica").map(String::as_str) == Some(paused_name))
        .map(|r| {
            (
                r.method.to_string(),
                r.path.to_string(),
                r.environment.clone(),
            )
        })
        .collect();
    let (earlier, after) = mine.split_at(before.min(mine.len()));
    let mut in_flight: std::collections::HashMap<&str, usize> = Default::default();
    for (_, path, env) in earlier {
        if path.contains("preflight") || path.contains("status") {
            in_flight.insert(env.as_str(), 1);
        }
    }
    for (method, path, env) in after {
        if method == "GET" {
            continue;
        }
        let left = in_flight.get_mut(env.as_str());
        assert!(
            path.contains("deploy") && left.as_ref().is_some_and(|n| **n > 0),
            "the paused replica started new work after it resumed: {method} {path} {env}; \
             after the resume: {after:?}\n{}",
            tail(&log)
        );
        if let Some(n) = left {
            *n -= 1;
        }
    }
    assert!(
        log.contains("lease lost") || log.contains("no longer ours"),
        "it noticed: {}",
        tail(&log)
    );
    s.assert_fleet_right();
    s.assert_github_right(pr, &id).await;
}

/// Two replicas in this process (two `convoy::app` instances on one
/// database): a command given to the one that does not drive the rollout
/// is applied by the one that does, and its verdict comes back.
async fn command_through_the_driver(db: Db) {
    use convoy::engine::Command as Cmd;
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let envs: Vec<String> = (0..12).map(|i| format!("env-{i:03}")).collect();
    let fleet = Fleet::start(envs.clone(), 5).await.unwrap();
    for name in &envs {
        fleet.update_knobs(name, |k| k.deploy_duration = Duration::from_millis(300));
    }
    let sha = git.commit(&[("convoy.yml", &spec(&fleet, &envs))], "first");
    let url = match db {
        Db::Sqlite => format!("sqlite://{}", dir.path().join("convoy.db").display()),
        Db::Postgres => tokio::task::spawn_blocking(convoy::testkit::postgres::fresh_database)
            .await
            .unwrap()
            .expect("a throwaway PostgreSQL"),
    };
    let config = |name: &str| {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data}"
lease = "2s"
[github]
webhook_secret = "{SECRET}"
git_url = "{git_url}"
[database]
url = "{url}"
[drivers.agent]
kind = "http-agent"
allowed_hosts = ["127.0.0.1"]
timeout = "5s"
"#,
            data = dir.path().join(format!("data-{name}")).display(),
            git_url = git.url_template(),
        );
        convoy::config::Config::from_toml(&text, "replica.toml", &[]).unwrap()
    };
    let a = common::start(config("a")).await;
    let b = common::start(config("b")).await;
    assert_eq!(
        common::deliver(&a, "pull_request", "merge-pr", &merged_pr(3, &sha)).await,
        202
    );
    let rollout = common::rollout_of(&a, &sha).await;
    let id = rollout.id;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (driver, other) = loop {
        match (a.runtime.is_live(&id), b.runtime.is_live(&id)) {
            (true, false) => break (&a, &b),
            (false, true) => break (&b, &a),
            _ => {}
        }
        assert!(Instant::now() < deadline, "nobody drives the rollout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let by = "alice".to_owned();
    other
        .runtime
        .command(&id, Cmd::Pause { by: by.clone() })
        .await
        .expect("paused through the driving replica");
    assert!(
        driver.runtime.is_live(&id),
        "still driven by the same replica"
    );
    assert!(!other.runtime.is_live(&id), "not taken over");
    assert_eq!(
        other.store.rollout(&id).await.unwrap().unwrap().state,
        "paused"
    );
    // The engine's refusal comes back too.
    let refused = other
        .runtime
        .command(&id, Cmd::Pause { by: by.clone() })
        .await
        .expect_err("pausing a paused rollout is refused");
    assert!(!refused.to_string().is_empty());
    other
        .runtime
        .command(&id, Cmd::Resume { by })
        .await
        .expect("resumed");
    let done = common::wait_state(driver, &id, &["succeeded", "failed", "halted"], 60).await;
    assert_eq!(done.state, "succeeded");
    for name in &envs {
        assert_eq!(
            fleet.version_of(name, "web").as_deref(),
            Some(sha.as_str()),
            "{name}"
        );
    }
    assert!(fleet.overlapping_deploys().is_empty());
    a.stop().await;
    b.stop().await;
}

/// Approved on one replica (a second check run of the same name, SPEC
/// 7.2), finished by the other after the first stops: the second replica
/// has never seen either check run, and must finish the newer one, not
/// overwrite the first's `action_required`.
async fn newest_check_run(db: Db) {
    use convoy::engine::Command as Cmd;
    let dir = tempfile::tempdir().unwrap();
    let url = match db {
        Db::Sqlite => format!("sqlite://{}", dir.path().join("convoy.db").display()),
        Db::Postgres => tokio::task::spawn_blocking(convoy::testkit::postgres::fresh_database)
            .await
            .unwrap()
            .expect("a throwaway PostgreSQL"),
    };
    let git = GitFixture::new(dir.path());
    let envs: Vec<String> = (0..6).map(|i| format!("env-{i:03}")).collect();
    let fleet = Fleet::start(envs.clone(), 17).await.unwrap();
    let pairs: Vec<(String, String)> = envs.iter().map(|e| (e.clone(), fleet.url(e))).collect();
    let sha = git.commit(
        &[(
            "convoy.yml",
            &common::fleet_spec(&pairs, "", "    approval: true\n"),
        )],
        "first",
    );
    let pr = 21;
    let (gh, _) = common::github_standin().await;
    gh.add_pull_request(REPO, pr, "dev", sha.as_str(), "feature", "main", true);
    let config = |name: &str| {
        let data = dir.path().join(format!("data-{name}"));
        let data = data.display().to_string();
        common::config_with_github(
            dir.path(),
            &git,
            "",
            &gh.url(),
            &[
                ("CONVOY_DATABASE_URL", url.as_str()),
                ("CONVOY_SERVER_LEASE", "2s"),
                ("CONVOY_SERVER_DATA_DIR", data.as_str()),
                ("CONVOY_GITHUB_MIN_UPDATE_INTERVAL", "100ms"),
                ("CONVOY_GITHUB_PROGRESS_INTERVAL", "200ms"),
            ],
        )
    };
    let a = common::start(config("a")).await;
    let b = common::start(config("b")).await;
    assert_eq!(
        common::deliver(&a, "pull_request", "merge-pr", &merged_pr(pr, &sha)).await,
        202
    );
    let id = common::rollout_of(&a, &sha).await.id;
    common::wait_state(&a, &id, &["awaiting_approval"], 60).await;
    common::eventually(30, "the check run asks for the approval", || {
        runs_for(&gh.state(), sha.as_str())
            .iter()
            .any(|r| r["conclusion"] == "action_required")
            .then_some(())
    })
    .await;
    // The last wave's deploys take a while, so the approval's replica is
    // stopped while it runs.
    for name in &envs {
        fleet.update_knobs(name, |k| k.deploy_duration = Duration::from_millis(1500));
    }
    let (leaving, staying) = if a.runtime.is_live(&id) {
        (a, b)
    } else {
        (b, a)
    };
    leaving
        .runtime
        .command(
            &id,
            Cmd::Approve {
                wave: None,
                by: "alice".into(),
            },
        )
        .await
        .expect("approved");
    common::eventually(30, "a second check run, in progress", || {
        let runs = runs_for(&gh.state(), sha.as_str());
        (runs.len() == 2 && runs.iter().any(|r| r["status"] == "in_progress")).then_some(())
    })
    .await;
    leaving.stop().await;
    let done = common::wait_state(&staying, &id, &["succeeded", "failed", "halted"], 90).await;
    assert_eq!(done.state, "succeeded");
    let runs = common::eventually(30, "the newer check run succeeds", || {
        let runs = runs_for(&gh.state(), sha.as_str());
        runs.iter()
            .any(|r| r["conclusion"] == "success")
            .then_some(runs)
    })
    .await;
    assert_eq!(runs.len(), 2, "no third check run: {runs:#?}");
    assert!(
        runs.iter().any(|r| r["conclusion"] == "action_required"),
        "the first still shows what it asked: {runs:#?}"
    );
    staying.stop().await;
}

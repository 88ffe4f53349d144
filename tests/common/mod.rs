//! Shared harness for end-to-end tests: a real git repository in a temp
//! dir served as `file://`, a simulated fleet on 127.0.0.1, convoy on its own
//! database, and signed webhooks built from GitHub's own examples.
//!
//! The database is a SQLite file, or with `CONVOY_TEST_DB=postgres` a fresh
//! database on a PostgreSQL server the test process starts itself
//! (`convoy::testkit::postgres`); `scripts/test.sh` runs every test that
//! uses this harness both ways.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use convoy::app::{self, Running, Services};
use convoy::config::Config;
use convoy::domain::{BranchName, CommitSha, RepoName};
use convoy::store::RolloutRecord;
use convoy::webhook::signature::sign;
use serde_json::Value;

pub const SECRET: &str = "e2e-secret";
pub const REPO: &str = "acme/app";
pub const INSTALLATION: i64 = 4242;

/// A working git repository at `<root>/acme/app`, committed to with the
/// `git` command line.
pub struct GitFixture {
    pub root: PathBuf,
    pub path: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl GitFixture {
    pub fn new(root: &Path) -> GitFixture {
        let path = root.join("acme").join("app");
        std::fs::create_dir_all(&path).unwrap();
        git(&path, &["init", "-q", "-b", "main"]);
        GitFixture {
            root: root.to_owned(),
            path,
        }
    }

    /// Writes the files and commits them; returns the commit.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> CommitSha {
        for (name, content) in files {
            let file = self.path.join(name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        git(&self.path, &["add", "-A"]);
        git(&self.path, &["commit", "-q", "-m", message]);
        CommitSha::new(git(&self.path, &["rev-parse", "HEAD"]))
    }

    /// Runs `git` in the repository (branches, history rewrites); its
    /// output, trimmed.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
    }

    /// `github.git_url` for this fixture.
    pub fn url_template(&self) -> String {
        format!("file://{}/{{owner}}/{{repo}}", self.root.display())
    }
}

pub fn config(dir: &Path, git: &GitFixture, extra: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data}"
[github]
webhook_secret = "{SECRET}"
git_url = "{git_url}"
[database]
url = "{db}"
[drivers.agent]
kind = "http-agent"
allowed_hosts = ["127.0.0.1"]
timeout = "5s"
{extra}
"#,
        data = dir.join("data").display(),
        git_url = git.url_template(),
        db = database_url(&dir.join("convoy.db")),
    );
    Config::from_toml(&text, "e2e.toml", &[]).expect("e2e config")
}

/// Whether the tests run on PostgreSQL (`CONVOY_TEST_DB=postgres`) rather
/// than SQLite (unset, or `sqlite`).
pub fn on_postgres() -> bool {
    match std::env::var("CONVOY_TEST_DB").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("CONVOY_TEST_DB={other}: expected sqlite or postgres"),
    }
}

/// `database.url` for the database that would be the SQLite file `db`: that
/// file, or on PostgreSQL a database of its own, the same one each time for
/// the same `db` (a test that restarts convoy finds its data again).
pub fn database_url(db: &Path) -> String {
    if !on_postgres() {
        return format!("sqlite://{}", db.display());
    }
    static DATABASES: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());
    let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    databases
        .entry(db.to_owned())
        .or_insert_with(|| {
            convoy::testkit::postgres::fresh_database()
                .unwrap_or_else(|e| panic!("test PostgreSQL: {e}"))
        })
        .clone()
}

/// The store `convoy` would open for [`database_url`]`(db)`.
pub async fn open_store(db: &Path) -> std::sync::Arc<dyn convoy::store::Store> {
    let url = convoy::config::parse_database_url(&database_url(db)).expect("database url");
    convoy::store::open(&url).await.expect("store opens")
}

pub async fn start(config: Config) -> Running {
    app::start(config, Services::default())
        .await
        .expect("convoy starts")
}

fn examples() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/github/webhook-examples.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn example(name: &str, action: Option<&str>) -> Value {
    for group in examples() {
        if group["name"] != name {
            continue;
        }
        for e in group["examples"].as_array().unwrap() {
            if action.is_none_or(|a| e["action"] == a) {
                return e.clone();
            }
        }
    }
    panic!("no {name} example")
}

/// A `pull_request` closed event for a merge of PR `number` as `sha` into
/// main, derived from GitHub's closed example.
pub fn merged_pr(number: u64, sha: &CommitSha) -> Value {
    let mut e = example("pull_request", Some("closed"));
    e["number"] = number.into();
    e["pull_request"]["number"] = number.into();
    e["pull_request"]["merged"] = true.into();
    e["pull_request"]["merge_commit_sha"] = sha.as_str().into();
    e["pull_request"]["base"]["ref"] = "main".into();
    e["repository"]["full_name"] = REPO.into();
    e["repository"]["default_branch"] = "main".into();
    e["installation"] = serde_json::json!({ "id": INSTALLATION });
    e
}

/// A push of `sha` to main.
pub fn push(before: &str, sha: &CommitSha) -> Value {
    let mut e = example("push", None);
    e["ref"] = "refs/heads/main".into();
    e["before"] = before.into();
    e["after"] = sha.as_str().into();
    e["deleted"] = false.into();
    e["repository"]["full_name"] = REPO.into();
    e["repository"]["default_branch"] = "main".into();
    e["installation"] = serde_json::json!({ "id": INSTALLATION });
    e
}

pub async fn deliver(running: &Running, event: &str, delivery: &str, body: &Value) -> u16 {
    let body = serde_json::to_vec(body).unwrap();
    reqwest::Client::new()
        .post(format!("http://{}/webhook", running.addr))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sign(SECRET, &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("webhook delivered")
        .status()
        .as_u16()
}

/// Waits (bounded) for the rollout of `sha` to exist.
pub async fn rollout_of(running: &Running, sha: &CommitSha) -> RolloutRecord {
    for _ in 0..400 {
        if let Some(r) = running
            .store
            .rollout_for_commit(&RepoName::new(REPO), &BranchName::new("main"), sha)
            .await
            .unwrap()
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no rollout for {sha} within 20 s");
}

/// Waits (bounded by `secs`) until the rollout's state is one of `states`.
pub async fn wait_state(
    running: &Running,
    id: &convoy::domain::RolloutId,
    states: &[&str],
    secs: u64,
) -> RolloutRecord {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let r = running
            .store
            .rollout(id)
            .await
            .unwrap()
            .expect("rollout exists");
        if states.contains(&r.state.as_str()) {
            return r;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "rollout {id} is {} after {secs} s, expected {states:?}; error: {:?}",
                r.state, r.error
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON API's view of a rollout.
pub async fn api_rollout(running: &Running, id: &convoy::domain::RolloutId) -> Value {
    reqwest::get(format!("http://{}/api/rollouts/{id}", running.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A convoy.yml with three services (db ← api ← web), `n` environments on
/// the fleet and three waves: canary (2 by label), 20 %, the rest.
pub fn fleet_spec(envs: &[(String, String)], policy: &str, rest_wave: &str) -> String {
    let mut s = String::from(
        "version: 1\nservices:\n  db:\n    paths: [\"migrations/**\"]\n  api:\n    paths: [\"services/api/**\"]\n    depends_on: [db]\n  web:\n    paths: [\"services/web/**\"]\n    depends_on: [api]\nenvironments:\n",
    );
    for (i, (name, url)) in envs.iter().enumerate() {
        let ring = if i < 2 { "canary" } else { "main" };
        s.push_str(&format!(
            "  - name: {name}\n    labels: {{ ring: {ring} }}\n    driver: agent\n    url: {url}\n"
        ));
    }
    s.push_str(&format!(
        "waves:\n  - name: canary\n    selector: {{ ring: canary }}\n  - name: early\n    percent: 20\n    max_parallel: 5\n  - name: rest\n    percent: 100\n    max_parallel: 20\n{rest_wave}policy:\n  poll_interval: 1s\n  backoff: 1s\n{policy}"
    ));
    s
}

/// Like [`config`], with convoy talking to a GitHub stand-in at `api_url`
/// as the test App; `overrides` are `CONVOY_*` variables (e.g.
/// `("CONVOY_GITHUB_WRITES_PER_MINUTE", "6")`).
pub fn config_with_github(
    dir: &Path,
    git: &GitFixture,
    extra: &str,
    api_url: &str,
    overrides: &[(&str, &str)],
) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://convoy.test"
data_dir = "{data}"
[github]
webhook_secret = "{SECRET}"
git_url = "{git_url}"
[database]
url = "{db}"
[drivers.agent]
kind = "http-agent"
allowed_hosts = ["127.0.0.1"]
timeout = "5s"
{extra}
"#,
        data = dir.join("data").display(),
        git_url = git.url_template(),
        db = database_url(&dir.join("convoy.db")),
    );
    let mut env: Vec<(String, String)> = vec![
        ("CONVOY_GITHUB_API_URL".into(), api_url.into()),
        (
            "CONVOY_GITHUB_APP_ID".into(),
            convoy::testkit::github_standin::TEST_APP_ID.to_string(),
        ),
        (
            "CONVOY_GITHUB_PRIVATE_KEY_PATH".into(),
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/test-app-key.pem"
            )
            .into(),
        ),
    ];
    env.extend(
        overrides
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Config::from_toml(&text, "e2e.toml", &env).expect("e2e config with GitHub")
}

/// A `pull_request` event (`opened`, `reopened`, `synchronize`) for PR
/// `number` with head `sha` against main, derived from GitHub's example.
pub fn pr_event(action: &str, number: u64, sha: &CommitSha) -> Value {
    let mut e = example("pull_request", Some("opened"));
    e["action"] = action.into();
    e["number"] = number.into();
    e["pull_request"]["number"] = number.into();
    e["pull_request"]["state"] = "open".into();
    e["pull_request"]["merged"] = false.into();
    e["pull_request"]["head"]["sha"] = sha.as_str().into();
    e["pull_request"]["base"]["ref"] = "main".into();
    e["repository"]["full_name"] = REPO.into();
    e["repository"]["default_branch"] = "main".into();
    e["installation"] = serde_json::json!({ "id": INSTALLATION });
    e
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `secs`.
pub async fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("{what}: not within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl GitFixture {
    /// A repository at `<root>/<owner>/<name>` for `repo` = `owner/name`
    /// (several repositories under one `git_url` template).
    pub fn named(root: &Path, repo: &str) -> GitFixture {
        let path = root.join(repo);
        std::fs::create_dir_all(&path).unwrap();
        git(&path, &["init", "-q", "-b", "main"]);
        GitFixture {
            root: root.to_owned(),
            path,
        }
    }
}

/// [`merged_pr`] in another repository of the same installation.
pub fn merged_pr_in(repo: &str, number: u64, sha: &CommitSha) -> Value {
    let mut e = merged_pr(number, sha);
    e["repository"]["full_name"] = repo.into();
    e
}

/// Starts convoy with services of the test's own (a GitHub client, hooks).
pub async fn start_with(config: Config, services: Services) -> Running {
    app::start(config, services).await.expect("convoy starts")
}

/// A GitHub stand-in checking every request against GitHub's description,
/// with the test repository, and a real client for it.
pub async fn github_standin() -> (
    convoy::testkit::github_standin::GitHubStandIn,
    std::sync::Arc<dyn convoy::github::GitHubApi>,
) {
    use convoy::testkit::github_standin::{
        GitHubStandIn, StandInConfig, TEST_APP_ID, TEST_APP_PRIVATE_KEY_PEM,
    };
    let standin = GitHubStandIn::start(StandInConfig::for_tests())
        .await
        .expect("stand-in starts");
    standin.add_repo(REPO, "main");
    let client = convoy::github::GitHubClient::new(convoy::github::GitHubClientConfig::new(
        standin.url(),
        TEST_APP_ID,
        convoy::config::Secret::new(TEST_APP_PRIVATE_KEY_PEM),
    ))
    .expect("client");
    (standin, std::sync::Arc::new(client))
}

/// An `issue_comment` created event: `author` wrote `body` as comment
/// `comment_id` on PR `number` (opened by `pr_author`), derived from
/// GitHub's example.
pub fn pr_comment(
    number: u64,
    comment_id: u64,
    author: &str,
    pr_author: &str,
    body: &str,
) -> Value {
    let mut e = example("issue_comment", Some("created"));
    e["action"] = "created".into();
    e["issue"]["number"] = number.into();
    e["issue"]["user"]["login"] = pr_author.into();
    e["issue"]["pull_request"] = serde_json::json!({
        "url": format!("https://api.github.com/repos/{REPO}/pulls/{number}")
    });
    e["issue"]["labels"] = serde_json::json!([]);
    e["comment"]["id"] = comment_id.into();
    e["comment"]["body"] = body.into();
    e["comment"]["user"]["login"] = author.into();
    e["comment"]["user"]["type"] = "User".into();
    e["sender"]["login"] = author.into();
    e["repository"]["full_name"] = REPO.into();
    e["installation"] = serde_json::json!({ "id": INSTALLATION });
    e
}

/// A `check_run` event on `convoy/rollout` for `rollout`: `requested_action`
/// with the button `identifier`, or `rerequested` when it is `None`.
pub fn check_run_click(
    check_run_id: u64,
    rollout: &convoy::domain::RolloutId,
    identifier: Option<&str>,
    sender: &str,
) -> Value {
    let action = if identifier.is_some() {
        "requested_action"
    } else {
        "rerequested"
    };
    let mut e = example("check_run", Some(action));
    e["check_run"]["id"] = check_run_id.into();
    e["check_run"]["name"] = "convoy/rollout".into();
    e["check_run"]["external_id"] = rollout.as_str().into();
    e["check_run"]["app"]["id"] = convoy::testkit::github_standin::TEST_APP_ID.into();
    match identifier {
        Some(id) => e["requested_action"] = serde_json::json!({ "identifier": id }),
        None => {
            if let Some(map) = e.as_object_mut() {
                map.remove("requested_action");
            }
        }
    }
    e["sender"]["login"] = sender.into();
    e["repository"]["full_name"] = REPO.into();
    e["installation"] = serde_json::json!({ "id": INSTALLATION });
    e
}

/// The step states in which a driver call is outstanding.
pub const IN_FLIGHT: &[&str] = &["preflight", "deploying", "verifying"];

/// The steps of a rollout's API view (SPEC 8), every wave's, whose state
/// is one of `states`.
pub fn steps_in<'a>(view: &'a Value, states: &[&str]) -> Vec<&'a Value> {
    view["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["steps"].as_array().into_iter().flatten())
        .filter(|s| s["state"].as_str().is_some_and(|st| states.contains(&st)))
        .collect()
}

/// `/convoy retry` of every failed step of rollout `id`, by alice.
pub async fn retry_all(
    running: &Running,
    id: &convoy::domain::RolloutId,
) -> Result<(), convoy::runtime::rollouts::RuntimeError> {
    running
        .runtime
        .command(
            id,
            convoy::engine::Command::Retry {
                environments: vec![],
                by: "alice".into(),
            },
        )
        .await
}

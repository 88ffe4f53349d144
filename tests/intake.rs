//! The webhook intake end to end: real payloads from GitHub's examples,
//! signed and sent over a real socket to a real server on its own SQLite
//! file; every bad-input class; exactly-once across restarts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use convoy::app::{self, Running};
use convoy::config::Config;
use convoy::domain::{DeliveryId, InstallationId, RepoName};
use convoy::runtime::worker::{EventHandler, HandlerError};
use convoy::store::DeliveryState;
use convoy::webhook::signature::sign;
use convoy::webhook::{Envelope, Event, events};
use serde_json::Value;

mod common;

const SECRET: &str = "test-secret";

fn config(db: &Path) -> Config {
    // Repositories are fetched from a folder that has none: a push to a
    // default branch is then a fetch failure, retried, never a network call.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n[github]\nwebhook_secret = \"other-secret,{SECRET}\"\n\
         git_url = \"file://{data}/no-repos/{{owner}}/{{repo}}\"\n[database]\nurl = \"{}\"\n",
        common::database_url(db),
        data = db.parent().unwrap().join("data").display(),
    );
    Config::from_toml(&text, "test.toml", &[]).expect("test config")
}

async fn start(db: &Path, handler: Option<Arc<dyn EventHandler>>) -> Running {
    app::start(
        config(db),
        handler.map(app::Services::with_handler).unwrap_or_default(),
    )
    .await
    .expect("convoy starts")
}

fn examples() -> Vec<(String, Value)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/github/webhook-examples.json"
    );
    let text = std::fs::read_to_string(path).expect("shared/github/webhook-examples.json");
    let list: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in list {
        let name = group["name"].as_str().unwrap().to_owned();
        for example in group["examples"].as_array().unwrap() {
            out.push((name.clone(), example.clone()));
        }
    }
    out
}

struct Post<'a> {
    event: Option<&'a str>,
    delivery: Option<&'a str>,
    signature: Option<String>,
    body: Vec<u8>,
}

impl<'a> Post<'a> {
    fn signed(event: &'a str, delivery: &'a str, body: Vec<u8>) -> Self {
        Post {
            event: Some(event),
            delivery: Some(delivery),
            signature: Some(sign(SECRET, &body)),
            body,
        }
    }

    async fn send(self, running: &Running) -> u16 {
        let client = reqwest::Client::new();
        let mut req = client
            .post(format!("http://{}/webhook", running.addr))
            .header("content-type", "application/json");
        if let Some(e) = self.event {
            req = req.header("X-GitHub-Event", e);
        }
        if let Some(d) = self.delivery {
            req = req.header("X-GitHub-Delivery", d);
        }
        if let Some(s) = self.signature {
            req = req.header("X-Hub-Signature-256", s);
        }
        req.body(self.body)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }
}

/// Waits (bounded) until the worker has taken every delivery.
async fn drained(running: &Running) {
    for _ in 0..200 {
        if running.store.inbox_counts().await.unwrap().pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the worker did not drain the inbox within 10 s");
}

#[tokio::test]
async fn every_github_example_is_accepted_and_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&dir.path().join("convoy.db"), None).await;
    let examples = examples();
    assert!(examples.len() > 300, "expected all of GitHub's examples");
    for (i, (name, body)) in examples.iter().enumerate() {
        let delivery = format!("example-{i}");
        let status = Post::signed(name, &delivery, serde_json::to_vec(body).unwrap())
            .send(&running)
            .await;
        assert_eq!(status, 202, "{name} example {i}");
    }
    // Every delivery is attempted at least once.
    for i in 0..examples.len() {
        let id = DeliveryId::new(format!("example-{i}"));
        for _ in 0..400 {
            if running.store.delivery(&id).await.unwrap().unwrap().attempts > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    for (i, (name, body)) in examples.iter().enumerate() {
        let item = running
            .store
            .delivery(&DeliveryId::new(format!("example-{i}")))
            .await
            .unwrap()
            .expect("stored");
        let handled = events::HANDLED.contains(&name.as_str());
        let has_installation = body.get("installation").is_some_and(|v| !v.is_null());
        // A push to the default branch asks git for the commit, which is
        // not there: a transient failure, retried later.
        let fetches = name == "push"
            && has_installation
            && body["deleted"] == false
            && body["ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("refs/heads/"))
                == body["repository"]["default_branch"].as_str();
        let expected = if fetches {
            DeliveryState::Pending
        } else if handled && (has_installation || name == "ping") {
            DeliveryState::Done
        } else {
            DeliveryState::Dropped
        };
        assert_eq!(
            item.state, expected,
            "{name} example {i}: {:?}",
            item.last_error
        );
        if fetches {
            let error = item.last_error.clone().unwrap_or_default();
            assert!(error.contains("fetch"), "{error}");
        }
        if handled {
            let parsed = events::parse(name, &item.payload)
                .unwrap_or_else(|e| panic!("{name} example {i}: {e}"))
                .expect("a handled event parses to Some");
            assert_eq!(parsed.event.name(), name.as_str());
        }
    }
    let metrics = running.metrics.encode();
    assert!(
        metrics.contains(r#"convoy_deliveries_total{event="push",outcome="accepted"} 7"#),
        "{metrics}"
    );
    running.stop().await;
}

fn example(name: &str, action: Option<&str>) -> Value {
    examples()
        .into_iter()
        .find(|(n, v)| n == name && action.is_none_or(|a| v["action"] == a))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {name} {action:?} example"))
}

#[test]
fn derived_merged_pull_request_and_pr_comment_parse() {
    let mut merged = example("pull_request", Some("closed"));
    merged["pull_request"]["merged"] = Value::Bool(true);
    merged["pull_request"]["merge_commit_sha"] =
        Value::String("c4295bd74fb0f4fda3a2c1b3e08a15c1f6d3b6a1".into());
    merged["installation"] = serde_json::json!({"id": 77});
    let env = events::parse("pull_request", &serde_json::to_string(&merged).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(env.installation, Some(InstallationId(77)));
    let Event::PullRequest(pr) = env.event else {
        panic!("not a pull request")
    };
    assert_eq!(
        pr.merged_commit().map(|c| c.as_str()),
        Some("c4295bd74fb0f4fda3a2c1b3e08a15c1f6d3b6a1")
    );

    // The closed example as GitHub sent it: not merged, yet it carries a
    // merge_commit_sha. It must not be taken for a merge.
    let closed = example("pull_request", Some("closed"));
    let Event::PullRequest(pr) =
        events::parse("pull_request", &serde_json::to_string(&closed).unwrap())
            .unwrap()
            .unwrap()
            .event
    else {
        panic!("not a pull request")
    };
    assert_eq!(pr.merged_commit(), None);

    let mut comment = example("issue_comment", Some("created"));
    comment["issue"]["pull_request"] =
        serde_json::json!({"url": "https://api.github.com/repos/x/y/pulls/1"});
    let Event::IssueComment(c) =
        events::parse("issue_comment", &serde_json::to_string(&comment).unwrap())
            .unwrap()
            .unwrap()
            .event
    else {
        panic!("not a comment")
    };
    assert!(c.on_pull_request);
    let plain = example("issue_comment", Some("created"));
    let Event::IssueComment(c) =
        events::parse("issue_comment", &serde_json::to_string(&plain).unwrap())
            .unwrap()
            .unwrap()
            .event
    else {
        panic!("not a comment")
    };
    assert!(!c.on_pull_request);
}

#[tokio::test]
async fn bad_input_gets_its_status_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&dir.path().join("convoy.db"), None).await;
    let body = br#"{"zen":"hi"}"#.to_vec();

    let mut p = Post::signed("ping", "d-1", body.clone());
    p.signature = None;
    assert_eq!(p.send(&running).await, 401, "missing signature");

    let mut p = Post::signed("ping", "d-2", body.clone());
    p.signature = Some(sign("wrong", &body));
    assert_eq!(p.send(&running).await, 401, "wrong signature");

    let mut p = Post::signed("ping", "d-3", body.clone());
    p.signature = Some("sha256=nothex".into());
    assert_eq!(p.send(&running).await, 401, "malformed signature");

    let mut p = Post::signed("ping", "d-4", body.clone());
    p.event = None;
    assert_eq!(p.send(&running).await, 400, "missing event");

    let mut p = Post::signed("ping", "d-5", body.clone());
    p.delivery = None;
    assert_eq!(p.send(&running).await, 400, "missing delivery");

    assert_eq!(
        Post::signed("ping", "d-6", b"{not json".to_vec())
            .send(&running)
            .await,
        400,
        "invalid JSON"
    );

    // Invalid UTF-8 inside a string the typed parse skips is caught too.
    assert_eq!(
        Post::signed("ping", "d-9", b"{\"zen\":\"hi\",\"x\":\"\xff\"}".to_vec())
            .send(&running)
            .await,
        400,
        "invalid UTF-8"
    );

    let mut big = b"{\"pad\":\"".to_vec();
    big.resize(25 * 1024 * 1024 + 10, b'a');
    big.extend_from_slice(b"\"}");
    assert_eq!(
        Post::signed("push", "d-7", big).send(&running).await,
        413,
        "over 25 MiB"
    );

    // Just under the limit is fine.
    let mut large = b"{\"pad\":\"".to_vec();
    large.resize(24 * 1024 * 1024, b'a');
    large.extend_from_slice(b"\"}");
    assert_eq!(
        Post::signed("star", "d-8", large).send(&running).await,
        202,
        "24 MiB is accepted"
    );

    for id in ["d-1", "d-2", "d-3", "d-4", "d-5", "d-6", "d-7", "d-9"] {
        assert!(
            running
                .store
                .delivery(&DeliveryId::new(id))
                .await
                .unwrap()
                .is_none(),
            "{id} must not be stored"
        );
    }
    // The server is still serving after all of that.
    assert_eq!(
        reqwest::get(format!("http://{}/healthz", running.addr))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    running.stop().await;
}

/// Counts what reaches the rollout side.
struct Counting(AtomicUsize);

#[async_trait]
impl EventHandler for Counting {
    async fn handle(&self, _: &DeliveryId, _: &Envelope) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn push_with_installation() -> Vec<u8> {
    let mut push = example("push", None);
    push["installation"] = serde_json::json!({"id": 5});
    serde_json::to_vec(&push).unwrap()
}

#[tokio::test]
async fn duplicate_delivery_is_processed_once_also_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("convoy.db");
    let counter = Arc::new(Counting(AtomicUsize::new(0)));
    let running = start(&db, Some(counter.clone())).await;
    let body = push_with_installation();
    assert_eq!(
        Post::signed("push", "dup-1", body.clone())
            .send(&running)
            .await,
        202
    );
    assert_eq!(
        Post::signed("push", "dup-1", body.clone())
            .send(&running)
            .await,
        200
    );
    drained(&running).await;
    running.stop().await;

    let running = start(&db, Some(counter.clone())).await;
    assert_eq!(
        Post::signed("push", "dup-1", body.clone())
            .send(&running)
            .await,
        200
    );
    assert_eq!(
        Post::signed("push", "dup-2", body).send(&running).await,
        202
    );
    drained(&running).await;
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        2,
        "dup-1 once, dup-2 once"
    );
    running.stop().await;
}

/// A replica that died with deliveries claimed (acknowledged, stored
/// claimed for its worker, not yet processed) keeps its id across the
/// restart: it takes them back at start and processes them at once, not
/// when their claims would have run out (here two minutes on).
#[tokio::test]
async fn deliveries_claimed_before_a_crash_are_processed_at_once_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("convoy.db");
    let mut config = config(&db);
    config.server.lease = Duration::from_secs(120);
    std::fs::create_dir_all(&config.server.data_dir).unwrap();
    let me = convoy::runtime::leases::Replica::for_data_dir(
        &config.server.data_dir,
        config.server.lease,
    );
    let left = DeliveryId::new("claimed-before-the-crash");
    {
        let store = common::open_store(&db).await;
        let now = chrono::Utc::now();
        let stored = store
            .insert_deliveries(&[convoy::store::NewDelivery {
                id: left.clone(),
                event: "push".into(),
                payload: convoy::store::Payload::compress(push_with_installation()),
                received_at: now,
                claim: Some(convoy::store::Claim {
                    owner: me.id.clone(),
                    until: now + chrono::Duration::seconds(120),
                }),
            }])
            .await
            .unwrap();
        assert_eq!(stored, vec![true]);
    }
    let counter = Arc::new(Counting(AtomicUsize::new(0)));
    let running = app::start(config, app::Services::with_handler(counter.clone()))
        .await
        .expect("convoy starts");
    common::eventually(
        10,
        "the delivery claimed before the crash is processed",
        || (counter.0.load(Ordering::SeqCst) == 1).then_some(()),
    )
    .await;
    let item = running.store.delivery(&left).await.unwrap().unwrap();
    assert_eq!(item.state, DeliveryState::Done);
    running.stop().await;
}

#[tokio::test]
async fn concurrent_duplicates_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let counter = Arc::new(Counting(AtomicUsize::new(0)));
    let running = Arc::new(start(&dir.path().join("convoy.db"), Some(counter.clone())).await);
    let body = push_with_installation();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let running = running.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            Post::signed("push", "same", body).send(&running).await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        19,
        "{statuses:?}"
    );
    drained(&running).await;
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn installations_and_their_repositories_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&dir.path().join("convoy.db"), None).await;
    let created = example("installation", Some("created"));
    let id = InstallationId(created["installation"]["id"].as_i64().unwrap());
    let first_repo = RepoName::new(created["repositories"][0]["full_name"].as_str().unwrap());
    assert_eq!(
        Post::signed("installation", "i-1", serde_json::to_vec(&created).unwrap())
            .send(&running)
            .await,
        202
    );
    drained(&running).await;
    assert_eq!(
        running
            .store
            .installation_for_repo(&first_repo)
            .await
            .unwrap(),
        Some(id)
    );

    let mut removed = example("installation_repositories", Some("removed"));
    removed["installation"]["id"] = serde_json::json!(id.0);
    removed["repositories_removed"] = serde_json::json!([{"full_name": first_repo.as_str(), "id": 1, "name": "x", "node_id": "x", "private": false}]);
    assert_eq!(
        Post::signed(
            "installation_repositories",
            "i-2",
            serde_json::to_vec(&removed).unwrap()
        )
        .send(&running)
        .await,
        202
    );
    drained(&running).await;
    assert_eq!(
        running
            .store
            .installation_for_repo(&first_repo)
            .await
            .unwrap(),
        None
    );

    // Suspended and back: the operator sees it in the metrics.
    let suspended = || async {
        let metrics = reqwest::get(format!("http://{}/metrics", running.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("convoy_installations_suspended "))
            .map(str::to_owned)
    };
    assert_eq!(suspended().await.as_deref(), Some("0"));
    // GitHub's own payloads, verbatim. The last is the suspension again,
    // processed after the unsuspension that lifted it (a retry, or
    // another replica): it must not stand, though GitHub dates the
    // unsuspension with the very same instant.
    let suspend = example("installation", Some("suspend"));
    let unsuspend = example("installation", Some("unsuspend"));
    for (n, event, count) in [(4, &suspend, "1"), (5, &unsuspend, "0"), (6, &suspend, "0")] {
        let action = event["action"].as_str().unwrap();
        Post::signed(
            "installation",
            &format!("i-{n}"),
            serde_json::to_vec(event).unwrap(),
        )
        .send(&running)
        .await;
        drained(&running).await;
        assert_eq!(
            suspended().await.as_deref(),
            Some(count),
            "after {action} (i-{n})"
        );
    }

    let mut deleted = example("installation", Some("deleted"));
    deleted["installation"]["id"] = serde_json::json!(id.0);
    Post::signed("installation", "i-3", serde_json::to_vec(&deleted).unwrap())
        .send(&running)
        .await;
    drained(&running).await;
    assert!(
        running
            .store
            .installation_repos(id)
            .await
            .unwrap()
            .is_empty()
    );
    running.stop().await;
}

/// Fails every time, transiently or for good.
struct Failing {
    permanent: bool,
}

#[async_trait]
impl EventHandler for Failing {
    async fn handle(&self, _: &DeliveryId, _: &Envelope) -> Result<(), HandlerError> {
        if self.permanent {
            Err(HandlerError::Permanent("config is broken".into()))
        } else {
            Err(HandlerError::Transient("github is down".into()))
        }
    }
}

#[tokio::test]
async fn failing_deliveries_are_kept_with_their_error() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(
        &dir.path().join("convoy.db"),
        Some(Arc::new(Failing { permanent: false })),
    )
    .await;
    let body = push_with_installation();
    assert_eq!(
        Post::signed("push", "f-1", body.clone())
            .send(&running)
            .await,
        202
    );
    let id = DeliveryId::new("f-1");
    let mut item = None;
    for _ in 0..100 {
        let d = running.store.delivery(&id).await.unwrap().unwrap();
        if d.attempts >= 1 {
            item = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let item = item.expect("attempted");
    assert_eq!(
        item.state,
        DeliveryState::Pending,
        "a transient failure is retried later"
    );
    assert_eq!(item.last_error.as_deref(), Some("github is down"));
    running.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let running = start(
        &dir.path().join("convoy.db"),
        Some(Arc::new(Failing { permanent: true })),
    )
    .await;
    assert_eq!(Post::signed("push", "f-2", body).send(&running).await, 202);
    drained(&running).await;
    let item = running
        .store
        .delivery(&DeliveryId::new("f-2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.state, DeliveryState::Failed);
    assert_eq!(item.last_error.as_deref(), Some("config is broken"));
    let answer = reqwest::get(format!("http://{}/metrics", running.addr))
        .await
        .unwrap();
    // The text is OpenMetrics (`# EOF`, counters' `_total` samples), and
    // says so, or Prometheus would drop the metric types.
    assert_eq!(
        answer.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let metrics = answer.text().await.unwrap();
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    assert!(metrics.contains("convoy_inbox_failed 1"), "{metrics}");
    assert!(
        metrics.contains(r#"convoy_deliveries_total{event="push",outcome="failed"} 1"#),
        "{metrics}"
    );
    running.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(&dir.path().join("nested/dir/convoy.db"), None).await;
    for path in ["healthz", "readyz", "metrics"] {
        let status = reqwest::get(format!("http://{}/{path}", running.addr))
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200, "{path}");
    }
    if !common::on_postgres() {
        assert!(dir.path().join("nested/dir/convoy.db").exists());
    }
    running.stop().await;
}

//! The HTML pages: hostile text from outside is escaped wherever it reaches
//! a page, the grid has one cell per environment with the right state, a
//! 10,000-environment rollout stays under 2 MB, and the routes serve.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use convoy::domain::{BranchName, CommitSha, EnvName, RepoName, RolloutId, ServiceName};
use convoy::engine::{Rollout, RolloutState, StepState, StepView};
use convoy::plan::build::build_plan;
use convoy::spec::{CheckContext, parse_spec};
use convoy::store::{AuditEntry, RolloutKind, RolloutRecord, SqliteStore, Store};
use convoy::web::pages::{
    CommitMessage, EnvState, PageOptions, env_state, index_page, rollout_page,
};

const SHA: &str = "c0ffee0000000000000000000000000000000001";
const HOSTILE: &str = "<script>alert('x')</script><img src=x onerror=alert(1)>\"'&";

fn spec_text(n: usize, hostile_label: &str) -> String {
    let mut s = String::from(
        "version: 1\nservices:\n  db: {}\n  api:\n    depends_on: [db]\n  web:\n    depends_on: [api]\nenvironments:\n",
    );
    for i in 0..n {
        let ring = if i < 2 { "canary" } else { "main" };
        let label = if i == 3 {
            format!(", note: {}", serde_json::to_string(hostile_label).unwrap())
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  - {{name: e{i:05}, labels: {{ring: {ring}{label}}}, driver: agent, url: \"http://127.0.0.1:9/env/e{i:05}\"}}\n"
        ));
    }
    s.push_str(
        "waves:\n  - name: canary\n    selector: {ring: canary}\n  - name: early\n    percent: 10\n  - name: rest\n    percent: 100\n    approval: true\n",
    );
    s
}

fn rollout_of(n: usize) -> Rollout {
    let spec = parse_spec(&spec_text(n, HOSTILE), &CheckContext::default()).expect("spec");
    let services: Vec<ServiceName> = ["db", "api", "web"].map(ServiceName::new).to_vec();
    let plan = build_plan(&spec, CommitSha::new(SHA), None, &services, &HashMap::new());
    Rollout::new(plan)
}

fn record(rollout: &Rollout, error: Option<&str>) -> RolloutRecord {
    let at = Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap();
    RolloutRecord {
        id: RolloutId::new("20261126090000000-abcdef"),
        repo: RepoName::new("acme/app"),
        branch: BranchName::new("main"),
        commit: CommitSha::new(SHA),
        previous_commit: None,
        pull_request: Some(42),
        installation: None,
        kind: RolloutKind::Deploy,
        parent: None,
        state: rollout.state.as_str().into(),
        created_at: at,
        updated_at: at,
        document: Some(serde_json::to_string(rollout).unwrap()),
        error: error.map(str::to_owned),
    }
}

/// First wave done, second running with one failure (hostile error) and
/// one in flight, the last waiting for approval.
fn in_progress(n: usize) -> Rollout {
    let mut r = rollout_of(n);
    r.state = RolloutState::Running;
    r.current_wave = 1;
    r.started_at = Some(Utc::now());
    r.waves[0].phase = convoy::engine::WavePhase::Done;
    for s in &mut r.waves[0].steps {
        s.state = StepState::Succeeded;
        s.attempts = 1;
    }
    r.waves[1].phase = convoy::engine::WavePhase::Running;
    let envs: Vec<EnvName> = r.waves[1].environments.clone();
    for s in &mut r.waves[1].steps {
        if s.environment == envs[0] {
            s.state = StepState::Failed;
            s.attempts = 3;
            s.error = Some(format!("agent answered 500: {HOSTILE}"));
        } else if s.environment == envs[1] {
            s.state = StepState::Deploying;
            s.attempts = 1;
        } else {
            s.state = StepState::Succeeded;
            s.attempts = 1;
        }
    }
    r
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Cells of the grid by state: `<i class="s-STATE" title=…>`.
fn cells(html: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for part in html.split("<i class=\"s-").skip(1) {
        let Some((state, rest)) = part.split_once('"') else {
            continue;
        };
        if rest.starts_with(" title=") {
            *out.entry(state.to_owned()).or_default() += 1;
        }
    }
    out
}

#[test]
fn hostile_text_from_outside_is_escaped_everywhere() {
    let mut r = in_progress(12);
    // The label of an environment that failed shows on the page.
    let failed_env = r.waves[1].environments[0].clone();
    r.targets
        .get_mut(&failed_env)
        .unwrap()
        .labels
        .insert("team".into(), format!("payments{HOSTILE}"));
    let audit = vec![AuditEntry {
        at: Utc::now(),
        actor: format!("mallory{HOSTILE}"),
        repo: Some(RepoName::new("acme/app")),
        rollout_id: Some(RolloutId::new("x")),
        location: Some(format!("pr#42 comment 7 {HOSTILE}")),
        action: format!("/convoy retry {HOSTILE}"),
        result: format!("refused: {HOSTILE}"),
        detail: Some(format!("comment text: {HOSTILE}")),
        line: None,
    }];
    let message =
        CommitMessage::parse(&format!("Merge {HOSTILE} into main\n\nBody line {HOSTILE}"));
    let html = rollout_page(
        &record(&r, Some(&format!("convoy.yml:1:1: {HOSTILE}"))),
        &audit,
        Some(&message),
        &PageOptions {
            prefix: "/convoy".into(),
            web_base: Some("https://github.com".into()),
        },
    )
    .unwrap();
    assert!(!html.contains("<script"), "no script element got through");
    assert!(!html.contains("<img"), "no img element got through");
    assert!(!html.contains("onerror=alert(1)>"));
    // Each hostile text is there, escaped: the label, the agent's error,
    // the comment text (audit), the commit subject and body, the error.
    let escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;&#x2F;script&gt;";
    let escaped_alt = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;";
    let n = count(&html, escaped) + count(&html, escaped_alt);
    assert!(
        n >= 9,
        "label, error, actor, action, result, location, detail, subject, body, planning error: {n}\n{html}"
    );
    assert!(
        html.contains(&format!("payments{}", &escaped_alt[..4])) || html.contains("payments&lt;")
    );
    assert!(html.contains("agent answered 500: &lt;script&gt;"));
    assert!(html.contains("Merge &lt;script&gt;"));
    // The commands that recover the failure.
    assert!(html.contains(&format!("/convoy retry {failed_env}")));
    assert!(html.contains(&format!("/convoy skip {failed_env}")));
    assert!(html.contains("https://github.com/acme/app/pull/42"));
    // A running rollout refreshes itself; an ended one does not.
    assert!(html.contains("http-equiv=\"refresh\""));
    let mut done = r.clone();
    done.state = RolloutState::Failed;
    let html = rollout_page(&record(&done, None), &[], None, &PageOptions::default()).unwrap();
    assert!(!html.contains("http-equiv=\"refresh\""));
}

#[test]
fn the_grid_has_one_cell_per_environment_with_its_state() {
    let r = in_progress(40);
    let html = rollout_page(&record(&r, None), &[], None, &PageOptions::default()).unwrap();
    let c = cells(&html);
    let total: usize = c.values().sum();
    assert_eq!(total, 40, "{c:?}");
    let wave0 = r.waves[0].environments.len();
    let wave1 = r.waves[1].environments.len();
    let wave2 = r.waves[2].environments.len();
    assert_eq!(c.get("failed"), Some(&1));
    assert_eq!(c.get("running"), Some(&1));
    assert_eq!(c.get("succeeded"), Some(&(wave0 + wave1 - 2)));
    // The last wave has not started: an earlier wave is not done.
    assert_eq!(c.get("pending"), Some(&wave2), "{c:?}");
    // The legend counts agree with the cells.
    for (state, n) in &c {
        assert!(
            html.contains(&format!("data-state=\"{state}\">{n}<")),
            "legend for {state}"
        );
    }
    assert!(html.contains("/convoy pause"));

    // Once the second wave is done, the last one waits for its approval.
    let mut r = r;
    for s in &mut r.waves[1].steps {
        s.state = StepState::Succeeded;
    }
    r.waves[1].phase = convoy::engine::WavePhase::Done;
    r.current_wave = 2;
    r.state = RolloutState::AwaitingApproval;
    let html = rollout_page(&record(&r, None), &[], None, &PageOptions::default()).unwrap();
    let c = cells(&html);
    assert_eq!(c.get("waiting"), Some(&wave2), "{c:?}");
    assert_eq!(c.get("succeeded"), Some(&(wave0 + wave1)), "{c:?}");
    assert!(html.contains("waits for approval of wave"));
    assert!(html.contains("/convoy approve rest"));
}

#[test]
fn env_state_reads_steps_in_order_of_importance() {
    let step = |state: StepState| StepView {
        environment: EnvName::new("e"),
        service: ServiceName::new("s"),
        state,
        attempts: 0,
        version: CommitSha::new(SHA),
        error: None,
        note: None,
        started_at: None,
        finished_at: None,
        waiting: None,
        waiting_for: None,
    };
    let ok = step(StepState::Succeeded);
    let pending = step(StepState::Pending);
    let failed = step(StepState::Failed);
    let verifying = step(StepState::Verifying);
    let skipped = step(StepState::Skipped);
    let mut retry = step(StepState::Pending);
    retry.waiting = Some(convoy::engine::Waiting::Retry {
        at: Utc::now(),
        attempt: 2,
    });
    assert_eq!(env_state(&[&ok, &failed, &verifying]), EnvState::Failed);
    assert_eq!(env_state(&[&ok, &verifying]), EnvState::Running);
    assert_eq!(env_state(&[&ok, &pending]), EnvState::Running);
    assert_eq!(env_state(&[&pending, &pending]), EnvState::Pending);
    assert_eq!(env_state(&[&ok, &retry]), EnvState::Waiting);
    assert_eq!(env_state(&[&skipped, &skipped]), EnvState::Skipped);
    assert_eq!(env_state(&[&ok, &skipped]), EnvState::Succeeded);
}

#[test]
fn ten_thousand_environments_stay_under_two_megabytes() {
    let r = in_progress(10_000);
    let rec = record(&r, None);
    // Printed, not asserted: timings belong in docs/BENCHMARKS.md.
    let started = std::time::Instant::now();
    let html = rollout_page(&rec, &[], None, &PageOptions::default()).unwrap();
    eprintln!(
        "rollout page for 10,000 environments (30,000 steps): {} bytes in {:?}",
        html.len(),
        started.elapsed()
    );
    let c = cells(&html);
    assert_eq!(c.values().sum::<usize>(), 10_000);
    assert!(
        html.len() < 2 * 1024 * 1024,
        "{} bytes for 10,000 environments",
        html.len()
    );
}

#[test]
fn the_index_lists_rollouts_escaped() {
    let summary = convoy::store::RolloutSummary {
        id: RolloutId::new("r1"),
        repo: RepoName::new(format!("acme/{HOSTILE}")),
        commit: CommitSha::new(SHA),
        pull_request: Some(3),
        state: "running".into(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    let html = index_page(&[summary]).unwrap();
    assert!(html.contains("href=\"/rollouts/r1\""));
    assert!(!html.contains("<script"));
    assert!(html.contains("http-equiv=\"refresh\""));
    let empty = index_page(&[]).unwrap();
    assert!(empty.contains("No rollouts yet"));
}

#[tokio::test]
async fn the_routes_serve_pages_and_answer_404_for_an_unknown_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("convoy.db"))
            .await
            .unwrap(),
    );
    let r = in_progress(8);
    let rec = record(&r, None);
    store.create_rollout(&rec).await.unwrap();
    let config = convoy::config::Config::from_toml(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[github]\nwebhook_secret = \"s\"\n[database]\nurl = \"sqlite://{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("convoy.db").display()
        ),
        "pages.toml",
        &[],
    )
    .unwrap();
    let running = convoy::app::start(
        config,
        convoy::app::Services {
            store: Some(store),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let index = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(index.status(), 200);
    assert!(
        index
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(index.text().await.unwrap().contains(rec.id.as_str()));
    let page = reqwest::get(format!("{base}/rollouts/{}", rec.id))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert_eq!(cells(&body).values().sum::<usize>(), 8);
    let missing = reqwest::get(format!("{base}/rollouts/%3Cscript%3E"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body = missing.text().await.unwrap();
    assert!(body.contains("&lt;script&gt;") && !body.contains("<script"));
    running.stop().await;
}

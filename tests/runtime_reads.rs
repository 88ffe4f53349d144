//! What the rollout runtime asks of the store on a step's path, counted
//! by `testkit::counting`: the batching the rollout bench relies on
//! (docs/BENCHMARKS.md, "Fewer round trips to SQLite's thread") held in a
//! test, so that it cannot quietly go.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use convoy::config::Config;
use convoy::domain::CommitSha;
use convoy::drivers::Drivers;
use convoy::engine::Rollout;
use convoy::plan::{Change, History, affected_services, build_plan};
use convoy::runtime::rollouts::{RolloutRuntime, new_rollout_id};
use convoy::spec::{CheckContext, parse_spec};
use convoy::store::{Created, SqliteStore, Store};
use convoy::testkit::counting::Counting;
use convoy::testkit::fleet::Fleet;
use convoy::testkit::rollouts::{ended_state, queued_deploy};

const ENVIRONMENTS: usize = 30;

fn config(dir: &std::path::Path) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[github]\nwebhook_secret = \"t\"\n\
         [database]\nurl = \"sqlite://{}\"\n[drivers.agent]\nkind = \"http-agent\"\n\
         allowed_hosts = [\"127.0.0.1\"]\ntimeout = \"10s\"\n",
        dir.join("data").display(),
        dir.join("convoy.db").display(),
    );
    Config::from_toml(&text, "test.toml", &[]).expect("test config")
}

/// One wave of every environment at once, two services each: every
/// preflight starts in the same batch, and the drift check of all of them
/// reads its baselines in one query, not one per step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflights_a_wave_starts_together_read_their_baselines_in_one_query() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..ENVIRONMENTS).map(|i| format!("e{i:02}")).collect();
    let fleet = Fleet::start(names.clone(), 1).await.unwrap();
    let mut yaml = format!(
        "version: 1\nservices:\n  api: {{}}\n  web: {{}}\npolicy:\n  max_parallel: {ENVIRONMENTS}\n  poll_interval: 1s\nenvironments:\n"
    );
    for name in &names {
        let _ = writeln!(
            yaml,
            "  - {{name: {name}, driver: agent, url: \"{}\"}}",
            fleet.url(name)
        );
    }
    yaml.push_str("waves:\n  - {name: all, percent: 100}\n");
    let spec = parse_spec(&yaml, &CheckContext::default()).expect("valid convoy.yml");
    let commit = CommitSha::new("a".repeat(40));
    let affected = affected_services(&spec, Change::FirstRollout);
    let plan = build_plan(&spec, commit.clone(), None, &affected, &History::new());
    let rollout = Rollout::new(plan);
    let steps = rollout.step_count();
    assert_eq!(steps, 2 * ENVIRONMENTS);

    let inner: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("convoy.db"))
            .await
            .unwrap(),
    );
    let store = Arc::new(Counting::new(inner));
    let drivers = Drivers::from_config(&config(dir.path()).drivers).unwrap();
    let runtime = RolloutRuntime::new(store.clone(), drivers, None);
    let id = new_rollout_id();
    let record = queued_deploy(id.clone(), "acme/app", commit);
    assert_eq!(runtime.submit(record, rollout).await.unwrap(), Created::New);
    let state = ended_state(&runtime, &*store.inner, &id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(state, "succeeded");
    assert_eq!(fleet.deploys().len(), steps, "every step deployed once");
    let reads = store.step_reads.load(Ordering::Relaxed);
    assert!(
        (1..=2).contains(&reads),
        "{reads} baseline queries for {steps} preflights started together"
    );
}

//! A rollout stored per step (header, targets, one row per step) reads back
//! equal to the engine's in-memory state after every transition, including
//! those that change every step (`Changed::All`: recovery, retry).

use std::collections::VecDeque;

use chrono::{DateTime, Duration, TimeZone, Utc};
use convoy::domain::{BranchName, CommitSha, RolloutId, ServiceName};
use convoy::engine::{
    self, Changed, Command, Ctx, Effect, Event, FailureKind, HealthReport, PreflightResult,
    Rollout, RolloutState,
};
use convoy::plan::{Change, History, affected_services, build_plan};
use convoy::runtime::rollouts::rollout_write;
use convoy::spec::{CheckContext, parse_spec};
use convoy::store::{Created, RolloutKind, RolloutRecord, SqliteStore, Store};
use convoy::testkit::postgres;

const YAML: &str = "version: 1
services:
  db: {}
  api:
    depends_on: [db]
environments:
  - {name: e1, driver: agent, url: \"http://127.0.0.1:9/e1\"}
  - {name: e2, driver: agent, url: \"http://127.0.0.1:9/e2\"}
  - {name: e3, driver: agent, url: \"http://127.0.0.1:9/e3\"}
  - {name: e4, driver: agent, url: \"http://127.0.0.1:9/e4\"}
waves:
  - {name: first, percent: 50, max_parallel: 1}
  - {name: rest, percent: 100}
";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

struct Harness {
    store: Box<dyn Store>,
    id: RolloutId,
    rollout: Rollout,
    now: DateTime<Utc>,
    pending: VecDeque<Effect>,
    saw_all: bool,
    transitions: usize,
    /// e2/db deploys fail permanently while this is set.
    e2_broken: bool,
}

impl Harness {
    fn ctx(&mut self) -> Ctx {
        self.now += Duration::seconds(1);
        Ctx {
            now: self.now,
            jitter: 0.5,
        }
    }

    /// Stores a transition the way the runtime does, then checks that what
    /// the store returns is the engine's state.
    async fn store(&mut self, t: engine::Transition) {
        self.transitions += 1;
        if t.changed == Changed::All {
            self.saw_all = true;
        }
        let write = rollout_write(&mut self.rollout, &t.changed, &t.effects);
        if let Changed::Steps(keys) = &t.changed {
            assert!(
                write.steps.len() <= keys.len(),
                "only changed steps are written"
            );
        }
        self.store
            .save_rollout(&self.id, &write, self.now)
            .await
            .expect("saved");
        let record = self
            .store
            .rollout(&self.id)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(record.state, self.rollout.state.as_str());
        let back: Rollout =
            serde_json::from_str(record.document.as_deref().expect("document")).expect("decodes");
        assert_eq!(
            back, self.rollout,
            "stored rollout differs after transition {}",
            self.transitions
        );
        self.pending.extend(t.effects);
    }

    async fn event(&mut self, event: Event) {
        let ctx = self.ctx();
        let t = engine::apply(&mut self.rollout, event, &ctx);
        self.store(t).await;
    }

    async fn command(&mut self, cmd: Command) {
        let ctx = self.ctx();
        let t = engine::apply_command(&mut self.rollout, cmd, &ctx).expect("command accepted");
        self.store(t).await;
    }

    /// Answers driver effects as agents that answer at once would, until
    /// none is left.
    async fn run(&mut self) {
        while let Some(effect) = self.pending.pop_front() {
            let event = match effect {
                Effect::CheckDependencies {
                    key,
                    attempt,
                    dependencies,
                } => Event::DependencyHealth {
                    key,
                    attempt,
                    results: dependencies
                        .into_iter()
                        .map(|k| {
                            let version = self.rollout.step(&k).map(|s| s.version.to_string());
                            let report = HealthReport {
                                version,
                                healthy: true,
                                message: None,
                            };
                            (k, report)
                        })
                        .collect(),
                },
                Effect::RunPreflight { key, attempt, .. } => Event::Preflight {
                    key,
                    attempt,
                    result: PreflightResult::Passed {
                        running: None,
                        baseline: None,
                        since: None,
                    },
                },
                Effect::Deploy { key, attempt, .. }
                    if self.e2_broken
                        && key.environment.as_str() == "e2"
                        && key.service.as_str() == "db" =>
                {
                    Event::DeployFailed {
                        key,
                        attempt,
                        kind: FailureKind::Permanent,
                        error: "422 refused".into(),
                    }
                }
                Effect::Deploy { key, attempt, .. } => Event::DeployAccepted { key, attempt },
                Effect::PollStatus { key, attempt } => {
                    let version = self.rollout.step(&key).map(|s| s.version.to_string());
                    Event::Status {
                        key,
                        attempt,
                        report: HealthReport {
                            version,
                            healthy: true,
                            message: None,
                        },
                    }
                }
                Effect::ScheduleTimer { timer, .. } => Event::TimerFired { timer },
                Effect::CheckHealth { wave, round, keys } => Event::BakeHealth {
                    wave,
                    round,
                    results: keys
                        .into_iter()
                        .map(|k| {
                            let version = self.rollout.step(&k).map(|s| s.version.to_string());
                            (
                                k,
                                HealthReport {
                                    version,
                                    healthy: true,
                                    message: None,
                                },
                            )
                        })
                        .collect(),
                },
                _ => continue,
            };
            self.event(event).await;
        }
    }
}

/// Each test runs on both stores: SQLite in a temporary folder (kept
/// alive by the returned guard) and a fresh PostgreSQL database.
async fn sqlite() -> (Box<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("convoy.db"))
        .await
        .unwrap();
    (Box::new(store), dir)
}

async fn postgres() -> (Box<dyn Store>, tempfile::TempDir) {
    let store = postgres::fresh_store().await.expect("test PostgreSQL");
    (Box::new(store), tempfile::tempdir().unwrap())
}

#[tokio::test]
async fn a_rollout_stored_per_step_reads_back_as_the_engine_holds_it_sqlite() {
    let (store, _dir) = sqlite().await;
    a_rollout_stored_per_step_reads_back_as_the_engine_holds_it(store).await;
}

#[tokio::test]
async fn a_rollout_stored_per_step_reads_back_as_the_engine_holds_it_postgres() {
    let (store, _dir) = postgres().await;
    a_rollout_stored_per_step_reads_back_as_the_engine_holds_it(store).await;
}

async fn a_rollout_stored_per_step_reads_back_as_the_engine_holds_it(store: Box<dyn Store>) {
    let spec = parse_spec(YAML, &CheckContext::default()).expect("valid");
    let affected: Vec<ServiceName> = affected_services(&spec, Change::FirstRollout);
    let plan = build_plan(
        &spec,
        CommitSha::new("c".repeat(40)),
        None,
        &affected,
        &History::new(),
    );
    let rollout = Rollout::new(plan);
    assert_eq!(rollout.step_count(), 8);
    let id = RolloutId::new("r-steps");
    let record = RolloutRecord {
        id: id.clone(),
        repo: convoy::domain::RepoName::new("acme/app"),
        branch: BranchName::new("main"),
        commit: CommitSha::new("c".repeat(40)),
        previous_commit: None,
        pull_request: None,
        installation: None,
        kind: RolloutKind::Deploy,
        parent: None,
        state: rollout.state.as_str().into(),
        created_at: t0(),
        updated_at: t0(),
        document: Some(serde_json::to_string(&rollout).unwrap()),
        error: None,
    };
    assert_eq!(store.create_rollout(&record).await.unwrap(), Created::New);
    // Created whole, read back whole.
    let created = store.rollout(&id).await.unwrap().unwrap();
    let back: Rollout = serde_json::from_str(created.document.as_deref().unwrap()).unwrap();
    assert_eq!(back, rollout);

    let mut h = Harness {
        store,
        id,
        rollout,
        now: t0(),
        pending: VecDeque::new(),
        saw_all: false,
        transitions: 0,
        e2_broken: true,
    };
    h.event(Event::Start).await;
    h.run().await;
    // e2's db failed permanently: its api cannot start; over the budget.
    assert_eq!(
        h.rollout.state,
        RolloutState::Halted,
        "{:?}",
        h.rollout.state
    );

    // A restart: every step may change.
    h.event(Event::Recover).await;
    h.run().await;

    // A retry once fixed: every step may change again.
    h.e2_broken = false;
    h.command(Command::Retry {
        environments: Vec::new(),
        by: "octocat".into(),
    })
    .await;
    h.run().await;
    assert_eq!(h.rollout.state, RolloutState::Succeeded);
    assert!(h.saw_all, "the sequence included a Changed::All transition");
    assert!(h.transitions > 20, "{} transitions", h.transitions);

    // The reading side the reporter and the JSON API use also agrees.
    let unfinished = h.store.unfinished_rollouts().await.unwrap();
    assert!(unfinished.is_empty());
}

#[tokio::test]
async fn reading_back_after_only_some_steps_changed_keeps_the_others_sqlite() {
    let (store, _dir) = sqlite().await;
    reading_back_after_only_some_steps_changed_keeps_the_others(store).await;
}

#[tokio::test]
async fn reading_back_after_only_some_steps_changed_keeps_the_others_postgres() {
    let (store, _dir) = postgres().await;
    reading_back_after_only_some_steps_changed_keeps_the_others(store).await;
}

async fn reading_back_after_only_some_steps_changed_keeps_the_others(store: Box<dyn Store>) {
    // Two transitions that each write one step: the other steps must come
    // from earlier writes, not vanish.
    let spec = parse_spec(YAML, &CheckContext::default()).expect("valid");
    let affected: Vec<ServiceName> = affected_services(&spec, Change::FirstRollout);
    let plan = build_plan(
        &spec,
        CommitSha::new("d".repeat(40)),
        None,
        &affected,
        &History::new(),
    );
    let mut rollout = Rollout::new(plan);
    let id = RolloutId::new("r-partial");
    let record = RolloutRecord {
        id: id.clone(),
        repo: convoy::domain::RepoName::new("acme/app"),
        branch: BranchName::new("main"),
        commit: CommitSha::new("d".repeat(40)),
        previous_commit: None,
        pull_request: None,
        installation: None,
        kind: RolloutKind::Deploy,
        parent: None,
        state: rollout.state.as_str().into(),
        created_at: t0(),
        updated_at: t0(),
        document: Some(serde_json::to_string(&rollout).unwrap()),
        error: None,
    };
    store.create_rollout(&record).await.unwrap();
    let ctx = Ctx {
        now: t0(),
        jitter: 0.5,
    };
    let t = engine::apply(&mut rollout, Event::Start, &ctx);
    let write = rollout_write(&mut rollout, &t.changed, &t.effects);
    assert!(
        write.steps.len() < rollout.step_count(),
        "start writes only the steps it began"
    );
    store.save_rollout(&id, &write, t0()).await.unwrap();
    let back: Rollout = serde_json::from_str(
        store
            .rollout(&id)
            .await
            .unwrap()
            .unwrap()
            .document
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(back, rollout);
    assert_eq!(back.step_count(), 8);
}

#[tokio::test]
async fn a_rollout_stored_whole_by_an_earlier_version_is_split_by_the_migration() {
    // A row as migrations 0001-0004 left it: the whole rollout in
    // `document`, no targets, no step rows. The data part of migration 0005
    // (everything after its CREATE TABLE) is run on it again here.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("convoy.db"))
        .await
        .unwrap();
    let spec = parse_spec(YAML, &CheckContext::default()).expect("valid");
    let affected: Vec<ServiceName> = affected_services(&spec, Change::FirstRollout);
    let plan = build_plan(
        &spec,
        CommitSha::new("e".repeat(40)),
        None,
        &affected,
        &History::new(),
    );
    let mut rollout = Rollout::new(plan);
    let ctx = Ctx {
        now: t0(),
        jitter: 0.5,
    };
    engine::apply(&mut rollout, Event::Start, &ctx);
    let whole = serde_json::to_string(&rollout).unwrap();
    sqlx::query(
        "INSERT INTO rollouts (id, repo, branch, commit_sha, kind, state, created_at, \
         updated_at, document) VALUES ('r-old', 'acme/app', 'main', ?, 'deploy', 'running', 0, 0, ?)",
    )
    .bind("e".repeat(40))
    .bind(&whole)
    .execute(store.write_pool())
    .await
    .unwrap();
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/0005_rollout_steps.sql"
    ))
    .unwrap();
    let data = &sql[sql.find("INSERT INTO rollout_steps").expect("data part")..];
    sqlx::raw_sql(sqlx::AssertSqlSafe(data.to_owned()))
        .execute(store.write_pool())
        .await
        .unwrap();
    let (header, steps): (String, i64) = sqlx::query_as(
        "SELECT document, (SELECT count(*) FROM rollout_steps WHERE rollout_id = 'r-old') \
         FROM rollouts WHERE id = 'r-old'",
    )
    .fetch_one(store.write_pool())
    .await
    .unwrap();
    assert_eq!(steps, 8);
    assert!(header.len() < whole.len() / 2, "the header lost its steps");
    let record = store
        .rollout(&RolloutId::new("r-old"))
        .await
        .unwrap()
        .unwrap();
    let back: Rollout = serde_json::from_str(record.document.as_deref().unwrap()).unwrap();
    assert_eq!(back, rollout);
}

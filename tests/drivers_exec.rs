//! The engine driven through the real `http-agent` driver against the
//! simulated fleet: a miniature runtime (in memory, no database) that shows
//! how the pieces fit — persist, then execute effects, feed answers back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use convoy::config::{DriverConfig, HttpAgentDriver};
use convoy::domain::{CommitSha, EnvName, RolloutId, ServiceName, WaveName};
use convoy::drivers::Drivers;
use convoy::drivers::exec::{self, ExecContext};
use convoy::engine::{self, Ctx, Effect, Event, Rollout, RolloutState, StepState};
use convoy::plan::model::*;
use convoy::testkit::fleet::{AgentKnobs, Fleet};
use tokio::sync::mpsc;

const SHA: &str = "abcdef0123456789abcdef0123456789abcdef01";

fn plan(fleet: &Fleet, waves: &[(&str, Vec<String>, u32)], policy: RolloutPolicy) -> Plan {
    let mut targets = BTreeMap::new();
    let planned = waves
        .iter()
        .map(|(name, envs, par)| {
            let mut steps = Vec::new();
            for e in envs {
                targets.insert(
                    EnvName::new(e.as_str()),
                    EnvTarget {
                        driver: "agent".into(),
                        url: Some(fleet.url(e)),
                        labels: BTreeMap::new(),
                        depends_on: vec![],
                    },
                );
                steps.push(PlannedStep {
                    environment: EnvName::new(e.as_str()),
                    service: ServiceName::new("db"),
                    waits_for: vec![],
                });
                steps.push(PlannedStep {
                    environment: EnvName::new(e.as_str()),
                    service: ServiceName::new("api"),
                    waits_for: vec![StepKey {
                        environment: EnvName::new(e.as_str()),
                        service: ServiceName::new("db"),
                    }],
                });
            }
            PlannedWave {
                name: WaveName::new(*name),
                environments: envs.iter().map(|e| EnvName::new(e.as_str())).collect(),
                max_parallel: *par,
                failure_budget: FailureBudget::Count(0),
                bake: Duration::ZERO,
                approval: false,
                steps,
            }
        })
        .collect();
    Plan {
        commit: CommitSha::new(SHA),
        previous_commit: None,
        affected_services: vec![ServiceName::new("db"), ServiceName::new("api")],
        waves: planned,
        targets,
        policy,
        risk: Risk::default(),
    }
}

fn drivers() -> Drivers {
    Drivers::from_config(&BTreeMap::from([(
        "agent".to_string(),
        DriverConfig::HttpAgent(HttpAgentDriver {
            allowed_hosts: vec!["127.0.0.1".into()],
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(5),
        }),
    )]))
    .unwrap()
}

/// Runs a rollout to a state where nothing more happens by itself.
async fn run(mut r: Rollout, drivers: Drivers) -> (Rollout, Vec<Effect>) {
    let drivers = Arc::new(drivers);
    let id = RolloutId::new("r-1");
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut seen = Vec::new();
    let mut baseline: HashMap<StepKey, String> = HashMap::new();
    let mut in_flight = 0usize;
    let mut event = Some(Event::Start);
    let mut rng = fastrand::Rng::with_seed(3);
    while let Some(ev) = event.take() {
        let ctx = Ctx {
            now: Utc::now(),
            jitter: rng.f64(),
        };
        let effects = engine::handle(&mut r, ev, &ctx);
        // A real runtime persists `r` here, before acting. (Not round-tripped
        // through JSON in this test: its millisecond policy durations would
        // be stored as whole seconds.)
        for e in effects {
            seen.push(e.clone());
            match &e {
                Effect::ScheduleTimer { at, timer } => {
                    let tx = tx.clone();
                    let timer = timer.clone();
                    let wait = (*at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    in_flight += 1;
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = tx.send(Event::TimerFired { timer });
                    });
                }
                Effect::RecordAttempt {
                    key,
                    version,
                    succeeded: true,
                    ..
                } => {
                    baseline.insert(key.clone(), version.to_string());
                }
                Effect::RunPreflight { .. }
                | Effect::CheckDependencies { .. }
                | Effect::Deploy { .. }
                | Effect::PollStatus { .. }
                | Effect::CheckHealth { .. } => {
                    let tx = tx.clone();
                    let drivers = drivers.clone();
                    let targets = r.targets.clone();
                    let id = id.clone();
                    let base = match &e {
                        Effect::RunPreflight { key, .. } => baseline.get(key).cloned(),
                        _ => None,
                    };
                    in_flight += 1;
                    tokio::spawn(async move {
                        let cx = ExecContext {
                            rollout: &id,
                            targets: &targets,
                            drivers: &drivers,
                        };
                        if let Some(answer) = exec::perform(&cx, &e, base, Utc::now()).await {
                            let _ = tx.send(answer);
                        }
                    });
                }
                _ => {}
            }
        }
        if r.state.is_terminal() && r.steps().all(|s| !s.is_in_flight()) {
            break;
        }
        if in_flight == 0 {
            break;
        }
        event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the rollout stalled");
        in_flight -= 1;
    }
    (r, seen)
}

fn envs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

fn fast_policy() -> RolloutPolicy {
    RolloutPolicy {
        retries: 3,
        backoff: Duration::from_millis(20),
        poll_interval: Duration::from_millis(20),
        verify_timeout: Duration::from_secs(5),
        deploy_timeout: Duration::from_secs(5),
        ..RolloutPolicy::default()
    }
}

#[tokio::test]
async fn a_rollout_over_a_real_fleet_succeeds_through_transient_failures() {
    let all: Vec<String> = envs("e", 30);
    let fleet = Fleet::start(all.clone(), 11).await.unwrap();
    for e in &all {
        fleet.set_knobs(
            e,
            AgentKnobs {
                transient_failure_rate: 0.2,
                deploy_duration: Duration::from_millis(30),
                ..AgentKnobs::default()
            },
        );
    }
    let waves = [
        ("canary", all[..2].to_vec(), 2),
        ("early", all[2..10].to_vec(), 4),
        ("rest", all[10..].to_vec(), 8),
    ];
    let r = Rollout::new(plan(&fleet, &waves, fast_policy()));
    let (r, seen) = run(r, drivers()).await;
    assert_eq!(
        r.state,
        RolloutState::Succeeded,
        "{:#?}",
        engine::view(&r).counts
    );
    for e in &all {
        for svc in ["db", "api"] {
            assert_eq!(fleet.version_of(e, svc).as_deref(), Some(SHA), "{e}/{svc}");
        }
    }
    assert!(fleet.overlapping_deploys().is_empty());
    // Some deploys failed and were retried.
    assert!(r.steps().any(|s| s.attempts > 1));
    assert!(fleet.deploys().iter().any(|d| d.status == 503));
    // Never more than max_parallel environments' deploys at once per wave:
    // 8 environments × at most 1 service in flight each (api waits for db).
    assert!(fleet.peak_concurrent_deploys() <= 8);
    assert!(seen.iter().any(|e| matches!(
        e,
        Effect::Finished {
            state: RolloutState::Succeeded
        }
    )));
}

#[tokio::test]
async fn a_permanent_failure_halts_and_an_unreachable_agent_fails_preflight() {
    let all: Vec<String> = envs("e", 6);
    let fleet = Fleet::start(all.clone(), 1).await.unwrap();
    fleet.update_knobs("e01", |k| k.unreachable = true);
    let waves = [("w", all[..3].to_vec(), 3), ("next", all[3..].to_vec(), 3)];
    let policy = RolloutPolicy {
        retries: 1,
        ..fast_policy()
    };
    let r = Rollout::new(plan(&fleet, &waves, policy));
    let (r, _) = run(r, drivers()).await;
    assert_eq!(r.state, RolloutState::Halted);
    let db = r
        .step(&StepKey {
            environment: EnvName::new("e01"),
            service: ServiceName::new("db"),
        })
        .unwrap();
    assert_eq!(db.state, StepState::Failed);
    assert_eq!(db.attempts, 2);
    assert_eq!(
        db.error.as_deref(),
        Some("preflight: unreachable: status: connection failed")
    );
    // The next wave never started.
    assert!(
        fleet
            .deploys()
            .iter()
            .all(|d| d.environment.as_str() < "e03")
    );
}

#[tokio::test]
async fn drift_found_at_preflight_halts_with_expected_and_found() {
    let all: Vec<String> = envs("e", 1);
    let fleet = Fleet::start(all.clone(), 1).await.unwrap();
    fleet.set_version("e00", "db", Some("hotfix"));
    let r = Rollout::new(plan(&fleet, &[("w", all.clone(), 1)], fast_policy()));
    // The history says convoy last deployed v0 there.
    let drivers = drivers();
    let cx_targets = r.targets.clone();
    let id = RolloutId::new("r-1");
    let cx = ExecContext {
        rollout: &id,
        targets: &cx_targets,
        drivers: &drivers,
    };
    let mut r = r;
    let now = Utc::now();
    let effects = engine::handle(&mut r, Event::Start, &Ctx::at(now));
    let pre = effects
        .iter()
        .find(|e| matches!(e, Effect::RunPreflight { .. }))
        .unwrap();
    let answer = exec::perform(&cx, pre, Some("v0".into()), now)
        .await
        .unwrap();
    engine::handle(&mut r, answer, &Ctx::at(now));
    let db = &r.waves[0].steps[0];
    assert_eq!(db.state, StepState::Failed);
    assert_eq!(
        db.error.as_deref(),
        Some("drifted: expected v0, found hotfix")
    );
    assert_eq!(r.state, RolloutState::Halted);
    assert!(fleet.deploys().is_empty());
}

//! The engine's rules (SPEC 6.2–6.5, 6.8, 6.9), one test each, with an
//! injected clock: nothing sleeps, nothing touches the network.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc, Weekday};
use convoy::domain::{CommitSha, EnvName, ServiceName, WaveName};
use convoy::engine::{self, *};
use convoy::plan::model::*;
use proptest::prelude::*;

const SHA: &str = "c0ffee0000000000000000000000000000000001";

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn key(env: &str, svc: &str) -> StepKey {
    StepKey {
        environment: EnvName::new(env),
        service: ServiceName::new(svc),
    }
}

// ---------------------------------------------------------------------------
// Building plans

struct WaveSpec {
    name: &'static str,
    envs: Vec<String>,
    max_parallel: u32,
    budget: FailureBudget,
    bake: Duration,
    approval: bool,
}

fn wave(name: &'static str, envs: &[&str]) -> WaveSpec {
    WaveSpec {
        name,
        envs: envs.iter().map(|s| s.to_string()).collect(),
        max_parallel: 10,
        budget: FailureBudget::Count(0),
        bake: Duration::ZERO,
        approval: false,
    }
}

impl WaveSpec {
    fn parallel(mut self, n: u32) -> Self {
        self.max_parallel = n;
        self
    }
    fn budget(mut self, b: FailureBudget) -> Self {
        self.budget = b;
        self
    }
    fn bake(mut self, secs: u64) -> Self {
        self.bake = Duration::from_secs(secs);
        self
    }
    fn approval(mut self) -> Self {
        self.approval = true;
        self
    }
}

/// Services with their same-environment dependencies; env dependencies as
/// (env, depends_on env).
fn plan_with(
    waves: Vec<WaveSpec>,
    services: &[(&str, &[&str])],
    env_deps: &[(&str, &str)],
    policy: RolloutPolicy,
) -> Plan {
    let mut all_steps: HashMap<String, Vec<StepKey>> = HashMap::new();
    for w in &waves {
        for e in &w.envs {
            for (s, _) in services {
                all_steps.entry(e.clone()).or_default().push(key(e, s));
            }
        }
    }
    let mut targets = BTreeMap::new();
    let planned = waves
        .into_iter()
        .map(|w| {
            let steps = w
                .envs
                .iter()
                .flat_map(|e| {
                    targets.insert(
                        EnvName::new(e.as_str()),
                        EnvTarget {
                            driver: "agent".into(),
                            url: Some(format!("http://127.0.0.1:1/env/{e}")),
                            labels: BTreeMap::new(),
                            depends_on: env_deps
                                .iter()
                                .filter(|(a, _)| a == e)
                                .map(|(_, b)| EnvName::new(*b))
                                .collect(),
                        },
                    );
                    let all_steps = &all_steps;
                    services.iter().map(move |(s, deps)| {
                        let mut waits_for: Vec<StepKey> = deps.iter().map(|d| key(e, d)).collect();
                        for (a, b) in env_deps {
                            if a == e {
                                waits_for.extend(all_steps[*b].iter().cloned());
                            }
                        }
                        PlannedStep {
                            environment: EnvName::new(e.as_str()),
                            service: ServiceName::new(*s),
                            waits_for,
                        }
                    })
                })
                .collect();
            PlannedWave {
                name: WaveName::new(w.name),
                environments: w.envs.iter().map(|e| EnvName::new(e.as_str())).collect(),
                max_parallel: w.max_parallel,
                failure_budget: w.budget,
                bake: w.bake,
                approval: w.approval,
                steps,
            }
        })
        .collect();
    Plan {
        commit: CommitSha::new(SHA),
        previous_commit: None,
        affected_services: services.iter().map(|(s, _)| ServiceName::new(*s)).collect(),
        waves: planned,
        targets,
        policy,
        risk: Risk::default(),
    }
}

fn simple_plan(waves: Vec<WaveSpec>) -> Plan {
    plan_with(waves, &[("api", &[])], &[], RolloutPolicy::default())
}

fn envs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

fn wave_n(name: &'static str, prefix: &str, n: usize) -> WaveSpec {
    let e = envs(prefix, n);
    let refs: Vec<&str> = e.iter().map(|s| s.as_str()).collect();
    wave(name, &refs)
}

// ---------------------------------------------------------------------------
// A simulated world: answers every effect the way an agent fleet would,
// keeps timers, and moves the clock to the next timer when idle.

type DeployFn = Box<dyn FnMut(&StepKey, u32) -> Option<(FailureKind, String)>>;
type HealthFn = Box<dyn FnMut(&StepKey, DateTime<Utc>) -> bool>;

struct Sim {
    r: Rollout,
    now: DateTime<Utc>,
    jitter: f64,
    timers: Vec<(DateTime<Utc>, Timer)>,
    queue: VecDeque<Event>,
    /// Every effect, in order, with the time it was produced.
    log: Vec<(DateTime<Utc>, Effect)>,
    /// What each agent runs.
    running: HashMap<StepKey, String>,
    /// What convoy deployed last (for drift).
    baseline: HashMap<StepKey, String>,
    deploy: DeployFn,
    healthy: HealthFn,
    /// Health of a dependency asked before a step starts (SPEC 6.3).
    dep_healthy: HealthFn,
    /// Polls a deploy needs before the agent reports the new version.
    polls_to_ready: u32,
    polls: HashMap<StepKey, u32>,
    /// Answer deploys? When false, deploys hang (no answer) — for timeouts.
    answer_deploys: bool,
    peak_active: HashMap<usize, usize>,
}

impl Sim {
    fn new(plan: Plan) -> Sim {
        Sim {
            r: Rollout::new(plan),
            now: t("2026-11-26T10:00:00Z"),
            jitter: 0.5,
            timers: Vec::new(),
            queue: VecDeque::new(),
            log: Vec::new(),
            running: HashMap::new(),
            baseline: HashMap::new(),
            deploy: Box::new(|_, _| None),
            healthy: Box::new(|_, _| true),
            dep_healthy: Box::new(|_, _| true),
            polls_to_ready: 0,
            polls: HashMap::new(),
            answer_deploys: true,
            peak_active: HashMap::new(),
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            now: self.now,
            jitter: self.jitter,
        }
    }

    fn absorb(&mut self, effects: Vec<Effect>) {
        self.check_invariants();
        for e in effects {
            self.log.push((self.now, e.clone()));
            match e {
                Effect::RunPreflight { key, attempt, .. } => {
                    let result = PreflightResult::Passed {
                        running: self.running.get(&key).cloned(),
                        baseline: self.baseline.get(&key).cloned(),
                        since: None,
                    };
                    self.queue.push_back(Event::Preflight {
                        key,
                        attempt,
                        result,
                    });
                }
                Effect::CheckDependencies {
                    key,
                    attempt,
                    dependencies,
                } => {
                    let results = dependencies
                        .into_iter()
                        .map(|k| {
                            let report = HealthReport {
                                version: self.running.get(&k).cloned(),
                                healthy: (self.dep_healthy)(&k, self.now),
                                message: Some("probe".into()),
                            };
                            (k, report)
                        })
                        .collect();
                    self.queue.push_back(Event::DependencyHealth {
                        key,
                        attempt,
                        results,
                    });
                }
                Effect::Deploy {
                    key,
                    attempt,
                    version,
                    ..
                } => {
                    if !self.answer_deploys {
                        continue;
                    }
                    match (self.deploy)(&key, attempt) {
                        None => {
                            self.polls.insert(key.clone(), 0);
                            self.running.insert(key.clone(), version.to_string());
                            self.queue.push_back(Event::DeployAccepted { key, attempt });
                        }
                        Some((kind, error)) => self.queue.push_back(Event::DeployFailed {
                            key,
                            attempt,
                            kind,
                            error,
                        }),
                    }
                }
                Effect::PollStatus { key, attempt } => {
                    let n = self.polls.entry(key.clone()).or_insert(0);
                    *n += 1;
                    let ready = *n > self.polls_to_ready;
                    let version = if ready {
                        self.running.get(&key).cloned()
                    } else {
                        None
                    };
                    let healthy = (self.healthy)(&key, self.now);
                    self.queue.push_back(Event::Status {
                        key,
                        attempt,
                        report: HealthReport {
                            version,
                            healthy,
                            message: None,
                        },
                    });
                }
                Effect::CheckHealth { wave, round, keys } => {
                    let results = keys
                        .into_iter()
                        .map(|k| {
                            let healthy = (self.healthy)(&k, self.now);
                            let version = self.running.get(&k).cloned();
                            (
                                k,
                                HealthReport {
                                    version,
                                    healthy,
                                    message: Some("probe".into()),
                                },
                            )
                        })
                        .collect();
                    self.queue.push_back(Event::BakeHealth {
                        wave,
                        round,
                        results,
                    });
                }
                Effect::ScheduleTimer { at, timer } => self.timers.push((at, timer)),
                Effect::RecordAttempt {
                    key,
                    version,
                    succeeded: true,
                    ..
                } => {
                    self.baseline.insert(key, version.to_string());
                }
                _ => {}
            }
        }
    }

    fn check_invariants(&mut self) {
        for (w, wave) in self.r.waves.iter().enumerate() {
            let mut active: Vec<&EnvName> = wave
                .steps
                .iter()
                .filter(|s| s.is_active())
                .map(|s| &s.environment)
                .collect();
            active.sort();
            active.dedup();
            assert!(
                active.len() <= wave.max_parallel as usize,
                "wave {} has {} environments in progress, max {}",
                wave.name,
                active.len(),
                wave.max_parallel
            );
            let peak = self.peak_active.entry(w).or_insert(0);
            *peak = (*peak).max(active.len());
        }
    }

    fn send(&mut self, event: Event) {
        let ctx = self.ctx();
        let effects = engine::handle(&mut self.r, event, &ctx);
        self.absorb(effects);
    }

    fn cmd(&mut self, c: Command) -> Result<(), CommandError> {
        let ctx = self.ctx();
        let effects = engine::command(&mut self.r, c, &ctx)?;
        self.absorb(effects);
        Ok(())
    }

    /// Delivers queued events; when none are left, fires the earliest timer
    /// (moving the clock). Stops when nothing is left or after `limit`
    /// events.
    fn run(&mut self) {
        self.run_until(|_| false);
    }

    fn run_until(&mut self, mut stop: impl FnMut(&Sim) -> bool) {
        for _ in 0..100_000 {
            if stop(self) {
                return;
            }
            if let Some(e) = self.queue.pop_front() {
                self.send(e);
                continue;
            }
            if self.timers.is_empty() {
                return;
            }
            let idx = (0..self.timers.len())
                .min_by_key(|&i| self.timers[i].0)
                .unwrap();
            let (at, timer) = self.timers.remove(idx);
            self.now = self.now.max(at);
            self.send(Event::TimerFired { timer });
        }
        panic!("simulation did not settle");
    }

    fn start(&mut self) {
        self.send(Event::Start);
    }

    fn state(&self) -> RolloutState {
        self.r.state
    }

    fn step(&self, env: &str, svc: &str) -> &StepRun {
        self.r.step(&key(env, svc)).expect("step exists")
    }

    /// Index in the log of the first `RunPreflight` of a step.
    fn first_preflight(&self, env: &str, svc: &str) -> usize {
        let k = key(env, svc);
        self.log
            .iter()
            .position(|(_, e)| matches!(e, Effect::RunPreflight { key, .. } if *key == k))
            .unwrap_or_else(|| panic!("{env}/{svc} never started"))
    }

    fn succeeded_at(&self, env: &str, svc: &str) -> usize {
        let k = key(env, svc);
        self.log
            .iter()
            .position(|(_, e)| {
                matches!(e, Effect::RecordAttempt { key, succeeded: true, .. } if *key == k)
            })
            .unwrap_or_else(|| panic!("{env}/{svc} never succeeded"))
    }

    fn effects(&self) -> impl Iterator<Item = &Effect> {
        self.log.iter().map(|(_, e)| e)
    }
}

// ---------------------------------------------------------------------------
// Waves, parallelism, dependencies

#[test]
fn waves_run_in_order_and_the_rollout_succeeds() {
    let mut sim = Sim::new(simple_plan(vec![
        wave("canary", &["c1", "c2"]),
        wave("early", &["e1", "e2", "e3"]),
        wave("rest", &["r1", "r2"]),
    ]));
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    for env in ["c1", "c2"] {
        for later in ["e1", "e2", "e3"] {
            assert!(sim.succeeded_at(env, "api") < sim.first_preflight(later, "api"));
        }
    }
    for env in ["e1", "e2", "e3"] {
        assert!(sim.succeeded_at(env, "api") < sim.first_preflight("r1", "api"));
    }
    assert!(sim.effects().any(|e| *e
        == Effect::Finished {
            state: RolloutState::Succeeded
        }));
    assert!(
        sim.r
            .steps()
            .all(|s| s.attempts == 1 && s.state == StepState::Succeeded)
    );
}

#[test]
fn max_parallel_counts_environments() {
    let mut sim = Sim::new(plan_with(
        vec![wave_n("all", "e", 12).parallel(3)],
        &[("db", &[]), ("api", &[])],
        &[],
        RolloutPolicy::default(),
    ));
    sim.polls_to_ready = 3;
    sim.start();
    // Two services per environment, both started at once: 3 environments
    // means 6 steps in flight.
    let in_flight = sim.r.steps().filter(|s| s.is_in_flight()).count();
    assert_eq!(in_flight, 6);
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert_eq!(sim.peak_active[&0], 3);
}

#[test]
fn service_dependencies_order_steps_within_an_environment() {
    let mut sim = Sim::new(plan_with(
        vec![wave("w", &["a", "b"])],
        &[("db", &[]), ("api", &["db"]), ("web", &["api"])],
        &[],
        RolloutPolicy::default(),
    ));
    sim.polls_to_ready = 1;
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    for env in ["a", "b"] {
        assert!(sim.succeeded_at(env, "db") < sim.first_preflight(env, "api"));
        assert!(sim.succeeded_at(env, "api") < sim.first_preflight(env, "web"));
    }
}

#[test]
fn environment_dependencies_order_environments() {
    let mut sim = Sim::new(plan_with(
        vec![wave("w", &["shared", "acme", "globex"])],
        &[("api", &[])],
        &[("acme", "shared"), ("globex", "shared")],
        RolloutPolicy::default(),
    ));
    sim.start();
    // Only `shared` may start; the others wait for it and say so.
    let started: Vec<_> = sim
        .effects()
        .filter_map(|e| match e {
            Effect::RunPreflight { key, .. } => Some(key.environment.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["shared"]);
    let (w, i) = sim.r.find(&key("acme", "api")).unwrap();
    assert_eq!(
        engine::waiting_reason(&sim.r, w, i),
        Some(Waiting::Dependency {
            step: key("shared", "api")
        })
    );
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert!(sim.succeeded_at("shared", "api") < sim.first_preflight("acme", "api"));
}

#[test]
fn a_failed_dependency_fails_its_dependents_without_starting_them() {
    let mut sim = Sim::new(plan_with(
        vec![wave("w", &["a"]).budget(FailureBudget::Count(5))],
        &[("db", &[]), ("api", &["db"])],
        &[],
        RolloutPolicy::default(),
    ));
    sim.deploy = Box::new(|k, _| {
        (k.service.as_str() == "db").then(|| (FailureKind::Permanent, "400 bad".into()))
    });
    sim.start();
    sim.run();
    let api = sim.step("a", "api");
    assert_eq!(api.state, StepState::Failed);
    assert_eq!(api.attempts, 0);
    assert_eq!(api.error.as_deref(), Some("not started: a/db failed"));
    // Within budget: the rollout ends, but not as a success.
    assert_eq!(sim.state(), RolloutState::Failed);
}

// ---------------------------------------------------------------------------
// Failures, retries, timeouts, budget

#[test]
fn transient_failures_are_retried_with_exponential_backoff() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    sim.deploy =
        Box::new(|_, attempt| (attempt < 3).then(|| (FailureKind::Transient, "503 busy".into())));
    let t0 = sim.now;
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    let s = sim.step("a", "api");
    assert_eq!(s.attempts, 3);
    assert_eq!(s.error, None);
    let retries: Vec<DateTime<Utc>> = sim
        .effects()
        .filter_map(|e| match e {
            Effect::ScheduleTimer {
                at,
                timer: Timer::Retry { .. },
            } => Some(*at),
            _ => None,
        })
        .collect();
    // backoff 10s, doubling: +10s after the first failure, +20s after the
    // second (jitter 0.5 gives the nominal delay).
    assert_eq!(
        retries,
        [
            t0 + chrono::Duration::seconds(10),
            t0 + chrono::Duration::seconds(30)
        ]
    );
}

#[test]
fn transient_failures_beyond_retries_fail_the_step() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    sim.deploy = Box::new(|_, _| Some((FailureKind::Transient, "503 busy".into())));
    sim.start();
    sim.run();
    let s = sim.step("a", "api");
    assert_eq!(s.state, StepState::Failed);
    assert_eq!(s.attempts, 3, "1 attempt + 2 retries");
    assert_eq!(s.error.as_deref(), Some("deploy: 503 busy"));
    assert_eq!(sim.state(), RolloutState::Halted);
}

#[test]
fn backoff_is_capped_and_jittered() {
    let b = Duration::from_secs(10);
    assert_eq!(engine::backoff_delay(b, 1, 0.5), Duration::from_secs(10));
    assert_eq!(engine::backoff_delay(b, 3, 0.5), Duration::from_secs(40));
    assert_eq!(
        engine::backoff_delay(b, 1, 0.0),
        Duration::from_millis(7500)
    );
    assert_eq!(
        engine::backoff_delay(b, 1, 1.0),
        Duration::from_millis(12500)
    );
    assert_eq!(engine::backoff_delay(b, 10, 1.0), engine::MAX_BACKOFF);
    assert_eq!(engine::backoff_delay(b, 40, f64::NAN), engine::MAX_BACKOFF);
}

/// Steps in flight at a halt finish, and may fail: the halt's count (what
/// the waiting reason and the comment say) keeps up with them.
#[test]
fn a_halt_counts_the_failures_of_the_steps_in_flight_at_it() {
    let mut sim = Sim::new(simple_plan(vec![
        wave("w", &["a", "b", "c"]).parallel(3),
        wave("next", &["d"]),
    ]));
    sim.deploy = Box::new(|_, _| Some((FailureKind::Permanent, "422 no such chart".into())));
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Halted);
    let failed = sim
        .r
        .steps()
        .filter(|s| s.state == StepState::Failed)
        .count();
    assert_eq!(failed, 3, "all three were in flight at the halt");
    let halt = sim.r.halt.clone().unwrap();
    assert_eq!((halt.failed, halt.allowed), (3, 0));
}

#[test]
fn permanent_failure_is_not_retried_and_halts_at_budget_zero() {
    let mut sim = Sim::new(simple_plan(vec![
        wave("w", &["a", "b"]),
        wave("next", &["c"]),
    ]));
    sim.deploy = Box::new(|k, _| {
        (k.environment.as_str() == "a")
            .then(|| (FailureKind::Permanent, "422 no such chart".into()))
    });
    sim.start();
    sim.run();
    let a = sim.step("a", "api");
    assert_eq!((a.state, a.attempts), (StepState::Failed, 1));
    assert_eq!(sim.state(), RolloutState::Halted);
    assert_eq!(
        sim.step("b", "api").state,
        StepState::Succeeded,
        "in flight, finished"
    );
    assert_eq!(
        sim.step("c", "api").state,
        StepState::Pending,
        "next wave never started"
    );
    let halt = sim.r.halt.clone().unwrap();
    assert_eq!((halt.failed, halt.allowed), (1, 0));
    assert!(sim.effects().any(|e| *e
        == Effect::Report {
            importance: Importance::Waiting
        }));
}

#[test]
fn budget_tolerates_failures_up_to_its_size_then_halts() {
    // Budget 2 of 10: two failures are tolerated, the wave completes.
    let mut sim = Sim::new(simple_plan(vec![
        wave_n("w", "e", 10).budget(FailureBudget::Count(2)),
        wave("next", &["z"]),
    ]));
    sim.deploy = Box::new(|k, _| {
        matches!(k.environment.as_str(), "e03" | "e07")
            .then(|| (FailureKind::Permanent, "no".into()))
    });
    sim.start();
    sim.run();
    assert_eq!(sim.step("z", "api").state, StepState::Succeeded);
    assert_eq!(sim.state(), RolloutState::Failed, "done, with failed steps");

    // A third failure exceeds it: halt, in-flight steps finish, nothing new.
    let mut sim = Sim::new(simple_plan(vec![
        wave_n("w", "e", 10)
            .budget(FailureBudget::Percent(20))
            .parallel(4),
        wave("next", &["z"]),
    ]));
    sim.deploy = Box::new(|k, _| {
        matches!(k.environment.as_str(), "e00" | "e01" | "e02")
            .then(|| (FailureKind::Permanent, "no".into()))
    });
    sim.polls_to_ready = 2;
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Halted);
    let started = sim.r.steps().filter(|s| s.attempts > 0).count();
    // e00..e03 started together; the first two failures freed slots for
    // e04 and e05; the third halted, and those in flight finished.
    assert_eq!(started, 6);
    for env in ["e03", "e04", "e05"] {
        assert_eq!(sim.step(env, "api").state, StepState::Succeeded);
    }
    assert_eq!(sim.step("e06", "api").attempts, 0);
    assert_eq!(sim.step("z", "api").state, StepState::Pending);
}

#[test]
fn deploy_timeout_counts_as_transient() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    sim.start();
    let attempt = sim.step("a", "api").attempts;
    // The runtime gave up waiting for the agent.
    sim.answer_deploys = false;
    sim.run();
    assert_eq!(sim.step("a", "api").state, StepState::Deploying);
    sim.send(Event::StepTimedOut {
        key: key("a", "api"),
        attempt,
    });
    let s = sim.step("a", "api");
    assert_eq!(s.state, StepState::Pending);
    assert!(s.retry_at.is_some());
    assert_eq!(s.error.as_deref(), Some("deploy not accepted within 10m"));
    sim.answer_deploys = true;
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert_eq!(sim.step("a", "api").attempts, 2);
}

#[test]
fn verify_timeout_fails_the_attempt() {
    let policy = RolloutPolicy {
        retries: 0,
        verify_timeout: Duration::from_secs(60),
        poll_interval: Duration::from_secs(5),
        ..RolloutPolicy::default()
    };
    let mut sim = Sim::new(plan_with(
        vec![wave("w", &["a"])],
        &[("api", &[])],
        &[],
        policy,
    ));
    sim.healthy = Box::new(|_, _| false);
    let t0 = sim.now;
    sim.start();
    sim.run();
    let s = sim.step("a", "api");
    assert_eq!(s.state, StepState::Failed);
    assert!(
        s.error
            .as_deref()
            .unwrap()
            .starts_with("not at c0ffee000000 and healthy within 1m"),
        "{:?}",
        s.error
    );
    assert_eq!(s.finished_at, Some(t0 + chrono::Duration::seconds(60)));
    // Polled every 5 s: 1 immediate poll + 12 timed ones.
    let polls = sim
        .effects()
        .filter(|e| matches!(e, Effect::PollStatus { .. }))
        .count();
    assert_eq!(polls, 13);
}

#[test]
fn stale_answers_are_ignored() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    sim.start();
    // An answer for an attempt that is not current changes nothing.
    let before = sim.r.clone();
    sim.send(Event::DeployAccepted {
        key: key("a", "api"),
        attempt: 7,
    });
    sim.send(Event::Status {
        key: key("nope", "api"),
        attempt: 1,
        report: HealthReport {
            version: None,
            healthy: true,
            message: None,
        },
    });
    assert_eq!(sim.r, before);
}

// ---------------------------------------------------------------------------
// Bake, approval, freezes

#[test]
fn bake_rechecks_health_and_an_unhealthy_environment_fails() {
    let mut sim = Sim::new(simple_plan(vec![
        wave("canary", &["c1", "c2"]).bake(120),
        wave("rest", &["r1"]),
    ]));
    let t0 = sim.now;
    // c2 turns unhealthy a minute into the bake.
    sim.healthy = Box::new(move |k, now| {
        !(k.environment.as_str() == "c2" && now >= t0 + chrono::Duration::seconds(60))
    });
    sim.start();
    sim.run();
    let c2 = sim.step("c2", "api");
    assert_eq!(c2.state, StepState::Failed);
    assert_eq!(c2.error.as_deref(), Some("unhealthy during bake: probe"));
    assert_eq!(sim.state(), RolloutState::Halted);
    assert_eq!(sim.step("r1", "api").state, StepState::Pending);
    let rounds = sim
        .effects()
        .filter(|e| matches!(e, Effect::CheckHealth { .. }))
        .count();
    assert_eq!(rounds, 2, "checks at 30s and 60s of the 2m bake");
}

#[test]
fn skipping_an_environment_that_failed_its_bake_bakes_again() {
    let mut sim = Sim::new(simple_plan(vec![
        wave("canary", &["c1", "c2"]).bake(60),
        wave("rest", &["r1"]),
    ]));
    // Healthy while verifying, unhealthy during the bake.
    let mut verified = false;
    sim.healthy = Box::new(move |k, _| {
        if k.environment.as_str() == "c2" {
            let was = verified;
            verified = true;
            return !was;
        }
        true
    });
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Halted);
    assert_eq!(engine::view(&sim.r).waves[0].state, "halted");
    sim.cmd(Command::Skip {
        environments: vec![EnvName::new("c2")],
        by: "alice".into(),
    })
    .unwrap();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert_eq!(sim.step("c2", "api").state, StepState::Skipped);
    assert_eq!(sim.step("r1", "api").state, StepState::Succeeded);
}

#[test]
fn bake_passes_then_the_next_wave_starts_after_it() {
    let mut sim = Sim::new(simple_plan(vec![
        wave("canary", &["c1"]).bake(120),
        wave("rest", &["r1"]),
    ]));
    let t0 = sim.now;
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    let r1_start = sim.step("r1", "api").started_at.unwrap();
    assert_eq!(r1_start, t0 + chrono::Duration::seconds(120));
    let rounds = sim
        .effects()
        .filter(|e| matches!(e, Effect::CheckHealth { .. }))
        .count();
    assert_eq!(rounds, 4);
}

/// Validation now refuses durations over ten years, but a rollout stored
/// before that may carry any bake: its end saturates at the calendar's
/// last day, and working back from there must not panic.
#[test]
fn a_bake_past_the_end_of_the_calendar_does_not_panic() {
    let mut canary = wave("canary", &["c1"]);
    canary.bake = Duration::from_secs(200_000_000 * 86_400);
    let mut sim = Sim::new(simple_plan(vec![canary, wave("rest", &["r1"])]));
    sim.start();
    // The simulated clock jumps to each timer, the calendar's end included.
    sim.run();
    assert_eq!(sim.r.waves[0].bake_until, Some(DateTime::<Utc>::MAX_UTC));
    assert_eq!(sim.state(), RolloutState::Succeeded);
}

#[test]
fn approval_waits_and_only_the_waiting_wave_can_be_approved() {
    let policy = RolloutPolicy {
        approvers: vec!["@acme/sre".into(), "alice".into()],
        ..RolloutPolicy::default()
    };
    let mut sim = Sim::new(plan_with(
        vec![wave("canary", &["c1"]), wave("rest", &["r1"]).approval()],
        &[("api", &[])],
        &[],
        policy,
    ));
    let early = sim.cmd(Command::Approve {
        wave: Some(WaveName::new("rest")),
        by: "alice".into(),
    });
    assert_eq!(
        early.unwrap_err().to_string(),
        "wave `rest` is not waiting for approval"
    );
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::AwaitingApproval);
    let (w, i) = sim.r.find(&key("r1", "api")).unwrap();
    let waiting = engine::waiting_reason(&sim.r, w, i).unwrap();
    assert_eq!(
        waiting.text(),
        "waits for approval of wave `rest` by @acme/sre or alice"
    );
    let err = sim
        .cmd(Command::Approve {
            wave: Some(WaveName::new("canary")),
            by: "alice".into(),
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "wave `canary` is not waiting for approval; wave `rest` is"
    );
    let err = sim
        .cmd(Command::Approve {
            wave: Some(WaveName::new("rst")),
            by: "alice".into(),
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "unknown wave `rst`, did you mean `rest`?");
    sim.cmd(Command::Approve {
        wave: None,
        by: "alice".into(),
    })
    .unwrap();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert_eq!(sim.r.waves[1].approved_by.as_deref(), Some("alice"));
}

#[test]
fn absolute_freeze_window_delays_the_next_wave_and_says_until_when() {
    let policy = RolloutPolicy {
        freeze: vec![FreezeWindow::Absolute {
            from: t("2026-11-26T10:00:30Z"),
            to: t("2026-11-26T12:00:00Z"),
            reason: Some("release party".into()),
        }],
        ..RolloutPolicy::default()
    };
    let mut sim = Sim::new(plan_with(
        vec![wave("canary", &["c1"]).bake(60), wave("rest", &["r1"])],
        &[("api", &[])],
        &[],
        policy,
    ));
    sim.start();
    // canary starts before the window; the bake ends inside it.
    sim.run_until(|s| s.r.state == RolloutState::Frozen);
    assert_eq!(sim.r.frozen_until, Some(t("2026-11-26T12:00:00Z")));
    let (w, i) = sim.r.find(&key("r1", "api")).unwrap();
    assert_eq!(
        engine::waiting_reason(&sim.r, w, i).unwrap().text(),
        "frozen until 2026-11-26 12:00 UTC (freeze window: release party)"
    );
    assert_eq!(engine::view(&sim.r).waves[1].state, "frozen");
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert_eq!(
        sim.step("r1", "api").started_at,
        Some(t("2026-11-26T12:00:00Z"))
    );
}

#[test]
fn weekly_freeze_across_a_dst_change_in_berlin() {
    // Saturday 2026-03-28 22:00 CET → Sunday 06:00 CEST (the clocks jump at
    // 02:00): 21:00Z → 04:00Z.
    let policy = RolloutPolicy {
        freeze: vec![FreezeWindow::Weekly {
            days: vec![Weekday::Sat],
            from: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            to: NaiveTime::from_hms_opt(6, 0, 0).unwrap(),
            tz: "Europe/Berlin".into(),
            reason: None,
        }],
        ..RolloutPolicy::default()
    };
    let mut sim = Sim::new(plan_with(
        vec![wave("w", &["a"])],
        &[("api", &[])],
        &[],
        policy,
    ));
    sim.now = t("2026-03-28T23:30:00Z");
    sim.start();
    assert_eq!(sim.state(), RolloutState::Frozen);
    assert_eq!(sim.r.frozen_until, Some(t("2026-03-29T04:00:00Z")));
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert_eq!(
        sim.step("a", "api").started_at,
        Some(t("2026-03-29T04:00:00Z"))
    );
}

#[test]
fn emergency_freeze_stops_new_steps_until_lifted() {
    let mut sim = Sim::new(simple_plan(vec![wave_n("w", "e", 4).parallel(2)]));
    sim.polls_to_ready = 1;
    sim.start();
    sim.cmd(Command::Freeze {
        until: None,
        reason: Some("incident".into()),
        by: "bob".into(),
    })
    .unwrap();
    assert_eq!(sim.state(), RolloutState::Frozen);
    sim.run();
    // The two in flight finished; nothing new started.
    assert_eq!(
        sim.r
            .steps()
            .filter(|s| s.state == StepState::Succeeded)
            .count(),
        2
    );
    assert_eq!(sim.r.steps().filter(|s| s.attempts == 0).count(), 2);
    let (w, i) = sim.r.find(&key("e03", "api")).unwrap();
    assert_eq!(
        engine::waiting_reason(&sim.r, w, i).unwrap().text(),
        "emergency freeze by bob until unfrozen (incident)"
    );
    sim.cmd(Command::Unfreeze { by: "bob".into() }).unwrap();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert_eq!(
        sim.cmd(Command::Unfreeze { by: "bob".into() })
            .unwrap_err()
            .to_string(),
        "the rollout is not frozen"
    );
}

#[test]
fn emergency_freeze_with_a_duration_ends_by_itself() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    let until = sim.now + chrono::Duration::minutes(30);
    sim.cmd(Command::Freeze {
        until: Some(until),
        reason: None,
        by: "bob".into(),
    })
    .unwrap();
    sim.start();
    assert_eq!(sim.state(), RolloutState::Frozen);
    assert_eq!(sim.step("a", "api").attempts, 0);
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert_eq!(sim.step("a", "api").started_at, Some(until));
}

// ---------------------------------------------------------------------------
// Per-step preflight (SPEC 6.3): freeze and dependency health at every start

impl Sim {
    /// When each attempt of each step began its preflight (the dependency
    /// check, or the agent preflight for a step without dependencies).
    fn attempt_starts(&self) -> Vec<(DateTime<Utc>, StepKey)> {
        let mut seen = std::collections::HashSet::new();
        self.log
            .iter()
            .filter_map(|(at, e)| match e {
                Effect::CheckDependencies { key, attempt, .. }
                | Effect::RunPreflight { key, attempt, .. } => seen
                    .insert((key.clone(), *attempt))
                    .then(|| (*at, key.clone())),
                _ => None,
            })
            .collect()
    }

    fn successes(&self) -> Vec<(DateTime<Utc>, StepKey)> {
        self.log
            .iter()
            .filter_map(|(at, e)| match e {
                Effect::RecordAttempt {
                    key,
                    succeeded: true,
                    ..
                } => Some((*at, key.clone())),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_weekly_freeze_window_that_begins_mid_wave_holds_new_steps_until_it_ends() {
    // Thursday 2026-11-26, Berlin is UTC+1: 11:01–11:30 local is
    // 10:01Z–10:30Z. The wave starts at 10:00Z, one environment at a time,
    // each step taking about 30 s: the window opens while it runs.
    let policy = RolloutPolicy {
        freeze: vec![FreezeWindow::Weekly {
            days: vec![Weekday::Thu],
            from: NaiveTime::from_hms_opt(11, 1, 0).unwrap(),
            to: NaiveTime::from_hms_opt(11, 30, 0).unwrap(),
            tz: "Europe/Berlin".into(),
            reason: Some("standup".into()),
        }],
        ..RolloutPolicy::default()
    };
    let mut sim = Sim::new(plan_with(
        vec![wave_n("w", "e", 6).parallel(1)],
        &[("api", &[])],
        &[],
        policy,
    ));
    sim.polls_to_ready = 15;
    sim.start();
    sim.run_until(|s| s.r.state == RolloutState::Frozen);
    let (opens, ends) = (t("2026-11-26T10:01:00Z"), t("2026-11-26T10:30:00Z"));
    assert!(sim.now >= opens && sim.now < ends, "frozen at {}", sim.now);
    assert_eq!(sim.r.frozen_until, Some(ends));
    let pending = sim
        .r
        .steps()
        .find(|s| s.state == StepState::Pending)
        .unwrap()
        .key();
    let (w, i) = sim.r.find(&pending).unwrap();
    assert_eq!(
        engine::waiting_reason(&sim.r, w, i).unwrap().text(),
        "frozen until 2026-11-26 10:30 UTC (freeze window: standup)"
    );
    let view = engine::view(&sim.r);
    assert_eq!(view.waves[0].state, "frozen");
    let shown = view.waves[0]
        .steps
        .iter()
        .find(|s| s.environment == pending.environment)
        .unwrap();
    assert_eq!(
        shown.waiting_for.as_deref(),
        Some("frozen until 2026-11-26 10:30 UTC (freeze window: standup)")
    );
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    let starts = sim.attempt_starts();
    assert!(
        starts.iter().all(|(at, _)| *at < opens || *at >= ends),
        "a step started inside the window: {starts:?}"
    );
    assert!(starts.iter().any(|(at, _)| *at < opens));
    assert!(
        starts.iter().any(|(at, _)| *at == ends),
        "the next step starts when the window ends: {starts:?}"
    );
    // The step in flight when the window opened finished inside it.
    assert!(
        sim.successes()
            .iter()
            .any(|(at, _)| *at >= opens && *at < ends),
        "{:?}",
        sim.successes()
    );
    assert_eq!(sim.r.frozen_until, None);
}

#[test]
fn an_absolute_freeze_window_that_begins_mid_wave_holds_retries_too() {
    // e00 fails once and its retry falls due inside the window: it waits.
    let policy = RolloutPolicy {
        freeze: vec![FreezeWindow::Absolute {
            from: t("2026-11-26T10:00:05Z"),
            to: t("2026-11-26T11:00:00Z"),
            reason: None,
        }],
        ..RolloutPolicy::default()
    };
    let mut sim = Sim::new(plan_with(
        vec![wave_n("w", "e", 1)],
        &[("api", &[])],
        &[],
        policy,
    ));
    let mut first = true;
    sim.deploy = Box::new(move |_, _| {
        std::mem::take(&mut first).then(|| (FailureKind::Transient, "503".into()))
    });
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    let starts = sim.attempt_starts();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_eq!(starts[1].0, t("2026-11-26T11:00:00Z"));
    assert_eq!(sim.step("e00", "api").attempts, 2);
}

#[test]
fn an_emergency_freeze_mid_wave_lets_in_flight_steps_finish_and_starts_nothing() {
    let mut sim = Sim::new(simple_plan(vec![wave_n("w", "e", 4).parallel(1)]));
    sim.polls_to_ready = 5;
    sim.start();
    // The first environment is done and the second in flight.
    sim.run_until(|s| s.step("e01", "api").state == StepState::Verifying);
    let frozen_at = sim.now;
    let until = frozen_at + chrono::Duration::minutes(20);
    sim.cmd(Command::Freeze {
        until: Some(until),
        reason: Some("incident".into()),
        by: "bob".into(),
    })
    .unwrap();
    assert_eq!(sim.state(), RolloutState::Frozen);
    let (w, i) = sim.r.find(&key("e02", "api")).unwrap();
    assert!(
        engine::waiting_reason(&sim.r, w, i)
            .unwrap()
            .text()
            .starts_with("emergency freeze by bob until "),
    );
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    let e01_done = sim
        .successes()
        .into_iter()
        .find(|(_, k)| *k == key("e01", "api"))
        .unwrap()
        .0;
    assert!(
        e01_done > frozen_at && e01_done < until,
        "in flight finished"
    );
    let starts = sim.attempt_starts();
    assert!(
        starts
            .iter()
            .all(|(at, _)| *at <= frozen_at || *at >= until),
        "{starts:?}"
    );
    assert_eq!(sim.step("e02", "api").started_at, Some(until));
}

#[test]
fn an_unhealthy_dependency_fails_the_step_at_preflight_with_the_reason() {
    // api waits for db in the same environment; db deploys fine but is
    // unhealthy by the time api is about to start.
    let policy = RolloutPolicy {
        retries: 0,
        ..RolloutPolicy::default()
    };
    let mut sim = Sim::new(plan_with(
        vec![wave("w", &["e00", "e01"])],
        &[("db", &[]), ("api", &["db"])],
        &[],
        policy,
    ));
    sim.dep_healthy = Box::new(|k, _| k.environment.as_str() != "e01");
    sim.start();
    sim.run();
    let api = sim.step("e01", "api");
    assert_eq!(api.state, StepState::Failed);
    assert_eq!(
        api.error.as_deref(),
        Some("preflight: dependency e01/db is unhealthy: probe")
    );
    // It never reached the agent's preflight, let alone a deploy.
    assert!(!sim.log.iter().any(|(_, e)| matches!(
        e,
        Effect::RunPreflight { key, .. } | Effect::Deploy { key, .. } if *key == key_of("e01", "api")
    )));
    assert_eq!(sim.step("e00", "api").state, StepState::Succeeded);
    assert_eq!(sim.state(), RolloutState::Halted);
    // The check asked for exactly the dependency, once per attempt.
    let asked: Vec<&Vec<StepKey>> = sim
        .log
        .iter()
        .filter_map(|(_, e)| match e {
            Effect::CheckDependencies {
                key, dependencies, ..
            } if *key == key_of("e01", "api") => Some(dependencies),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![&vec![key("e01", "db")]]);
    // Steps without dependencies go straight to the agent's preflight.
    assert!(!sim.log.iter().any(|(_, e)| matches!(
        e,
        Effect::CheckDependencies { key, .. } if key.service.as_str() == "db"
    )));
}

fn key_of(env: &str, svc: &str) -> StepKey {
    key(env, svc)
}

#[test]
fn a_dependency_in_another_environment_is_rechecked_and_a_recovery_lets_the_retry_pass() {
    // b depends on environment a (an earlier wave). a's service is at the
    // wrong version when b starts; by b's retry it is fine again.
    let mut sim = Sim::new(plan_with(
        vec![wave("first", &["a"]), wave("second", &["b"])],
        &[("api", &[])],
        &[("b", "a")],
        RolloutPolicy::default(),
    ));
    sim.start();
    sim.run_until(|s| s.step("b", "api").state == StepState::Preflight);
    // The fleet's answer to b's dependency check: a runs something else.
    for ev in sim.queue.iter_mut() {
        if let Event::DependencyHealth { results, .. } = ev {
            assert_eq!(results.len(), 1);
            assert_eq!(results[0].0, key("a", "api"));
            results[0].1.version = Some("0ddba11".into());
        }
    }
    sim.run_until(|s| s.step("b", "api").retry_at.is_some());
    assert_eq!(
        sim.step("b", "api").error.as_deref(),
        Some(
            format!(
                "preflight: dependency a/api runs 0ddba11, not {}",
                &SHA[..12]
            )
            .as_str()
        )
    );
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert_eq!(sim.step("b", "api").attempts, 2);
}

#[test]
fn recovery_restarts_an_interrupted_preflight_from_its_dependency_check() {
    let mut sim = Sim::new(plan_with(
        vec![wave("w", &["e00"])],
        &[("db", &[]), ("api", &["db"])],
        &[],
        RolloutPolicy::default(),
    ));
    sim.start();
    sim.run_until(|s| s.step("e00", "api").state == StepState::Preflight);
    // The process died: queued answers are lost.
    sim.queue.clear();
    let ctx = sim.ctx();
    let effects = engine::handle(&mut sim.r, Event::Recover, &ctx);
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::CheckDependencies { key: k, dependencies, .. }
                if *k == key("e00", "api") && *dependencies == vec![key("e00", "db")]
        )),
        "{effects:?}"
    );
    sim.absorb(effects);
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
}

// ---------------------------------------------------------------------------
// Concurrency between rollouts

#[test]
fn admission_queues_or_supersedes() {
    assert_eq!(
        engine::admission(false, Concurrency::Queue),
        Admission::Start
    );
    assert_eq!(
        engine::admission(true, Concurrency::Queue),
        Admission::Queue
    );
    assert_eq!(
        engine::admission(true, Concurrency::Supersede),
        Admission::SupersedeActive
    );
    // A queued rollout does nothing until started.
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    sim.send(Event::Tick);
    assert_eq!(sim.state(), RolloutState::Queued);
    assert!(sim.log.is_empty());
    let (w, i) = sim.r.find(&key("a", "api")).unwrap();
    assert_eq!(engine::waiting_reason(&sim.r, w, i), Some(Waiting::Queued));
}

#[test]
fn superseded_rollout_finishes_in_flight_steps_and_starts_nothing_new() {
    let mut sim = Sim::new(simple_plan(vec![wave_n("w", "e", 4).parallel(2)]));
    sim.polls_to_ready = 2;
    sim.start();
    sim.send(Event::Superseded { by: "r-2".into() });
    assert_eq!(
        sim.state(),
        RolloutState::Running,
        "in-flight steps still run"
    );
    sim.run();
    assert_eq!(sim.state(), RolloutState::Superseded);
    assert_eq!(sim.r.steps().filter(|s| s.attempts > 0).count(), 2);
    assert!(
        sim.r
            .steps()
            .filter(|s| s.attempts > 0)
            .all(|s| s.state == StepState::Succeeded)
    );
    assert!(sim.effects().any(|e| *e
        == Effect::Finished {
            state: RolloutState::Superseded
        }));
    // A queued one is superseded at once.
    let mut q = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    q.send(Event::Superseded { by: "r-3".into() });
    assert_eq!(q.state(), RolloutState::Superseded);
}

// ---------------------------------------------------------------------------
// Commands: skip, retry, abort, pause

#[test]
fn skip_counts_out_of_the_budget_and_resumes_a_halt() {
    let mut sim = Sim::new(simple_plan(vec![
        wave("w", &["a", "b"]),
        wave("next", &["c"]),
    ]));
    sim.deploy = Box::new(|k, _| {
        (k.environment.as_str() == "a").then(|| (FailureKind::Permanent, "no".into()))
    });
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Halted);
    let err = sim
        .cmd(Command::Skip {
            environments: vec![EnvName::new("aa")],
            by: "alice".into(),
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown environment `aa`, did you mean `a`?"
    );
    let err = sim
        .cmd(Command::Skip {
            environments: vec![EnvName::new("b")],
            by: "alice".into(),
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "nothing to skip in `b`: every step has ended"
    );
    sim.cmd(Command::Skip {
        environments: vec![EnvName::new("a")],
        by: "alice".into(),
    })
    .unwrap();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    let a = sim.step("a", "api");
    assert_eq!(a.state, StepState::Skipped);
    assert_eq!(a.note.as_deref(), Some("skipped by alice"));
}

#[test]
fn retry_resets_failed_steps_and_resumes_a_halted_rollout() {
    let mut sim = Sim::new(simple_plan(vec![
        wave("w", &["a", "b"]),
        wave("next", &["c"]),
    ]));
    let mut broken = true;
    sim.deploy = Box::new(move |k, _| {
        if k.environment.as_str() == "a" && broken {
            broken = false;
            return Some((FailureKind::Permanent, "no".into()));
        }
        None
    });
    assert_eq!(
        sim.cmd(Command::Retry {
            environments: vec![],
            by: "alice".into()
        })
        .unwrap_err()
        .to_string(),
        "nothing to retry: no failed steps"
    );
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Halted);
    assert_eq!(
        sim.cmd(Command::Retry {
            environments: vec![EnvName::new("b")],
            by: "alice".into()
        })
        .unwrap_err()
        .to_string(),
        "nothing to retry in `b`: no failed steps"
    );
    assert_eq!(
        sim.cmd(Command::Resume { by: "alice".into() })
            .unwrap_err()
            .to_string(),
        "the rollout is halted, not paused: use retry or skip to go on"
    );
    sim.cmd(Command::Retry {
        environments: vec![],
        by: "alice".into(),
    })
    .unwrap();
    assert_eq!(sim.state(), RolloutState::Running);
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    let a = sim.step("a", "api");
    assert_eq!((a.state, a.attempts), (StepState::Succeeded, 2));
}

#[test]
fn retry_reopens_a_failed_rollout_and_brings_back_blocked_dependents() {
    let mut sim = Sim::new(plan_with(
        vec![wave("w", &["a", "b"]).budget(FailureBudget::Count(4))],
        &[("db", &[]), ("api", &["db"])],
        &[],
        RolloutPolicy::default(),
    ));
    let mut broken = true;
    sim.deploy = Box::new(move |k, _| {
        if k.environment.as_str() == "a" && k.service.as_str() == "db" && broken {
            broken = false;
            return Some((FailureKind::Permanent, "no".into()));
        }
        None
    });
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Failed);
    assert_eq!(sim.step("a", "api").state, StepState::Failed);
    sim.cmd(Command::Retry {
        environments: vec![EnvName::new("a")],
        by: "alice".into(),
    })
    .unwrap();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert_eq!(sim.step("a", "api").attempts, 1);
}

#[test]
fn abort_stops_everything_and_later_commands_say_so() {
    let mut sim = Sim::new(simple_plan(vec![wave_n("w", "e", 4).parallel(1)]));
    sim.start();
    sim.cmd(Command::Abort { by: "alice".into() }).unwrap();
    assert_eq!(sim.state(), RolloutState::Aborted);
    assert!(sim.effects().any(|e| *e
        == Effect::Finished {
            state: RolloutState::Aborted
        }));
    sim.run();
    // The one in its preflight at the abort does not start either: its
    // preflight's answer, when it comes, deploys nothing.
    assert_eq!(sim.r.steps().filter(|s| s.attempts > 0).count(), 0);
    let e00 = sim.step("e00", "api");
    assert_eq!(e00.state, StepState::Pending);
    assert_eq!(
        e00.note.as_deref(),
        Some("not started: the rollout was aborted")
    );
    assert!(!sim.effects().any(|e| matches!(e, Effect::Deploy { .. })));
    assert_eq!(
        sim.cmd(Command::Abort { by: "bob".into() })
            .unwrap_err()
            .to_string(),
        "the rollout already ended: aborted"
    );
    assert_eq!(
        sim.cmd(Command::Retry {
            environments: vec![],
            by: "bob".into()
        })
        .unwrap_err()
        .to_string(),
        "the rollout is aborted; nothing to retry"
    );
}

#[test]
fn after_an_abort_a_failing_in_flight_step_is_not_retried() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    sim.deploy = Box::new(|_, _| Some((FailureKind::Transient, "503".into())));
    sim.start();
    // Aborted while its deploy is on its way: that deploy's end is
    // recorded, and it is not retried.
    sim.run_until(|s| s.step("a", "api").state == StepState::Deploying);
    sim.cmd(Command::Abort { by: "alice".into() }).unwrap();
    sim.run();
    let a = sim.step("a", "api");
    assert_eq!((a.state, a.attempts), (StepState::Failed, 1));
    assert_eq!(sim.state(), RolloutState::Aborted);
}

#[test]
fn transitions_name_the_steps_they_change() {
    let mut r = Rollout::new(simple_plan(vec![wave("w", &["a", "b"])]));
    let ctx = Ctx::at(t("2026-11-26T10:00:00Z"));
    let tr = engine::apply(&mut r, Event::Start, &ctx);
    assert_eq!(
        tr.changed,
        Changed::Steps(vec![key("a", "api"), key("b", "api")])
    );
    let tr = engine::apply(
        &mut r,
        Event::DeployAccepted {
            key: key("a", "api"),
            attempt: 1,
        },
        &ctx,
    );
    // Not deploying yet (still in preflight): nothing changed.
    assert_eq!(tr.changed, Changed::Steps(vec![key("a", "api")]));
    assert_eq!(
        r.step(&key("a", "api")).unwrap().state,
        StepState::Preflight
    );
    let tr = engine::apply_command(
        &mut r,
        Command::Skip {
            environments: vec![EnvName::new("b")],
            by: "x".into(),
        },
        &ctx,
    );
    assert!(tr.is_err(), "b is in flight");
}

#[test]
fn pause_and_resume() {
    let mut sim = Sim::new(simple_plan(vec![wave_n("w", "e", 3).parallel(1)]));
    sim.start();
    sim.cmd(Command::Pause { by: "alice".into() }).unwrap();
    assert_eq!(sim.state(), RolloutState::Paused);
    assert_eq!(
        sim.cmd(Command::Pause { by: "bob".into() })
            .unwrap_err()
            .to_string(),
        "already paused by alice"
    );
    sim.run();
    assert_eq!(sim.r.steps().filter(|s| s.attempts > 0).count(), 1);
    sim.cmd(Command::Resume { by: "alice".into() }).unwrap();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
}

// ---------------------------------------------------------------------------
// Drift, rollback, recovery

fn drift_sim(on_drift: OnDrift) -> Sim {
    let policy = RolloutPolicy {
        on_drift,
        ..RolloutPolicy::default()
    };
    let mut sim = Sim::new(plan_with(
        vec![wave("w", &["a"])],
        &[("api", &[])],
        &[],
        policy,
    ));
    sim.running.insert(key("a", "api"), "hotfix".into());
    sim.baseline.insert(key("a", "api"), "v1".into());
    sim.start();
    sim.run();
    sim
}

#[test]
fn drift_is_handled_per_on_drift() {
    let sim = drift_sim(OnDrift::Halt);
    let s = sim.step("a", "api");
    assert_eq!(s.state, StepState::Failed);
    assert_eq!(
        s.error.as_deref(),
        Some("drifted: expected v1, found hotfix")
    );
    assert!(s.held_for_drift);
    // Held, not broken: no halt, but the rollout does not call it a success.
    assert!(sim.r.halt.is_none());
    assert_eq!(sim.state(), RolloutState::Failed);
    assert!(
        sim.effects()
            .any(|e| matches!(e, Effect::DriftDetected { found, .. } if found == "hotfix"))
    );

    let sim = drift_sim(OnDrift::Overwrite);
    let s = sim.step("a", "api");
    assert_eq!(s.state, StepState::Succeeded);
    assert_eq!(
        s.note.as_deref(),
        Some("overwrote drift: drifted: expected v1, found hotfix")
    );

    let sim = drift_sim(OnDrift::Skip);
    let s = sim.step("a", "api");
    assert_eq!(s.state, StepState::Skipped);
    assert_eq!(
        s.note.as_deref(),
        Some("skipped: drifted: expected v1, found hotfix")
    );
    assert_eq!(sim.state(), RolloutState::Succeeded);
    assert!(!sim.effects().any(|e| matches!(e, Effect::Deploy { .. })));
}

#[test]
fn a_drift_halt_holds_that_environment_without_spending_the_budget() {
    // Budget 0 (the default): one hot-fixed environment and the service
    // that waits for it there are held; the rest of the fleet deploys.
    let mut sim = Sim::new(plan_with(
        vec![wave("w", &["a", "b", "c"]), wave("rest", &["d"])],
        &[("db", &[]), ("api", &["db"])],
        &[],
        RolloutPolicy::default(),
    ));
    sim.running.insert(key("a", "db"), "hotfix".into());
    sim.baseline.insert(key("a", "db"), "v1".into());
    sim.start();
    sim.run();
    let a_db = sim.step("a", "db");
    assert_eq!(a_db.state, StepState::Failed);
    assert!(a_db.held_for_drift);
    let a_api = sim.step("a", "api");
    assert_eq!(a_api.state, StepState::Failed, "waits for a/db");
    assert!(a_api.held_for_drift);
    for env in ["b", "c", "d"] {
        for svc in ["db", "api"] {
            assert_eq!(
                sim.step(env, svc).state,
                StepState::Succeeded,
                "{env}/{svc}"
            );
        }
    }
    assert!(sim.r.halt.is_none());
    assert_eq!(sim.state(), RolloutState::Failed);
    // A real failure still counts: the budget is there for broken deploys.
    assert_eq!(sim.r.waves[0].failed_steps(), 0);
    // `/convoy retry a` after the hot-fix is adopted deploys it.
    sim.baseline.insert(key("a", "db"), "hotfix".into());
    sim.cmd(Command::Retry {
        environments: vec![EnvName::new("a")],
        by: "alice".into(),
    })
    .unwrap();
    sim.run();
    assert!(!sim.step("a", "db").held_for_drift);
    assert_eq!(sim.step("a", "db").state, StepState::Succeeded);
    assert_eq!(sim.state(), RolloutState::Succeeded);
}

#[test]
fn never_deployed_is_not_drift_and_already_there_is_not_redeployed() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a", "b"])]));
    sim.baseline.insert(key("a", "api"), "v1".into()); // agent says null
    sim.running.insert(key("b", "api"), SHA.into());
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Succeeded);
    let deployed: Vec<_> = sim
        .effects()
        .filter_map(|e| match e {
            Effect::Deploy { key, .. } => Some(key.environment.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(deployed, ["a"]);
}

#[test]
fn auto_rollback_on_halt_lists_the_touched_environments_of_the_wave() {
    let policy = RolloutPolicy {
        auto_rollback: true,
        ..RolloutPolicy::default()
    };
    let mut sim = Sim::new(plan_with(
        vec![
            wave("canary", &["c1"]),
            wave("early", &["e1", "e2", "e3"]).parallel(2),
        ],
        &[("api", &[])],
        &[],
        policy,
    ));
    sim.polls_to_ready = 1;
    sim.deploy = Box::new(|k, _| {
        (k.environment.as_str() == "e1").then(|| (FailureKind::Permanent, "no".into()))
    });
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Halted);
    let rollbacks: Vec<_> = sim
        .effects()
        .filter_map(|e| match e {
            Effect::StartRollback { wave, environments } => {
                Some((wave.clone(), environments.clone()))
            }
            _ => None,
        })
        .collect();
    // e1 and e2 were attempted (e2 in flight at the halt, finished first),
    // e3 never started; canary is not the halted wave.
    assert_eq!(
        rollbacks,
        [(
            WaveName::new("early"),
            vec![EnvName::new("e1"), EnvName::new("e2")]
        )]
    );
    assert_eq!(
        engine::rollback_targets(&sim.r, &[]).unwrap(),
        [EnvName::new("c1"), EnvName::new("e1"), EnvName::new("e2")]
    );
    assert_eq!(
        engine::rollback_targets(&sim.r, &[EnvName::new("e3")])
            .unwrap_err()
            .to_string(),
        "nothing to roll back in `e3`: this rollout never deployed there"
    );
    sim.send(Event::RolledBack {
        environments: vec![EnvName::new("e1"), EnvName::new("e2")],
    });
    assert_eq!(sim.step("e2", "api").state, StepState::RolledBack);
    assert_eq!(sim.step("c1", "api").state, StepState::Succeeded);
}

/// A rollback pins its environments until the next merge (SPEC 6.8): a
/// step of the rolled-back rollout still to run there (here: waiting to
/// retry) is skipped, not deployed over the pin.
#[test]
fn a_rolled_back_environment_s_waiting_steps_do_not_deploy_over_the_pin() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    sim.deploy = Box::new(|_, _| Some((FailureKind::Transient, "503".into())));
    sim.start();
    sim.run_until(|s| s.step("a", "api").retry_at.is_some());
    assert_eq!(sim.step("a", "api").state, StepState::Pending);
    sim.send(Event::RolledBack {
        environments: vec![EnvName::new("a")],
    });
    let a = sim.step("a", "api");
    assert_eq!(a.state, StepState::Skipped);
    assert_eq!(
        a.note.as_deref(),
        Some("skipped: the environment was rolled back")
    );
    sim.run();
    let deploys = sim
        .effects()
        .filter(|e| matches!(e, Effect::Deploy { .. }))
        .count();
    assert_eq!(deploys, 1, "the retry never ran");
    assert_eq!(sim.state(), RolloutState::Succeeded);
}

/// A step still in its preflight when its environment is rolled back has
/// deployed nothing, and its preflight's answer must not deploy either.
#[test]
fn a_rolled_back_environment_s_step_in_preflight_does_not_deploy() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    sim.start();
    assert_eq!(sim.step("a", "api").state, StepState::Preflight);
    sim.send(Event::RolledBack {
        environments: vec![EnvName::new("a")],
    });
    assert_eq!(sim.step("a", "api").state, StepState::Skipped);
    sim.run();
    assert!(!sim.effects().any(|e| matches!(e, Effect::Deploy { .. })));
    assert_eq!(sim.step("a", "api").state, StepState::Skipped);
}

#[test]
fn recovery_reverifies_in_flight_steps_before_redeploying() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a", "b"])]));
    sim.answer_deploys = false;
    sim.start();
    sim.run();
    assert_eq!(sim.step("a", "api").state, StepState::Deploying);
    // "Crash": the stored rollout is all that survives.
    let stored = serde_json::to_string(&sim.r).unwrap();
    let mut sim2 = Sim::new(simple_plan(vec![wave("w", &["a", "b"])]));
    sim2.r = serde_json::from_str(&stored).unwrap();
    // The deploy to `a` had reached the agent before the crash; `b` had not.
    sim2.running.insert(key("a", "api"), SHA.into());
    sim2.send(Event::Recover);
    sim2.run();
    assert_eq!(sim2.state(), RolloutState::Succeeded);
    let redeployed: Vec<_> = sim2
        .effects()
        .filter_map(|e| match e {
            Effect::Deploy { key, attempt, .. } => Some((key.environment.to_string(), *attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(redeployed, [("b".to_string(), 1)]);
}

#[test]
fn a_deploy_not_sent_before_an_abort_counts_no_attempt() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a"])]));
    sim.answer_deploys = false;
    sim.start();
    sim.run();
    assert_eq!(sim.step("a", "api").state, StepState::Deploying);
    sim.cmd(Command::Abort { by: "alice".into() }).unwrap();
    // The runtime never sent it: it was still waiting for its lock.
    let ctx = sim.ctx();
    let tr = engine::apply(
        &mut sim.r,
        Event::DeployNotSent {
            key: key("a", "api"),
            attempt: 1,
        },
        &ctx,
    );
    assert!(
        !tr.effects
            .iter()
            .any(|e| matches!(e, Effect::RecordAttempt { .. } | Effect::Deploy { .. })),
        "{:?}",
        tr.effects
    );
    assert_eq!(tr.changed, Changed::Steps(vec![key("a", "api")]));
    let a = sim.step("a", "api");
    assert_eq!((a.state, a.attempts), (StepState::Pending, 0), "{a:?}");
    assert!(
        !sim.r.steps().any(|s| s.is_in_flight()),
        "nothing left to wait for"
    );
    assert_eq!(sim.state(), RolloutState::Aborted);
}

#[test]
fn after_a_crash_an_aborted_rollout_waits_for_its_deploys_in_flight_and_starts_none() {
    let mut sim = Sim::new(simple_plan(vec![wave("w", &["a", "b"])]));
    sim.answer_deploys = false;
    sim.start();
    sim.run();
    assert_eq!(sim.step("a", "api").state, StepState::Deploying);
    sim.cmd(Command::Abort { by: "alice".into() }).unwrap();
    assert_eq!(sim.state(), RolloutState::Aborted);
    // "Crash" while the abort waits for the deploys in flight.
    let stored = serde_json::to_string(&sim.r).unwrap();
    let b_accepted_by = sim.step("b", "api").deploy_deadline.unwrap();
    let mut sim2 = Sim::new(simple_plan(vec![wave("w", &["a", "b"])]));
    sim2.r = serde_json::from_str(&stored).unwrap();
    // The deploy to `a` had reached the agent; the one to `b` had not.
    sim2.running.insert(key("a", "api"), SHA.into());
    sim2.send(Event::Recover);
    sim2.run();
    assert_eq!(sim2.state(), RolloutState::Aborted);
    assert_eq!(sim2.step("a", "api").state, StepState::Succeeded);
    // `b` is waited for until its verify deadline, then failed; never
    // deployed again after the abort.
    let b = sim2.step("b", "api");
    assert_eq!((b.state, b.attempts), (StepState::Failed, 1), "{b:?}");
    // It kept the time it had to be accepted, then the time to verify.
    let verify = chrono::Duration::from_std(sim2.r.policy.verify_timeout).unwrap();
    assert!(b.finished_at.unwrap() >= b_accepted_by + verify, "{b:?}");
    assert!(
        !sim2.effects().any(|e| matches!(e, Effect::Deploy { .. })),
        "an aborted rollout starts no deploy"
    );
}

// ---------------------------------------------------------------------------
// Noop, serialization, the JSON view

#[test]
fn a_plan_without_steps_is_noop() {
    let mut sim = Sim::new(simple_plan(vec![]));
    sim.start();
    assert_eq!(sim.state(), RolloutState::Noop);
    assert!(sim.effects().any(|e| *e
        == Effect::Finished {
            state: RolloutState::Noop
        }));
}

#[test]
fn view_has_the_spec_8_shape() {
    let mut sim = Sim::new(simple_plan(vec![
        wave("canary", &["c1"]),
        wave("rest", &["r1", "r2"]).parallel(1),
    ]));
    sim.polls_to_ready = 5;
    sim.start();
    let v = serde_json::to_value(engine::view(&sim.r)).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(v["waves"][0]["name"], "canary");
    assert_eq!(v["waves"][0]["state"], "running");
    assert_eq!(v["waves"][0]["max_parallel"], 10);
    assert_eq!(v["waves"][0]["failure_budget"], 0);
    let step = &v["waves"][0]["steps"][0];
    assert_eq!(step["environment"], "c1");
    assert_eq!(step["service"], "api");
    assert_eq!(step["state"], "preflight");
    assert_eq!(step["attempts"], 1);
    assert_eq!(step["version"], SHA);
    assert_eq!(step["error"], serde_json::Value::Null);
    assert_eq!(step["started_at"], "2026-11-26T10:00:00Z");
    assert_eq!(step["finished_at"], serde_json::Value::Null);
    let waiting = &v["waves"][1]["steps"][0];
    assert_eq!(waiting["state"], "pending");
    assert_eq!(waiting["waiting"]["kind"], "earlier_wave");
    assert_eq!(waiting["waiting_for"], "waits for wave `canary`");
    sim.run_until(|s| s.r.current_wave == 1);
    let v = engine::view(&sim.r);
    assert_eq!(v.waves[0].state, "succeeded");
    assert_eq!(
        v.waves[1].steps[1].waiting_for.as_deref(),
        Some("waits for a free slot (1 environments in progress)")
    );
}

#[test]
fn a_rollout_round_trips_through_json_mid_flight() {
    let mut sim = Sim::new(simple_plan(vec![wave_n("w", "e", 5).parallel(2)]));
    sim.polls_to_ready = 1;
    sim.start();
    sim.run_until(|s| {
        s.r.steps()
            .filter(|x| x.state == StepState::Succeeded)
            .count()
            == 2
    });
    let json = serde_json::to_string(&sim.r).unwrap();
    let back: Rollout = serde_json::from_str(&json).unwrap();
    assert_eq!(back, sim.r);
    // Empty step fields are left out of the stored form, and a document
    // that spells them out as null reads the same.
    assert!(!json.contains("\"retry_at\":null"), "{json}");
    let mut verbose = serde_json::to_value(&sim.r).unwrap();
    verbose["waves"][0]["steps"][4]["retry_at"] = serde_json::Value::Null;
    verbose["waves"][0]["steps"][4]["blocked_by"] = serde_json::Value::Null;
    let back: Rollout = serde_json::from_value(verbose).unwrap();
    assert_eq!(back, sim.r);
}

// ---------------------------------------------------------------------------
// Property: random event sequences never panic and never exceed max_parallel.

fn arb_event(envs: Vec<String>) -> impl Strategy<Value = (u8, usize, u32, u8, u64)> {
    let n = envs.len();
    (0u8..20, 0..n, 0u32..4, 0u8..4, 0u64..400)
}

fn make_event(
    r: &Rollout,
    envs: &[String],
    (kind, env, attempt, flavor, secs): (u8, usize, u32, u8, u64),
) -> Result<Event, Command> {
    let svc = if flavor % 2 == 0 { "db" } else { "api" };
    let k = key(&envs[env], svc);
    let cur = r.step(&k).map(|s| s.attempts).unwrap_or(0);
    let attempt = if attempt == 0 { cur } else { attempt };
    let failure = if flavor < 2 {
        FailureKind::Transient
    } else {
        FailureKind::Permanent
    };
    let by = "p".to_string();
    let env_name = EnvName::new(envs[env].as_str());
    Ok(match kind {
        0 => Event::Start,
        1 => Event::Preflight {
            key: k,
            attempt,
            result: PreflightResult::Passed {
                running: (flavor == 3).then(|| "other".into()),
                baseline: (flavor >= 2).then(|| "base".into()),
                since: None,
            },
        },
        2 => Event::Preflight {
            key: k,
            attempt,
            result: PreflightResult::Failed {
                reason: "unreachable".into(),
                kind: failure,
            },
        },
        3 | 4 => Event::DeployAccepted { key: k, attempt },
        5 => Event::DeployFailed {
            key: k,
            attempt,
            kind: failure,
            error: "x".into(),
        },
        6 => Event::StepTimedOut { key: k, attempt },
        7 | 8 => Event::Status {
            key: k,
            attempt,
            report: HealthReport {
                version: (flavor != 0).then(|| SHA.into()),
                healthy: flavor != 1,
                message: None,
            },
        },
        9 => Event::TimerFired {
            timer: Timer::Retry { key: k, attempt },
        },
        10 => Event::TimerFired {
            timer: Timer::Bake {
                wave: env % 3,
                round: attempt,
            },
        },
        11 => Event::BakeHealth {
            wave: env % 3,
            round: attempt,
            results: vec![(
                k,
                HealthReport {
                    version: Some(SHA.into()),
                    healthy: flavor != 0,
                    message: None,
                },
            )],
        },
        12 => Event::Recover,
        13 => Event::Superseded { by },
        14 => {
            return Err(Command::Retry {
                environments: if flavor == 0 { vec![] } else { vec![env_name] },
                by,
            });
        }
        15 => {
            return Err(Command::Skip {
                environments: vec![env_name],
                by,
            });
        }
        16 => {
            return Err(match flavor {
                0 => Command::Pause { by },
                1 => Command::Resume { by },
                2 => Command::Freeze {
                    until: None,
                    reason: None,
                    by,
                },
                _ => Command::Unfreeze { by },
            });
        }
        17 => return Err(Command::Approve { wave: None, by }),
        18 if flavor < 2 => Event::StatusUnavailable {
            key: k,
            attempt,
            error: "down".into(),
        },
        18 => Event::DependencyHealth {
            results: r
                .step(&k)
                .map(|s| s.waits_for.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|d| {
                    let report = HealthReport {
                        version: Some(SHA.into()),
                        healthy: flavor == 3,
                        message: None,
                    };
                    (d, report)
                })
                .collect(),
            key: k,
            attempt,
        },
        _ => {
            if secs % 50 == 0 {
                return Err(Command::Abort { by });
            }
            Event::Tick
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_events_never_panic_or_exceed_max_parallel(
        steps in proptest::collection::vec(arb_event(envs("e", 6)), 1..200),
        auto_rollback in any::<bool>(),
    ) {
        let e = envs("e", 6);
        // A freeze window the random clock runs into, mid-wave or not.
        let freeze = vec![FreezeWindow::Absolute {
            from: t("2026-11-26T10:20:00Z"),
            to: t("2026-11-26T10:40:00Z"),
            reason: None,
        }];
        let policy = RolloutPolicy { auto_rollback, freeze, ..RolloutPolicy::default() };
        let plan = plan_with(
            vec![
                wave("a", &["e00", "e01"]).parallel(1).bake(60),
                wave("b", &["e02", "e03", "e04"]).parallel(2).approval().budget(FailureBudget::Count(1)),
                wave("c", &["e05"]).parallel(1),
            ],
            &[("db", &[]), ("api", &["db"])],
            &[("e03", "e02")],
            policy,
        );
        let mut r = Rollout::new(plan);
        let mut now = t("2026-11-26T10:00:00Z");
        for s in steps {
            now += chrono::Duration::seconds(s.4 as i64);
            let ctx = Ctx { now, jitter: (s.4 % 10) as f64 / 10.0 };
            let before = r.clone();
            let transition = match make_event(&r, &e, s) {
                Ok(ev) => Some(engine::apply(&mut r, ev, &ctx)),
                Err(cmd) => {
                    let valid = engine::validate(&r, &cmd).is_ok();
                    let t = engine::apply_command(&mut r, cmd, &ctx);
                    prop_assert_eq!(t.is_ok(), valid);
                    if !valid {
                        prop_assert_eq!(&r, &before, "a refused command changes nothing");
                    }
                    t.ok()
                }
            };
            // Every step that changed is reported as changed.
            if let Some(Transition { changed: Changed::Steps(keys), .. }) = &transition {
                for (bw, aw) in before.waves.iter().zip(&r.waves) {
                    for (bs, as_) in bw.steps.iter().zip(&aw.steps) {
                        if bs != as_ {
                            prop_assert!(keys.contains(&as_.key()), "{:?} changed unreported", as_.key());
                        }
                    }
                }
            }
            for wave in &r.waves {
                let mut active: Vec<&EnvName> = wave.steps.iter().filter(|s| s.is_active()).map(|s| &s.environment).collect();
                active.sort();
                active.dedup();
                prop_assert!(active.len() <= wave.max_parallel as usize);
                // Nothing runs in a wave after the current one.
                if r.waves.iter().position(|w| w.name == wave.name).unwrap() > r.current_wave {
                    prop_assert!(wave.steps.iter().all(|s| !s.is_in_flight()));
                }
            }
            // SPEC 6.3/6.4: no attempt starts inside a freeze window or
            // under an emergency freeze.
            let in_window = now >= t("2026-11-26T10:20:00Z") && now < t("2026-11-26T10:40:00Z");
            if in_window || (before.emergency_freeze.is_some() && r.emergency_freeze.is_some()) {
                for (bs, as_) in before.steps().zip(r.steps()) {
                    prop_assert!(as_.attempts <= bs.attempts, "{:?} started while frozen", as_.key());
                }
            }
            let _ = engine::view(&r);
        }
    }
}

/// A big fleet completes, and every environment gets each service once.
/// (Speed is measured in the benchmark, not here.)
#[test]
fn ten_thousand_environments_times_two_services_complete() {
    let n = 10_000;
    let all = envs("e", n);
    let split =
        |a: usize, b: usize| -> Vec<&str> { all[a..b].iter().map(|s| s.as_str()).collect() };
    let mut w1 = wave("canary", &split(0, 10));
    w1.max_parallel = 200;
    let mut w2 = wave("early", &split(10, 1000));
    w2.max_parallel = 200;
    let mut w3 = wave("rest", &split(1000, n));
    w3.max_parallel = 200;
    let plan = plan_with(
        vec![w1, w2, w3],
        &[("db", &[]), ("api", &["db"])],
        &[],
        RolloutPolicy::default(),
    );
    let mut r = Rollout::new(plan);
    let ctx = Ctx::at(t("2026-11-26T10:00:00Z"));
    let mut queue: VecDeque<Event> = VecDeque::from([Event::Start]);
    let mut deploys = 0usize;
    let mut peak = 0usize;
    while let Some(ev) = queue.pop_front() {
        for e in engine::handle(&mut r, ev, &ctx) {
            match e {
                Effect::CheckDependencies {
                    key,
                    attempt,
                    dependencies,
                } => queue.push_back(Event::DependencyHealth {
                    key,
                    attempt,
                    results: dependencies
                        .into_iter()
                        .map(|k| {
                            let report = HealthReport {
                                version: Some(SHA.into()),
                                healthy: true,
                                message: None,
                            };
                            (k, report)
                        })
                        .collect(),
                }),
                Effect::RunPreflight { key, attempt, .. } => queue.push_back(Event::Preflight {
                    key,
                    attempt,
                    result: PreflightResult::Passed {
                        running: None,
                        baseline: None,
                        since: None,
                    },
                }),
                Effect::Deploy { key, attempt, .. } => {
                    deploys += 1;
                    queue.push_back(Event::DeployAccepted { key, attempt })
                }
                Effect::PollStatus { key, attempt } => queue.push_back(Event::Status {
                    key,
                    attempt,
                    report: HealthReport {
                        version: Some(SHA.into()),
                        healthy: true,
                        message: None,
                    },
                }),
                _ => {}
            }
        }
        peak = peak.max(queue.len());
    }
    assert_eq!(r.state, RolloutState::Succeeded);
    assert_eq!(deploys, 2 * n);
    // Never more than 200 environments × 2 services' worth of work queued.
    assert!(peak <= 400, "{peak}");
}

#[test]
fn retry_after_a_halt_with_blocked_dependents_finishes() {
    let policy = RolloutPolicy {
        retries: 1,
        ..RolloutPolicy::default()
    };
    let mut sim = Sim::new(plan_with(
        vec![
            wave("canary", &["e00", "e01"]),
            wave_n("rest", "f", 8).parallel(20),
        ],
        &[("db", &[]), ("api", &["db"]), ("web", &["api"])],
        &[],
        policy,
    ));
    sim.polls_to_ready = 1;
    let broken = std::rc::Rc::new(std::cell::Cell::new(true));
    let b = broken.clone();
    sim.deploy = Box::new(move |k, _| {
        (k.environment.as_str() == "f05" && b.get()).then(|| (FailureKind::Permanent, "no".into()))
    });
    sim.start();
    sim.run();
    assert_eq!(sim.state(), RolloutState::Halted);
    broken.set(false);
    sim.cmd(Command::Retry {
        environments: vec![],
        by: "alice".into(),
    })
    .unwrap();
    sim.run();
    assert_eq!(
        sim.state(),
        RolloutState::Succeeded,
        "{:#?}",
        engine::view(&sim.r).waves[1].steps
    );
}

//! Properties of wave assignment and planning over random fleets, and the
//! risk numbers of SPEC 6.7 through the whole planner.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use convoy::domain::{CommitSha, EnvName, ServiceName, WaveName};
use convoy::plan::model::{FailureBudget, Plan, RolloutPolicy, StepKey};
use convoy::plan::waves::{assign, stable_key};
use convoy::plan::{EnvHistory, History, build_plan, format_percent};
use convoy::spec::{ConvoySpec, EnvSpec, Pos, ServiceSpec, WaveSpec};
use proptest::prelude::*;

const RINGS: [&str; 3] = ["canary", "main", "edge"];

#[derive(Clone, Debug)]
struct Fleet {
    spec: ConvoySpec,
    affected: Vec<ServiceName>,
}

fn fleet() -> impl Strategy<Value = Fleet> {
    let services = (1usize..=5).prop_flat_map(|n| {
        // Service i may depend on services before it: never a cycle.
        proptest::collection::vec(proptest::collection::vec(any::<bool>(), 5), n).prop_map(
            move |deps| {
                (0..n)
                    .map(|i| ServiceSpec {
                        name: ServiceName::new(format!("s{i}")),
                        paths: vec![],
                        depends_on: (0..i)
                            .filter(|&j| deps[i][j])
                            .map(|j| ServiceName::new(format!("s{j}")))
                            .collect(),
                        pos: Pos::START,
                    })
                    .collect::<Vec<_>>()
            },
        )
    });
    let env = (
        0usize..3,
        proptest::option::of(proptest::collection::vec(any::<bool>(), 5)),
        proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
    );
    let envs = proptest::collection::vec(env, 0..60);
    let wave = (
        proptest::option::of(0usize..3),
        proptest::option::of(1u32..=100),
        any::<bool>(),
    );
    let waves = proptest::collection::vec(wave, 0..5);
    let affected = proptest::collection::vec(any::<bool>(), 5);
    (services, envs, waves, affected).prop_map(|(services, envs, waves, affected)| {
        let n_services = services.len();
        let env_specs: Vec<EnvSpec> = envs
            .iter()
            .enumerate()
            .map(|(i, (ring, hosted, deps))| EnvSpec {
                name: EnvName::new(format!("env-{i}")),
                labels: BTreeMap::from([("ring".into(), RINGS[*ring].into())]),
                driver: "agent".into(),
                url: None,
                services: hosted.as_ref().map(|h| {
                    (0..n_services)
                        .filter(|&s| h[s])
                        .map(|s| ServiceName::new(format!("s{s}")))
                        .collect()
                }),
                // Only on environments before it (acyclic); whether they sit
                // in an earlier wave is left to chance, as the planner must
                // keep its promises on any input.
                depends_on: if i == 0 {
                    vec![]
                } else {
                    deps.iter()
                        .map(|d| EnvName::new(format!("env-{}", d.index(i))))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect()
                },
                pos: Pos::START,
            })
            .collect();
        // Percents strictly increasing, as validation requires.
        let mut last = 0;
        let wave_specs: Vec<WaveSpec> = waves
            .iter()
            .enumerate()
            .map(|(i, (selector, percent, approval))| {
                let percent = percent.filter(|p| *p > last).inspect(|p| last = *p);
                WaveSpec {
                    name: WaveName::new(format!("w{i}")),
                    selector: selector
                        .map(|r| BTreeMap::from([("ring".to_string(), RINGS[r].to_string())]))
                        .unwrap_or_default(),
                    percent,
                    bake: Duration::ZERO,
                    max_parallel: None,
                    failure_budget: FailureBudget::Count(0),
                    approval: *approval,
                    pos: Pos::START,
                }
            })
            .collect();
        Fleet {
            affected: (0..n_services)
                .filter(|&s| affected[s])
                .map(|s| ServiceName::new(format!("s{s}")))
                .collect(),
            spec: ConvoySpec {
                version: 1,
                services,
                environments: env_specs,
                waves: wave_specs,
                policy: RolloutPolicy::default(),
            },
        }
    })
}

fn plan(f: &Fleet) -> Plan {
    build_plan(
        &f.spec,
        CommitSha::new("b".repeat(40)),
        Some(CommitSha::new("a".repeat(40))),
        &f.affected,
        &History::new(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_environment_lands_in_exactly_one_wave(f in fleet()) {
        let a = assign(&f.spec);
        prop_assert_eq!(a.waves.len(), f.spec.waves.len() + 1);
        let mut seen = vec![0u32; f.spec.environments.len()];
        for (w, members) in a.waves.iter().enumerate() {
            for &e in members {
                seen[e] += 1;
                prop_assert_eq!(a.wave_of[e], w);
            }
        }
        prop_assert!(seen.iter().all(|&c| c == 1));
    }

    #[test]
    fn cumulative_percent_bounds_hold(f in fleet()) {
        let a = assign(&f.spec);
        let n = f.spec.environments.len();
        let mut before = 0usize;
        for (w, wave) in f.spec.waves.iter().enumerate() {
            let after = before + a.waves[w].len();
            if let Some(p) = wave.percent {
                let limit = (p as usize * n).div_ceil(100);
                prop_assert!(after <= before.max(limit));
                if wave.selector.is_empty() {
                    // Everything is a candidate: it fills up to the limit.
                    prop_assert_eq!(after, before.max(limit.min(n)));
                }
            } else if wave.selector.is_empty() {
                prop_assert_eq!(after, n);
            }
            for &e in &a.waves[w] {
                prop_assert!(f.spec.environments[e].matches(&wave.selector));
            }
            before = after;
        }
        // Each wave's members are in ascending SHA-256 order.
        for members in &a.waves {
            let keys: Vec<[u8; 32]> = members
                .iter()
                .map(|&e| stable_key(f.spec.environments[e].name.as_str()))
                .collect();
            prop_assert!(keys.windows(2).all(|k| k[0] < k[1]));
        }
    }

    #[test]
    fn same_plan_on_every_run_and_for_any_input_order(f in fleet(), seed in any::<u64>()) {
        let first = plan(&f);
        prop_assert_eq!(&first, &plan(&f));
        let mut shuffled = f.clone();
        fastrand::Rng::with_seed(seed).shuffle(&mut shuffled.spec.environments);
        prop_assert_eq!(&first, &plan(&shuffled));
    }

    #[test]
    fn waits_only_on_earlier_steps_of_the_same_or_earlier_waves(f in fleet()) {
        let p = plan(&f);
        let mut wave_of: HashMap<StepKey, usize> = HashMap::new();
        for (w, wave) in p.waves.iter().enumerate() {
            for s in &wave.steps {
                prop_assert!(wave_of.insert(s.key(), w).is_none(), "step twice");
            }
        }
        let mut done: HashSet<StepKey> = HashSet::new();
        for (w, wave) in p.waves.iter().enumerate() {
            for s in &wave.steps {
                for dep in &s.waits_for {
                    let dw = wave_of.get(dep);
                    prop_assert!(dw.is_some(), "waits for a step not in the plan");
                    prop_assert!(*dw.unwrap() <= w, "waits on a later wave");
                    // A valid topological order: what it waits for came first.
                    prop_assert!(done.contains(dep), "{:?} before {:?}", s.key(), dep);
                }
                done.insert(s.key());
            }
        }
    }

    #[test]
    fn steps_are_affected_services_times_hosting_environments(f in fleet()) {
        let p = plan(&f);
        let mut expected = HashSet::new();
        for e in &f.spec.environments {
            for s in &f.affected {
                if e.hosts(s.as_str()) {
                    expected.insert((e.name.clone(), s.clone()));
                }
            }
        }
        let got: HashSet<(EnvName, ServiceName)> = p
            .waves
            .iter()
            .flat_map(|w| w.steps.iter().map(|s| (s.environment.clone(), s.service.clone())))
            .collect();
        prop_assert_eq!(p.step_count(), got.len());
        prop_assert_eq!(got, expected);
        prop_assert!(p.waves.iter().all(|w| !w.steps.is_empty()));
        prop_assert_eq!(p.risk.steps, p.step_count());
    }
}

fn flat_fleet(n: usize) -> ConvoySpec {
    ConvoySpec {
        version: 1,
        services: vec![ServiceSpec {
            name: ServiceName::new("api"),
            paths: vec![],
            depends_on: vec![],
            pos: Pos::START,
        }],
        environments: (0..n)
            .map(|i| EnvSpec {
                name: EnvName::new(format!("e{i}")),
                labels: BTreeMap::new(),
                driver: "agent".into(),
                url: None,
                services: None,
                depends_on: vec![],
                pos: Pos::START,
            })
            .collect(),
        waves: vec![],
        policy: RolloutPolicy::default(),
    }
}

#[test]
fn risk_of_100_steps_at_99_percent() {
    let spec = flat_fleet(100);
    let p = build_plan(
        &spec,
        CommitSha::new("b".repeat(40)),
        None,
        &[ServiceName::new("api")],
        &History::new(),
    );
    assert_eq!(p.risk.steps, 100);
    assert!((p.risk.first_attempt_failure - 0.634).abs() < 0.0005);
    assert!((p.risk.needs_human - 0.0001).abs() < 0.00001);
    assert_eq!(format_percent(p.risk.first_attempt_failure), "63.4%");
    assert_eq!(format_percent(p.risk.needs_human), "0.01%");
    // Everything in the implicit wave, with policy defaults.
    assert_eq!(p.waves.len(), 1);
    assert_eq!(p.waves[0].name.as_str(), "rest");
    assert_eq!(p.waves[0].max_parallel, 10);
    assert!(!p.waves[0].approval);
}

#[test]
fn history_shifts_the_estimate() {
    let spec = flat_fleet(100);
    let mut history = History::new();
    // e7 failed half of its last 50 first attempts.
    history.insert(
        EnvName::new("e7"),
        EnvHistory {
            attempts: 50,
            first_attempt_successes: 25,
        },
    );
    let p = build_plan(
        &spec,
        CommitSha::new("b".repeat(40)),
        None,
        &[ServiceName::new("api")],
        &history,
    );
    let expected = 1.0 - 0.99f64.powi(99) * (26.0 / 52.0);
    assert!((p.risk.first_attempt_failure - expected).abs() < 1e-9);
    assert_eq!(p.risk.riskiest[0].environment.as_str(), "e7");
    assert_eq!(p.risk.riskiest[0].p, 0.5);
    // A perfect record of 50 is (50 + 1) / (50 + 2), which is a little below
    // the assumed 0.99: the formula trusts 50 deploys only so far.
    history.insert(
        EnvName::new("e7"),
        EnvHistory {
            attempts: 50,
            first_attempt_successes: 50,
        },
    );
    let q = build_plan(
        &spec,
        CommitSha::new("b".repeat(40)),
        None,
        &[ServiceName::new("api")],
        &history,
    );
    let expected = 1.0 - 0.99f64.powi(99) * (51.0 / 52.0);
    assert!((q.risk.first_attempt_failure - expected).abs() < 1e-9);
}

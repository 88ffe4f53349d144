//! From a validated `convoy.yml`, the affected services and the history to a
//! [`Plan`]: steps, waves, what each step waits for, and the risk.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use crate::domain::{CommitSha, ServiceName, WaveName};
use crate::spec::model::ConvoySpec;

use super::model::{FailureBudget, Plan, PlannedStep, PlannedWave, StepKey};
use super::risk::{self, History};
use super::waves::{self, REST};

/// Builds the plan. Pure and deterministic: the same inputs give the same
/// plan, whatever the order of environments in the file.
///
/// `affected` are the services to deploy (see [`super::impact`]); names
/// that are not services of `spec` are ignored. The plan lists them in
/// dependency order. Waves are assigned over the whole fleet (so cohorts do
/// not move between releases); then environments without a step, and waves
/// left without environments, are dropped. Within a wave, steps are in a
/// valid dependency order: an environment after those of the same wave it
/// depends on, services in dependency order.
pub fn build_plan(
    spec: &ConvoySpec,
    commit: CommitSha,
    previous_commit: Option<CommitSha>,
    affected: &[ServiceName],
    history: &History,
) -> Plan {
    let stable = waves::stable_order(&spec.environments);
    let assignment = waves::assign_in_order(&spec.environments, &spec.waves, &stable);
    let service_order = service_topo_order(spec);
    let affected_set: BTreeSet<&str> = affected.iter().map(ServiceName::as_str).collect();
    let affected_services: Vec<ServiceName> = service_order
        .iter()
        .map(|&s| &spec.services[s].name)
        .filter(|n| affected_set.contains(n.as_str()))
        .cloned()
        .collect();
    // Indices into spec.services of the affected ones, in dependency order.
    let planned_services: Vec<usize> = service_order
        .iter()
        .copied()
        .filter(|&s| affected_set.contains(spec.services[s].name.as_str()))
        .collect();
    let service_index: BTreeMap<&str, usize> = spec
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let service_deps: Vec<Vec<usize>> = spec
        .services
        .iter()
        .map(|s| {
            s.depends_on
                .iter()
                .filter_map(|d| service_index.get(d.as_str()).copied())
                .collect()
        })
        .collect();

    // Per environment: the services it gets, in dependency order.
    let env_steps: Vec<Vec<usize>> = spec
        .environments
        .iter()
        .map(|e| {
            planned_services
                .iter()
                .copied()
                .filter(|&s| e.hosts(spec.services[s].name.as_str()))
                .collect()
        })
        .collect();

    let env_index: BTreeMap<&str, usize> = spec
        .environments
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_str(), i))
        .collect();
    let env_deps: Vec<Vec<usize>> = spec
        .environments
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.depends_on
                .iter()
                .filter_map(|d| env_index.get(d.as_str()).copied())
                // Validation guarantees same-or-earlier waves; the planner
                // keeps its promise (never wait on a later wave) regardless.
                .filter(|&d| d != i && assignment.wave_of[d] <= assignment.wave_of[i])
                .collect()
        })
        .collect();
    let mut env_waits = env_wait_sets(&env_deps, &env_steps);
    // List what an environment waits for in the stable order, not in file
    // order, so the plan does not depend on how the file is sorted.
    let mut rank = vec![0usize; spec.environments.len()];
    for (r, &e) in stable.iter().enumerate() {
        rank[e] = r;
    }
    for waits in &mut env_waits {
        waits.sort_by_key(|&e| rank[e]);
    }

    let mut service_waits_cache: HashMap<Vec<usize>, Vec<Vec<usize>>> = HashMap::new();
    let rest_name = rest_wave_name(spec);
    let policy = &spec.policy;
    let mut planned_waves = Vec::new();
    for (w, members) in assignment.waves.iter().enumerate() {
        let with_steps: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&e| !env_steps[e].is_empty())
            .collect();
        if with_steps.is_empty() {
            continue;
        }
        let (name, max_parallel, failure_budget, bake, approval) = match spec.waves.get(w) {
            Some(wave) => (
                wave.name.clone(),
                wave.max_parallel.unwrap_or(policy.max_parallel),
                wave.failure_budget,
                wave.bake,
                wave.approval,
            ),
            None => (
                rest_name.clone(),
                policy.max_parallel,
                FailureBudget::Count(0),
                std::time::Duration::ZERO,
                false,
            ),
        };
        let mut steps = Vec::new();
        for e in wave_env_order(&with_steps, &env_waits, &assignment.wave_of, w) {
            let env = &spec.environments[e];
            // Environments hosting the same services share the answer.
            let service_waits = service_waits_cache
                .entry(env_steps[e].clone())
                .or_insert_with(|| {
                    env_steps[e]
                        .iter()
                        .map(|&s| nearest_planned_services(s, &service_deps, &env_steps[e]))
                        .collect::<Vec<_>>()
                });
            let env_wait_steps: usize = env_waits[e].iter().map(|&d| env_steps[d].len()).sum();
            for (k, &s) in env_steps[e].iter().enumerate() {
                let mut waits_for = Vec::with_capacity(service_waits[k].len() + env_wait_steps);
                for &d in &service_waits[k] {
                    waits_for.push(StepKey {
                        environment: env.name.clone(),
                        service: spec.services[d].name.clone(),
                    });
                }
                for &d in &env_waits[e] {
                    for &ds in &env_steps[d] {
                        waits_for.push(StepKey {
                            environment: spec.environments[d].name.clone(),
                            service: spec.services[ds].name.clone(),
                        });
                    }
                }
                steps.push(PlannedStep {
                    environment: env.name.clone(),
                    service: spec.services[s].name.clone(),
                    waits_for,
                });
            }
        }
        planned_waves.push(PlannedWave {
            name,
            environments: with_steps
                .iter()
                .map(|&e| spec.environments[e].name.clone())
                .collect(),
            max_parallel,
            failure_budget,
            bake,
            approval,
            steps,
        });
    }

    let targets = spec
        .environments
        .iter()
        .zip(&env_steps)
        .filter(|(_, s)| !s.is_empty())
        .map(|(e, _)| (e.name.clone(), e.target()))
        .collect();
    let risk = risk::estimate(
        planned_waves
            .iter()
            .flat_map(|w| w.steps.iter().map(|s| &s.environment)),
        history,
        policy.retries,
        policy.assumed_success,
    );
    Plan {
        commit,
        previous_commit,
        affected_services,
        waves: planned_waves,
        targets,
        policy: policy.clone(),
        risk,
    }
}

/// `rest`, unless the file already names a wave so (the SPEC's own example
/// does, with `percent: 100`, which leaves the implicit wave empty anyway).
fn rest_wave_name(spec: &ConvoySpec) -> WaveName {
    let taken = |n: &str| spec.waves.iter().any(|w| w.name.as_str() == n);
    if !taken(REST) {
        return WaveName::new(REST);
    }
    let mut i = 2;
    loop {
        let candidate = format!("{REST}-{i}");
        if !taken(&candidate) {
            return WaveName::new(candidate);
        }
        i += 1;
    }
}

/// Services in dependency order (dependencies first), ties in file order.
/// A cycle (which validation rejects) cannot stall it: what is left goes
/// last in file order.
pub fn service_topo_order(spec: &ConvoySpec) -> Vec<usize> {
    let n = spec.services.len();
    let index: BTreeMap<&str, usize> = spec
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, s) in spec.services.iter().enumerate() {
        for d in &s.depends_on {
            if let Some(&j) = index.get(d.as_str())
                && j != i
            {
                indegree[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    kahn(n, &mut indegree, &dependents, |i| i)
}

/// Kahn's algorithm, always taking the ready node with the smallest
/// priority; nodes stuck in a cycle are appended by priority.
fn kahn(
    n: usize,
    indegree: &mut [usize],
    dependents: &[Vec<usize>],
    priority: impl Fn(usize) -> usize,
) -> Vec<usize> {
    let mut ready: BinaryHeap<Reverse<(usize, usize)>> = (0..n)
        .filter(|&i| indegree[i] == 0)
        .map(|i| Reverse((priority(i), i)))
        .collect();
    let mut out = Vec::with_capacity(n);
    let mut done = vec![false; n];
    while let Some(Reverse((_, i))) = ready.pop() {
        out.push(i);
        done[i] = true;
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(Reverse((priority(j), j)));
            }
        }
    }
    if out.len() < n {
        let mut left: Vec<usize> = (0..n).filter(|&i| !done[i]).collect();
        left.sort_by_key(|&i| priority(i));
        out.extend(left);
    }
    out
}

/// The environments of one wave (given in the stable order) reordered so
/// that an environment comes after those of this wave it depends on; ties
/// keep the stable order.
fn wave_env_order(
    members: &[usize],
    env_deps: &[Vec<usize>],
    wave_of: &[usize],
    wave: usize,
) -> Vec<usize> {
    let mut local = vec![usize::MAX; env_deps.len()];
    for (k, &e) in members.iter().enumerate() {
        local[e] = k;
    }
    let n = members.len();
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut any = false;
    for (k, &e) in members.iter().enumerate() {
        for d in &env_deps[e] {
            let dk = local[*d];
            if wave_of[*d] == wave && dk != usize::MAX {
                indegree[k] += 1;
                dependents[dk].push(k);
                any = true;
            }
        }
    }
    if !any {
        return members.to_vec();
    }
    kahn(n, &mut indegree, &dependents, |k| k)
        .into_iter()
        .map(|k| members[k])
        .collect()
}

/// What service `s` waits for in an environment that gets `planned`: its
/// dependencies that are planned there, and through those that are not (not
/// affected, or not hosted there), their own dependencies, transitively.
fn nearest_planned_services(s: usize, deps: &[Vec<usize>], planned: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut seen = vec![false; deps.len()];
    let mut stack: Vec<usize> = deps[s].iter().rev().copied().collect();
    seen[s] = true;
    while let Some(d) = stack.pop() {
        if std::mem::replace(&mut seen[d], true) {
            continue;
        }
        if planned.contains(&d) {
            out.push(d);
        } else {
            stack.extend(deps[d].iter().rev().copied());
        }
    }
    out.sort_by_key(|d| planned.iter().position(|p| p == d));
    out
}

/// For each environment, the environments whose steps it waits for: its
/// `depends_on` ones that have steps and, through those that have none,
/// their own, transitively. Memoized in dependency order so a fleet of
/// 10,000 stays linear in the number of edges and results.
fn env_wait_sets(env_deps: &[Vec<usize>], env_steps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = env_deps.len();
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, deps) in env_deps.iter().enumerate() {
        for &d in deps {
            indegree[i] += 1;
            dependents[d].push(i);
        }
    }
    let order = kahn(n, &mut indegree, &dependents, |i| i);
    let mut result: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in order {
        let mut set: BTreeSet<usize> = BTreeSet::new();
        for &d in &env_deps[i] {
            if !env_steps[d].is_empty() {
                set.insert(d);
            } else {
                set.extend(result[d].iter().copied());
            }
        }
        set.remove(&i);
        result[i] = set.into_iter().collect();
    }
    result
}

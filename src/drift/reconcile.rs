//! The reconciler's decisions, pure: when the next pass is due, which
//! environments a pass asks (not those with a step in flight, not those
//! whose target convoy no longer knows), how the queries are spread over
//! the interval and bounded, what an agent's answer means, and what to
//! write about it. Time is an input; nothing here sleeps or does I/O except
//! [`query_all`], which only runs the queries it is given under the bounds
//! decided here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{EnvName, RepoName, ServiceName};
use crate::plan::model::EnvTarget;
use crate::store::{DriftKind, DriftObservation, StoredBaseline};

/// At most this many agents are asked at once, across all repositories:
/// 10,000 environments must not become a thundering herd.
pub const MAX_CONCURRENT_AGENTS: usize = 20;

/// One pass's queries start spread over this share of the interval, so the
/// load is even rather than a burst at each tick.
pub const SPREAD_SHARE: f64 = 0.5;

/// When passes are due: every `interval`, never two at once; a pass that
/// took longer than the interval is followed by the next one at once.
#[derive(Clone, Debug)]
pub struct Ticker {
    interval: Duration,
    next: DateTime<Utc>,
}

impl Ticker {
    /// The first pass is due one interval after `start`: at start-up,
    /// unfinished rollouts resume first.
    pub fn new(interval: Duration, start: DateTime<Utc>) -> Ticker {
        Ticker {
            interval,
            next: add(start, interval),
        }
    }

    pub fn due(&self, now: DateTime<Utc>) -> bool {
        now >= self.next
    }

    /// How long until the next pass is due (zero when it is).
    pub fn wait(&self, now: DateTime<Utc>) -> Duration {
        (self.next - now).to_std().unwrap_or(Duration::ZERO)
    }

    /// A pass that began at `started` ended at `now`.
    pub fn passed(&mut self, started: DateTime<Utc>, now: DateTime<Utc>) {
        self.next = add(started, self.interval).max(now);
    }
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// One environment to ask: its target, and the services convoy has a
/// baseline for there, with the version expected.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub repo: RepoName,
    pub environment: EnvName,
    pub target: EnvTarget,
    /// (service, expected version), in service order.
    pub services: Vec<(ServiceName, String)>,
}

/// What a pass will ask, and what it leaves alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    pub probes: Vec<Probe>,
    /// Environments skipped because a step is in flight there.
    pub busy: usize,
    /// Environments with a baseline but no known target (removed from
    /// `convoy.yml`, or never planned since): nothing to ask.
    pub unknown: usize,
}

/// The environments to ask: every (repository, environment) with a
/// baseline and a known target, except those in `busy` (a step in flight:
/// what runs there is changing on purpose). `baselines` ordered by
/// repository, environment, service (as the store returns them).
pub fn select(
    baselines: &[StoredBaseline],
    targets: &HashMap<RepoName, BTreeMap<EnvName, EnvTarget>>,
    busy: &HashSet<(RepoName, EnvName)>,
) -> Selection {
    let mut grouped: BTreeMap<(RepoName, EnvName), Vec<(ServiceName, String)>> = BTreeMap::new();
    for b in baselines {
        grouped
            .entry((b.repo.clone(), b.environment.clone()))
            .or_default()
            .push((b.service.clone(), b.baseline.version.clone()));
    }
    let mut out = Selection::default();
    for ((repo, environment), mut services) in grouped {
        if busy.contains(&(repo.clone(), environment.clone())) {
            out.busy += 1;
            continue;
        }
        let Some(target) = targets.get(&repo).and_then(|t| t.get(&environment)) else {
            out.unknown += 1;
            continue;
        };
        services.sort();
        out.probes.push(Probe {
            target: target.clone(),
            repo,
            environment,
            services,
        });
    }
    out
}

/// When each of `n` queries may start, from the start of the pass: evenly
/// over [`SPREAD_SHARE`] of the interval.
pub fn start_offsets(n: usize, interval: Duration) -> Vec<Duration> {
    let window = interval.mul_f64(SPREAD_SHARE);
    (0..n)
        .map(|i| {
            if n == 0 {
                Duration::ZERO
            } else {
                window.mul_f64(i as f64 / n as f64)
            }
        })
        .collect()
}

/// What the agent said about one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The version running (`None`: never deployed there).
    Running(Option<String>),
    /// No answer: the error.
    Unreachable(String),
}

/// What an answer means against the expected version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Runs what convoy expects, or nothing (`version: null` is not drift).
    InLine,
    Drifted {
        found: String,
    },
    /// Says nothing about drift.
    Unreachable {
        error: String,
    },
}

pub fn judge(expected: &str, answer: &Answer) -> Verdict {
    match answer {
        Answer::Running(Some(found)) if found != expected => Verdict::Drifted {
            found: found.clone(),
        },
        Answer::Running(_) => Verdict::InLine,
        Answer::Unreachable(error) => Verdict::Unreachable {
            error: error.clone(),
        },
    }
}

/// A second look at a drift before it is written: the query took time, and
/// in the meantime a rollout may have started a step there (`busy_now`) or
/// finished one (`expected_now`, the baseline as it is now). `None`: write
/// nothing this pass.
pub fn confirm(verdict: Verdict, expected_now: Option<&str>, busy_now: bool) -> Option<Verdict> {
    match verdict {
        Verdict::Drifted { found } => {
            if busy_now {
                return None;
            }
            match expected_now {
                None => None,
                Some(e) if e == found => Some(Verdict::InLine),
                Some(_) => Some(Verdict::Drifted { found }),
            }
        }
        other => Some(other),
    }
}

/// One write a verdict leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Observe(DriftObservation),
    Resolve {
        environment: EnvName,
        service: ServiceName,
        kind: DriftKind,
        /// `converged` (runs what convoy expects again) or `reachable`.
        how: &'static str,
    },
}

/// The writes for one (environment, service): drift opens or updates a
/// drift record, an answer closes an unreachable one, a service back in
/// line closes its drift record; unreachable never touches drift. `open`:
/// the kinds with an open record now.
pub fn changes(
    environment: &EnvName,
    service: &ServiceName,
    expected: &str,
    verdict: &Verdict,
    open: &HashSet<DriftKind>,
) -> Vec<Change> {
    let mut out = Vec::new();
    let resolve = |kind, how| Change::Resolve {
        environment: environment.clone(),
        service: service.clone(),
        kind,
        how,
    };
    match verdict {
        Verdict::InLine => {
            if open.contains(&DriftKind::Drift) {
                out.push(resolve(DriftKind::Drift, "converged"));
            }
        }
        Verdict::Drifted { found } => out.push(Change::Observe(DriftObservation {
            environment: environment.clone(),
            service: service.clone(),
            kind: DriftKind::Drift,
            expected: expected.to_owned(),
            found: Some(found.clone()),
            detail: None,
        })),
        Verdict::Unreachable { error } => {
            out.push(Change::Observe(DriftObservation {
                environment: environment.clone(),
                service: service.clone(),
                kind: DriftKind::Unreachable,
                expected: expected.to_owned(),
                found: None,
                detail: Some(error.clone()),
            }));
            return out;
        }
    }
    if open.contains(&DriftKind::Unreachable) {
        out.push(resolve(DriftKind::Unreachable, "reachable"));
    }
    out
}

/// Asks an environment's agent what runs there.
#[async_trait]
pub trait StatusSource: Send + Sync + 'static {
    async fn running(
        &self,
        target: &EnvTarget,
        environment: &EnvName,
        service: &ServiceName,
    ) -> Answer;
}

/// Asks every probe's agent about each of its services: query `i` starts
/// no earlier than `offsets[i]` after the call, and at most `limit`
/// environments are being asked at once. Answers in probe order.
pub async fn query_all(
    source: Arc<dyn StatusSource>,
    probes: Vec<Probe>,
    limit: usize,
    offsets: &[Duration],
) -> Vec<(Probe, Vec<Answer>)> {
    let permits = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let count = probes.len();
    for (i, probe) in probes.into_iter().enumerate() {
        let source = source.clone();
        let permits = permits.clone();
        let at = start + offsets.get(i).copied().unwrap_or(Duration::ZERO);
        tasks.spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut answers = Vec::with_capacity(probe.services.len());
            match permits.acquire_owned().await {
                Ok(_permit) => {
                    for (service, _) in &probe.services {
                        answers.push(
                            source
                                .running(&probe.target, &probe.environment, service)
                                .await,
                        );
                    }
                }
                Err(_) => answers.extend(
                    probe
                        .services
                        .iter()
                        .map(|_| Answer::Unreachable("the reconciler stopped".into())),
                ),
            }
            (i, probe, answers)
        });
    }
    let mut out: Vec<Option<(Probe, Vec<Answer>)>> = (0..count).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((i, probe, answers)) => out[i] = Some((probe, answers)),
            Err(e) => tracing::error!(error = %e, "a drift query failed"),
        }
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Baseline;
    use chrono::TimeZone;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn baseline(repo: &str, env: &str, service: &str, version: &str) -> StoredBaseline {
        StoredBaseline {
            repo: RepoName::new(repo),
            environment: EnvName::new(env),
            service: ServiceName::new(service),
            baseline: Baseline {
                version: version.into(),
                source: "deployed".into(),
                at: t(0),
            },
        }
    }

    fn target(env: &str) -> EnvTarget {
        EnvTarget {
            driver: "agent".into(),
            url: Some(format!("http://127.0.0.1:1/env/{env}")),
            labels: BTreeMap::new(),
            depends_on: Vec::new(),
        }
    }

    fn targets(repo: &str, envs: &[&str]) -> HashMap<RepoName, BTreeMap<EnvName, EnvTarget>> {
        let map = envs.iter().map(|e| (EnvName::new(*e), target(e))).collect();
        HashMap::from([(RepoName::new(repo), map)])
    }

    #[test]
    fn passes_come_every_interval_and_never_overlap() {
        let mut ticker = Ticker::new(Duration::from_secs(300), t(0));
        assert!(!ticker.due(t(0)));
        assert!(!ticker.due(t(299)));
        assert_eq!(ticker.wait(t(100)), Duration::from_secs(200));
        assert!(ticker.due(t(300)));
        // A quick pass: the next is one interval after this one began.
        ticker.passed(t(300), t(310));
        assert!(!ticker.due(t(599)));
        assert!(ticker.due(t(600)));
        // A pass longer than the interval: the next one follows at once,
        // not several to catch up.
        ticker.passed(t(600), t(1000));
        assert!(ticker.due(t(1000)));
        assert_eq!(ticker.wait(t(1000)), Duration::ZERO);
        ticker.passed(t(1000), t(1001));
        assert!(!ticker.due(t(1299)));
    }

    #[test]
    fn busy_environments_and_unknown_targets_are_not_asked() {
        let baselines = vec![
            baseline("acme/app", "a", "api", "v1"),
            baseline("acme/app", "a", "web", "v1"),
            baseline("acme/app", "b", "api", "v1"),
            baseline("acme/app", "gone", "api", "v1"),
        ];
        let busy = HashSet::from([(RepoName::new("acme/app"), EnvName::new("b"))]);
        let sel = select(&baselines, &targets("acme/app", &["a", "b"]), &busy);
        assert_eq!(sel.busy, 1);
        assert_eq!(sel.unknown, 1);
        assert_eq!(sel.probes.len(), 1);
        assert_eq!(sel.probes[0].environment.as_str(), "a");
        assert_eq!(
            sel.probes[0].services,
            vec![
                (ServiceName::new("api"), "v1".to_owned()),
                (ServiceName::new("web"), "v1".to_owned())
            ]
        );
        // Busy in another repository is not busy here.
        let other = HashSet::from([(RepoName::new("acme/other"), EnvName::new("b"))]);
        assert_eq!(
            select(&baselines, &targets("acme/app", &["a", "b"]), &other)
                .probes
                .len(),
            2
        );
    }

    #[test]
    fn queries_are_spread_over_half_the_interval() {
        let offsets = start_offsets(4, Duration::from_secs(8));
        assert_eq!(
            offsets,
            vec![
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(3)
            ]
        );
        assert!(start_offsets(0, Duration::from_secs(8)).is_empty());
        let many = start_offsets(10_000, Duration::from_secs(300));
        assert!(many.windows(2).all(|w| w[0] <= w[1]));
        assert!(*many.last().unwrap() < Duration::from_secs(150));
    }

    #[test]
    fn what_answers_mean() {
        assert_eq!(
            judge("v1", &Answer::Running(Some("v1".into()))),
            Verdict::InLine
        );
        assert_eq!(
            judge("v1", &Answer::Running(Some("hotfix".into()))),
            Verdict::Drifted {
                found: "hotfix".into()
            }
        );
        // `version: null` is not drift.
        assert_eq!(judge("v1", &Answer::Running(None)), Verdict::InLine);
        assert_eq!(
            judge("v1", &Answer::Unreachable("refused".into())),
            Verdict::Unreachable {
                error: "refused".into()
            }
        );
    }

    #[test]
    fn a_second_look_drops_drift_that_a_rollout_explains() {
        let drifted = Verdict::Drifted { found: "v2".into() };
        // A step started meanwhile.
        assert_eq!(confirm(drifted.clone(), Some("v1"), true), None);
        // A step finished meanwhile: v2 is the baseline now.
        assert_eq!(
            confirm(drifted.clone(), Some("v2"), false),
            Some(Verdict::InLine)
        );
        assert_eq!(
            confirm(drifted.clone(), Some("v1"), false),
            Some(drifted.clone())
        );
        assert_eq!(confirm(drifted, None, false), None);
        assert_eq!(
            confirm(Verdict::InLine, Some("v1"), true),
            Some(Verdict::InLine)
        );
    }

    #[test]
    fn unreachable_is_recorded_apart_and_never_touches_drift() {
        let env = EnvName::new("a");
        let svc = ServiceName::new("api");
        let both = HashSet::from([DriftKind::Drift, DriftKind::Unreachable]);
        let out = changes(
            &env,
            &svc,
            "v1",
            &Verdict::Unreachable {
                error: "refused".into(),
            },
            &both,
        );
        assert_eq!(out.len(), 1);
        assert!(matches!(
            &out[0],
            Change::Observe(o) if o.kind == DriftKind::Unreachable && o.found.is_none()
                && o.detail.as_deref() == Some("refused")
        ));
        // Back in line: both close.
        let out = changes(&env, &svc, "v1", &Verdict::InLine, &both);
        assert_eq!(
            out,
            vec![
                Change::Resolve {
                    environment: env.clone(),
                    service: svc.clone(),
                    kind: DriftKind::Drift,
                    how: "converged"
                },
                Change::Resolve {
                    environment: env.clone(),
                    service: svc.clone(),
                    kind: DriftKind::Unreachable,
                    how: "reachable"
                }
            ]
        );
        // Nothing open and in line: nothing to write.
        assert!(changes(&env, &svc, "v1", &Verdict::InLine, &HashSet::new()).is_empty());
        // Drifted: observed (every pass, for last seen).
        let out = changes(
            &env,
            &svc,
            "v1",
            &Verdict::Drifted {
                found: "hot".into(),
            },
            &HashSet::new(),
        );
        assert!(matches!(
            &out[..],
            [Change::Observe(o)] if o.kind == DriftKind::Drift && o.found.as_deref() == Some("hot")
                && o.expected == "v1"
        ));
    }

    /// Counts agents being asked at once.
    #[derive(Default)]
    struct Counting {
        now: AtomicUsize,
        peak: AtomicUsize,
        calls: AtomicUsize,
    }

    /// One probe of `api` at v1 in each of environments e000, e001, …
    fn probes(n: usize) -> Vec<Probe> {
        (0..n)
            .map(|i| Probe {
                repo: RepoName::new("acme/app"),
                environment: EnvName::new(format!("e{i:03}")),
                target: target("x"),
                services: vec![(ServiceName::new("api"), "v1".into())],
            })
            .collect()
    }

    #[async_trait]
    impl StatusSource for Counting {
        async fn running(&self, _: &EnvTarget, env: &EnvName, _: &ServiceName) -> Answer {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            if env.as_str().ends_with('7') {
                Answer::Unreachable("refused".into())
            } else {
                Answer::Running(Some(env.to_string()))
            }
        }
    }

    #[tokio::test]
    async fn at_most_twenty_agents_are_asked_at_once() {
        let probes = probes(200);
        let source = Arc::new(Counting::default());
        let offsets = vec![Duration::ZERO; probes.len()];
        let out = query_all(source.clone(), probes, MAX_CONCURRENT_AGENTS, &offsets).await;
        assert_eq!(out.len(), 200);
        assert_eq!(source.calls.load(Ordering::SeqCst), 200);
        let peak = source.peak.load(Ordering::SeqCst);
        assert!(peak <= MAX_CONCURRENT_AGENTS, "peak {peak}");
        assert!(peak > 1, "queries ran one at a time");
        // In probe order, each with its own answer.
        assert_eq!(out[3].0.environment.as_str(), "e003");
        assert_eq!(out[3].1, vec![Answer::Running(Some("e003".into()))]);
        assert_eq!(out[7].1, vec![Answer::Unreachable("refused".into())]);
    }

    #[tokio::test]
    async fn queries_wait_for_their_offset() {
        let probes = probes(2);
        let source = Arc::new(Counting::default());
        let offsets = vec![Duration::ZERO, Duration::from_millis(200)];
        let started = std::time::Instant::now();
        query_all(source.clone(), probes, 20, &offsets).await;
        // The second could not start before its offset (a lower bound, not
        // a timing target).
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(source.peak.load(Ordering::SeqCst), 1);
    }
}

//! The drift runtime: the reconciler loop every `drift.interval`, the
//! tracking issue through the report transport (coalesced and paced with
//! everything else convoy writes), and `/convoy adopt` / `/convoy resync`.
//! Decisions are [`super::reconcile`]'s and [`super::issue`]'s; this file
//! reads the store, asks the agents and writes what was decided.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::DRIFT_LABEL;
use super::issue::{self, IssueOptions};
use super::reconcile::{
    self, Answer, Change, MAX_CONCURRENT_AGENTS, StatusSource, Ticker, Verdict,
};
use crate::commands::code_span;
use crate::domain::{CommitSha, EnvName, InstallationId, RepoName, ServiceName, WaveName};
use crate::drivers::{Drivers, Endpoint};
use crate::engine::{Importance, Rollout};
use crate::github::GitHubApi;
use crate::plan::model::{EnvTarget, FailureBudget, OnDrift, Plan, PlannedStep, PlannedWave, Risk};
use crate::report::transport::{Desired, ReportKey, ReportObject, Transport};
use crate::runtime::commands::DriftCommands;
use crate::runtime::rollouts::{RolloutRuntime, new_rollout_id};
use crate::store::{DriftKind, RolloutKind, RolloutRecord, Store, StoreError};
use crate::suggest::closest;

/// How many of a repository's newest rollouts are read to find its
/// environments' targets (the `convoy.yml` convoy last planned with).
const TARGET_HISTORY: u32 = 20;

/// Passes never come closer together than this, whatever is configured.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// At most this many open records are read per repository and pass.
const MAX_OPEN_RECORDS: u32 = 100_000;

/// Asks agents through the configured drivers (`status`, SPEC 4).
pub struct DriverSource(pub Drivers);

#[async_trait]
impl StatusSource for DriverSource {
    async fn running(
        &self,
        target: &EnvTarget,
        environment: &EnvName,
        service: &ServiceName,
    ) -> Answer {
        let driver = match self.0.get(&target.driver) {
            Ok(d) => d,
            Err(e) => return Answer::Unreachable(e.message),
        };
        let endpoint = Endpoint {
            environment: environment.clone(),
            url: target.url.clone(),
        };
        match driver.status(&endpoint, service).await {
            Ok(s) => Answer::Running(s.version),
            Err(e) => Answer::Unreachable(e.message),
        }
    }
}

/// What one pass did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub asked: usize,
    pub busy: usize,
    pub unknown: usize,
    pub drifted: usize,
    pub unreachable: usize,
}

/// What convoy knows of a repository's environments from its rollouts.
#[derive(Default)]
struct RepoView {
    targets: BTreeMap<EnvName, EnvTarget>,
    installation: Option<InstallationId>,
    /// The newest rollouts read, newest first (for a resync's plan).
    rollouts: Vec<(RolloutRecord, Rollout)>,
}

struct Inner {
    store: Arc<dyn Store>,
    runtime: RolloutRuntime,
    source: Arc<dyn StatusSource>,
    transport: Option<Transport>,
    api: Option<Arc<dyn GitHubApi>>,
    opts: IssueOptions,
    interval: Duration,
    /// Repositories whose issue this process last showed open, and since
    /// when (for the closing comment).
    shown_open: Mutex<HashMap<RepoName, DateTime<Utc>>>,
}

/// Drift detection and recovery. Cheap to clone.
#[derive(Clone)]
pub struct DriftService {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DriftService {
    /// `transport` and `api`: where the tracking issue goes (without them
    /// drift is still recorded and shown in the API and pages).
    pub fn new(
        store: Arc<dyn Store>,
        runtime: RolloutRuntime,
        source: Arc<dyn StatusSource>,
        transport: Option<Transport>,
        api: Option<Arc<dyn GitHubApi>>,
        opts: IssueOptions,
        interval: Duration,
    ) -> DriftService {
        DriftService {
            inner: Arc::new(Inner {
                store,
                runtime,
                source,
                transport,
                api,
                opts,
                // A zero interval would spin: at least this long apart.
                interval: interval.max(MIN_INTERVAL),
                shown_open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Runs a pass every interval until `shutdown`.
    pub fn spawn(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut ticker = Ticker::new(me.inner.interval, Utc::now());
            loop {
                let wait = ticker.wait(Utc::now());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                if !ticker.due(Utc::now()) {
                    continue;
                }
                let started = Utc::now();
                if !me.my_turn(started).await {
                    ticker.passed(started, Utc::now());
                    continue;
                }
                let pass = me.pass();
                tokio::select! {
                    summary = pass => match summary {
                        Ok(s) => tracing::debug!(?s, "drift pass done"),
                        Err(e) => tracing::warn!(error = %e, "drift pass failed"),
                    },
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                ticker.passed(started, Utc::now());
            }
        })
    }

    /// Whether this replica makes this interval's pass: one replica a
    /// pass, however many run (a lease of one interval, kind `drift`). The
    /// replica that made the last pass keeps making them; when it is gone
    /// its lease runs out within an interval and another takes over.
    async fn my_turn(&self, now: DateTime<Utc>) -> bool {
        let replica = self.inner.runtime.replica();
        let interval =
            chrono::Duration::from_std(self.inner.interval).unwrap_or(chrono::Duration::minutes(5));
        // A little shorter than the interval: the holder's next tick finds
        // it free even when its clock runs a bit ahead of the database's.
        let until = now + interval - interval / 10;
        match self
            .inner
            .store
            .claim_lease("drift", "pass", &replica.id, now, until)
            .await
        {
            Ok(Some(_)) => true,
            Ok(None) => {
                tracing::debug!("another replica makes this drift pass");
                false
            }
            Err(e) => {
                // Better a pass twice than none.
                tracing::warn!(error = %e, "claiming the drift pass failed; passing anyway");
                true
            }
        }
    }

    /// One reconciliation over every repository with baselines: ask the
    /// agents (spread, at most 20 at once), record drift and unreachable
    /// environments, resolve what is back in line, refresh the issues.
    pub async fn pass(&self) -> Result<PassSummary, StoreError> {
        self.pass_over(None).await
    }

    /// [`DriftService::pass`] over one repository (`None`: all).
    pub async fn pass_over(&self, only: Option<&RepoName>) -> Result<PassSummary, StoreError> {
        let store = &self.inner.store;
        let baselines = store.baselines(only).await?;
        let mut wanted: BTreeMap<RepoName, HashSet<EnvName>> = BTreeMap::new();
        for b in &baselines {
            wanted
                .entry(b.repo.clone())
                .or_default()
                .insert(b.environment.clone());
        }
        let mut targets = HashMap::new();
        let mut installations = HashMap::new();
        for (repo, envs) in &wanted {
            let view = self.repo_view(repo, envs, false).await?;
            installations.insert(repo.clone(), view.installation);
            targets.insert(repo.clone(), view.targets);
        }
        let busy = self.busy().await?;
        let selection = reconcile::select(&baselines, &targets, &busy);
        let mut summary = PassSummary {
            asked: selection.probes.len(),
            busy: selection.busy,
            unknown: selection.unknown,
            ..PassSummary::default()
        };
        let offsets = reconcile::start_offsets(selection.probes.len(), self.inner.interval);
        let answers = reconcile::query_all(
            self.inner.source.clone(),
            selection.probes,
            MAX_CONCURRENT_AGENTS,
            &offsets,
        )
        .await;
        // A second look for drift: what happened while the agents answered.
        let any_drift = answers.iter().any(|(p, a)| {
            p.services
                .iter()
                .zip(a)
                .any(|((_, e), a)| matches!(reconcile::judge(e, a), Verdict::Drifted { .. }))
        });
        let busy_now = if any_drift { self.busy().await? } else { busy };
        let mut open: HashMap<RepoName, HashMap<(EnvName, ServiceName), HashSet<DriftKind>>> =
            HashMap::new();
        let now = Utc::now();
        for (probe, answers) in answers {
            if !open.contains_key(&probe.repo) {
                let mut kinds: HashMap<(EnvName, ServiceName), HashSet<DriftKind>> = HashMap::new();
                for r in store
                    .drift_records(&probe.repo, false, MAX_OPEN_RECORDS)
                    .await?
                {
                    kinds
                        .entry((r.environment, r.service))
                        .or_default()
                        .insert(r.kind);
                }
                open.insert(probe.repo.clone(), kinds);
            }
            let is_busy = busy_now.contains(&(probe.repo.clone(), probe.environment.clone()));
            for ((service, expected), answer) in probe.services.iter().zip(&answers) {
                let mut expected = expected.clone();
                let mut verdict = reconcile::judge(&expected, answer);
                if matches!(verdict, Verdict::Drifted { .. }) {
                    let fresh = store
                        .baseline(&probe.repo, &probe.environment, service)
                        .await?
                        .map(|b| b.version);
                    match reconcile::confirm(verdict, fresh.as_deref(), is_busy) {
                        Some(v) => verdict = v,
                        None => continue,
                    }
                    expected = fresh.unwrap_or(expected);
                }
                match &verdict {
                    Verdict::Drifted { .. } => summary.drifted += 1,
                    Verdict::Unreachable { .. } => summary.unreachable += 1,
                    Verdict::InLine => {}
                }
                let kinds = open
                    .get(&probe.repo)
                    .and_then(|m| m.get(&(probe.environment.clone(), service.clone())))
                    .cloned()
                    .unwrap_or_default();
                for change in
                    reconcile::changes(&probe.environment, service, &expected, &verdict, &kinds)
                {
                    self.apply(&probe.repo, change, now).await?;
                }
            }
        }
        for repo in wanted.keys() {
            self.refresh_issue(repo, installations.get(repo).copied().flatten())
                .await;
        }
        Ok(summary)
    }

    async fn apply(
        &self,
        repo: &RepoName,
        change: Change,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let store = &self.inner.store;
        match change {
            Change::Observe(o) => {
                if o.kind == DriftKind::Drift {
                    tracing::warn!(
                        %repo,
                        environment = %o.environment,
                        service = %o.service,
                        expected = %o.expected,
                        found = o.found.as_deref().unwrap_or(""),
                        "drift: changed outside convoy"
                    );
                }
                store.observe_drift(repo, &o, now).await?;
            }
            Change::Resolve {
                environment,
                service,
                kind,
                how,
            } => {
                store
                    .resolve_drift(repo, &environment, Some(&service), kind, how, "convoy", now)
                    .await?;
            }
        }
        Ok(())
    }

    /// (repository, environment) pairs with a step in flight: a held step
    /// lock (a deploy, any replica) or a step in preflight, deploying or
    /// verifying in an unfinished rollout.
    async fn busy(&self) -> Result<HashSet<(RepoName, EnvName)>, StoreError> {
        let store = &self.inner.store;
        let mut busy: HashSet<(RepoName, EnvName)> = store
            .held_step_locks()
            .await?
            .into_iter()
            .map(|(r, e, _)| (r, e))
            .collect();
        busy.extend(store.in_flight_environments().await?);
        Ok(busy)
    }

    /// Targets of `envs` (and the installation) from the repository's newest
    /// rollouts, newest first winning. Reads until every environment has
    /// one, or [`TARGET_HISTORY`] rollouts; `keep` keeps the rollouts read.
    async fn repo_view(
        &self,
        repo: &RepoName,
        envs: &HashSet<EnvName>,
        keep: bool,
    ) -> Result<RepoView, StoreError> {
        let store = &self.inner.store;
        let mut view = RepoView {
            installation: store.installation_for_repo(repo).await?,
            ..RepoView::default()
        };
        for summary in store.list_rollouts(Some(repo), TARGET_HISTORY).await? {
            if envs.iter().all(|e| view.targets.contains_key(e)) {
                break;
            }
            let Some(record) = store.rollout(&summary.id).await? else {
                continue;
            };
            if view.installation.is_none() {
                view.installation = record.installation;
            }
            let Some(rollout) = decode(&record) else {
                continue;
            };
            for (env, target) in &rollout.targets {
                view.targets
                    .entry(env.clone())
                    .or_insert_with(|| target.clone());
            }
            if keep {
                view.rollouts.push((record, rollout));
            }
        }
        Ok(view)
    }

    /// Shows the repository's drift in its tracking issue: open and edited
    /// while drift remains, closed with a final comment when none does.
    pub async fn refresh_issue(&self, repo: &RepoName, installation: Option<InstallationId>) {
        let (Some(transport), Some(inst)) = (&self.inner.transport, installation) else {
            return;
        };
        let store = &self.inner.store;
        let open = match store.drift_records(repo, false, MAX_OPEN_RECORDS).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading drift records failed");
                return;
            }
        };
        let key = ReportKey::repository(
            inst,
            repo.clone(),
            ReportObject::Issue {
                label: DRIFT_LABEL.to_owned(),
            },
        );
        if let Some(body) = issue::issue_body(repo.as_str(), &open, &self.inner.opts) {
            lock(&self.inner.shown_open)
                .entry(repo.clone())
                .or_insert_with(Utc::now);
            transport.desire(
                key,
                Desired::Issue {
                    title: issue::TITLE.to_owned(),
                    body,
                    open: true,
                },
                Importance::Matters,
            );
            return;
        }
        let opened = lock(&self.inner.shown_open).remove(repo);
        if opened.is_none() {
            // Never shown open by this process: close one left open before
            // a restart, but never go looking for an issue of a repository
            // that never drifted.
            match store.drift_records(repo, true, 1).await {
                Ok(r) if !r.is_empty() => {}
                _ => return,
            }
        }
        let number = transport.object_id(&key);
        transport.desire(
            key,
            Desired::Issue {
                title: issue::TITLE.to_owned(),
                body: issue::closed_body(repo.as_str()),
                open: false,
            },
            Importance::Matters,
        );
        if let (Some(since), Some(number), Some(api)) = (opened, number, &self.inner.api) {
            let resolved: Vec<_> = store
                .drift_records(repo, true, 50)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.resolved_at.is_some_and(|t| t >= since))
                .collect();
            let body = issue::closing_comment(repo.as_str(), &resolved);
            if let Err(e) = api.create_comment(inst, repo, number, &body).await {
                tracing::warn!(error = %e, "the drift issue's closing comment was not posted");
            }
        }
    }

    /// What runs now in `environment` for each service convoy has a
    /// baseline for there (`service`: only that one), asked live.
    async fn live(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: Option<&ServiceName>,
    ) -> Result<(RepoView, Vec<(ServiceName, String, Answer)>), String> {
        // Names as typed in a command: shown as code, never as Markdown.
        let env_shown = code_span(environment.as_str());
        let store = &self.inner.store;
        let all = store
            .baselines(Some(repo))
            .await
            .map_err(|e| format!("convoy's database: {e}"))?;
        if !all.iter().any(|b| &b.environment == environment) {
            let known: BTreeSet<&str> = all.iter().map(|b| b.environment.as_str()).collect();
            let hint = closest(environment.as_str(), known.iter().copied())
                .map(|c| format!(" (did you mean {}?)", code_span(c)))
                .unwrap_or_default();
            return Err(format!(
                "unknown environment {env_shown}: convoy has deployed nothing there in this \
                 repository{hint}"
            ));
        }
        let baselines: Vec<_> = all
            .into_iter()
            .filter(|b| &b.environment == environment)
            .filter(|b| service.is_none_or(|s| &b.service == s))
            .collect();
        if baselines.is_empty() {
            return Err(match service {
                Some(s) => format!(
                    "convoy has not deployed {} to {env_shown}: there is no baseline to compare with",
                    code_span(s.as_str())
                ),
                None => format!(
                    "convoy has not deployed anything to {env_shown}: there is no baseline to compare with"
                ),
            });
        }
        let envs = HashSet::from([environment.clone()]);
        let view = self
            .repo_view(repo, &envs, true)
            .await
            .map_err(|e| format!("convoy's database: {e}"))?;
        let Some(target) = view.targets.get(environment).cloned() else {
            return Err(format!(
                "convoy does not know how to reach {env_shown} (not in a recent plan)"
            ));
        };
        let mut out = Vec::new();
        for b in baselines {
            let answer = self
                .inner
                .source
                .running(&target, environment, &b.service)
                .await;
            out.push((b.service, b.baseline.version, answer));
        }
        Ok((view, out))
    }

    async fn adopt_inner(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        environment: &EnvName,
        service: Option<&ServiceName>,
        by: &str,
    ) -> Result<(), String> {
        let (_, answers) = self.live(repo, environment, service).await?;
        let env_shown = code_span(environment.as_str());
        let store = &self.inner.store;
        let now = Utc::now();
        let mut adopted = 0;
        let mut unreachable = Vec::new();
        for (svc, expected, answer) in answers {
            match reconcile::judge(&expected, &answer) {
                Verdict::Drifted { found } => {
                    store
                        .set_baseline(repo, environment, &svc, &found, "adopted", None, now)
                        .await
                        .map_err(|e| format!("convoy's database: {e}"))?;
                    store
                        .resolve_drift(
                            repo,
                            environment,
                            Some(&svc),
                            DriftKind::Drift,
                            "adopted",
                            by,
                            now,
                        )
                        .await
                        .map_err(|e| format!("convoy's database: {e}"))?;
                    tracing::info!(%repo, %environment, service = %svc, version = %found, by, "drift adopted");
                    adopted += 1;
                }
                Verdict::InLine => {
                    // Nothing to adopt; a stale record (e.g. converged
                    // since) is closed all the same.
                    let _ = store
                        .resolve_drift(
                            repo,
                            environment,
                            Some(&svc),
                            DriftKind::Drift,
                            "converged",
                            "convoy",
                            now,
                        )
                        .await;
                }
                Verdict::Unreachable { error } => unreachable.push(format!("`{svc}`: {error}")),
            }
        }
        self.refresh_issue(repo, Some(installation)).await;
        if adopted > 0 {
            return Ok(());
        }
        if !unreachable.is_empty() {
            return Err(format!(
                "cannot ask {env_shown} what runs there: {}",
                unreachable.join("; ")
            ));
        }
        Err(format!(
            "{env_shown} has not drifted: it runs what convoy expects"
        ))
    }

    async fn resync_inner(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        environment: &EnvName,
        by: &str,
    ) -> Result<crate::domain::RolloutId, String> {
        let (view, answers) = self.live(repo, environment, None).await?;
        let env_shown = code_span(environment.as_str());
        let mut unreachable = Vec::new();
        let mut versions = Vec::new();
        for (svc, expected, answer) in answers {
            match reconcile::judge(&expected, &answer) {
                Verdict::Drifted { .. } => versions.push((svc, CommitSha::new(expected))),
                Verdict::InLine => {}
                Verdict::Unreachable { error } => unreachable.push(format!("`{svc}`: {error}")),
            }
        }
        if versions.is_empty() {
            return Err(if unreachable.is_empty() {
                format!("{env_shown} has not drifted: it runs what convoy expects")
            } else {
                format!(
                    "cannot ask {env_shown} what runs there: {}",
                    unreachable.join("; ")
                )
            });
        }
        let Some((template, original)) = view
            .rollouts
            .iter()
            .find(|(_, r)| r.targets.contains_key(environment))
        else {
            return Err(format!(
                "convoy does not know how to reach {env_shown} (not in a recent plan)"
            ));
        };
        let rollout = resync_rollout(original, environment, &versions);
        let id = new_rollout_id();
        let now = Utc::now();
        let record = RolloutRecord {
            id: id.clone(),
            repo: repo.clone(),
            branch: template.branch.clone(),
            commit: template.commit.clone(),
            previous_commit: None,
            pull_request: None,
            installation: Some(installation),
            kind: RolloutKind::Resync,
            parent: Some(template.id.clone()),
            state: rollout.state.as_str().to_owned(),
            created_at: now,
            updated_at: now,
            document: None,
            error: None,
        };
        self.inner
            .runtime
            .submit(record, rollout)
            .await
            .map_err(|e| format!("the resync could not start: {e}"))?;
        let store = &self.inner.store;
        for (svc, _) in &versions {
            let _ = store
                .resolve_drift(
                    repo,
                    environment,
                    Some(svc),
                    DriftKind::Drift,
                    "resynced",
                    by,
                    now,
                )
                .await;
        }
        tracing::info!(%repo, %environment, rollout = %id, by, "resync started");
        self.refresh_issue(repo, Some(installation)).await;
        Ok(id)
    }
}

fn decode(record: &RolloutRecord) -> Option<Rollout> {
    serde_json::from_str(record.document.as_deref()?).ok()
}

/// A resync's rollout: one wave deploying, in `environment`, each service
/// of `versions` at its version again, in `original`'s dependency order
/// within the environment; drift overwritten (that is the point), no
/// approval, no budget.
pub fn resync_rollout(
    original: &Rollout,
    environment: &EnvName,
    versions: &[(ServiceName, CommitSha)],
) -> Rollout {
    let services: HashSet<&ServiceName> = versions.iter().map(|(s, _)| s).collect();
    let order: Vec<&ServiceName> = {
        // The original's order where it has the service, the rest after.
        let mut known: Vec<&ServiceName> = original
            .steps()
            .filter(|s| &s.environment == environment && services.contains(&s.service))
            .map(|s| &s.service)
            .collect();
        for (s, _) in versions {
            if !known.contains(&s) {
                known.push(s);
            }
        }
        known
    };
    let steps = order
        .iter()
        .map(|service| {
            let waits_for = original
                .steps()
                .find(|s| &s.environment == environment && &s.service == *service)
                .map(|s| {
                    s.waits_for
                        .iter()
                        .filter(|w| &w.environment == environment && services.contains(&w.service))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            PlannedStep {
                environment: environment.clone(),
                service: (*service).clone(),
                waits_for,
            }
        })
        .collect();
    let mut policy = original.policy.clone();
    policy.on_drift = OnDrift::Overwrite;
    let plan = Plan {
        commit: original.commit.clone(),
        previous_commit: None,
        affected_services: order.iter().map(|s| (*s).clone()).collect(),
        waves: vec![PlannedWave {
            name: WaveName::new("resync"),
            environments: vec![environment.clone()],
            max_parallel: 1,
            failure_budget: FailureBudget::Count(0),
            bake: Duration::ZERO,
            approval: false,
            steps,
        }],
        targets: original
            .targets
            .iter()
            .filter(|(e, _)| *e == environment)
            .map(|(e, t)| (e.clone(), t.clone()))
            .collect(),
        policy,
        risk: Risk::default(),
    };
    let mut rollout = Rollout::new(plan);
    for wave in &mut rollout.waves {
        for step in &mut wave.steps {
            if let Some((_, v)) = versions.iter().find(|(s, _)| *s == step.service) {
                step.version = v.clone();
            }
        }
    }
    rollout
}

#[async_trait]
impl DriftCommands for DriftService {
    async fn adopt(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        environment: &EnvName,
        service: Option<&ServiceName>,
        by: &str,
    ) -> Result<(), String> {
        self.adopt_inner(installation, repo, environment, service, by)
            .await
    }

    async fn resync(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        environment: &EnvName,
        by: &str,
    ) -> Result<(), String> {
        self.resync_inner(installation, repo, environment, by)
            .await
            .map(|_| ())
    }

    async fn resync_started(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        environment: &EnvName,
        by: &str,
    ) -> Result<Option<crate::domain::RolloutId>, String> {
        self.resync_inner(installation, repo, environment, by)
            .await
            .map(Some)
    }

    async fn refresh(&self, installation: InstallationId, repo: &RepoName) -> Result<(), String> {
        self.pass_over(Some(repo))
            .await
            .map_err(|e| format!("convoy's database: {e}"))?;
        // The pass shows the issue when it knows the installation; the
        // command's is known for certain.
        self.refresh_issue(repo, Some(installation)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BranchName, RolloutId};
    use crate::engine::StepState;
    use crate::plan::model::{RolloutPolicy, StepKey};
    use crate::store::SqliteStore;

    /// Answers from a table, counting questions per environment.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<HashMap<String, Answer>>,
        asked: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn set(&self, env: &str, answer: Answer) {
            lock(&self.answers).insert(env.to_owned(), answer);
        }
    }

    #[async_trait]
    impl StatusSource for Scripted {
        async fn running(&self, _: &EnvTarget, env: &EnvName, _: &ServiceName) -> Answer {
            lock(&self.asked).push(env.to_string());
            lock(&self.answers)
                .get(env.as_str())
                .cloned()
                .unwrap_or(Answer::Running(Some("v1".into())))
        }
    }

    fn target(env: &str) -> EnvTarget {
        EnvTarget {
            driver: "agent".into(),
            url: Some(format!("http://127.0.0.1:9/env/{env}")),
            labels: BTreeMap::new(),
            depends_on: Vec::new(),
        }
    }

    /// A finished rollout of `envs` (its targets are where convoy learns
    /// how to reach them), and each environment's api baseline at v1.
    async fn seeded(envs: &[&str]) -> (tempfile::TempDir, Arc<dyn Store>, RolloutId) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("c.db")).await.unwrap());
        let repo = RepoName::new("acme/app");
        let plan = Plan {
            commit: CommitSha::new("v1"),
            previous_commit: None,
            affected_services: vec![ServiceName::new("api")],
            waves: vec![PlannedWave {
                name: WaveName::new("all"),
                environments: envs.iter().map(|e| EnvName::new(*e)).collect(),
                max_parallel: 10,
                failure_budget: FailureBudget::Count(0),
                bake: Duration::ZERO,
                approval: false,
                steps: envs
                    .iter()
                    .map(|e| PlannedStep {
                        environment: EnvName::new(*e),
                        service: ServiceName::new("api"),
                        waits_for: Vec::new(),
                    })
                    .collect(),
            }],
            targets: envs.iter().map(|e| (EnvName::new(*e), target(e))).collect(),
            policy: RolloutPolicy::default(),
            risk: Risk::default(),
        };
        let rollout = Rollout::new(plan);
        let id = RolloutId::new("r-1");
        let now = Utc::now();
        store
            .create_rollout(&RolloutRecord {
                id: id.clone(),
                repo: repo.clone(),
                branch: BranchName::new("main"),
                commit: CommitSha::new("v1"),
                previous_commit: None,
                pull_request: Some(3),
                installation: Some(InstallationId(7)),
                kind: RolloutKind::Deploy,
                parent: None,
                state: "succeeded".into(),
                created_at: now,
                updated_at: now,
                document: Some(serde_json::to_string(&rollout).unwrap()),
                error: None,
            })
            .await
            .unwrap();
        for e in envs {
            store
                .set_baseline(
                    &repo,
                    &EnvName::new(*e),
                    &ServiceName::new("api"),
                    "v1",
                    "deployed",
                    Some(&id),
                    now,
                )
                .await
                .unwrap();
        }
        (dir, store, id)
    }

    fn service(store: Arc<dyn Store>, source: Arc<Scripted>) -> DriftService {
        let runtime = RolloutRuntime::new(store.clone(), Drivers::default(), None);
        DriftService::new(
            store,
            runtime,
            source,
            None,
            None,
            IssueOptions {
                public_url: "http://convoy.test".into(),
                prefix: "/convoy".into(),
            },
            // Short: the pass spreads its queries over half of this.
            Duration::from_millis(200),
        )
    }

    /// A copy of the seeded rollout that is not finished, its steps (one
    /// api step per environment, in order) in `states`.
    async fn unfinished_rollout(store: &dyn Store, id: &str, states: &[StepState]) {
        let stored = store
            .rollout(&RolloutId::new("r-1"))
            .await
            .unwrap()
            .expect("seeded");
        let mut rollout: Rollout =
            serde_json::from_str(stored.document.as_deref().unwrap()).unwrap();
        for (step, state) in rollout.waves[0].steps.iter_mut().zip(states) {
            step.state = *state;
        }
        let now = Utc::now();
        store
            .create_rollout(&RolloutRecord {
                id: RolloutId::new(id),
                commit: CommitSha::new(format!("c-{id}")),
                state: "running".into(),
                created_at: now,
                updated_at: now,
                document: Some(serde_json::to_string(&rollout).unwrap()),
                ..stored
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn environments_with_a_step_in_flight_in_an_unfinished_rollout_are_not_asked() {
        let (_dir, store, _) = seeded(&["a", "b", "c", "d", "e"]).await;
        unfinished_rollout(
            store.as_ref(),
            "r-2",
            &[
                StepState::Preflight,
                StepState::Deploying,
                StepState::Verifying,
                StepState::Pending,
                StepState::Succeeded,
            ],
        )
        .await;
        let source = Arc::new(Scripted::default());
        for env in ["a", "b", "c", "d", "e"] {
            source.set(env, Answer::Running(Some("v1".into())));
        }
        let summary = service(store.clone(), source.clone()).pass().await.unwrap();
        assert_eq!(summary.busy, 3, "{summary:?}");
        let mut asked = lock(&source.asked).clone();
        asked.sort();
        assert_eq!(
            asked,
            ["d", "e"],
            "pending and succeeded steps are not in flight"
        );
    }

    #[tokio::test]
    async fn a_pass_records_drift_and_unreachable_and_skips_busy_environments() {
        let (_dir, store, _) = seeded(&["a", "b", "c", "d"]).await;
        let source = Arc::new(Scripted::default());
        source.set("b", Answer::Running(Some("hotfix".into())));
        source.set("c", Answer::Unreachable("connection refused".into()));
        // A deploy in flight in d (another rollout holds its lock): d is
        // changing on purpose and is not asked.
        let repo = RepoName::new("acme/app");
        store
            .try_lock_step(
                &repo,
                &EnvName::new("d"),
                &ServiceName::new("api"),
                &RolloutId::new("r-2"),
                Utc::now(),
            )
            .await
            .unwrap();
        source.set("d", Answer::Running(Some("v2-in-progress".into())));
        let drift = service(store.clone(), source.clone());

        let summary = drift.pass().await.unwrap();
        assert_eq!(
            summary,
            PassSummary {
                asked: 3,
                busy: 1,
                unknown: 0,
                drifted: 1,
                unreachable: 1,
            }
        );
        let mut asked = lock(&source.asked).clone();
        asked.sort();
        assert_eq!(asked, ["a", "b", "c"]);
        let open = store.drift_records(&repo, false, 100).await.unwrap();
        let seen: Vec<(&str, DriftKind, Option<&str>)> = open
            .iter()
            .map(|r| (r.environment.as_str(), r.kind, r.found.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("b", DriftKind::Drift, Some("hotfix")),
                ("c", DriftKind::Unreachable, None)
            ]
        );

        // b is put back by hand and c answers again: both resolve.
        source.set("b", Answer::Running(Some("v1".into())));
        source.set("c", Answer::Running(Some("v1".into())));
        drift.pass().await.unwrap();
        assert!(
            store
                .drift_records(&repo, false, 100)
                .await
                .unwrap()
                .is_empty()
        );
        let all = store.drift_records(&repo, true, 100).await.unwrap();
        let how: Vec<(&str, Option<&str>)> = all
            .iter()
            .map(|r| (r.environment.as_str(), r.resolution.as_deref()))
            .collect();
        assert!(how.contains(&("b", Some("converged"))), "{how:?}");
        assert!(how.contains(&("c", Some("reachable"))), "{how:?}");
    }

    #[tokio::test]
    async fn adopt_takes_what_runs_there_and_resync_needs_drift() {
        let (_dir, store, _) = seeded(&["a", "b"]).await;
        let source = Arc::new(Scripted::default());
        source.set("b", Answer::Running(Some("hotfix".into())));
        let drift = service(store.clone(), source.clone());
        drift.pass().await.unwrap();
        let repo = RepoName::new("acme/app");
        let inst = InstallationId(7);

        // Nothing to adopt or resync where nothing drifted.
        let err = drift
            .adopt(inst, &repo, &EnvName::new("a"), None, "wanda")
            .await
            .unwrap_err();
        assert!(err.contains("has not drifted"), "{err}");
        let err = drift
            .resync(inst, &repo, &EnvName::new("a"), "wanda")
            .await
            .unwrap_err();
        assert!(err.contains("has not drifted"), "{err}");
        let err = drift
            .adopt(inst, &repo, &EnvName::new("zz"), None, "wanda")
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "unknown environment `zz`: convoy has deployed nothing there in this repository"
        );
        let err = drift
            .resync(inst, &repo, &EnvName::new("bb"), "wanda")
            .await
            .unwrap_err();
        assert!(err.ends_with("(did you mean `b`?)"), "{err}");
        // A name as typed is shown as code, never as Markdown.
        let err = drift
            .adopt(inst, &repo, &EnvName::new("a`[x](http://e)`"), None, "w")
            .await
            .unwrap_err();
        assert!(
            err.starts_with("unknown environment `` a`[x](http://e)` ``:"),
            "{err}"
        );
        let err = drift
            .adopt(
                inst,
                &repo,
                &EnvName::new("a"),
                Some(&ServiceName::new("we`b")),
                "w",
            )
            .await
            .unwrap_err();
        assert!(
            err.starts_with("convoy has not deployed ``we`b`` to `a`"),
            "{err}"
        );

        drift
            .adopt(inst, &repo, &EnvName::new("b"), None, "wanda")
            .await
            .unwrap();
        let b = store
            .baseline(&repo, &EnvName::new("b"), &ServiceName::new("api"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (b.version.as_str(), b.source.as_str()),
            ("hotfix", "adopted")
        );
        let all = store.drift_records(&repo, true, 100).await.unwrap();
        assert_eq!(all[0].resolution.as_deref(), Some("adopted"));
        assert_eq!(all[0].resolved_by.as_deref(), Some("wanda"));
        // Adopted: the next pass finds nothing.
        drift.pass().await.unwrap();
        assert!(
            store
                .drift_records(&repo, false, 100)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_resync_redeploys_the_expected_versions_in_dependency_order() {
        let envs = ["a", "b"];
        let key = |e: &str, s: &str| StepKey {
            environment: EnvName::new(e),
            service: ServiceName::new(s),
        };
        let mut steps = Vec::new();
        for e in envs {
            steps.push(PlannedStep {
                environment: EnvName::new(e),
                service: ServiceName::new("db"),
                waits_for: Vec::new(),
            });
            steps.push(PlannedStep {
                environment: EnvName::new(e),
                service: ServiceName::new("api"),
                waits_for: vec![key(e, "db"), key("z", "db")],
            });
        }
        let original = Rollout::new(Plan {
            commit: CommitSha::new("v9"),
            previous_commit: None,
            affected_services: vec![ServiceName::new("db"), ServiceName::new("api")],
            waves: vec![PlannedWave {
                name: WaveName::new("all"),
                environments: envs.iter().map(|e| EnvName::new(*e)).collect(),
                max_parallel: 10,
                failure_budget: FailureBudget::Count(3),
                bake: Duration::from_secs(60),
                approval: true,
                steps,
            }],
            targets: envs.iter().map(|e| (EnvName::new(*e), target(e))).collect(),
            policy: RolloutPolicy::default(),
            risk: Risk::default(),
        });
        let r = resync_rollout(
            &original,
            &EnvName::new("b"),
            &[
                (ServiceName::new("api"), CommitSha::new("v7")),
                (ServiceName::new("db"), CommitSha::new("v6")),
            ],
        );
        assert_eq!(r.policy.on_drift, OnDrift::Overwrite);
        assert_eq!(r.waves.len(), 1);
        let w = &r.waves[0];
        assert!(!w.approval);
        assert_eq!(w.environments, vec![EnvName::new("b")]);
        let got: Vec<(&str, &str, Vec<StepKey>)> = w
            .steps
            .iter()
            .map(|s| (s.service.as_str(), s.version.as_str(), s.waits_for.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("db", "v6", vec![]),
                // Only what is in this resync and in this environment.
                ("api", "v7", vec![key("b", "db")]),
            ]
        );
        assert_eq!(r.targets.keys().collect::<Vec<_>>(), [&EnvName::new("b")]);
    }
}

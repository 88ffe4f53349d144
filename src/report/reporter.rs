//! The reporter: told that a rollout changed, it loads the stored rollout,
//! renders its check run (and its PR comment, when it has a pull request)
//! and hands both to the transport, which coalesces and paces them
//! (SPEC 7.5).
//!
//! The engine's side never waits on rendering: `rollout_changed` only
//! marks the rollout; a task renders marked rollouts at most every
//! [`RENDER_DEBOUNCE`]. Rendering more often would be wasted: the transport
//! sends at most every `min_update_interval` anyway.
//!
//! Check-run generations (SPEC 7.2): a check run that ended with
//! `action_required` stays as it was; whatever the rollout shows next goes
//! to a new check run of the same name. After a restart the newest
//! generation per rollout comes from the transport's ledger; whether it was
//! left at `action_required` is asked of GitHub once, when it matters.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::domain::{InstallationId, RepoName, RolloutId};
use crate::engine::{Importance, Rollout};
use crate::github::GitHubApi;
use crate::runtime::rollouts::ReportSink;
use crate::store::{RolloutRecord, Store};

use super::render::{RenderOptions, check_run_name, render_rollout};
use super::suspension::{self, Suspensions};
use super::transport::{
    Desired, LedgerError, PacingConfig, REPOSITORY_SCOPE, ReportKey, ReportLedger, ReportObject,
    Transport,
};

/// The shortest time between two renderings of the same rollout.
pub const RENDER_DEBOUNCE: Duration = Duration::from_millis(250);

/// How many recent (possibly finished) rollouts are re-derived at start, so
/// a terminal state that was not yet on GitHub at a crash still gets there.
const RECENT_AT_START: u32 = 100;
/// Recent rollouts never reported on are shown at start if they changed
/// within this window.
const RECENT_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// What is known about a rollout's newest check run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    pub number: u32,
    /// Whether it was last given `action_required`; `None` after a restart,
    /// until asked.
    pub action_required: Option<bool>,
}

/// Which check run a new body goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationChoice {
    Use(u32),
    /// Unknown whether generation `n` ended with `action_required`: ask,
    /// then [`after_lookup`].
    Lookup(u32),
}

/// The generation for a body that is (or is not) `action_required`.
/// Pure.
pub fn choose_generation(prev: Option<Generation>, action_required: bool) -> GenerationChoice {
    match prev {
        None => GenerationChoice::Use(0),
        Some(g) if action_required => GenerationChoice::Use(g.number),
        Some(Generation {
            number,
            action_required: Some(true),
        }) => GenerationChoice::Use(number + 1),
        Some(Generation {
            number,
            action_required: Some(false),
        }) => GenerationChoice::Use(number),
        Some(Generation {
            number,
            action_required: None,
        }) => GenerationChoice::Lookup(number),
    }
}

/// The generation once GitHub said whether `number` is `action_required`
/// (`None`: it could not say; then the run is updated in place, which at
/// worst overwrites an old `action_required`).
pub fn after_lookup(number: u32, was_action_required: Option<bool>) -> u32 {
    if was_action_required == Some(true) {
        number + 1
    } else {
        number
    }
}

struct Inner {
    store: Arc<dyn Store>,
    api: Arc<dyn GitHubApi>,
    /// Read for rollouts another replica reported on before this one took
    /// them over (the transport's copy is from this replica's start).
    ledger: Arc<dyn ReportLedger>,
    transport: Transport,
    opts: RenderOptions,
    generations: Mutex<HashMap<RolloutId, Generation>>,
    marked: Mutex<HashMap<RolloutId, Importance>>,
    wake: Notify,
    rendering: AtomicUsize,
    stopped: AtomicBool,
    /// This replica's id, when several may run: a rollout another replica
    /// drives is reported by that replica, not from here.
    replica: std::sync::OnceLock<String>,
    /// Installations GitHub has suspended, read every
    /// [`suspension::POLL`].
    suspensions: Mutex<Suspensions>,
    /// Wakes the suspension watch when the reporter stops.
    halt: Notify,
}

/// The reporter. Cheap to clone; implements [`ReportSink`].
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Reporter {
    /// Starts the transport (reading the ledger) and the rendering task.
    /// Call [`Reporter::resume`] once the rollout runtime has recovered.
    pub async fn start(
        store: Arc<dyn Store>,
        api: Arc<dyn GitHubApi>,
        ledger: Arc<dyn ReportLedger>,
        pacing: PacingConfig,
        opts: RenderOptions,
    ) -> Result<(Reporter, Vec<JoinHandle<()>>), LedgerError> {
        let mut generations: HashMap<RolloutId, Generation> = HashMap::new();
        for (key, _) in ledger.load_all().await? {
            if let ReportObject::CheckRun { generation, .. } = key.object {
                let g = generations.entry(key.rollout).or_insert(Generation {
                    number: generation,
                    action_required: None,
                });
                g.number = g.number.max(generation);
            }
        }
        let (transport, transport_task) =
            Transport::start(api.clone(), ledger.clone(), pacing).await?;
        let reporter = Reporter {
            inner: Arc::new(Inner {
                store,
                api,
                ledger,
                transport,
                opts,
                generations: Mutex::new(generations),
                marked: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                rendering: AtomicUsize::new(0),
                stopped: AtomicBool::new(false),
                replica: std::sync::OnceLock::new(),
                suspensions: Mutex::new(Suspensions::default()),
                halt: Notify::new(),
            }),
        };
        let task = tokio::spawn(reporter.clone().run());
        let watch = tokio::spawn(reporter.clone().watch_suspensions());
        Ok((reporter, vec![transport_task, task, watch]))
    }

    /// Reports only rollouts that no other replica drives (several
    /// replicas on one database): two replicas rendering the same rollout
    /// would each create its check run and comment.
    pub fn set_replica(&self, id: String) {
        let _ = self.inner.replica.set(id);
        // Checked again right before each send: the lease may move between
        // rendering and sending (a replica paused past its lease).
        let weak = Arc::downgrade(&self.inner);
        self.inner
            .transport
            .set_gate(Arc::new(move |key: ReportKey| {
                let weak = weak.clone();
                Box::pin(async move {
                    match weak.upgrade() {
                        Some(inner) if key.rollout.as_str() != REPOSITORY_SCOPE => {
                            !(Reporter { inner }).driven_elsewhere(&key.rollout).await
                        }
                        _ => true,
                    }
                })
            }));
    }

    /// Whether another replica holds the rollout's lease (and so reports it).
    async fn driven_elsewhere(&self, id: &RolloutId) -> bool {
        let Some(me) = self.inner.replica.get() else {
            return false;
        };
        match self
            .inner
            .store
            .lease(crate::store::LEASE_ROLLOUT, id.as_str())
            .await
        {
            Ok(Some((Some(owner), lease))) => owner != *me && lease.expires_at > chrono::Utc::now(),
            _ => false,
        }
    }

    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// After a restart: re-derives what GitHub should show for every
    /// unfinished rollout and the most recent ones already reported on (a
    /// terminal state that had not reached GitHub at a crash). The ledger
    /// keeps anything GitHub already shows from being sent again.
    pub async fn resume(&self) -> usize {
        // Of the newest, only those convoy already reported on, or that
        // changed lately: turning reporting on must not post about old
        // rollouts, but a rollout that ran while GitHub was down must
        // still be shown.
        let since = chrono::Utc::now() - RECENT_WINDOW;
        self.mark_listed(
            |_| true,
            |r| lock(&self.inner.generations).contains_key(&r.id) || r.updated_at > since,
        )
        .await
    }

    /// Marks the unfinished rollouts `unfinished` keeps and those of the
    /// newest [`RECENT_AT_START`] that `recent` keeps, each once; how many.
    async fn mark_listed(
        &self,
        unfinished: impl Fn(&RolloutRecord) -> bool,
        recent: impl Fn(&crate::store::RolloutSummary) -> bool,
    ) -> usize {
        let store = &self.inner.store;
        let mut ids: Vec<RolloutId> = Vec::new();
        match store.unfinished_rollouts().await {
            Ok(list) => ids.extend(list.into_iter().filter(|r| unfinished(r)).map(|r| r.id)),
            Err(e) => tracing::error!(error = %e, "reporter cannot list unfinished rollouts"),
        }
        match store.list_rollouts(None, RECENT_AT_START).await {
            Ok(list) => ids.extend(list.into_iter().filter(|r| recent(r)).map(|r| r.id)),
            Err(e) => tracing::error!(error = %e, "reporter cannot list recent rollouts"),
        }
        ids.sort();
        ids.dedup();
        let n = ids.len();
        for id in ids {
            self.mark(id, Importance::Matters);
        }
        n
    }

    /// Stops rendering and the transport (sends in flight finish).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
        self.inner.halt.notify_one();
        self.inner.transport.stop();
    }

    /// Waits until every marked rollout is rendered and its bodies are on
    /// GitHub (tests; a graceful stop with a timeout around it).
    pub async fn flush(&self) {
        loop {
            let idle = lock(&self.inner.marked).is_empty()
                && self.inner.rendering.load(Ordering::SeqCst) == 0
                && self.inner.transport.pending() == 0;
            if idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn mark(&self, id: RolloutId, importance: Importance) {
        {
            let mut marked = lock(&self.inner.marked);
            let e = marked.entry(id).or_insert(importance);
            *e = (*e).max(importance);
        }
        self.inner.wake.notify_one();
    }

    async fn run(self) {
        while !self.inner.stopped.load(Ordering::SeqCst) {
            let batch: Vec<(RolloutId, Importance)> = {
                let mut marked = lock(&self.inner.marked);
                self.inner.rendering.fetch_add(1, Ordering::SeqCst);
                marked.drain().collect()
            };
            for (id, importance) in &batch {
                self.render(id, *importance).await;
            }
            self.inner.rendering.fetch_sub(1, Ordering::SeqCst);
            if batch.is_empty() {
                self.inner.wake.notified().await;
            } else {
                tokio::time::sleep(RENDER_DEBOUNCE).await;
            }
        }
    }

    /// Renders one rollout now and hands its bodies to the transport.
    pub async fn render(&self, id: &RolloutId, importance: Importance) {
        if self.driven_elsewhere(id).await {
            return;
        }
        let record = match self.inner.store.rollout(id).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                // The next change renders again; a database hiccup costs one
                // update at most.
                tracing::warn!(rollout = %id, error = %e, "reporter cannot load the rollout");
                return;
            }
        };
        let Some(installation) = self.installation(&record).await else {
            tracing::warn!(rollout = %id, repo = %record.repo, "no installation known for the repository; nothing reported");
            return;
        };
        let suspended = lock(&self.inner.suspensions).warn(id, installation);
        if let Some(account) = suspended {
            tracing::warn!(
                rollout = %id,
                installation = installation.0,
                %account,
                "the App's installation on {account} is suspended: the rollout goes on, \
                 but GitHub refuses its reports until the installation is unsuspended"
            );
        }
        let rollout: Option<Rollout> = match record.document.as_deref().map(serde_json::from_str) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                tracing::error!(rollout = %id, error = %e, "stored rollout cannot be read; nothing reported");
                return;
            }
        };
        let report = render_rollout(&record, rollout.as_ref(), &self.inner.opts);
        let action_required = report.action_required();
        let name = check_run_name(&record.kind).to_owned();
        let generation = self
            .generation(&record, installation, &name, action_required)
            .await;
        let t = &self.inner.transport;
        if let Some(pr) = record.pull_request {
            t.desire(
                ReportKey {
                    installation,
                    repo: record.repo.clone(),
                    rollout: record.id.clone(),
                    object: ReportObject::Comment { issue: pr },
                },
                Desired::Comment {
                    body: report.comment,
                },
                importance,
            );
        }
        t.desire(
            ReportKey {
                installation,
                repo: record.repo.clone(),
                rollout: record.id.clone(),
                object: ReportObject::CheckRun { name, generation },
            },
            Desired::CheckRun(Box::new(report.check_run)),
            importance,
        );
    }

    /// Reads which installations are suspended every
    /// [`suspension::POLL`] until the reporter stops; when one is lifted,
    /// renders again what GitHub refused meanwhile.
    async fn watch_suspensions(self) {
        while !self.inner.stopped.load(Ordering::SeqCst) {
            match self.inner.store.suspended_installations().await {
                Ok(list) => {
                    let lifted = lock(&self.inner.suspensions).update(list, chrono::Utc::now());
                    for (installation, since) in lifted {
                        let rollouts = self.catch_up(installation, since).await;
                        tracing::info!(
                            installation = installation.0,
                            rollouts,
                            "installation unsuspended; bringing its reports up to date"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reporter cannot read suspended installations")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(suspension::POLL) => {}
                _ = self.inner.halt.notified() => {}
            }
        }
    }

    /// Marks the rollouts of `installation` GitHub may have refused while
    /// it was suspended (seen so since `since`): its unfinished ones, and
    /// those of the newest that changed since then (or within
    /// [`RECENT_WINDOW`] before, for a suspension older than this
    /// process). What GitHub already shows is not sent again.
    async fn catch_up(&self, installation: InstallationId, since: DateTime<Utc>) -> usize {
        let store = &self.inner.store;
        let repos: HashSet<RepoName> = match store.installation_repos(installation).await {
            Ok(repos) => repos.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reporter cannot list the installation's repositories");
                HashSet::new()
            }
        };
        let from = since - RECENT_WINDOW;
        self.mark_listed(
            |r| {
                r.installation
                    .map_or(repos.contains(&r.repo), |i| i == installation)
            },
            |r| r.updated_at >= from && repos.contains(&r.repo),
        )
        .await
    }

    async fn installation(&self, record: &RolloutRecord) -> Option<InstallationId> {
        if let Some(i) = record.installation {
            return Some(i);
        }
        self.inner
            .store
            .installation_for_repo(&record.repo)
            .await
            .ok()
            .flatten()
    }

    async fn generation(
        &self,
        record: &RolloutRecord,
        installation: InstallationId,
        name: &str,
        action_required: bool,
    ) -> u32 {
        let mut prev = lock(&self.inner.generations).get(&record.id).copied();
        if prev.is_none() && self.inner.replica.get().is_some() {
            // Taken over from another replica: continue its check runs.
            prev = self.newest_generation(record, installation, name).await;
        }
        let number = match choose_generation(prev, action_required) {
            GenerationChoice::Use(n) => n,
            GenerationChoice::Lookup(n) => {
                let shown = self
                    .shows_action_required(record, installation, name, n)
                    .await;
                after_lookup(n, shown)
            }
        };
        lock(&self.inner.generations).insert(
            record.id.clone(),
            Generation {
                number,
                action_required: Some(action_required),
            },
        );
        number
    }

    fn check_run_key(
        record: &RolloutRecord,
        installation: InstallationId,
        name: &str,
        generation: u32,
    ) -> ReportKey {
        ReportKey {
            installation,
            repo: record.repo.clone(),
            rollout: record.id.clone(),
            object: ReportObject::CheckRun {
                name: name.to_owned(),
                generation,
            },
        }
    }

    /// The newest check-run generation the shared ledger knows for the
    /// rollout (whatever replica created it), state unknown.
    async fn newest_generation(
        &self,
        record: &RolloutRecord,
        installation: InstallationId,
        name: &str,
    ) -> Option<Generation> {
        let mut newest = None;
        // Each generation needs a human's resume; a few dozen is plenty.
        for n in 0..64 {
            let key = Self::check_run_key(record, installation, name, n);
            match self.inner.ledger.get(&key).await {
                Ok(Some(_)) => newest = Some(n),
                _ => break,
            }
        }
        newest.map(|number| Generation {
            number,
            action_required: None,
        })
    }

    /// Whether generation `n` of the rollout's check run ended with
    /// `action_required` on GitHub.
    async fn shows_action_required(
        &self,
        record: &RolloutRecord,
        installation: InstallationId,
        name: &str,
        n: u32,
    ) -> Option<bool> {
        let key = Self::check_run_key(record, installation, name, n);
        let id = match self.inner.transport.object_id(&key) {
            Some(id) => id,
            None => self.inner.ledger.get(&key).await.ok()??.object_id?,
        };
        let runs = self
            .inner
            .api
            .list_check_runs(
                installation,
                &record.repo,
                record.commit.as_str(),
                Some(name),
            )
            .await
            .map_err(|e| tracing::warn!(rollout = %record.id, error = %e, "cannot read the check run back"))
            .ok()?;
        let run = runs.iter().find(|r| r.id == id)?;
        Some(run.conclusion.as_deref() == Some("action_required"))
    }
}

#[async_trait]
impl ReportSink for Reporter {
    async fn rollout_changed(&self, id: &RolloutId, importance: Importance) {
        self.mark(id.clone(), importance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(number: u32, ar: Option<bool>) -> Option<Generation> {
        Some(Generation {
            number,
            action_required: ar,
        })
    }

    #[test]
    fn generations() {
        use GenerationChoice::*;
        assert_eq!(choose_generation(None, false), Use(0));
        assert_eq!(choose_generation(None, true), Use(0));
        // Running → halted: the same run becomes action_required.
        assert_eq!(choose_generation(g(0, Some(false)), true), Use(0));
        // Halted → halted with more failures: still the same run.
        assert_eq!(choose_generation(g(0, Some(true)), true), Use(0));
        // Halted → running again: a new run; the old one stays.
        assert_eq!(choose_generation(g(0, Some(true)), false), Use(1));
        assert_eq!(choose_generation(g(3, Some(false)), false), Use(3));
        // After a restart, ask.
        assert_eq!(choose_generation(g(2, None), false), Lookup(2));
        assert_eq!(choose_generation(g(2, None), true), Use(2));
        assert_eq!(after_lookup(2, Some(true)), 3);
        assert_eq!(after_lookup(2, Some(false)), 2);
        assert_eq!(after_lookup(2, None), 2);
    }
}

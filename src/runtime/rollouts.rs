//! Runs rollouts: one task per active rollout owns its engine state, feeds
//! it events, persists every change and only then carries out the effects
//! (driver calls, timers, reports). Timers live in the database as well as
//! in memory, so a restart loses none; after a restart every unfinished
//! rollout gets [`Event::Recover`] (SPEC 6.9).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::domain::{BranchName, CommitSha, EnvName, RepoName, RolloutId};
use crate::drivers::{Drivers, Endpoint, PreflightOutcome, StepRequest};
use crate::engine::{
    self, Command, CommandError, Ctx, Effect, Event, FailureKind, HealthReport, Importance,
    PreflightResult, Rollout, RolloutState, StepState, Timer,
};
use crate::plan::model::StepKey;
use crate::store::{
    AttemptRecord, Created, Freeze, RolloutKind, RolloutRecord, RolloutWrite, Store, StoreError,
    StoredTimer,
};

/// Told when a rollout's state changed, so the comment and check run can
/// follow (the reporter decides when to send what).
#[async_trait]
pub trait ReportSink: Send + Sync + 'static {
    async fn rollout_changed(&self, id: &RolloutId, importance: Importance);
}

/// How long a deploy waits between tries for the lock of its (environment,
/// service) while another rollout holds it.
const LOCK_RETRY: Duration = Duration::from_millis(250);

enum Input {
    Event(Event),
    Command(Command, oneshot::Sender<Result<(), CommandError>>),
}

/// The parts of a rollout's record an actor needs besides the engine state.
#[derive(Clone, Debug)]
struct Meta {
    id: RolloutId,
    repo: RepoName,
    branch: BranchName,
    kind: RolloutKind,
}

impl Meta {
    fn of(record: &RolloutRecord) -> Meta {
        Meta {
            id: record.id.clone(),
            repo: record.repo.clone(),
            branch: record.branch.clone(),
            kind: record.kind.clone(),
        }
    }
}

struct Inner {
    store: Arc<dyn Store>,
    drivers: Drivers,
    reporter: Option<Arc<dyn ReportSink>>,
    actors: Mutex<HashMap<RolloutId, (RepoName, mpsc::UnboundedSender<Input>)>>,
    /// Admission decisions (which rollout of a branch runs) one at a time.
    admission: tokio::sync::Mutex<()>,
}

/// The rollout runtime. Cheap to clone.
#[derive(Clone)]
pub struct RolloutRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored rollout {id} cannot be read: {message}")]
    Corrupt { id: RolloutId, message: String },
    #[error("{0}")]
    Command(#[from] CommandError),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new rollout id: sortable by creation time, unique, URL-safe.
pub fn new_rollout_id() -> RolloutId {
    let now = Utc::now();
    RolloutId::new(format!(
        "{}-{:06x}",
        now.format("%Y%m%d%H%M%S%3f"),
        fastrand::u32(..0x0100_0000)
    ))
}

fn decode(record: &RolloutRecord) -> Result<Rollout, RuntimeError> {
    let doc = record
        .document
        .as_deref()
        .ok_or_else(|| RuntimeError::Corrupt {
            id: record.id.clone(),
            message: "no engine state".into(),
        })?;
    serde_json::from_str(doc).map_err(|e| RuntimeError::Corrupt {
        id: record.id.clone(),
        message: e.to_string(),
    })
}

impl RolloutRuntime {
    pub fn new(
        store: Arc<dyn Store>,
        drivers: Drivers,
        reporter: Option<Arc<dyn ReportSink>>,
    ) -> RolloutRuntime {
        RolloutRuntime {
            inner: Arc::new(Inner {
                store,
                drivers,
                reporter,
                actors: Mutex::new(HashMap::new()),
                admission: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn drivers(&self) -> &Drivers {
        &self.inner.drivers
    }

    /// Whether a task is running this rollout now.
    pub fn is_live(&self, id: &RolloutId) -> bool {
        lock(&self.inner.actors).contains_key(id)
    }

    /// Resumes every unfinished rollout after a start: running ones get
    /// [`Event::Recover`] with their stored timers re-armed; for each branch
    /// without a running rollout the oldest queued one starts.
    pub async fn recover(&self) -> Result<usize, RuntimeError> {
        let unfinished = self.inner.store.unfinished_rollouts().await?;
        let mut resumed = 0;
        for record in &unfinished {
            if record.state == RolloutState::Queued.as_str() {
                continue;
            }
            let rollout = match decode(record) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(rollout = %record.id, error = %e, "cannot resume rollout");
                    continue;
                }
            };
            let tx = self.spawn_actor(Meta::of(record), rollout);
            for t in self.inner.store.timers(&record.id).await? {
                if let Ok(timer) = serde_json::from_str::<Timer>(&t.timer) {
                    arm_timer(tx.clone(), t.at, timer);
                }
            }
            let _ = tx.send(Input::Event(Event::Recover));
            resumed += 1;
        }
        let mut branches: Vec<(RepoName, BranchName)> = unfinished
            .iter()
            .filter(|r| r.state == RolloutState::Queued.as_str())
            .map(|r| (r.repo.clone(), r.branch.clone()))
            .collect();
        branches.dedup();
        for (repo, branch) in branches {
            self.start_next(&repo, &branch).await?;
        }
        if resumed > 0 {
            tracing::info!(resumed, "resumed unfinished rollouts");
        }
        Ok(resumed)
    }

    /// Stores a new rollout and admits it (SPEC 6.5): it starts now, queues
    /// behind the branch's active rollout, or supersedes it. Returns
    /// `Created::Existing` when the same commit already has its rollout.
    pub async fn submit(
        &self,
        mut record: RolloutRecord,
        rollout: Rollout,
    ) -> Result<Created, RuntimeError> {
        let _admission = self.inner.admission.lock().await;
        record.state = rollout.state.as_str().to_owned();
        record.document =
            Some(
                serde_json::to_string(&rollout).map_err(|e| RuntimeError::Corrupt {
                    id: record.id.clone(),
                    message: e.to_string(),
                })?,
            );
        let created = self.inner.store.create_rollout(&record).await?;
        if created != Created::New {
            return Ok(created);
        }
        if rollout.state.is_terminal() {
            // A no-op or a rollout that failed before it began: nothing runs.
            self.report(&record.id, Importance::Terminal).await;
            return Ok(created);
        }
        if record.kind != RolloutKind::Deploy {
            // Rollbacks and resyncs do not wait for the branch: the step
            // locks keep them apart from any deploy of the same target.
            self.start_rollout(Meta::of(&record), rollout).await;
            return Ok(created);
        }
        let others = self.branch_rollouts(&record.repo, &record.branch).await?;
        let others: Vec<&RolloutRecord> = others.iter().filter(|r| r.id != record.id).collect();
        let active = others
            .iter()
            .any(|r| r.state != RolloutState::Queued.as_str());
        match engine::admission(active || !others.is_empty(), rollout.policy.concurrency) {
            engine::Admission::Start => self.start_rollout(Meta::of(&record), rollout).await,
            engine::Admission::Queue => {
                tracing::info!(rollout = %record.id, "queued behind the branch's active rollout");
                self.report(&record.id, Importance::Waiting).await;
            }
            engine::Admission::SupersedeActive => {
                for other in &others {
                    self.supersede(other, &record.id).await?;
                }
                // Starts when the superseded ones have ended (`Finished`).
                if !self.branch_has_active(&record.repo, &record.branch).await? {
                    self.start_next(&record.repo, &record.branch).await?;
                }
            }
        }
        Ok(created)
    }

    async fn supersede(&self, other: &RolloutRecord, by: &RolloutId) -> Result<(), RuntimeError> {
        let event = Event::Superseded { by: by.to_string() };
        if let Some(tx) = lock(&self.inner.actors).get(&other.id).map(|a| a.1.clone()) {
            let _ = tx.send(Input::Event(event));
            return Ok(());
        }
        // A queued rollout has no task: end it here.
        let mut rollout = decode(other)?;
        let effects = engine::handle(&mut rollout, event, &ctx_now());
        self.persist(&other.id, &rollout, &effects).await;
        self.report(&other.id, Importance::Terminal).await;
        Ok(())
    }

    /// Sends a human command to a rollout and waits for the engine's verdict.
    pub async fn command(&self, id: &RolloutId, cmd: Command) -> Result<(), RuntimeError> {
        let live = lock(&self.inner.actors).get(id).map(|a| a.1.clone());
        if let Some(tx) = live {
            let (reply, answer) = oneshot::channel();
            if tx.send(Input::Command(cmd.clone(), reply)).is_ok()
                && let Ok(result) = answer.await
            {
                return result.map_err(RuntimeError::from);
            }
        }
        // Not running (queued, or ended): apply to the stored state.
        let _admission = self.inner.admission.lock().await;
        let record = self
            .inner
            .store
            .rollout(id)
            .await?
            .ok_or_else(|| CommandError(format!("there is no rollout {id}")))?;
        let mut rollout = decode(&record)?;
        let was_terminal = rollout.state.is_terminal();
        let effects = engine::command(&mut rollout, cmd, &ctx_now())?;
        self.persist(id, &rollout, &effects).await;
        if was_terminal && !rollout.state.is_terminal() {
            // e.g. a retry after the rollout failed: it runs again.
            let meta = Meta::of(&record);
            let tx = self.spawn_actor(meta.clone(), rollout.clone());
            self.execute_with(&tx, &meta, &rollout, effects).await;
        } else {
            self.report(id, Importance::Matters).await;
        }
        Ok(())
    }

    async fn branch_rollouts(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> Result<Vec<RolloutRecord>, RuntimeError> {
        Ok(self
            .inner
            .store
            .unfinished_rollouts()
            .await?
            .into_iter()
            .filter(|r| &r.repo == repo && &r.branch == branch && r.kind == RolloutKind::Deploy)
            .collect())
    }

    async fn branch_has_active(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> Result<bool, RuntimeError> {
        Ok(self
            .branch_rollouts(repo, branch)
            .await?
            .iter()
            .any(|r| r.state != RolloutState::Queued.as_str()))
    }

    /// Starts the oldest queued rollout of the branch, if none is active.
    async fn start_next(&self, repo: &RepoName, branch: &BranchName) -> Result<(), RuntimeError> {
        let rollouts = self.branch_rollouts(repo, branch).await?;
        if rollouts
            .iter()
            .any(|r| r.state != RolloutState::Queued.as_str())
        {
            return Ok(());
        }
        if let Some(next) = rollouts.first() {
            let rollout = decode(next)?;
            self.start_rollout(Meta::of(next), rollout).await;
        }
        Ok(())
    }

    async fn report(&self, id: &RolloutId, importance: Importance) {
        if let Some(r) = &self.inner.reporter {
            r.rollout_changed(id, importance).await;
        }
    }

    /// Starts a rollout that was not running: an active emergency freeze of
    /// its repository (or of all) is applied first, so no step starts.
    async fn start_rollout(&self, meta: Meta, rollout: Rollout) {
        let freezes = self
            .inner
            .store
            .freezes_for(&meta.repo)
            .await
            .unwrap_or_default();
        let tx = self.spawn_actor(meta, rollout);
        let now = Utc::now();
        if let Some(f) = freezes.iter().find(|f| f.active(now)) {
            let (reply, _) = oneshot::channel();
            let _ = tx.send(Input::Command(
                Command::Freeze {
                    until: f.until,
                    reason: f.reason.clone(),
                    by: f.by.clone(),
                },
                reply,
            ));
        }
        let _ = tx.send(Input::Event(Event::Start));
    }

    /// The emergency stop (SPEC 7.4 `/convoy freeze`, `convoy freeze
    /// --all`): recorded, applied to every running rollout in scope, and to
    /// every rollout that starts while it lasts. `repo` `None`: all.
    pub async fn freeze(
        &self,
        repo: Option<&RepoName>,
        until: Option<chrono::DateTime<Utc>>,
        reason: Option<String>,
        by: &str,
    ) -> Result<usize, RuntimeError> {
        let scope = repo.map_or(Freeze::ALL.to_owned(), |r| r.to_string());
        self.inner
            .store
            .set_freeze(&Freeze {
                scope,
                until,
                reason: reason.clone(),
                by: by.to_owned(),
                at: Utc::now(),
            })
            .await?;
        let mut applied = 0;
        for (id, tx) in self.live_in(repo) {
            let (reply, answer) = oneshot::channel();
            let cmd = Command::Freeze {
                until,
                reason: reason.clone(),
                by: by.to_owned(),
            };
            if tx.send(Input::Command(cmd, reply)).is_ok() && matches!(answer.await, Ok(Ok(()))) {
                applied += 1;
            } else {
                tracing::debug!(rollout = %id, "freeze not applied (rollout ending)");
            }
        }
        Ok(applied)
    }

    /// Lifts the emergency freeze of `repo` (or of all); running rollouts in
    /// scope go on. `false` when there was none.
    pub async fn unfreeze(&self, repo: Option<&RepoName>, by: &str) -> Result<bool, RuntimeError> {
        let scope = repo.map_or(Freeze::ALL.to_owned(), |r| r.to_string());
        let existed = self.inner.store.clear_freeze(&scope).await?;
        for (_, tx) in self.live_in(repo) {
            let (reply, answer) = oneshot::channel();
            if tx
                .send(Input::Command(
                    Command::Unfreeze { by: by.to_owned() },
                    reply,
                ))
                .is_ok()
            {
                let _ = answer.await;
            }
        }
        Ok(existed)
    }

    fn live_in(&self, repo: Option<&RepoName>) -> Vec<(RolloutId, mpsc::UnboundedSender<Input>)> {
        lock(&self.inner.actors)
            .iter()
            .filter(|(_, (r, _))| repo.is_none_or(|want| want == r))
            .map(|(id, (_, tx))| (id.clone(), tx.clone()))
            .collect()
    }

    fn spawn_actor(&self, meta: Meta, rollout: Rollout) -> mpsc::UnboundedSender<Input> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.actors).insert(meta.id.clone(), (meta.repo.clone(), tx.clone()));
        let runtime = self.clone();
        let own = tx.clone();
        let span = tracing::info_span!("rollout", rollout = %meta.id, repo = %meta.repo);
        tokio::spawn(runtime.run_actor(meta, rollout, own, rx).instrument(span));
        tx
    }

    async fn run_actor(
        self,
        meta: Meta,
        mut rollout: Rollout,
        tx: mpsc::UnboundedSender<Input>,
        mut rx: mpsc::UnboundedReceiver<Input>,
    ) {
        while let Some(input) = rx.recv().await {
            let ctx = ctx_now();
            let (effects, key, fired, reply) = match input {
                Input::Event(event) => {
                    let key = event_key(&event).cloned();
                    let fired = match &event {
                        Event::TimerFired { timer } => serde_json::to_string(timer).ok(),
                        _ => None,
                    };
                    (engine::handle(&mut rollout, event, &ctx), key, fired, None)
                }
                Input::Command(cmd, reply) => match engine::command(&mut rollout, cmd, &ctx) {
                    Ok(effects) => (effects, None, None, Some(reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                },
            };
            self.persist(&meta.id, &rollout, &effects).await;
            // Acknowledge a command only once its effect is stored.
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            if let Some(timer) = fired {
                let _ = self.inner.store.delete_timer(&meta.id, &timer).await;
            }
            if let Some(key) = key
                && !rollout
                    .step(&key)
                    .is_some_and(|s| matches!(s.state, StepState::Deploying | StepState::Verifying))
            {
                let _ = self
                    .inner
                    .store
                    .unlock_step(&meta.repo, &key.environment, &key.service, &meta.id)
                    .await;
            }
            let finished = effects.iter().any(|e| matches!(e, Effect::Finished { .. }));
            self.execute_with(&tx, &meta, &rollout, effects).await;
            if finished || rollout.state.is_terminal() {
                break;
            }
        }
        lock(&self.inner.actors).remove(&meta.id);
        // Release every lock this rollout may still hold, then let the
        // branch's next rollout go.
        let _ = self.release_all(&meta, &rollout).await;
        if meta.kind == RolloutKind::Deploy
            && let Err(e) = self.start_next(&meta.repo, &meta.branch).await
        {
            tracing::error!(rollout = %meta.id, error = %e, "starting the next rollout failed");
        }
    }

    async fn release_all(&self, meta: &Meta, rollout: &Rollout) -> Result<(), StoreError> {
        for step in rollout.steps() {
            if step.attempts > 0 {
                self.inner
                    .store
                    .unlock_step(&meta.repo, &step.environment, &step.service, &meta.id)
                    .await?;
            }
        }
        Ok(())
    }

    /// Writes the new state (with its timers and attempt history) before
    /// anything is acted on. A database that fails is retried until it
    /// answers: acting on unsaved state could deploy twice after a crash.
    async fn persist(&self, id: &RolloutId, rollout: &Rollout, effects: &[Effect]) {
        let write = RolloutWrite {
            state: rollout.state.as_str().to_owned(),
            document: serde_json::to_string(rollout).unwrap_or_default(),
            timers: effects
                .iter()
                .filter_map(|e| match e {
                    Effect::ScheduleTimer { at, timer } => Some(StoredTimer {
                        at: *at,
                        timer: serde_json::to_string(timer).ok()?,
                    }),
                    _ => None,
                })
                .collect(),
            attempts: effects
                .iter()
                .filter_map(|e| match e {
                    Effect::RecordAttempt {
                        key,
                        version,
                        attempt,
                        succeeded,
                        error,
                    } => Some(AttemptRecord {
                        environment: key.environment.clone(),
                        service: key.service.clone(),
                        version: version.clone(),
                        attempt: *attempt,
                        succeeded: *succeeded,
                        error: error.clone(),
                    }),
                    _ => None,
                })
                .collect(),
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match self.inner.store.save_rollout(id, &write, Utc::now()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(rollout = %id, error = %e, "saving rollout state failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn execute_with(
        &self,
        tx: &mpsc::UnboundedSender<Input>,
        meta: &Meta,
        rollout: &Rollout,
        effects: Vec<Effect>,
    ) {
        let mut importance: Option<Importance> = None;
        for effect in effects {
            match effect {
                Effect::RunPreflight { key, attempt, .. } => {
                    let job = self.step_job(meta, rollout, &key);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let result = job.preflight(&key).await;
                        let _ = tx.send(Input::Event(Event::Preflight {
                            key,
                            attempt,
                            result,
                        }));
                    });
                }
                Effect::Deploy {
                    key,
                    attempt,
                    version,
                    deadline,
                } => {
                    let job = self.step_job(meta, rollout, &key);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let event = job.deploy(key, attempt, version, deadline).await;
                        let _ = tx.send(Input::Event(event));
                    });
                }
                Effect::PollStatus { key, attempt } => {
                    let job = self.step_job(meta, rollout, &key);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let event = match job.status(&key).await {
                            Ok(report) => Event::Status {
                                key,
                                attempt,
                                report,
                            },
                            Err(error) => Event::StatusUnavailable {
                                key,
                                attempt,
                                error,
                            },
                        };
                        let _ = tx.send(Input::Event(event));
                    });
                }
                Effect::CheckHealth { wave, round, keys } => {
                    let jobs: Vec<(StepKey, StepJob)> = keys
                        .iter()
                        .map(|k| (k.clone(), self.step_job(meta, rollout, k)))
                        .collect();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let mut results = Vec::with_capacity(jobs.len());
                        for (key, job) in jobs {
                            let report = job.status(&key).await.unwrap_or_else(|e| HealthReport {
                                version: None,
                                healthy: false,
                                message: Some(format!("unreachable: {e}")),
                            });
                            results.push((key, report));
                        }
                        let _ = tx.send(Input::Event(Event::BakeHealth {
                            wave,
                            round,
                            results,
                        }));
                    });
                }
                Effect::ScheduleTimer { at, timer } => arm_timer(tx.clone(), at, timer),
                Effect::RecordAttempt { .. } => {} // written with the state
                Effect::DriftDetected {
                    key,
                    expected,
                    found,
                    action,
                } => {
                    tracing::warn!(
                        environment = %key.environment,
                        service = %key.service,
                        expected,
                        found,
                        ?action,
                        "drift found at preflight"
                    );
                }
                Effect::StartRollback { wave, environments } => {
                    let runtime = self.clone();
                    let id = meta.id.clone();
                    tokio::spawn(async move {
                        match runtime
                            .rollback(&id, &environments, "convoy (auto_rollback)")
                            .await
                        {
                            Ok(rb) => {
                                tracing::info!(rollout = %id, rollback = %rb, %wave, "automatic rollback started")
                            }
                            Err(e) => {
                                tracing::error!(rollout = %id, error = %e, "automatic rollback failed")
                            }
                        }
                    });
                }
                Effect::Report { importance: i } => {
                    importance = Some(importance.map_or(i, |old| old.max(i)));
                }
                Effect::Finished { state } => {
                    tracing::info!(rollout = %meta.id, state = state.as_str(), "rollout finished");
                    importance = Some(Importance::Terminal);
                }
            }
        }
        if let Some(i) = importance {
            self.report(&meta.id, i).await;
        }
    }

    fn step_job(&self, meta: &Meta, rollout: &Rollout, key: &StepKey) -> StepJob {
        let target = rollout.targets.get(&key.environment).cloned();
        let version = rollout
            .step(key)
            .map(|s| s.version.clone())
            .unwrap_or_else(|| rollout.commit.clone());
        StepJob {
            store: self.inner.store.clone(),
            drivers: self.inner.drivers.clone(),
            rollout: meta.id.clone(),
            repo: meta.repo.clone(),
            endpoint: Endpoint {
                environment: key.environment.clone(),
                url: target.as_ref().and_then(|t| t.url.clone()),
            },
            driver: target.map(|t| t.driver).unwrap_or_default(),
            version,
        }
    }

    /// Rolls environments of a rollout back to their last known good
    /// versions (SPEC 6.8), as a linked rollout of its own that pins them.
    /// `environments` empty: every environment the rollout touched.
    pub async fn rollback(
        &self,
        id: &RolloutId,
        environments: &[EnvName],
        by: &str,
    ) -> Result<RolloutId, RuntimeError> {
        let record = self
            .inner
            .store
            .rollout(id)
            .await?
            .ok_or_else(|| CommandError(format!("there is no rollout {id}")))?;
        let original = decode(&record)?;
        let targets = engine::rollback_targets(&original, environments)?;
        let mut versions = Vec::new();
        for env in &targets {
            for step in original
                .steps()
                .filter(|s| &s.environment == env && s.attempts > 0)
            {
                let good = self
                    .inner
                    .store
                    .last_good_version(&record.repo, env, &step.service, Some(id))
                    .await?;
                versions.push((step.key(), good));
            }
        }
        let rollback = super::plans::rollback_rollout(&original, &versions).ok_or_else(|| {
            CommandError(
                "nothing to roll back: no environment of this rollout has a known good version \
                 from before it"
                    .into(),
            )
        })?;
        let rb_id = new_rollout_id();
        let now = Utc::now();
        let rb_record = RolloutRecord {
            id: rb_id.clone(),
            repo: record.repo.clone(),
            branch: record.branch.clone(),
            commit: record.commit.clone(),
            previous_commit: None,
            pull_request: record.pull_request,
            installation: record.installation,
            kind: RolloutKind::Rollback,
            parent: Some(id.clone()),
            state: rollback.state.as_str().to_owned(),
            created_at: now,
            updated_at: now,
            document: None,
            error: None,
        };
        // Pin the environments at the versions rolled back to.
        for (key, version) in &versions {
            if let Some(v) = version {
                self.inner
                    .store
                    .set_baseline(
                        &record.repo,
                        &key.environment,
                        &key.service,
                        v.as_str(),
                        "pinned",
                        Some(&rb_id),
                        now,
                    )
                    .await?;
            }
        }
        self.submit(rb_record, rollback).await?;
        // The original shows those steps as rolled back.
        let event = Event::RolledBack {
            environments: targets.clone(),
        };
        if let Some(tx) = lock(&self.inner.actors).get(id).map(|a| a.1.clone()) {
            let _ = tx.send(Input::Event(event));
        } else {
            let mut original = original;
            let effects = engine::handle(&mut original, event, &ctx_now());
            self.persist(id, &original, &effects).await;
            self.report(id, Importance::Matters).await;
        }
        tracing::info!(rollout = %id, rollback = %rb_id, by, "rollback started");
        Ok(rb_id)
    }
}

fn ctx_now() -> Ctx {
    Ctx {
        now: Utc::now(),
        jitter: fastrand::f64(),
    }
}

fn arm_timer(tx: mpsc::UnboundedSender<Input>, at: chrono::DateTime<Utc>, timer: Timer) {
    tokio::spawn(async move {
        let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        let _ = tx.send(Input::Event(Event::TimerFired { timer }));
    });
}

/// The step an event is about, if any.
fn event_key(event: &Event) -> Option<&StepKey> {
    match event {
        Event::Preflight { key, .. }
        | Event::DeployAccepted { key, .. }
        | Event::DeployFailed { key, .. }
        | Event::StepTimedOut { key, .. }
        | Event::Status { key, .. }
        | Event::StatusUnavailable { key, .. } => Some(key),
        _ => None,
    }
}

/// Everything one driver call for one step needs, owned so it can run in
/// its own task.
struct StepJob {
    store: Arc<dyn Store>,
    drivers: Drivers,
    rollout: RolloutId,
    repo: RepoName,
    endpoint: Endpoint,
    driver: String,
    version: CommitSha,
}

impl StepJob {
    /// SPEC 6.3 for one step: reachable (what runs there now), the baseline
    /// for drift, and the agent's own preflight. Freezes and dependencies
    /// are the engine's to judge.
    async fn preflight(&self, key: &StepKey) -> PreflightResult {
        let driver = match self.drivers.get(&self.driver) {
            Ok(d) => d,
            Err(e) => {
                return PreflightResult::Failed {
                    reason: e.message,
                    kind: FailureKind::Permanent,
                };
            }
        };
        let status = match driver.status(&self.endpoint, &key.service).await {
            Ok(s) => s,
            Err(e) => {
                return PreflightResult::Failed {
                    reason: format!("unreachable: {e}"),
                    kind: e.kind,
                };
            }
        };
        match driver
            .preflight(&self.endpoint, &key.service, &self.version)
            .await
        {
            Ok(PreflightOutcome::NotProvided | PreflightOutcome::Ok) => {}
            Ok(PreflightOutcome::Refused { reason }) => {
                return PreflightResult::Failed {
                    reason: format!("the agent's preflight refused: {reason}"),
                    kind: FailureKind::Permanent,
                };
            }
            Err(e) => {
                return PreflightResult::Failed {
                    reason: format!("agent preflight: {e}"),
                    kind: e.kind,
                };
            }
        }
        let baseline = match self
            .store
            .baseline(&self.repo, &key.environment, &key.service)
            .await
        {
            Ok(b) => b.map(|b| b.version),
            Err(e) => {
                return PreflightResult::Failed {
                    reason: format!("convoy's database: {e}"),
                    kind: FailureKind::Transient,
                };
            }
        };
        PreflightResult::Passed {
            running: status.version,
            baseline,
        }
    }

    /// Takes the (environment, service) lock, then deploys, all within the
    /// deadline.
    async fn deploy(
        self,
        key: StepKey,
        attempt: u32,
        version: CommitSha,
        deadline: chrono::DateTime<Utc>,
    ) -> Event {
        let budget = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let work = async {
            loop {
                match self
                    .store
                    .try_lock_step(
                        &self.repo,
                        &key.environment,
                        &key.service,
                        &self.rollout,
                        Utc::now(),
                    )
                    .await
                {
                    Ok(true) => break,
                    Ok(false) => tokio::time::sleep(LOCK_RETRY).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "taking the step lock failed; retrying");
                        tokio::time::sleep(LOCK_RETRY).await;
                    }
                }
            }
            let driver = self.drivers.get(&self.driver)?;
            driver
                .deploy(&StepRequest {
                    rollout: self.rollout.clone(),
                    endpoint: self.endpoint.clone(),
                    service: key.service.clone(),
                    version,
                    attempt,
                })
                .await
        };
        match tokio::time::timeout(budget, work).await {
            Ok(Ok(())) => Event::DeployAccepted { key, attempt },
            Ok(Err(e)) => Event::DeployFailed {
                key,
                attempt,
                kind: e.kind,
                error: e.message,
            },
            Err(_) => Event::StepTimedOut { key, attempt },
        }
    }

    async fn status(&self, key: &StepKey) -> Result<HealthReport, String> {
        let driver = self.drivers.get(&self.driver).map_err(|e| e.message)?;
        let s = driver
            .status(&self.endpoint, &key.service)
            .await
            .map_err(|e| e.message)?;
        Ok(HealthReport {
            version: s.version,
            healthy: s.healthy,
            message: s.message,
        })
    }
}

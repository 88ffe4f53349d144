//! Runs rollouts: one task per active rollout owns its engine state, feeds
//! it events, persists every change and only then carries out the effects
//! (driver calls, timers, reports). Timers live in the database as well as
//! in memory, so a restart loses none; after a restart every unfinished
//! rollout gets [`Event::Recover`] (SPEC 6.9).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::domain::{BranchName, EnvName, RepoName, RolloutId};
use crate::drivers::Drivers;
use crate::drivers::exec::{self, ExecContext};
use crate::engine::{
    self, Changed, Command, CommandError, Ctx, Effect, Event, FailureKind, Importance,
    PreflightResult, Rollout, RolloutState, StepState, Timer,
};
use crate::plan::model::{EnvTarget, StepKey};
use crate::store::{
    AttemptRecord, Created, Freeze, RolloutKind, RolloutRecord, RolloutWrite, Store, StoreError,
    StoredStep, StoredTimer,
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

/// At most this many queued inputs are applied before one persist: bounds
/// how long the first of them waits for its effects.
const MAX_BATCH: usize = 512;

/// Adds what another transition changed to `into` (the union a batch of
/// transitions writes in one persist).
fn merge_changed(into: &mut Changed, more: Changed) {
    match (into, more) {
        (Changed::All, _) => {}
        (me, Changed::All) => *me = Changed::All,
        (Changed::Steps(keys), Changed::Steps(more)) => keys.extend(more),
    }
}

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
        let t = engine::apply(&mut rollout, event, &ctx_now());
        self.persist(&other.id, &mut rollout, &t.changed, &t.effects)
            .await;
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
        let t = engine::apply_command(&mut rollout, cmd, &ctx_now())?;
        let effects = t.effects;
        self.persist(id, &mut rollout, &t.changed, &effects).await;
        if was_terminal && !rollout.state.is_terminal() {
            // e.g. a retry after the rollout failed: it runs again.
            let meta = Meta::of(&record);
            let tx = self.spawn_actor(meta.clone(), rollout.clone());
            self.execute_with(&tx, &meta, &rollout, effects, &HashSet::new())
                .await;
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

    /// Makes freezes written by another process (`convoy freeze --all`, a
    /// second replica) reach running rollouts: every `every`, each running
    /// rollout's freeze state is compared with the database, and a freeze
    /// that appeared or went away is applied. Stops with `shutdown`.
    pub fn watch_freezes(
        &self,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let runtime = self.clone();
        tokio::spawn(async move {
            // Per rollout, the freeze (scope, set at) last applied. A freeze
            // active at the first sighting is applied once more, which is
            // harmless when `start_rollout` or `freeze` already did.
            let mut seen: HashMap<RolloutId, Option<(String, i64)>> = HashMap::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                let live: Vec<(RolloutId, RepoName, mpsc::UnboundedSender<Input>)> =
                    lock(&runtime.inner.actors)
                        .iter()
                        .map(|(id, (repo, tx))| (id.clone(), repo.clone(), tx.clone()))
                        .collect();
                seen.retain(|id, _| live.iter().any(|(l, _, _)| l == id));
                let mut by_repo: HashMap<RepoName, Option<Freeze>> = HashMap::new();
                let now = Utc::now();
                for (id, repo, tx) in live {
                    if !by_repo.contains_key(&repo) {
                        match runtime.inner.store.freezes_for(&repo).await {
                            Ok(list) => {
                                by_repo
                                    .insert(repo.clone(), list.into_iter().find(|f| f.active(now)));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "reading freezes failed");
                                continue;
                            }
                        }
                    }
                    let active = by_repo.get(&repo).cloned().flatten();
                    let key = active
                        .as_ref()
                        .map(|f| (f.scope.clone(), f.at.timestamp_millis()));
                    let previous = seen.insert(id.clone(), key.clone()).flatten();
                    if previous == key {
                        continue;
                    }
                    let cmd = match active {
                        Some(f) => Command::Freeze {
                            until: f.until,
                            reason: f.reason,
                            by: f.by,
                        },
                        None => Command::Unfreeze {
                            by: "convoy (freeze lifted)".into(),
                        },
                    };
                    let (reply, _) = oneshot::channel();
                    let _ = tx.send(Input::Command(cmd, reply));
                    tracing::info!(rollout = %id, frozen = key.is_some(), "freeze change applied");
                }
            }
        })
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
        while let Some(first) = rx.recv().await {
            // Everything already queued is applied before one persist: under
            // load many driver answers arrive together, and one transaction
            // for all of them is what keeps the database off the critical
            // path.
            let mut batch = Batch::default();
            let mut next = Some(first);
            while let Some(input) = next.take() {
                batch.apply(&mut rollout, input);
                if rollout.state.is_terminal() || batch.inputs >= MAX_BATCH {
                    // Whatever follows a terminal state is for the stored
                    // rollout (e.g. a retry that revives it), not this task.
                    break;
                }
                next = rx.try_recv().ok();
            }
            if batch.inputs == batch.refused {
                continue;
            }
            let changed = batch.changed.take().unwrap_or(Changed::Steps(Vec::new()));
            let mut write = rollout_write(&mut rollout, &changed, &batch.effects);
            // Fired timers, released locks (steps no longer deploying or
            // verifying) and the locks of the deploys about to start go in
            // the same transaction: one write for the whole batch.
            write.fired = std::mem::take(&mut batch.fired);
            write.unlock = batch
                .keys
                .iter()
                .filter(|key| {
                    !rollout.step(key).is_some_and(|s| {
                        matches!(s.state, StepState::Deploying | StepState::Verifying)
                    })
                })
                .map(|k| (k.environment.clone(), k.service.clone()))
                .collect();
            write.lock = batch
                .effects
                .iter()
                .filter_map(|e| match e {
                    Effect::Deploy { key, .. } => {
                        Some((key.environment.clone(), key.service.clone()))
                    }
                    _ => None,
                })
                .collect();
            let locked = self.save(&meta.id, &write).await;
            let held: HashSet<StepKey> = write
                .lock
                .into_iter()
                .zip(locked)
                .filter(|(_, got)| *got)
                .map(|((environment, service), _)| StepKey {
                    environment,
                    service,
                })
                .collect();
            // Acknowledge commands only once their effect is stored.
            for reply in batch.replies {
                let _ = reply.send(Ok(()));
            }
            let finished = batch
                .effects
                .iter()
                .any(|e| matches!(e, Effect::Finished { .. }));
            self.execute_with(&tx, &meta, &rollout, batch.effects, &held)
                .await;
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
    async fn persist(
        &self,
        id: &RolloutId,
        rollout: &mut Rollout,
        changed: &Changed,
        effects: &[Effect],
    ) {
        let write = rollout_write(rollout, changed, effects);
        self.save(id, &write).await;
    }

    /// Saves, retrying until the database answers; which of `write.lock`
    /// this rollout holds now.
    async fn save(&self, id: &RolloutId, write: &RolloutWrite) -> Vec<bool> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.inner.store.save_rollout(id, write, Utc::now()).await {
                Ok(locked) => return locked,
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
        held: &HashSet<StepKey>,
    ) {
        let mut importance: Option<Importance> = None;
        for effect in effects {
            match effect {
                Effect::RunPreflight { ref key, .. }
                | Effect::Deploy { ref key, .. }
                | Effect::PollStatus { ref key, .. } => {
                    let mut job = self.step_job(meta, rollout, std::slice::from_ref(key));
                    job.locked = held.contains(key);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Some(event) = job.run(effect).await {
                            let _ = tx.send(Input::Event(event));
                        }
                    });
                }
                Effect::CheckHealth { ref keys, .. }
                | Effect::CheckDependencies {
                    dependencies: ref keys,
                    ..
                } => {
                    let job = self.step_job(meta, rollout, keys);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Some(event) = job.run(effect).await {
                            let _ = tx.send(Input::Event(event));
                        }
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
                    // Recorded beside the rollout, not in its state: a
                    // failure to record delays the drift issue, never the
                    // rollout. Rollbacks and resyncs overwrite on purpose
                    // (what they replace is convoy's own deploy, or drift
                    // a human already chose to resync): nothing to record.
                    if meta.kind != RolloutKind::Deploy {
                        continue;
                    }
                    let store = self.inner.store.clone();
                    let (repo, id) = (meta.repo.clone(), meta.id.clone());
                    tokio::spawn(async move {
                        crate::drift::record_preflight_drift(
                            &*store, &repo, &id, &key, &expected, &found, action,
                        )
                        .await;
                    });
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

    /// What a driver call for `keys` needs, owned so it can run in its own
    /// task: only those environments' targets, not the whole fleet's.
    fn step_job(&self, meta: &Meta, rollout: &Rollout, keys: &[StepKey]) -> StepJob {
        let targets = keys
            .iter()
            .filter_map(|k| {
                rollout
                    .targets
                    .get(&k.environment)
                    .map(|t| (k.environment.clone(), t.clone()))
            })
            .collect();
        StepJob {
            store: self.inner.store.clone(),
            drivers: self.inner.drivers.clone(),
            rollout: meta.id.clone(),
            repo: meta.repo.clone(),
            targets,
            locked: false,
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
            let t = engine::apply(&mut original, event, &ctx_now());
            self.persist(id, &mut original, &t.changed, &t.effects)
                .await;
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
        | Event::DependencyHealth { key, .. }
        | Event::DeployAccepted { key, .. }
        | Event::DeployFailed { key, .. }
        | Event::StepTimedOut { key, .. }
        | Event::Status { key, .. }
        | Event::StatusUnavailable { key, .. } => Some(key),
        _ => None,
    }
}

/// Applies inputs one after another, gathering what one persist must
/// write and what must happen after it.
#[derive(Default)]
struct Batch {
    inputs: usize,
    /// Commands the engine refused (already answered; nothing changed).
    refused: usize,
    effects: Vec<Effect>,
    changed: Option<Changed>,
    replies: Vec<oneshot::Sender<Result<(), CommandError>>>,
    /// Timers that fired, to delete once the state they led to is stored.
    fired: Vec<String>,
    /// Steps that driver answers were about: their locks may be released.
    keys: HashSet<StepKey>,
}

impl Batch {
    fn apply(&mut self, rollout: &mut Rollout, input: Input) {
        self.inputs += 1;
        let ctx = ctx_now();
        let t = match input {
            Input::Event(event) => {
                if let Some(key) = event_key(&event) {
                    self.keys.insert(key.clone());
                }
                if let Event::TimerFired { timer } = &event
                    && let Ok(t) = serde_json::to_string(timer)
                {
                    self.fired.push(t);
                }
                engine::apply(rollout, event, &ctx)
            }
            Input::Command(cmd, reply) => match engine::apply_command(rollout, cmd, &ctx) {
                Ok(t) => {
                    self.replies.push(reply);
                    t
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    self.refused += 1;
                    return;
                }
            },
        };
        match &mut self.changed {
            Some(c) => merge_changed(c, t.changed),
            None => self.changed = Some(t.changed),
        }
        self.effects.extend(t.effects);
    }
}

/// What one persist writes after transitions that changed `changed`
/// (the union, for a batch) and produced `effects`: the header, the changed
/// steps, new timers and attempts. `rollout` is borrowed mutably only to
/// move its targets and steps aside while the header is serialized; it is
/// unchanged on return.
pub fn rollout_write(rollout: &mut Rollout, changed: &Changed, effects: &[Effect]) -> RolloutWrite {
    RolloutWrite {
        state: rollout.state.as_str().to_owned(),
        document: header_json(rollout),
        steps: changed_steps(rollout, changed),
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
        ..RolloutWrite::default()
    }
}

/// The rollout as JSON without its targets, steps and waves' environment
/// lists (they are stored apart; targets and environments never change). They are moved out and back rather than copied: at 10,000
/// environments a copy per event would be most of the work.
fn header_json(rollout: &mut Rollout) -> String {
    let targets = std::mem::take(&mut rollout.targets);
    let parts: Vec<_> = rollout
        .waves
        .iter_mut()
        .map(|w| {
            (
                std::mem::take(&mut w.steps),
                std::mem::take(&mut w.environments),
            )
        })
        .collect();
    let json = serde_json::to_string(&*rollout).unwrap_or_default();
    rollout.targets = targets;
    for (wave, (steps, environments)) in rollout.waves.iter_mut().zip(parts) {
        wave.steps = steps;
        wave.environments = environments;
    }
    json
}

/// The steps `changed` names, serialized at their places.
fn changed_steps(rollout: &Rollout, changed: &Changed) -> Vec<StoredStep> {
    let place = |w: usize, i: usize| -> Option<StoredStep> {
        Some(StoredStep {
            wave: u32::try_from(w).ok()?,
            idx: u32::try_from(i).ok()?,
            step: serde_json::to_string(&rollout.waves[w].steps[i]).ok()?,
        })
    };
    match changed {
        Changed::All => rollout
            .waves
            .iter()
            .enumerate()
            .flat_map(|(w, wave)| (0..wave.steps.len()).map(move |i| (w, i)))
            .filter_map(|(w, i)| place(w, i))
            .collect(),
        Changed::Steps(keys) => {
            let mut places: Vec<(usize, usize)> =
                keys.iter().filter_map(|k| rollout.find(k)).collect();
            places.sort_unstable();
            places.dedup();
            places
                .into_iter()
                .filter_map(|(w, i)| place(w, i))
                .collect()
        }
    }
}

/// One driver effect to carry out, with what it needs, owned so it can run
/// in its own task. The driver calls themselves are
/// [`crate::drivers::exec::perform`]'s; this adds what is the runtime's:
/// the baseline for drift, and the (environment, service) lock around a
/// deploy.
struct StepJob {
    store: Arc<dyn Store>,
    drivers: Drivers,
    rollout: RolloutId,
    repo: RepoName,
    targets: BTreeMap<EnvName, EnvTarget>,
    /// The step's lock was taken with the persist that started the deploy.
    locked: bool,
}

impl StepJob {
    async fn run(self, effect: Effect) -> Option<Event> {
        let cx = ExecContext {
            rollout: &self.rollout,
            targets: &self.targets,
            drivers: &self.drivers,
        };
        match &effect {
            Effect::RunPreflight { key, attempt, .. } => {
                let baseline = match self
                    .store
                    .baseline(&self.repo, &key.environment, &key.service)
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        return Some(Event::Preflight {
                            key: key.clone(),
                            attempt: *attempt,
                            result: PreflightResult::Failed {
                                reason: format!("convoy's database: {e}"),
                                kind: FailureKind::Transient,
                            },
                        });
                    }
                };
                let since = baseline.as_ref().map(|b| b.at);
                let event =
                    exec::perform(&cx, &effect, baseline.map(|b| b.version), Utc::now()).await;
                Some(crate::drift::with_drift_since(&*self.store, &self.repo, event?, since).await)
            }
            Effect::Deploy {
                key,
                attempt,
                deadline,
                ..
            } => {
                // The wait for the lock counts against the deadline too.
                let budget = (*deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                if !self.locked && tokio::time::timeout(budget, self.lock(key)).await.is_err() {
                    return Some(Event::StepTimedOut {
                        key: key.clone(),
                        attempt: *attempt,
                    });
                }
                exec::perform(&cx, &effect, None, Utc::now()).await
            }
            _ => exec::perform(&cx, &effect, None, Utc::now()).await,
        }
    }

    /// Waits until this rollout holds the lock of the step's (environment,
    /// service): two deploys of one target never overlap, whichever
    /// rollouts they belong to.
    async fn lock(&self, key: &StepKey) {
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
                Ok(true) => return,
                Ok(false) => tokio::time::sleep(LOCK_RETRY).await,
                Err(e) => {
                    tracing::warn!(error = %e, "taking the step lock failed; retrying");
                    tokio::time::sleep(LOCK_RETRY).await;
                }
            }
        }
    }
}

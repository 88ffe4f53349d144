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

use crate::domain::{BranchName, EnvName, RepoName, RolloutId, ServiceName};
use crate::drivers::Drivers;
use crate::drivers::exec::{self, ExecContext};
use crate::engine::{
    self, Changed, Command, CommandError, Ctx, Effect, Event, FailureKind, Importance,
    PreflightResult, Rollout, RolloutState, StepState, Timer,
};
use crate::plan::model::{EnvTarget, StepKey};
use crate::store::{
    AttemptRecord, Baseline, Created, Freeze, LEASE_BRANCH, LEASE_ROLLOUT, RolloutKind,
    RolloutRecord, RolloutSummary, RolloutWrite, Store, StoreError, StoredStep, StoredTimer,
};

use super::leases::{HeldLease, Replica, branch_key};

/// The lease of a runtime alone on its database and never renewed.
const SOLE_LEASE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Told when a rollout's state changed, so the comment and check run can
/// follow (the reporter decides when to send what).
#[async_trait]
pub trait ReportSink: Send + Sync + 'static {
    async fn rollout_changed(&self, id: &RolloutId, importance: Importance);
}

/// How long a deploy waits between tries for the lock of its (environment,
/// service) while another rollout holds it.
const LOCK_RETRY: Duration = Duration::from_millis(250);

/// How often inputs queued by other replicas are looked for: a command on
/// a rollout another replica drives waits about this long.
const INPUT_POLL: Duration = Duration::from_millis(200);

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
    /// An event handed over by another task or replica: acknowledged only
    /// once the state it led to is stored, so a task that loses its lease
    /// first leaves it to the next driver instead of dropping it.
    AckedEvent(Event, oneshot::Sender<Result<(), CommandError>>),
    Command(Command, oneshot::Sender<Result<(), CommandError>>),
    /// The rollout's lease is lost (taken over, or given up at shutdown):
    /// the task stops at once, without another write or driver call.
    LeaseLost,
}

/// An input for a rollout another replica drives, as queued in the
/// database (`rollout_inputs`).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum RemoteInput {
    Event(Event),
    Command(Command),
}

/// How long a command for a rollout that another replica drives waits for
/// that replica's answer before the sender gives up waiting (the command
/// stays queued and still takes effect).
fn remote_answer_wait(replica: &Replica) -> Duration {
    replica.lease * 2 + Duration::from_secs(10)
}

/// The parts of a rollout's record an actor needs besides the engine state.
#[derive(Clone, Debug)]
struct Meta {
    id: RolloutId,
    repo: RepoName,
    branch: BranchName,
    kind: RolloutKind,
    /// Set by the rollout's task once the rollout has ended (an abort): a
    /// deploy still waiting for its (environment, service) lock then gives
    /// up instead of deploying after the abort.
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Meta {
    fn of(record: &RolloutRecord) -> Meta {
        Meta {
            id: record.id.clone(),
            repo: record.repo.clone(),
            branch: record.branch.clone(),
            kind: record.kind.clone(),
            ended: Arc::default(),
        }
    }
}

struct Inner {
    store: Arc<dyn Store>,
    drivers: Drivers,
    reporter: Option<Arc<dyn ReportSink>>,
    actors: Mutex<HashMap<RolloutId, (RepoName, mpsc::UnboundedSender<Input>)>>,
    /// Admission decisions (which rollout of a branch runs) one at a time
    /// in this process; across replicas the branch's lease does it.
    admission: tokio::sync::Mutex<()>,
    replica: Replica,
    /// The lease of every rollout a task here drives.
    held: Mutex<HashMap<RolloutId, Arc<HeldLease>>>,
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
    /// A runtime that is the only one on its database (tests, tools): a
    /// replica id of its own and leases that do not run out in its
    /// lifetime, since nothing may renew them ([`RolloutRuntime::keep_leases`]
    /// is what `convoy serve` runs beside a replica's runtime).
    pub fn new(
        store: Arc<dyn Store>,
        drivers: Drivers,
        reporter: Option<Arc<dyn ReportSink>>,
    ) -> RolloutRuntime {
        let id = format!("local-{:08x}", fastrand::u32(..));
        Self::with_replica(store, drivers, reporter, Replica::new(id, SOLE_LEASE))
    }

    /// A runtime that drives rollouts as `replica`, beside others on the
    /// same database: it drives a rollout only while it holds its lease.
    pub fn with_replica(
        store: Arc<dyn Store>,
        drivers: Drivers,
        reporter: Option<Arc<dyn ReportSink>>,
        replica: Replica,
    ) -> RolloutRuntime {
        RolloutRuntime {
            inner: Arc::new(Inner {
                store,
                drivers,
                reporter,
                actors: Mutex::new(HashMap::new()),
                admission: tokio::sync::Mutex::new(()),
                replica,
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn replica(&self) -> &Replica {
        &self.inner.replica
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
        let mut resumed = 0;
        // Ended rollouts still waiting for their deploys in flight when the
        // last process stopped (an abort): they are driven until those end,
        // so the deploys' outcome is recorded and their locks released.
        // First, while nothing else of this process deploys.
        for id in self.inner.store.draining_rollouts().await? {
            if self.take_over(&id).await {
                resumed += 1;
            }
        }
        let unfinished = self.inner.store.unfinished_rollouts().await?;
        for record in &unfinished {
            if record.state == RolloutState::Queued.as_str() || self.is_live(&record.id) {
                continue;
            }
            // A rollout another replica drives is left to it.
            let Some(held) = self.claim(&record.id).await else {
                continue;
            };
            if self.resume(record, held).await.is_some() {
                resumed += 1;
            }
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

    /// Claims the lease of driving rollout `id`; `None` while another
    /// replica holds it (or the database did not answer: tried again later).
    async fn claim(&self, id: &RolloutId) -> Option<Arc<HeldLease>> {
        let replica = &self.inner.replica;
        let now = Utc::now();
        match self
            .inner
            .store
            .claim_lease(
                LEASE_ROLLOUT,
                id.as_str(),
                &replica.id,
                now,
                replica.until(now),
            )
            .await
        {
            Ok(Some(lease)) => {
                // Known to the renewals from now on, also while it is held
                // for a short decision without a task (which may wait for
                // the admission lock): renewed, and not taken for a stray.
                let held = Arc::new(HeldLease::new(lease, replica));
                lock(&self.inner.held).insert(id.clone(), held.clone());
                Some(held)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(rollout = %id, error = %e, "claiming the rollout's lease failed");
                None
            }
        }
    }

    /// Gives a rollout's lease up, so another replica (or this one) may
    /// take the rollout at once.
    async fn give_up(&self, id: &RolloutId, held: &HeldLease) {
        held.revoke();
        {
            let mut all = lock(&self.inner.held);
            if all.get(id).is_some_and(|h| std::ptr::eq(&**h, held)) {
                all.remove(id);
            }
        }
        let replica = &self.inner.replica;
        if let Err(e) = self
            .inner
            .store
            .release_lease(LEASE_ROLLOUT, id.as_str(), &replica.id, held.generation)
            .await
        {
            tracing::warn!(rollout = %id, error = %e, "releasing the rollout's lease failed; it expires");
        }
    }

    /// Starts a task for a started rollout from its stored state, under
    /// `held`: its stored timers re-armed, then [`Event::Recover`] (steps
    /// that were in flight are re-verified through the driver first).
    async fn resume(
        &self,
        record: &RolloutRecord,
        held: Arc<HeldLease>,
    ) -> Option<mpsc::UnboundedSender<Input>> {
        let loaded = match decode(record) {
            Ok(rollout) => self
                .inner
                .store
                .timers(&record.id)
                .await
                .map(|timers| (rollout, timers))
                .map_err(RuntimeError::from),
            Err(e) => Err(e),
        };
        let (rollout, timers) = match loaded {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(rollout = %record.id, error = %e, "cannot resume rollout");
                self.give_up(&record.id, &held).await;
                return None;
            }
        };
        let tx = self.spawn_actor(Meta::of(record), rollout, held);
        for t in timers {
            if let Ok(timer) = serde_json::from_str::<Timer>(&t.timer) {
                arm_timer(tx.clone(), t.at, timer);
            }
        }
        let _ = tx.send(Input::Event(Event::Recover));
        Some(tx)
    }

    /// Takes over a rollout nobody drives (its replica died or gave it up).
    async fn take_over(&self, id: &RolloutId) -> bool {
        if self.is_live(id) {
            return false;
        }
        let Some(held) = self.claim(id).await else {
            return false;
        };
        match self.inner.store.rollout(id).await {
            Ok(Some(record)) if needs_driving(&record) => {
                tracing::info!(rollout = %id, generation = held.generation, "taking over the rollout");
                let ended = is_terminal_state(&record.state);
                let resumed = self.resume(&record, held).await.is_some();
                if !resumed && ended {
                    self.stop_draining(id).await;
                }
                resumed
            }
            Ok(record) => {
                if record.is_some_and(|r| is_terminal_state(&r.state)) {
                    // Listed as draining, with nothing in flight to drive
                    // (or not readable): the mark must not hold its locks.
                    self.stop_draining(id).await;
                }
                self.give_up(id, &held).await;
                false
            }
            Err(e) => {
                tracing::warn!(rollout = %id, error = %e, "reading the rollout to take over failed");
                self.give_up(id, &held).await;
                false
            }
        }
    }

    async fn stop_draining(&self, id: &RolloutId) {
        match self.inner.store.stop_draining(id).await {
            Ok(()) => {
                tracing::warn!(rollout = %id, "an ended rollout had nothing in flight to drive; its draining mark is cleared")
            }
            Err(e) => {
                tracing::warn!(rollout = %id, error = %e, "clearing a draining mark failed; tried again at the next scan")
            }
        }
    }

    /// Takes the admission lease of a branch, waiting while another
    /// replica decides on it (those decisions take milliseconds). Answers
    /// the generation to release.
    async fn lock_branch(&self, repo: &RepoName, branch: &BranchName) -> Option<(String, i64)> {
        let replica = &self.inner.replica;
        let key = branch_key(repo.as_str(), branch.as_str());
        let give_up_at = std::time::Instant::now() + replica.lease * 3;
        loop {
            let now = Utc::now();
            match self
                .inner
                .store
                .claim_lease(LEASE_BRANCH, &key, &replica.id, now, replica.until(now))
                .await
            {
                Ok(Some(lease)) => return Some((key, lease.generation)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "claiming the branch's lease failed"),
            }
            if std::time::Instant::now() > give_up_at {
                // Only a replica stuck mid-decision holds it this long;
                // deciding anyway beats never starting anything.
                tracing::warn!(%repo, %branch, "the branch's admission lease stays taken; deciding without it");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn unlock_branch(&self, held: Option<(String, i64)>) {
        if let Some((key, generation)) = held {
            let _ = self
                .inner
                .store
                .release_lease(LEASE_BRANCH, &key, &self.inner.replica.id, generation)
                .await;
        }
    }

    /// Stores a new rollout and admits it (SPEC 6.5): it starts now, queues
    /// behind the branch's active rollout, or supersedes it. Returns
    /// `Created::Existing` when the same commit already has its rollout.
    pub async fn submit(
        &self,
        record: RolloutRecord,
        rollout: Rollout,
    ) -> Result<Created, RuntimeError> {
        let _admission = self.inner.admission.lock().await;
        let branch = self.lock_branch(&record.repo, &record.branch).await;
        let result = self.submit_admitted(record, rollout).await;
        self.unlock_branch(branch).await;
        result
    }

    async fn submit_admitted(
        &self,
        mut record: RolloutRecord,
        rollout: Rollout,
    ) -> Result<Created, RuntimeError> {
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
        let others: Vec<&RolloutSummary> = others.iter().filter(|r| r.id != record.id).collect();
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
                    self.supersede(&other.id, &record.id).await?;
                }
                // Starts when the superseded ones have ended (`Finished`).
                if !self.branch_has_active(&record.repo, &record.branch).await? {
                    self.start_next_admitted(&record.repo, &record.branch)
                        .await?;
                }
            }
        }
        Ok(created)
    }

    async fn supersede(&self, other: &RolloutId, by: &RolloutId) -> Result<(), RuntimeError> {
        let event = Event::Superseded { by: by.to_string() };
        // Called while admitting: the branch is ours already.
        self.deliver(other, RemoteInput::Event(event), false, true)
            .await
    }

    /// Sends a human command to a rollout and waits for the engine's verdict.
    pub async fn command(&self, id: &RolloutId, cmd: Command) -> Result<(), RuntimeError> {
        self.deliver(id, RemoteInput::Command(cmd), true, false)
            .await
    }

    /// Hands `input` to whoever drives rollout `id`: the task here when
    /// there is one; else, once this replica holds the rollout's lease, the
    /// stored state here (a rollout nobody drove is taken over); else the
    /// replica holding the lease, through the database (`rollout_inputs`).
    /// With `wait`, answers the engine's verdict on a command. `admitted`:
    /// the caller holds the admission of the rollout's branch.
    ///
    /// Boxed: delivering may revive a rollout, whose effects may start a
    /// rollback, which delivers again; the cycle needs a named future type.
    fn deliver<'a>(
        &'a self,
        id: &'a RolloutId,
        input: RemoteInput,
        wait: bool,
        admitted: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RuntimeError>> + Send + 'a>>
    {
        Box::pin(self.deliver_inner(id, input, wait, admitted))
    }

    async fn deliver_inner(
        &self,
        id: &RolloutId,
        input: RemoteInput,
        wait: bool,
        admitted: bool,
    ) -> Result<(), RuntimeError> {
        // A task that ends while the input is on its way loses it: then
        // the stored state (or its new driver) gets it. Bounded rounds.
        for _ in 0..3 {
            let live = lock(&self.inner.actors).get(id).map(|a| a.1.clone());
            if let Some(tx) = live {
                match &input {
                    RemoteInput::Event(event) => {
                        let (reply, answer) = oneshot::channel();
                        if tx.send(Input::AckedEvent(event.clone(), reply)).is_ok()
                            && let Ok(result) = answer.await
                        {
                            return result.map_err(RuntimeError::from);
                        }
                    }
                    RemoteInput::Command(cmd) => {
                        let (reply, answer) = oneshot::channel();
                        if tx.send(Input::Command(cmd.clone(), reply)).is_ok()
                            && let Ok(result) = answer.await
                        {
                            return result.map_err(RuntimeError::from);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if let Some(held) = self.claim(id).await {
                return self.apply_here(id, input, held, admitted).await;
            }
            // Another replica drives it: queue it there.
            let json = serde_json::to_string(&input).map_err(|e| {
                RuntimeError::Command(CommandError(format!("cannot queue the input: {e}")))
            })?;
            let queued = self
                .inner
                .store
                .push_rollout_input(id, &json, Utc::now())
                .await?;
            tracing::info!(rollout = %id, input = queued, "input queued for the replica driving the rollout");
            if !wait {
                return Ok(());
            }
            return self.await_answer(id, queued, input, admitted).await;
        }
        Err(RuntimeError::Command(CommandError(format!(
            "rollout {id} is changing hands; try again"
        ))))
    }

    /// Waits for the answer to a queued input. When the replica that held
    /// the rollout let go of it meanwhile (the input still open), this one
    /// takes the input back and applies it itself.
    async fn await_answer(
        &self,
        id: &RolloutId,
        queued: i64,
        input: RemoteInput,
        admitted: bool,
    ) -> Result<(), RuntimeError> {
        let store = &self.inner.store;
        let deadline = std::time::Instant::now() + remote_answer_wait(&self.inner.replica);
        let mut round = 0u32;
        loop {
            if let Some(answer) = store.rollout_input_answer(queued).await? {
                return if answer.is_empty() {
                    Ok(())
                } else {
                    Err(RuntimeError::Command(CommandError(answer)))
                };
            }
            if std::time::Instant::now() > deadline {
                return Err(RuntimeError::Command(CommandError(format!(
                    "the replica driving rollout {id} has not answered yet; \
                     the command stays queued and takes effect when it does"
                ))));
            }
            round += 1;
            if round.is_multiple_of(10)
                && let Some(held) = self.claim(id).await
            {
                if store.answer_rollout_input(queued, "", Utc::now()).await? {
                    return self.apply_here(id, input, held, admitted).await;
                }
                // Answered meanwhile: read it next round.
                self.give_up(id, &held).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies an input to a rollout no task here drives, under its lease
    /// (`held`, just claimed): a started rollout is taken over (a task
    /// resumes it and gets the input); a queued or ended one changes in
    /// the database, and runs again if the input revived it.
    async fn apply_here(
        &self,
        id: &RolloutId,
        input: RemoteInput,
        held: Arc<HeldLease>,
        admitted: bool,
    ) -> Result<(), RuntimeError> {
        let record = match self.inner.store.rollout(id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.give_up(id, &held).await;
                return Err(CommandError(format!("there is no rollout {id}")).into());
            }
            Err(e) => {
                self.give_up(id, &held).await;
                return Err(e.into());
            }
        };
        let started =
            record.state != RolloutState::Queued.as_str() && !is_terminal_state(&record.state);
        if started {
            tracing::info!(rollout = %id, "taking over the rollout to apply an input");
            let Some(tx) = self.resume(&record, held).await else {
                return Err(CommandError(format!("rollout {id} cannot be resumed")).into());
            };
            return match input {
                RemoteInput::Event(event) => {
                    let _ = tx.send(Input::Event(event));
                    Ok(())
                }
                RemoteInput::Command(cmd) => {
                    let (reply, answer) = oneshot::channel();
                    let _ = tx.send(Input::Command(cmd, reply));
                    match answer.await {
                        Ok(result) => result.map_err(RuntimeError::from),
                        Err(_) => Err(CommandError(format!(
                            "rollout {id} changed hands; try again"
                        ))
                        .into()),
                    }
                }
            };
        }
        // Queued or ended: apply to the stored state, one decision at a
        // time with admissions here.
        let _admission = if admitted {
            None
        } else {
            Some(self.inner.admission.lock().await)
        };
        let mut rollout = match decode(&record) {
            Ok(r) => r,
            Err(e) => {
                self.give_up(id, &held).await;
                return Err(e);
            }
        };
        let was_terminal = rollout.state.is_terminal();
        let t = match input {
            RemoteInput::Event(event) => engine::apply(&mut rollout, event, &ctx_now()),
            RemoteInput::Command(cmd) => match engine::apply_command(&mut rollout, cmd, &ctx_now())
            {
                Ok(t) => t,
                Err(e) => {
                    self.give_up(id, &held).await;
                    return Err(e.into());
                }
            },
        };
        let effects = t.effects;
        let reviving =
            was_terminal && !rollout.state.is_terminal() && record.kind == RolloutKind::Deploy;
        // Running again is a start on the branch: decided under the branch's
        // admission lease (other replicas admit merges under it) until the
        // revived state is stored, like every start.
        let branch_lease = if reviving && !admitted {
            self.lock_branch(&record.repo, &record.branch).await
        } else {
            None
        };
        if reviving {
            // Running again (a retry after it failed) is for the branch's
            // newest rollout only: one after it may be running, or have
            // deployed a newer commit that this one would put back (SPEC
            // 6.5: one active rollout per branch).
            let newer = match self
                .inner
                .store
                .deploys_after(&record.repo, &record.branch, &record)
                .await
            {
                Ok(newer) => newer,
                Err(e) => {
                    self.unlock_branch(branch_lease).await;
                    self.give_up(id, &held).await;
                    return Err(e.into());
                }
            };
            if let Some(next) = newer.last() {
                self.unlock_branch(branch_lease).await;
                self.give_up(id, &held).await;
                return Err(CommandError(format!(
                    "rollout {id} cannot run again: rollout {} of commit {} came after it on \
                     `{}` and is {}; act on that one, or merge a fix",
                    next.id,
                    crate::report::text::short_sha(next.commit.as_str()),
                    record.branch,
                    next.state
                ))
                .into());
            }
        }
        let stored = self
            .persist(id, &mut rollout, &t.changed, &effects, &held)
            .await;
        self.unlock_branch(branch_lease).await;
        if !stored {
            return Err(CommandError(format!("rollout {id} changed hands; try again")).into());
        }
        if was_terminal && !rollout.state.is_terminal() {
            // e.g. a retry after the rollout failed: it runs again.
            let meta = Meta::of(&record);
            let tx = self.spawn_actor(meta.clone(), rollout.clone(), held);
            self.execute_with(&tx, &meta, &rollout, effects, &HashSet::new())
                .await;
            return Ok(());
        }
        self.give_up(id, &held).await;
        let importance = if rollout.state.is_terminal() && !was_terminal {
            Importance::Terminal
        } else {
            Importance::Matters
        };
        self.report(id, importance).await;
        drop(_admission);
        if !admitted
            && record.kind == RolloutKind::Deploy
            && record.state == RolloutState::Queued.as_str()
        {
            // A queued rollout could not start while its lease was held
            // here: let the branch go on.
            self.start_next(&record.repo, &record.branch).await?;
        }
        Ok(())
    }

    /// The branch's unfinished deploy rollouts, oldest first, by their
    /// headers: only the one that starts is read whole.
    async fn branch_rollouts(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> Result<Vec<RolloutSummary>, RuntimeError> {
        Ok(self.inner.store.unfinished_deploys(repo, branch).await?)
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
        let held = self.lock_branch(repo, branch).await;
        let result = self.start_next_admitted(repo, branch).await;
        self.unlock_branch(held).await;
        result
    }

    async fn start_next_admitted(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> Result<(), RuntimeError> {
        let rollouts = self.branch_rollouts(repo, branch).await?;
        if rollouts
            .iter()
            .any(|r| r.state != RolloutState::Queued.as_str())
        {
            return Ok(());
        }
        let Some(next) = rollouts.first() else {
            return Ok(());
        };
        // Gone or finished since the list was read (another replica): the
        // next admission or end on the branch starts whatever is queued.
        let Some(next) = self.inner.store.rollout(&next.id).await? else {
            return Ok(());
        };
        if next.state == RolloutState::Queued.as_str() {
            let rollout = decode(&next)?;
            self.start_rollout(Meta::of(&next), rollout).await;
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
        if self.is_live(&meta.id) {
            return;
        }
        let Some(held) = self.claim(&meta.id).await else {
            tracing::info!(rollout = %meta.id, "another replica drives the rollout");
            return;
        };
        let freezes = self
            .inner
            .store
            .freezes_for(&meta.repo)
            .await
            .unwrap_or_default();
        let tx = self.spawn_actor(meta, rollout, held);
        if let Some(f) = Freeze::in_force(&freezes, Utc::now()) {
            let (reply, _) = oneshot::channel();
            let _ = tx.send(Input::Command(freeze_command(Some(f), ""), reply));
        }
        let _ = tx.send(Input::Event(Event::Start));
    }

    /// The emergency stop (SPEC 7.4 `/convoy freeze`, `convoy freeze
    /// --all`): recorded, applied to every running rollout in scope, and to
    /// every rollout that starts while it lasts. `repo` `None`: all. A
    /// rollout holds one freeze, the one in force that lasts longest
    /// ([`Freeze::in_force`]): a one-hour freeze of a repository does not
    /// cut short an operator's freeze of all of them. The count is of the
    /// running rollouts that hold a freeze after it.
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
                reason,
                by: by.to_owned(),
                at: Utc::now(),
            })
            .await?;
        self.apply_freezes_in_force(repo, by).await
    }

    /// Lifts the emergency freeze of `repo` (or of all); running rollouts in
    /// scope go on, unless a freeze of wider scope still holds them (the
    /// operator's `convoy freeze --all` outlives a repository's
    /// `/convoy unfreeze`). `false` when there was none.
    pub async fn unfreeze(&self, repo: Option<&RepoName>, by: &str) -> Result<bool, RuntimeError> {
        let scope = repo.map_or(Freeze::ALL.to_owned(), |r| r.to_string());
        let existed = self.inner.store.clear_freeze(&scope).await?;
        self.apply_freezes_in_force(repo, by).await?;
        Ok(existed)
    }

    /// The freeze in force for `repo` now (its own or of all), if any.
    pub async fn freeze_in_force(&self, repo: &RepoName) -> Result<Option<Freeze>, RuntimeError> {
        let freezes = self.inner.store.freezes_for(repo).await?;
        Ok(Freeze::in_force(&freezes, Utc::now()))
    }

    /// Gives every running rollout in scope the freeze in force for its
    /// repository, or lifts its freeze when none is; returns how many hold
    /// one after. Waits for each rollout's answer, so a reply sent after
    /// this is true.
    async fn apply_freezes_in_force(
        &self,
        repo: Option<&RepoName>,
        by: &str,
    ) -> Result<usize, RuntimeError> {
        let live: Vec<(RolloutId, RepoName, mpsc::UnboundedSender<Input>)> =
            lock(&self.inner.actors)
                .iter()
                .filter(|(_, (r, _))| repo.is_none_or(|want| want == r))
                .map(|(id, (r, tx))| (id.clone(), r.clone(), tx.clone()))
                .collect();
        let mut in_force: HashMap<RepoName, Option<Freeze>> = HashMap::new();
        let mut frozen = 0;
        for (id, repo, tx) in live {
            let freeze = match in_force.get(&repo) {
                Some(f) => f.clone(),
                None => {
                    let f = self.freeze_in_force(&repo).await?;
                    in_force.insert(repo.clone(), f.clone());
                    f
                }
            };
            let holds = freeze.is_some();
            let (reply, answer) = oneshot::channel();
            if tx
                .send(Input::Command(freeze_command(freeze, by), reply))
                .is_ok()
            {
                // An unfreeze of a rollout that was not frozen is refused,
                // and that is fine: it was not.
                let applied = matches!(answer.await, Ok(Ok(())));
                if holds && applied {
                    frozen += 1;
                } else if holds {
                    tracing::debug!(rollout = %id, "freeze not applied (rollout ending)");
                }
            }
        }
        Ok(frozen)
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
                                by_repo.insert(repo.clone(), Freeze::in_force(&list, now));
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
                    let (reply, _) = oneshot::channel();
                    let cmd = freeze_command(active, "convoy (freeze lifted)");
                    let _ = tx.send(Input::Command(cmd, reply));
                    tracing::info!(rollout = %id, frozen = key.is_some(), "freeze change applied");
                }
            }
        })
    }

    /// Keeps this replica's share of the work, until `shutdown`: renews
    /// the leases of the rollouts it drives (a task whose lease was taken
    /// over stops at once), takes over rollouts nobody drives any more
    /// (their replica died: the lease expired), starts the next queued
    /// rollout of a branch left without one, and applies inputs other
    /// replicas queued for its rollouts.
    pub fn keep_leases(
        &self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let runtime = self.clone();
        tokio::spawn(async move {
            let replica = runtime.inner.replica.clone();
            let mut last_renew = std::time::Instant::now();
            // The first look for orphans comes one interval after start:
            // `recover` has just done it.
            let mut last_scan = std::time::Instant::now();
            let mut dispatched: HashSet<i64> = HashSet::new();
            let mut strays: HashMap<String, i64> = HashMap::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(INPUT_POLL) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                if last_renew.elapsed() >= replica.renew_every() {
                    last_renew = std::time::Instant::now();
                    runtime.renew(&mut strays).await;
                }
                if last_scan.elapsed() >= replica.scan_every() {
                    last_scan = std::time::Instant::now();
                    match runtime.inner.store.orphaned_rollouts(Utc::now()).await {
                        Ok(ids) => {
                            for id in ids {
                                runtime.take_over(&id).await;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "looking for orphaned rollouts failed")
                        }
                    }
                    match runtime.inner.store.idle_queued_branches().await {
                        Ok(branches) => {
                            for (repo, branch) in branches {
                                if let Err(e) = runtime.start_next(&repo, &branch).await {
                                    tracing::warn!(%repo, %branch, error = %e, "starting a queued rollout failed");
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "looking for queued rollouts failed"),
                    }
                }
                if let Err(e) = runtime.drain_inputs(&mut dispatched).await {
                    tracing::warn!(error = %e, "reading queued rollout inputs failed");
                }
            }
        })
    }

    /// Renews every rollout lease this replica holds; a task whose lease
    /// is gone (taken over while this replica was paused or cut off) is
    /// told to stop. A lease held in this replica's name that no task here
    /// holds, at two renewals in a row (`strays`: those of the last one),
    /// is let go: it is left from before a restart (the replica's name
    /// survives it), and renewing it would keep every replica, this one
    /// included, from ever resuming that rollout.
    async fn renew(&self, strays: &mut HashMap<String, i64>) {
        let replica = &self.inner.replica;
        let until = replica.until(Utc::now());
        let kept = match self
            .inner
            .store
            .renew_leases(LEASE_ROLLOUT, &replica.id, until)
            .await
        {
            Ok(kept) => kept.into_iter().collect::<HashMap<String, i64>>(),
            Err(e) => {
                // Leases run out by themselves; tasks stop acting when
                // theirs is no longer safe.
                tracing::warn!(error = %e, "renewing leases failed");
                return;
            }
        };
        let held: Vec<(RolloutId, Arc<HeldLease>)> = lock(&self.inner.held)
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        let mut unheld = kept.clone();
        for (id, h) in held {
            unheld.remove(id.as_str());
            if kept.get(id.as_str()) == Some(&h.generation) {
                h.extended(until, replica);
            } else {
                h.revoke();
                if let Some(tx) = lock(&self.inner.actors).get(&id).map(|a| a.1.clone()) {
                    let _ = tx.send(Input::LeaseLost);
                }
            }
        }
        // A lease claimed a moment ago for a short decision (a command on
        // an ended rollout) is unheld at one renewal at most.
        let mut next = HashMap::new();
        for (key, generation) in unheld {
            if strays.get(&key) != Some(&generation) {
                next.insert(key, generation);
                continue;
            }
            match self
                .inner
                .store
                .release_lease(LEASE_ROLLOUT, &key, &replica.id, generation)
                .await
            {
                Ok(()) => {
                    tracing::info!(rollout = %key, "let go of a lease no task here holds (left from before a restart)")
                }
                Err(e) => {
                    tracing::warn!(rollout = %key, error = %e, "letting go of a stray lease failed");
                    next.insert(key, generation);
                }
            }
        }
        *strays = next;
    }

    /// Hands inputs that other replicas queued to the tasks here that
    /// drive their rollouts; answers once each is applied and stored.
    async fn drain_inputs(&self, dispatched: &mut HashSet<i64>) -> Result<(), StoreError> {
        let store = &self.inner.store;
        let open = store.open_rollout_inputs(&self.inner.replica.id).await?;
        dispatched.retain(|id| open.iter().any(|(i, _, _)| i == id));
        for (input_id, rollout, json) in open {
            if dispatched.contains(&input_id) {
                continue;
            }
            let Some(tx) = lock(&self.inner.actors).get(&rollout).map(|a| a.1.clone()) else {
                continue; // held for a moment without a task: later.
            };
            let input = match serde_json::from_str::<RemoteInput>(&json) {
                Ok(input) => input,
                Err(e) => {
                    store
                        .answer_rollout_input(
                            input_id,
                            &format!("unreadable input: {e}"),
                            Utc::now(),
                        )
                        .await?;
                    continue;
                }
            };
            dispatched.insert(input_id);
            let (reply, answer) = oneshot::channel();
            let input = match input {
                RemoteInput::Event(event) => Input::AckedEvent(event, reply),
                RemoteInput::Command(cmd) => Input::Command(cmd, reply),
            };
            if tx.send(input).is_ok() {
                let store = store.clone();
                tokio::spawn(async move {
                    // No answer (the task ended first): the input stays
                    // open for whoever drives the rollout next.
                    let text = match answer.await {
                        Ok(Ok(())) => String::new(),
                        Ok(Err(e)) => e.0,
                        Err(_) => return,
                    };
                    if let Err(e) = store
                        .answer_rollout_input(input_id, &text, Utc::now())
                        .await
                    {
                        tracing::warn!(input = input_id, error = %e, "answering a queued input failed");
                    }
                });
            }
        }
        Ok(())
    }

    /// A graceful stop: every rollout task here stops, and every lease and
    /// inbox claim of this replica is given back, so other replicas take
    /// the work at once rather than after the lease.
    pub async fn release_leases(&self) {
        let held: Vec<(RolloutId, Arc<HeldLease>)> = lock(&self.inner.held)
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        for (id, h) in held {
            h.revoke();
            if let Some(tx) = lock(&self.inner.actors).get(&id).map(|a| a.1.clone()) {
                let _ = tx.send(Input::LeaseLost);
            }
        }
        if let Err(e) = self
            .inner
            .store
            .release_all_leases(&self.inner.replica.id, Utc::now())
            .await
        {
            tracing::warn!(error = %e, "releasing leases failed; they expire");
        }
    }

    /// Starts the task that drives a rollout, under its lease `held`.
    fn spawn_actor(
        &self,
        meta: Meta,
        rollout: Rollout,
        held: Arc<HeldLease>,
    ) -> mpsc::UnboundedSender<Input> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.actors).insert(meta.id.clone(), (meta.repo.clone(), tx.clone()));
        lock(&self.inner.held).insert(meta.id.clone(), held);
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
        let Some(held) = lock(&self.inner.held).get(&meta.id).cloned() else {
            lock(&self.inner.actors).remove(&meta.id);
            return;
        };
        let mut lost = false;
        'inputs: while let Some(first) = rx.recv().await {
            // Everything already queued is applied before one persist: under
            // load many driver answers arrive together, and one transaction
            // for all of them is what keeps the database off the critical
            // path.
            let mut batch = Batch::default();
            let mut next = Some(first);
            while let Some(input) = next.take() {
                if matches!(input, Input::LeaseLost) || !held.valid(Utc::now()) {
                    // Another replica may drive it now: not one more write
                    // or driver call from here.
                    lost = true;
                    break 'inputs;
                }
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
            if rollout.state.is_terminal() {
                meta.ended.store(true, std::sync::atomic::Ordering::Release);
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
            let Some(locked) = self.save(&meta.id, &mut write, &held).await else {
                lost = true;
                break;
            };
            let held_locks: HashSet<StepKey> = write
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
            self.execute_with(&tx, &meta, &rollout, batch.effects, &held_locks)
                .await;
            // An abort ends the rollout at once, but the deploys it had in
            // flight go on at the agents: the task stays to see them end
            // (their outcome goes into the history) and keeps their locks
            // until then, so that the branch's next rollout cannot deploy
            // to the same (environment, service) meanwhile (SPEC 6.5).
            // Every command to an ended rollout is refused, so nothing new
            // starts while it waits.
            if (finished || rollout.state.is_terminal())
                && !rollout.steps().any(|s| s.is_in_flight())
            {
                break;
            }
        }
        lock(&self.inner.actors).remove(&meta.id);
        lock(&self.inner.held).remove(&meta.id);
        if lost {
            // Whoever drives it now recovers from the stored state; the
            // lease goes back (if still ours) so that happens at once.
            tracing::warn!(rollout = %meta.id, generation = held.generation, "lease lost; this replica stops driving the rollout");
            self.give_up(&meta.id, &held).await;
            return;
        }
        // Release every lock this rollout may still hold, then let the
        // branch's next rollout go.
        let _ = self.release_all(&meta, &rollout).await;
        if meta.kind == RolloutKind::Deploy
            && let Err(e) = self.start_next(&meta.repo, &meta.branch).await
        {
            tracing::error!(rollout = %meta.id, error = %e, "starting the next rollout failed");
        }
        self.give_up(&meta.id, &held).await;
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
    /// `false` when the lease was lost (nothing written).
    async fn persist(
        &self,
        id: &RolloutId,
        rollout: &mut Rollout,
        changed: &Changed,
        effects: &[Effect],
        held: &HeldLease,
    ) -> bool {
        let mut write = rollout_write(rollout, changed, effects);
        self.save(id, &mut write, held).await.is_some()
    }

    /// Saves under the rollout's lease, retrying until the database
    /// answers; which of `write.lock` this rollout holds now. `None` when
    /// the lease is no longer this replica's (fenced: nothing written).
    async fn save(
        &self,
        id: &RolloutId,
        write: &mut RolloutWrite,
        held: &HeldLease,
    ) -> Option<Vec<bool>> {
        write.fence = Some(held.fence(&self.inner.replica));
        let mut delay = Duration::from_millis(100);
        loop {
            match self.inner.store.save_rollout(id, write, Utc::now()).await {
                Ok(locked) => return Some(locked),
                Err(StoreError::Fenced(what)) => {
                    tracing::warn!(rollout = %id, %what, "write refused: the lease is no longer ours");
                    held.revoke();
                    return None;
                }
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
        let mut preflights = Vec::new();
        for effect in effects {
            match effect {
                Effect::RunPreflight { ref key, .. } => {
                    let job = self.step_job(meta, rollout, std::slice::from_ref(key));
                    preflights.push((job, effect));
                }
                Effect::Deploy { ref key, .. } | Effect::PollStatus { ref key, .. } => {
                    let mut job = self.step_job(meta, rollout, std::slice::from_ref(key));
                    job.locked = held.contains(key);
                    tokio::spawn(job.run_and_answer(effect, tx.clone()));
                }
                Effect::CheckHealth { ref keys, .. }
                | Effect::CheckDependencies {
                    dependencies: ref keys,
                    ..
                } => {
                    let job = self.step_job(meta, rollout, keys);
                    tokio::spawn(job.run_and_answer(effect, tx.clone()));
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
        if !preflights.is_empty() {
            let store = self.inner.store.clone();
            let (repo, tx) = (meta.repo.clone(), tx.clone());
            tokio::spawn(run_preflights(store, repo, preflights, tx));
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
            ended: meta.ended.clone(),
            baseline: None,
            lease: lock(&self.inner.held).get(&meta.id).cloned(),
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
        drop(original);
        self.deliver(id, RemoteInput::Event(event), false, false)
            .await?;
        tracing::info!(rollout = %id, rollback = %rb_id, by, "rollback started");
        Ok(rb_id)
    }
}

/// SPEC 8's terminal states, as stored.
pub fn is_terminal_state(state: &str) -> bool {
    [
        RolloutState::Succeeded,
        RolloutState::Failed,
        RolloutState::Aborted,
        RolloutState::Superseded,
        RolloutState::Noop,
    ]
    .iter()
    .any(|s| s.as_str() == state)
}

/// Whether a stored rollout needs a task: started and unfinished, or ended
/// with steps still in flight (an abort waits for its deploys to end).
fn needs_driving(record: &RolloutRecord) -> bool {
    if record.state == RolloutState::Queued.as_str() {
        return false;
    }
    if !is_terminal_state(&record.state) {
        return true;
    }
    decode(record).is_ok_and(|r| r.draining())
}

/// The engine command that makes a rollout hold `freeze`, or lifts the
/// one it holds (`by` names who lifted it).
fn freeze_command(freeze: Option<Freeze>, by: &str) -> Command {
    match freeze {
        Some(f) => Command::Freeze {
            until: f.until,
            reason: f.reason,
            by: f.by,
        },
        None => Command::Unfreeze { by: by.to_owned() },
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
        | Event::DeployNotSent { key, .. }
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
        let input = match input {
            Input::AckedEvent(event, reply) => {
                // Answered with the commands, once the state is stored.
                self.replies.push(reply);
                Input::Event(event)
            }
            other => other,
        };
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
            // Turned into a plain event above.
            Input::LeaseLost | Input::AckedEvent(..) => return,
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
        draining: rollout.draining(),
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

/// Runs a batch of preflights: the baselines they compare the agents'
/// versions with are read in one query for the whole batch (a wave starts
/// hundreds at once), then each preflight runs in its own task. When the
/// read fails, every preflight of the batch fails as transient, to be
/// retried like any other.
async fn run_preflights(
    store: Arc<dyn Store>,
    repo: RepoName,
    mut preflights: Vec<(StepJob, Effect)>,
    tx: mpsc::UnboundedSender<Input>,
) {
    let keys: Vec<(EnvName, ServiceName)> = preflights
        .iter()
        .filter_map(|(_, effect)| match effect {
            Effect::RunPreflight { key, .. } => {
                Some((key.environment.clone(), key.service.clone()))
            }
            _ => None,
        })
        .collect();
    match store.baselines_of(&repo, &keys).await {
        Ok(baselines) if baselines.len() == preflights.len() => {
            for ((mut job, effect), baseline) in preflights.drain(..).zip(baselines) {
                job.baseline = baseline;
                tokio::spawn(job.run_and_answer(effect, tx.clone()));
            }
        }
        read => {
            let reason = match read {
                Err(e) => format!("convoy's database: {e}"),
                Ok(_) => "convoy's database: baselines read for the wrong steps".to_owned(),
            };
            for (_, effect) in preflights {
                if let Effect::RunPreflight { key, attempt, .. } = effect {
                    let _ = tx.send(Input::Event(Event::Preflight {
                        key,
                        attempt,
                        result: PreflightResult::Failed {
                            reason: reason.clone(),
                            kind: FailureKind::Transient,
                        },
                    }));
                }
            }
        }
    }
}

/// How a deploy's wait for its (environment, service) lock ended.
enum LockWait {
    Locked,
    /// The rollout ended (an abort) meanwhile.
    Ended,
    /// This replica no longer holds the rollout's lease.
    LeaseLost,
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
    /// The rollout has ended ([`Meta::ended`]).
    ended: Arc<std::sync::atomic::AtomicBool>,
    /// For a preflight: the last version convoy deployed to the step's
    /// target, read for the whole batch ([`run_preflights`]).
    baseline: Option<Baseline>,
    /// The rollout's lease: no driver call starts once it is not safe.
    lease: Option<Arc<HeldLease>>,
}

impl StepJob {
    fn lease_ok(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.valid(Utc::now()))
    }

    /// Runs the effect and sends its answer to the rollout's task; or,
    /// when the lease is no longer safe to act under, tells the task to
    /// stop instead of calling the driver.
    async fn run_and_answer(self, effect: Effect, tx: mpsc::UnboundedSender<Input>) {
        if !self.lease_ok() {
            let _ = tx.send(Input::LeaseLost);
            return;
        }
        let lease = self.lease.clone();
        match self.run(effect).await {
            Some(event) => {
                let _ = tx.send(Input::Event(event));
            }
            None if lease.is_some_and(|l| !l.valid(Utc::now())) => {
                let _ = tx.send(Input::LeaseLost);
            }
            None => {}
        }
    }

    async fn run(self, effect: Effect) -> Option<Event> {
        let cx = ExecContext {
            rollout: &self.rollout,
            targets: &self.targets,
            drivers: &self.drivers,
        };
        match &effect {
            Effect::RunPreflight { .. } => {
                let since = self.baseline.as_ref().map(|b| b.at);
                let deployed = self.baseline.clone().map(|b| b.version);
                let event = exec::perform(&cx, &effect, deployed, Utc::now()).await;
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
                let not_sent = || {
                    Some(Event::DeployNotSent {
                        key: key.clone(),
                        attempt: *attempt,
                    })
                };
                if !self.locked {
                    match tokio::time::timeout(budget, self.lock(key)).await {
                        Err(_) => {
                            return Some(Event::StepTimedOut {
                                key: key.clone(),
                                attempt: *attempt,
                            });
                        }
                        // Not this replica's to deploy any more.
                        Ok(LockWait::LeaseLost) => return None,
                        // Nothing was sent: an abort starts no deploy.
                        Ok(LockWait::Ended) => return not_sent(),
                        Ok(LockWait::Locked) => {}
                    }
                }
                if self.ended.load(std::sync::atomic::Ordering::Acquire) {
                    return not_sent();
                }
                if !self.lease_ok() {
                    // The wait outlasted the lease: not this replica's to deploy.
                    return None;
                }
                exec::perform(&cx, &effect, None, Utc::now()).await
            }
            _ => exec::perform(&cx, &effect, None, Utc::now()).await,
        }
    }

    /// Waits until this rollout holds the lock of the step's (environment,
    /// service): two deploys of one target never overlap, whichever
    /// rollouts they belong to; or not, when the rollout ended (an abort)
    /// or its lease was lost meanwhile: then the deploy must not start.
    async fn lock(&self, key: &StepKey) -> LockWait {
        loop {
            if self.ended.load(std::sync::atomic::Ordering::Acquire) {
                return LockWait::Ended;
            }
            if !self.lease_ok() {
                return LockWait::LeaseLost;
            }
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
                // Ended while the lock was taken: checked by the caller,
                // and the lock goes back with the step.
                Ok(true) => return LockWait::Locked,
                Ok(false) => tokio::time::sleep(LOCK_RETRY).await,
                Err(e) => {
                    tracing::warn!(error = %e, "taking the step lock failed; retrying");
                    tokio::time::sleep(LOCK_RETRY).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn owner(store: &Arc<dyn Store>, key: &str) -> Option<String> {
        store
            .lease(LEASE_ROLLOUT, key)
            .await
            .unwrap()
            .and_then(|(owner, _)| owner)
    }

    /// A deploy that waits for its (environment, service) lock, held by
    /// another rollout, is never sent once its own rollout has ended (an
    /// abort): the engine hears that it was not sent.
    #[tokio::test]
    async fn a_deploy_waiting_for_its_lock_is_not_sent_once_the_rollout_ended() {
        use crate::drivers::{
            AgentStatus, Driver, DriverError, Endpoint, PreflightOutcome, StepRequest,
        };
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

        #[derive(Default)]
        struct CountingDriver(AtomicUsize);
        #[async_trait]
        impl Driver for CountingDriver {
            async fn deploy(&self, _: &StepRequest) -> Result<(), DriverError> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            async fn status(
                &self,
                _: &Endpoint,
                _: &ServiceName,
            ) -> Result<AgentStatus, DriverError> {
                Err(DriverError::transient("not asked in this test"))
            }
            async fn preflight(
                &self,
                _: &Endpoint,
                _: &ServiceName,
                _: &crate::domain::CommitSha,
            ) -> Result<PreflightOutcome, DriverError> {
                Err(DriverError::transient("not asked in this test"))
            }
        }

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::SqliteStore::open(&dir.path().join("convoy.db"))
                .await
                .unwrap(),
        );
        let (repo, env, service) = (
            RepoName::new("acme/app"),
            EnvName::new("e1"),
            ServiceName::new("api"),
        );
        let other = RolloutId::new("r-other");
        assert!(
            store
                .try_lock_step(&repo, &env, &service, &other, Utc::now())
                .await
                .unwrap()
        );
        let driver = Arc::new(CountingDriver::default());
        let mut drivers = Drivers::default();
        drivers.insert("fake", driver.clone());
        let ended = Arc::new(AtomicBool::new(false));
        let job = StepJob {
            store,
            drivers,
            rollout: RolloutId::new("r-mine"),
            repo,
            targets: BTreeMap::from([(
                env.clone(),
                EnvTarget {
                    driver: "fake".into(),
                    url: None,
                    labels: BTreeMap::new(),
                    depends_on: Vec::new(),
                },
            )]),
            locked: false,
            ended: ended.clone(),
            baseline: None,
            lease: None,
        };
        let key = StepKey {
            environment: env,
            service,
        };
        let run = tokio::spawn(job.run(Effect::Deploy {
            key: key.clone(),
            attempt: 1,
            version: crate::domain::CommitSha::new("a".repeat(40)),
            deadline: Utc::now() + chrono::Duration::seconds(60),
        }));
        tokio::time::sleep(LOCK_RETRY * 2).await;
        ended.store(true, Ordering::Release);
        let event = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the wait ends with the rollout")
            .unwrap();
        assert!(
            matches!(&event, Some(Event::DeployNotSent { key: k, attempt: 1 }) if *k == key),
            "{event:?}"
        );
        assert_eq!(driver.0.load(Ordering::SeqCst), 0, "nothing deployed");
    }

    /// A restart keeps the replica's name: a lease claimed in it before,
    /// for a rollout no task here drives (its resumption failed), must not
    /// be renewed for ever, or no replica would ever resume that rollout.
    #[tokio::test]
    async fn a_lease_no_task_here_holds_is_let_go_at_the_second_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::SqliteStore::open(&dir.path().join("convoy.db"))
                .await
                .unwrap(),
        );
        let replica = Replica::new("replica-1", Duration::from_secs(15));
        let runtime =
            RolloutRuntime::with_replica(store.clone(), Drivers::default(), None, replica.clone());
        let now = Utc::now();
        store
            .claim_lease(
                LEASE_ROLLOUT,
                "r-stale",
                &replica.id,
                now,
                replica.until(now),
            )
            .await
            .unwrap()
            .unwrap();
        // One claimed here stays, with a task or held for a decision that
        // waits (for the admission lock) across renewals.
        let driven = RolloutId::new("r-driven");
        let held = runtime.claim(&driven).await.unwrap();

        let mut strays = HashMap::new();
        runtime.renew(&mut strays).await;
        assert_eq!(owner(&store, "r-stale").await.as_deref(), Some("replica-1"));
        runtime.renew(&mut strays).await;
        assert_eq!(owner(&store, "r-stale").await, None, "let go");
        assert_eq!(
            owner(&store, "r-driven").await.as_deref(),
            Some("replica-1")
        );
        runtime.renew(&mut strays).await;
        assert_eq!(
            owner(&store, "r-driven").await.as_deref(),
            Some("replica-1")
        );
        // Given up, it is neither held nor renewed any more.
        runtime.give_up(&driven, &held).await;
        assert!(!lock(&runtime.inner.held).contains_key(&driven));
        assert_eq!(owner(&store, "r-driven").await, None);
    }
}

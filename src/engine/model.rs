//! The engine's data: a rollout's state (serializable, stored as JSON by the
//! runtime), the events it reacts to, the commands humans give and the
//! effects it asks the runtime to carry out.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{CommitSha, EnvName, ServiceName, WaveName};
use crate::plan::model::{EnvTarget, FailureBudget, Plan, Risk, RolloutPolicy, StepKey};

/// Rollout states of SPEC 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Queued,
    Running,
    AwaitingApproval,
    Frozen,
    Paused,
    Halted,
    Succeeded,
    Failed,
    Aborted,
    Superseded,
    Noop,
}

impl RolloutState {
    /// A terminal state never changes again by itself; only `retry` can take
    /// a `failed` rollout back to running.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded
                | RolloutState::Failed
                | RolloutState::Aborted
                | RolloutState::Superseded
                | RolloutState::Noop
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Queued => "queued",
            RolloutState::Running => "running",
            RolloutState::AwaitingApproval => "awaiting_approval",
            RolloutState::Frozen => "frozen",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Failed => "failed",
            RolloutState::Aborted => "aborted",
            RolloutState::Superseded => "superseded",
            RolloutState::Noop => "noop",
        }
    }
}

/// Step states of SPEC 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Preflight,
    Deploying,
    Verifying,
    Succeeded,
    Failed,
    Skipped,
    RolledBack,
}

impl StepState {
    /// Succeeded, failed, skipped or rolled back: nothing more will happen
    /// to the step unless a human retries it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Succeeded | StepState::Failed | StepState::Skipped | StepState::RolledBack
        )
    }

    /// Whether steps waiting for this one may start.
    pub fn satisfies_dependents(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Skipped)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Preflight => "preflight",
            StepState::Deploying => "deploying",
            StepState::Verifying => "verifying",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::RolledBack => "rolled_back",
        }
    }
}

/// Where a wave is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WavePhase {
    /// Not yet started (maybe waiting for approval or a freeze to end).
    Pending,
    Running,
    /// Every step ended; health is being watched until `bake_until`.
    Baking,
    Done,
}

/// One step of a rollout: (environment, service) and what happened to it.
/// Stored compactly (empty fields are left out) because a rollout over
/// thousands of environments is written often.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    pub environment: EnvName,
    pub service: ServiceName,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits_for: Vec<StepKey>,
    pub state: StepState,
    /// Attempts over the rollout's whole life (shown to humans; also the
    /// `attempt` sent to the agent, so it only ever grows).
    pub attempts: u32,
    /// Attempts since the step last started fresh (a retry command resets
    /// this); transient failures are retried while it is `<= retries`.
    pub run_attempts: u32,
    /// The version this step deploys.
    pub version: CommitSha,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Something worth showing that is not an error, such as a drift that
    /// was overwritten or the reason a step was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Set while a pending step waits out a retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// While verifying: when the step times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_deadline: Option<DateTime<Utc>>,
    /// While deploying: when the agent must have accepted the deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_deadline: Option<DateTime<Utc>>,
    /// After a restart, an in-flight step is re-verified first and only
    /// redeployed when the agent is not already at the target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovering: bool,
    /// Set when the step failed without starting because a step it waits
    /// for failed; retrying or skipping that one brings this one back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<StepKey>,
    /// Failed because its environment drifted and `on_drift` is `halt`
    /// (or because a step it waits for did): the step is held for a human
    /// (`adopt`, `resync`, `retry`), not broken, so it does not count
    /// against the wave's failure budget. One hot-fixed environment must
    /// neither be overwritten nor stop the rest of the fleet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held_for_drift: bool,
}

impl StepRun {
    pub fn key(&self) -> StepKey {
        StepKey {
            environment: self.environment.clone(),
            service: self.service.clone(),
        }
    }

    /// Occupies a `max_parallel` slot: preflight, deploying, verifying, or
    /// waiting out a retry backoff.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            StepState::Preflight | StepState::Deploying | StepState::Verifying
        ) || (self.state == StepState::Pending && self.retry_at.is_some())
    }

    /// A driver call is outstanding for this step.
    pub fn is_in_flight(&self) -> bool {
        matches!(
            self.state,
            StepState::Preflight | StepState::Deploying | StepState::Verifying
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaveRun {
    pub name: WaveName,
    pub environments: Vec<EnvName>,
    pub max_parallel: u32,
    pub failure_budget: FailureBudget,
    #[serde(with = "crate::plan::model::duration_secs")]
    pub bake: Duration,
    pub approval: bool,
    pub phase: WavePhase,
    pub approved_by: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub bake_until: Option<DateTime<Utc>>,
    /// Health-check rounds done during the current bake.
    pub bake_round: u32,
    pub steps: Vec<StepRun>,
}

impl WaveRun {
    /// Failed steps this wave tolerates (SPEC 6.1: a percent is a share of
    /// the wave's steps, rounded down).
    pub fn allowed_failures(&self) -> usize {
        self.failure_budget.allowed(self.steps.len())
    }

    /// Failed steps that count against the budget (not those held for
    /// drift).
    pub fn failed_steps(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.state == StepState::Failed && !s.held_for_drift)
            .count()
    }

    pub fn over_budget(&self) -> bool {
        self.failed_steps() > self.allowed_failures()
    }
}

/// A per-repository emergency freeze (`/convoy freeze`): no new step starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencyFreeze {
    pub by: String,
    pub reason: Option<String>,
    /// `None`: until unfrozen.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    pub wave: WaveName,
    pub at: DateTime<Utc>,
    pub failed: usize,
    pub allowed: usize,
}

/// A rollout in progress or finished: the plan plus everything that
/// happened. The runtime stores it whole (JSON) or per step, and feeds it to
/// [`crate::engine::handle`] / [`crate::engine::command`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub commit: CommitSha,
    pub previous_commit: Option<CommitSha>,
    pub affected_services: Vec<ServiceName>,
    pub targets: BTreeMap<EnvName, EnvTarget>,
    pub policy: RolloutPolicy,
    pub risk: Risk,
    pub state: RolloutState,
    pub waves: Vec<WaveRun>,
    /// Index of the first wave that is not done.
    pub current_wave: usize,
    pub paused_by: Option<String>,
    pub emergency_freeze: Option<EmergencyFreeze>,
    pub halt: Option<Halt>,
    /// A newer rollout took over (SPEC 6.5 `supersede`): start nothing new,
    /// end `superseded` when in-flight steps are done.
    pub superseded_by: Option<String>,
    pub aborted_by: Option<String>,
    /// The freeze window the next wave, or the running wave's steps not yet
    /// started, wait for (for the waiting reason; checked before every step
    /// starts, SPEC 6.3).
    pub frozen_until: Option<DateTime<Utc>>,
    pub frozen_reason: Option<String>,
    /// Set once the automatic rollback of a halted wave was asked for, so it
    /// is asked for once.
    pub auto_rollback_done: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Lookup tables derived from `waves` (never stored; rebuilt on demand).
    #[serde(skip)]
    pub(crate) index: Index,
}

/// Derived lookups that keep one event's work proportional to what is in
/// progress rather than to the size of the fleet: step positions by key,
/// each wave's steps grouped by environment (in wave order), and how far
/// each wave has got. Never serialized; [`Index::default`] means "not
/// built", and any change to which steps are pending throws it away.
#[derive(Clone, Default)]
pub(crate) struct Index {
    pub(crate) built: bool,
    pub(crate) pos: HashMap<StepKey, (usize, usize)>,
    /// Per wave: groups of step indices, one group per environment.
    pub(crate) groups: Vec<Vec<Vec<usize>>>,
    /// Per wave: groups before this one have only terminal steps.
    pub(crate) cursor: Vec<usize>,
    /// Per wave: groups after this one were never started.
    pub(crate) frontier: Vec<usize>,
}

impl Index {
    pub(crate) fn build(waves: &[WaveRun]) -> Index {
        let mut pos = HashMap::new();
        let mut groups = Vec::with_capacity(waves.len());
        let mut frontier = Vec::with_capacity(waves.len());
        for (w, wave) in waves.iter().enumerate() {
            let mut order: HashMap<&EnvName, usize> = HashMap::new();
            let mut g: Vec<Vec<usize>> = Vec::new();
            for env in &wave.environments {
                if !order.contains_key(env) {
                    order.insert(env, g.len());
                    g.push(Vec::new());
                }
            }
            for (i, s) in wave.steps.iter().enumerate() {
                pos.entry(s.key()).or_insert((w, i));
                let n = *order.entry(&s.environment).or_insert_with(|| {
                    g.push(Vec::new());
                    g.len() - 1
                });
                g[n].push(i);
            }
            g.retain(|steps| !steps.is_empty());
            let front = g
                .iter()
                .rposition(|steps| {
                    steps.iter().any(|&i| {
                        wave.steps[i].attempts > 0 || wave.steps[i].state != StepState::Pending
                    })
                })
                .unwrap_or(0);
            frontier.push(front);
            groups.push(g);
        }
        Index {
            built: true,
            pos,
            cursor: vec![0; waves.len()],
            groups,
            frontier,
        }
    }
}

impl PartialEq for Index {
    /// Derived data: two rollouts are equal whatever their caches hold.
    fn eq(&self, _: &Index) -> bool {
        true
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.built {
            "Index(built)"
        } else {
            "Index(empty)"
        })
    }
}

impl Rollout {
    /// Builds the lookup tables if they are missing.
    pub(crate) fn ensure_index(&mut self) {
        if !self.index.built {
            self.index = Index::build(&self.waves);
        }
    }

    /// Throws the lookup tables away (after steps went back to pending).
    pub(crate) fn invalidate_index(&mut self) {
        self.index = Index::default();
    }

    /// A queued rollout for `plan`; send [`Event::Start`] to run it.
    pub fn new(plan: Plan) -> Rollout {
        let version = plan.commit.clone();
        let waves = plan
            .waves
            .into_iter()
            .map(|w| WaveRun {
                name: w.name,
                environments: w.environments,
                max_parallel: w.max_parallel.max(1),
                failure_budget: w.failure_budget,
                bake: w.bake,
                approval: w.approval,
                phase: WavePhase::Pending,
                approved_by: None,
                started_at: None,
                finished_at: None,
                bake_until: None,
                bake_round: 0,
                steps: w
                    .steps
                    .into_iter()
                    .map(|s| StepRun {
                        environment: s.environment,
                        service: s.service,
                        waits_for: s.waits_for,
                        state: StepState::Pending,
                        attempts: 0,
                        run_attempts: 0,
                        version: version.clone(),
                        error: None,
                        note: None,
                        started_at: None,
                        finished_at: None,
                        retry_at: None,
                        verify_deadline: None,
                        deploy_deadline: None,
                        recovering: false,
                        held_for_drift: false,
                        blocked_by: None,
                    })
                    .collect(),
            })
            .collect();
        Rollout {
            commit: plan.commit,
            previous_commit: plan.previous_commit,
            affected_services: plan.affected_services,
            targets: plan.targets,
            policy: plan.policy,
            risk: plan.risk,
            state: RolloutState::Queued,
            waves,
            current_wave: 0,
            paused_by: None,
            emergency_freeze: None,
            halt: None,
            superseded_by: None,
            aborted_by: None,
            frozen_until: None,
            frozen_reason: None,
            auto_rollback_done: false,
            started_at: None,
            finished_at: None,
            index: Index::default(),
        }
    }

    pub fn step_count(&self) -> usize {
        self.waves.iter().map(|w| w.steps.len()).sum()
    }

    /// Finds a step by key: (wave index, step index).
    pub fn find(&self, key: &StepKey) -> Option<(usize, usize)> {
        if self.index.built {
            return self.index.pos.get(key).copied();
        }
        self.waves.iter().enumerate().find_map(|(w, wave)| {
            wave.steps
                .iter()
                .position(|s| s.environment == key.environment && s.service == key.service)
                .map(|i| (w, i))
        })
    }

    pub fn step(&self, key: &StepKey) -> Option<&StepRun> {
        self.find(key).map(|(w, i)| &self.waves[w].steps[i])
    }

    pub fn steps(&self) -> impl Iterator<Item = &StepRun> {
        self.waves.iter().flat_map(|w| w.steps.iter())
    }

    /// Ended (an abort) with steps still in flight: it needs a task until
    /// they end, and keeps their locks until then.
    pub fn draining(&self) -> bool {
        self.state.is_terminal() && self.steps().any(|s| s.is_in_flight())
    }

    /// Every environment that has a step in this rollout, in plan order.
    pub fn environments(&self) -> Vec<&EnvName> {
        let mut seen = std::collections::BTreeSet::new();
        self.waves
            .iter()
            .flat_map(|w| w.environments.iter())
            .filter(|e| seen.insert(*e))
            .collect()
    }

    /// SPEC 6.8: the environments this rollout touched — every environment
    /// where one of its steps was attempted; never-started ones are left
    /// alone. In plan order.
    pub fn touched_environments(&self) -> Vec<EnvName> {
        let mut seen = std::collections::BTreeSet::new();
        self.steps()
            .filter(|s| s.attempts > 0 && seen.insert(s.environment.clone()))
            .map(|s| s.environment.clone())
            .collect()
    }

    /// The environments of one wave this rollout touched.
    pub fn touched_in_wave(&self, wave: usize) -> Vec<EnvName> {
        let mut seen = std::collections::BTreeSet::new();
        self.waves
            .get(wave)
            .into_iter()
            .flat_map(|w| w.steps.iter())
            .filter(|s| s.attempts > 0 && seen.insert(s.environment.clone()))
            .map(|s| s.environment.clone())
            .collect()
    }
}

/// Inputs the engine must not produce itself: the time and randomness.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ctx {
    pub now: DateTime<Utc>,
    /// A uniformly random number in `[0, 1]` drawn by the runtime; spreads
    /// retry backoffs. `0.5` gives the nominal delay exactly.
    pub jitter: f64,
}

impl Ctx {
    pub fn at(now: DateTime<Utc>) -> Ctx {
        Ctx { now, jitter: 0.5 }
    }
}

/// How a driver call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Worth retrying: 5xx, timeout, refused connection, exit 1–125.
    Transient,
    /// Not worth retrying: 4xx, a listed permanent exit code.
    Permanent,
}

/// What the agent reported for one (environment, service).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub version: Option<String>,
    pub healthy: bool,
    pub message: Option<String>,
}

/// What the runtime learned from a step's preflight (SPEC 6.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PreflightResult {
    /// Reachable, and the agent's own preflight (if any) agreed.
    Passed {
        /// The version the agent runs now (`None`: never deployed there).
        running: Option<String>,
        /// The last version convoy deployed there (`None`: no history);
        /// a difference from `running` is drift (SPEC 6.6).
        baseline: Option<String>,
        /// When that drift began as far as convoy knows: when it first saw
        /// it, else when the baseline was written. For the message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<DateTime<Utc>>,
    },
    /// Unreachable, the agent said no, or similar.
    Failed { reason: String, kind: FailureKind },
}

/// Things that happen to a rollout that no human asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A queued rollout may run (it was admitted, or the one ahead ended).
    Start,
    /// The runtime restarted: re-issue what was in flight (SPEC 6.9).
    Recover,
    /// Re-evaluate holds (freeze windows) without anything else happening.
    Tick,
    Preflight {
        key: StepKey,
        attempt: u32,
        result: PreflightResult,
    },
    /// Health of the steps a starting step waits for (answer to
    /// [`Effect::CheckDependencies`]).
    DependencyHealth {
        key: StepKey,
        attempt: u32,
        results: Vec<(StepKey, HealthReport)>,
    },
    DeployAccepted {
        key: StepKey,
        attempt: u32,
    },
    DeployFailed {
        key: StepKey,
        attempt: u32,
        kind: FailureKind,
        error: String,
    },
    /// The deploy was never sent: the rollout ended (an abort) while it
    /// waited for its (environment, service) lock. Nothing was attempted.
    DeployNotSent {
        key: StepKey,
        attempt: u32,
    },
    /// The runtime gave up waiting on a driver call (preflight or deploy).
    StepTimedOut {
        key: StepKey,
        attempt: u32,
    },
    /// A status poll of a verifying (or recovering) step answered.
    Status {
        key: StepKey,
        attempt: u32,
        report: HealthReport,
    },
    /// A status poll could not reach the agent; the step keeps polling
    /// until its verify deadline.
    StatusUnavailable {
        key: StepKey,
        attempt: u32,
        error: String,
    },
    TimerFired {
        timer: Timer,
    },
    /// Health of a baking wave's steps (answer to [`Effect::CheckHealth`]).
    BakeHealth {
        wave: usize,
        round: u32,
        results: Vec<(StepKey, HealthReport)>,
    },
    /// A newer rollout of the same repository and branch supersedes this one.
    Superseded {
        by: String,
    },
    /// A rollback rollout now covers these environments: their attempted
    /// steps become `rolled_back`.
    RolledBack {
        environments: Vec<EnvName>,
    },
}

/// What humans ask for (slash commands, buttons, `convoy freeze`). Who may
/// ask is checked before (commands issue); whether it makes sense now is
/// checked here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Approve {
        wave: Option<WaveName>,
        by: String,
    },
    Pause {
        by: String,
    },
    Resume {
        by: String,
    },
    Abort {
        by: String,
    },
    /// Empty `environments`: every failed step.
    Retry {
        environments: Vec<EnvName>,
        by: String,
    },
    Skip {
        environments: Vec<EnvName>,
        by: String,
    },
    Freeze {
        until: Option<DateTime<Utc>>,
        reason: Option<String>,
        by: String,
    },
    Unfreeze {
        by: String,
    },
}

/// Timers the engine asks for; the runtime stores them and sends
/// [`Event::TimerFired`] at `at`. A timer that no longer matches the state
/// (an old attempt, a freeze lifted) is ignored, so firing one twice or late
/// is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "timer", rename_all = "snake_case")]
pub enum Timer {
    /// A backoff ended: start attempt `attempt` of the step.
    Retry { key: StepKey, attempt: u32 },
    /// Poll the status of a verifying step again.
    Poll { key: StepKey, attempt: u32 },
    /// Next health check of a baking wave (the last round ends the bake).
    Bake { wave: usize, round: u32 },
    /// A freeze window ends.
    FreezeEnd,
    /// An emergency freeze with a duration ends.
    EmergencyFreezeEnd,
}

/// How soon a change should reach GitHub (SPEC 7.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// Only counts changed: at most every `progress_interval`.
    CountsOnly,
    /// A failure, a wave starting or ending: within `min_update_interval`.
    Matters,
    /// Waiting for humans or time (approval, freeze, halt, pause).
    Waiting,
    /// The rollout ended: at once.
    Terminal,
}

/// What the runtime must do after persisting the new state, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// The first part of a step's preflight when it waits for other steps
    /// (SPEC 6.3 "dependencies healthy"): ask the status of `dependencies`,
    /// the steps it waits for that this rollout deployed, and answer with
    /// [`Event::DependencyHealth`]. The engine judges the answer and then
    /// asks for [`Effect::RunPreflight`]. One status call per dependency.
    CheckDependencies {
        key: StepKey,
        attempt: u32,
        dependencies: Vec<StepKey>,
    },
    /// Reachable? what runs there? the agent's own preflight. Answer with
    /// [`Event::Preflight`].
    RunPreflight {
        key: StepKey,
        attempt: u32,
        version: CommitSha,
    },
    /// Deploy `version`; answer with `DeployAccepted`/`DeployFailed`/
    /// `StepTimedOut` (the runtime bounds the call by `deadline`).
    Deploy {
        key: StepKey,
        attempt: u32,
        version: CommitSha,
        deadline: DateTime<Utc>,
    },
    /// Ask for status now; answer with `Status` or `StatusUnavailable`.
    PollStatus {
        key: StepKey,
        attempt: u32,
    },
    /// Ask for the health of these steps; answer with `BakeHealth`.
    CheckHealth {
        wave: usize,
        round: u32,
        keys: Vec<StepKey>,
    },
    ScheduleTimer {
        at: DateTime<Utc>,
        timer: Timer,
    },
    /// One attempt ended: history for last-known-good and risk (SPEC 6.7,
    /// 6.8). `succeeded` is whether the attempt reached the target healthy.
    RecordAttempt {
        key: StepKey,
        version: CommitSha,
        attempt: u32,
        succeeded: bool,
        error: Option<String>,
    },
    /// Drift found at preflight (SPEC 6.6), and what `on_drift` made of it.
    DriftDetected {
        key: StepKey,
        expected: String,
        found: String,
        action: crate::plan::model::OnDrift,
    },
    /// Roll these environments back (auto_rollback on halt, SPEC 6.8).
    StartRollback {
        wave: WaveName,
        environments: Vec<EnvName>,
    },
    /// The comment and check run should show the new state.
    Report {
        importance: Importance,
    },
    /// The rollout reached a terminal state: release the branch's slot (the
    /// next queued rollout may start).
    Finished {
        state: RolloutState,
    },
}

/// A command that makes no sense now, with a message fit for a reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub String);

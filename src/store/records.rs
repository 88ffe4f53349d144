//! Records of the rollout side: what the runtime persists about rollouts,
//! their timers, deploy history, baselines and step locks.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    BranchName, CommitSha, EnvName, InstallationId, RepoName, RolloutId, ServiceName,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutKind {
    /// A merge rolled out.
    Deploy,
    /// `/convoy rollback` or auto_rollback: last known good versions.
    Rollback,
    /// `/convoy resync`: the desired version again where it drifted.
    Resync,
}

impl RolloutKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RolloutKind::Deploy => "deploy",
            RolloutKind::Rollback => "rollback",
            RolloutKind::Resync => "resync",
        }
    }

    pub fn parse(text: &str) -> RolloutKind {
        match text {
            "rollback" => RolloutKind::Rollback,
            "resync" => RolloutKind::Resync,
            _ => RolloutKind::Deploy,
        }
    }
}

/// A rollout as stored. `document` is the engine's state, as JSON: whole
/// when read (the store puts header, targets and steps back together) and
/// whole when given to `create_rollout` (the store splits it).
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutRecord {
    pub id: RolloutId,
    pub repo: RepoName,
    pub branch: BranchName,
    pub commit: CommitSha,
    pub previous_commit: Option<CommitSha>,
    pub pull_request: Option<u64>,
    pub installation: Option<InstallationId>,
    pub kind: RolloutKind,
    pub parent: Option<RolloutId>,
    /// One of SPEC 8's rollout states.
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub document: Option<String>,
    /// Why the rollout could not be planned (e.g. convoy.yml errors).
    pub error: Option<String>,
}

/// The short form for lists (`GET /api/rollouts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RolloutSummary {
    pub id: RolloutId,
    pub repo: RepoName,
    pub commit: CommitSha,
    pub pull_request: Option<u64>,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Whether `create_rollout` made a new rollout or found the one for the
/// same (repository, branch, commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    New,
    Existing(RolloutId),
}

/// One deploy attempt, for history, last known good and risk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub environment: EnvName,
    pub service: ServiceName,
    pub version: CommitSha,
    pub attempt: u32,
    pub succeeded: bool,
    pub error: Option<String>,
}

/// A timer as stored: the engine's timer serialized as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTimer {
    pub at: DateTime<Utc>,
    pub timer: String,
}

/// Everything one engine step changes, written in one transaction before any
/// of its effects is acted on.
#[derive(Clone, Debug, Default)]
pub struct RolloutWrite {
    pub state: String,
    /// The rollout's header: the engine's `Rollout` as JSON with `targets`
    /// empty and every wave's `steps` and `environments` empty. Those live
    /// apart (targets and environments written once at creation, steps one
    /// row each), so an event costs what it changed, not the size of the
    /// fleet.
    pub document: String,
    /// The steps that changed, each replacing the stored one at its place.
    pub steps: Vec<StoredStep>,
    pub timers: Vec<StoredTimer>,
    pub attempts: Vec<AttemptRecord>,
    /// Timers that fired and were handled (their JSON), deleted.
    pub fired: Vec<String>,
    /// (environment, service) locks to release: their steps are no longer
    /// deploying or verifying. Released before `lock` is taken.
    pub unlock: Vec<(EnvName, ServiceName)>,
    /// (environment, service) locks to take for deploys this write starts;
    /// `save_rollout` answers, in this order, which it got (another
    /// rollout may hold one). Taking them here rather than one transaction
    /// each is what keeps writes per step near zero.
    pub lock: Vec<(EnvName, ServiceName)>,
    /// The rollout has ended with deploys still in flight (an abort): it
    /// keeps its step locks, and is driven again after a restart, until
    /// they end.
    pub draining: bool,
    /// When set, the write happens only under this lease (several
    /// replicas): a replica that lost the rollout writes nothing.
    pub fence: Option<super::Fence>,
}

/// One step of a rollout as stored: its place (wave index, index in the
/// wave) and the engine's `StepRun` as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredStep {
    pub wave: u32,
    pub idx: u32,
    pub step: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Baseline {
    pub version: String,
    /// deployed | adopted | pinned
    pub source: String,
    pub at: DateTime<Utc>,
}

/// First-attempt outcomes of an environment's recent deploys (SPEC 6.7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirstAttempts {
    pub successes: u32,
    pub attempts: u32,
}

/// An emergency freeze of one repository or (scope `*`) of all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Freeze {
    pub scope: String,
    pub until: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub by: String,
    pub at: DateTime<Utc>,
}

impl Freeze {
    /// The scope that freezes every repository.
    pub const ALL: &'static str = "*";

    pub fn active(&self, now: DateTime<Utc>) -> bool {
        self.until.is_none_or(|u| u > now)
    }

    /// Of a repository's stored freezes (its own and `*`), the one in force
    /// at `now` that lasts longest (one without an end first). That is the
    /// one its rollouts hold: a rollout holds one freeze, and the one that
    /// ends last is when it may start steps again, whichever scope set it.
    pub fn in_force(freezes: &[Freeze], now: DateTime<Utc>) -> Option<Freeze> {
        freezes
            .iter()
            .filter(|f| f.active(now))
            .max_by_key(|f| (f.until.is_none(), f.until))
            .cloned()
    }
}

/// A baseline with the (repository, environment, service) it belongs to,
/// as the drift reconciler reads them all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredBaseline {
    pub repo: RepoName,
    pub environment: EnvName,
    pub service: ServiceName,
    pub baseline: Baseline,
}

/// What a drift record is about (SPEC 6.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The agent runs something other than the baseline.
    Drift,
    /// The agent did not answer; says nothing about drift.
    Unreachable,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Drift => "drift",
            DriftKind::Unreachable => "unreachable",
        }
    }

    pub fn parse(text: &str) -> DriftKind {
        match text {
            "unreachable" => DriftKind::Unreachable,
            _ => DriftKind::Drift,
        }
    }
}

/// One observation to record: opens a record, or updates the open one of
/// the same (environment, service, kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriftObservation {
    pub environment: EnvName,
    pub service: ServiceName,
    pub kind: DriftKind,
    pub expected: String,
    /// What runs there (`Drift`); `None` for `Unreachable`.
    pub found: Option<String>,
    /// The error (`Unreachable`).
    pub detail: Option<String>,
}

/// A drift record as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DriftRecord {
    pub id: i64,
    pub repo: RepoName,
    pub environment: EnvName,
    pub service: ServiceName,
    pub kind: DriftKind,
    pub expected: String,
    pub found: Option<String>,
    pub detail: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// adopted | resynced | overwritten | converged | reachable
    pub resolution: Option<String>,
    /// A GitHub login, or `convoy` / `rollout ID` for convoy's own.
    pub resolved_by: Option<String>,
}

impl DriftRecord {
    pub fn is_open(&self) -> bool {
        self.resolved_at.is_none()
    }
}

//! What a plan *is*: the planner's output and the engine's input. This file
//! is the contract between `plan` (which fills it, purely, from `convoy.yml`,
//! the changed paths and the history) and `engine` (which runs it). Keep it
//! plain data: no I/O, no clocks.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc, Weekday};
use serde::{Deserialize, Serialize};

use crate::domain::{CommitSha, EnvName, ServiceName, WaveName};

/// A whole rollout's plan: which steps, in which waves, under which policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub commit: CommitSha,
    /// The last commit successfully rolled out on the branch; `None` on the
    /// first rollout (then every service is affected).
    pub previous_commit: Option<CommitSha>,
    pub affected_services: Vec<ServiceName>,
    /// Waves in the order they run; the implicit `rest` wave is last when
    /// it has environments, and absent otherwise.
    pub waves: Vec<PlannedWave>,
    /// How to reach each environment that has at least one step.
    pub targets: BTreeMap<EnvName, EnvTarget>,
    pub policy: RolloutPolicy,
    pub risk: Risk,
}

impl Plan {
    /// Total number of steps over all waves.
    pub fn step_count(&self) -> usize {
        self.waves.iter().map(|w| w.steps.len()).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedWave {
    pub name: WaveName,
    /// Environments of this wave, in the stable order (ascending SHA-256 of
    /// the name).
    pub environments: Vec<EnvName>,
    /// Counted in environments in progress at once.
    pub max_parallel: u32,
    pub failure_budget: FailureBudget,
    #[serde(with = "duration_secs")]
    pub bake: Duration,
    pub approval: bool,
    /// Every affected service × every environment of this wave hosting it.
    pub steps: Vec<PlannedStep>,
}

/// One (environment, service) deploy and what must succeed before it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub environment: EnvName,
    pub service: ServiceName,
    /// Steps that must have succeeded (or been skipped) first: the same
    /// environment's `depends_on` services that are in the plan, and every
    /// step of each `depends_on` environment. Always in this wave or an
    /// earlier one.
    pub waits_for: Vec<StepKey>,
}

impl PlannedStep {
    pub fn key(&self) -> StepKey {
        StepKey {
            environment: self.environment.clone(),
            service: self.service.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StepKey {
    pub environment: EnvName,
    pub service: ServiceName,
}

/// How many failed steps a wave tolerates before the rollout halts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum FailureBudget {
    Count(u32),
    /// Share of the wave's steps, 0–100, rounded down.
    Percent(u32),
}

impl Default for FailureBudget {
    fn default() -> Self {
        FailureBudget::Count(0)
    }
}

impl FailureBudget {
    /// Failed steps a wave of `steps` steps may have without halting; it
    /// halts when its failures *exceed* this.
    pub fn allowed(&self, steps: usize) -> usize {
        match *self {
            FailureBudget::Count(n) => n as usize,
            FailureBudget::Percent(p) => steps * p as usize / 100,
        }
    }
}

/// Where and through which operator-defined driver an environment is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvTarget {
    pub driver: String,
    /// Base URL for `http-agent` drivers.
    pub url: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub depends_on: Vec<EnvName>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnDrift {
    #[default]
    Halt,
    Overwrite,
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    #[default]
    Queue,
    Supersede,
}

/// `policy:` of `convoy.yml` with every default applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    pub retries: u32,
    #[serde(with = "duration_secs")]
    pub backoff: Duration,
    #[serde(with = "duration_secs")]
    pub deploy_timeout: Duration,
    #[serde(with = "duration_secs")]
    pub verify_timeout: Duration,
    #[serde(with = "duration_secs")]
    pub poll_interval: Duration,
    pub max_parallel: u32,
    pub on_drift: OnDrift,
    pub auto_rollback: bool,
    pub concurrency: Concurrency,
    /// Empty: the repository's default branch.
    pub branches: Vec<String>,
    pub assumed_success: f64,
    /// Logins and `@org/team`; empty: anyone with write.
    pub approvers: Vec<String>,
    pub forbid_self_approval: bool,
    pub freeze: Vec<FreezeWindow>,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            retries: 2,
            backoff: Duration::from_secs(10),
            deploy_timeout: Duration::from_secs(600),
            verify_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            max_parallel: 10,
            on_drift: OnDrift::Halt,
            auto_rollback: false,
            concurrency: Concurrency::Queue,
            branches: Vec::new(),
            assumed_success: 0.99,
            approvers: Vec::new(),
            forbid_self_approval: false,
            freeze: Vec::new(),
        }
    }
}

/// A time during which no new wave starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FreezeWindow {
    Absolute {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reason: Option<String>,
    },
    /// Every listed weekday, from `from` to `to` local time in `tz` (an IANA
    /// name, validated when parsed).
    Weekly {
        days: Vec<Weekday>,
        from: NaiveTime,
        to: NaiveTime,
        tz: String,
        reason: Option<String>,
    },
}

/// The risk estimate of SPEC 6.7.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Risk {
    pub steps: usize,
    pub first_attempt_failure: f64,
    pub needs_human: f64,
    /// The five environments with the lowest p, lowest first.
    pub riskiest: Vec<EnvRisk>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvRisk {
    pub environment: EnvName,
    pub p: f64,
}

/// Serializes a `Duration` as whole seconds (fractions are not used in
/// `convoy.yml`).
pub mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_budget_rounds_down() {
        assert_eq!(FailureBudget::Percent(2).allowed(100), 2);
        assert_eq!(FailureBudget::Percent(2).allowed(99), 1);
        assert_eq!(FailureBudget::Percent(2).allowed(49), 0);
        assert_eq!(FailureBudget::Count(3).allowed(1), 3);
    }
}

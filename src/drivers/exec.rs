//! Carrying out the engine's driver effects: one async call per effect, its
//! outcome turned into the engine event that answers it. The runtime calls
//! [`perform`] for each effect *after* persisting the state that produced
//! it, and feeds the returned event back to [`crate::engine::handle`].
//!
//! Kept apart from the engine (pure) and from the runtime (persistence,
//! timers, locks): this is the only place that knows how a preflight is
//! composed from driver calls (SPEC 6.3) and how driver errors become
//! transient or permanent step failures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;

use super::{Driver, DriverError, Drivers, Endpoint, PreflightOutcome, StepRequest};
use crate::domain::{CommitSha, EnvName, RolloutId};
use crate::engine::{Effect, Event, FailureKind, HealthReport, PreflightResult};
use crate::plan::model::{EnvTarget, StepKey};

/// How many status calls one bake health round makes at once.
pub const HEALTH_CHECK_CONCURRENCY: usize = 32;

/// What [`perform`] needs to know about the rollout.
pub struct ExecContext<'a> {
    pub rollout: &'a RolloutId,
    /// `Rollout::targets`: which driver and URL each environment uses.
    pub targets: &'a BTreeMap<EnvName, EnvTarget>,
    pub drivers: &'a Drivers,
}

impl ExecContext<'_> {
    fn resolve(&self, key: &StepKey) -> Result<(Arc<dyn Driver>, Endpoint), DriverError> {
        let target = self.targets.get(&key.environment).ok_or_else(|| {
            DriverError::permanent(format!(
                "environment `{}` has no target in the plan",
                key.environment
            ))
        })?;
        let driver = self.drivers.get(&target.driver)?;
        Ok((
            driver,
            Endpoint {
                environment: key.environment.clone(),
                url: target.url.clone(),
            },
        ))
    }
}

/// Carries out a driver effect (`CheckDependencies`, `RunPreflight`,
/// `Deploy`, `PollStatus`, `CheckHealth`) and returns the event that answers it; `None` for effects
/// that are not driver calls (timers, reports, history — the runtime's).
///
/// `baseline` is the last version convoy deployed to the step's
/// (environment, service), from the history, for drift detection. `now` is
/// the runtime's clock, used to bound a deploy by its deadline.
pub async fn perform(
    cx: &ExecContext<'_>,
    effect: &Effect,
    baseline: Option<String>,
    now: DateTime<Utc>,
) -> Option<Event> {
    match effect {
        Effect::RunPreflight {
            key,
            attempt,
            version,
        } => Some(Event::Preflight {
            key: key.clone(),
            attempt: *attempt,
            result: preflight(cx, key, version, baseline).await,
        }),
        Effect::Deploy {
            key,
            attempt,
            version,
            deadline,
        } => Some(deploy(cx, key, *attempt, version, *deadline, now).await),
        Effect::PollStatus { key, attempt } => Some(match status(cx, key).await {
            Ok(report) => Event::Status {
                key: key.clone(),
                attempt: *attempt,
                report,
            },
            Err(e) => Event::StatusUnavailable {
                key: key.clone(),
                attempt: *attempt,
                error: e.message,
            },
        }),
        Effect::CheckDependencies {
            key,
            attempt,
            dependencies,
        } => Some(Event::DependencyHealth {
            key: key.clone(),
            attempt: *attempt,
            results: health(cx, dependencies).await,
        }),
        Effect::CheckHealth { wave, round, keys } => Some(Event::BakeHealth {
            wave: *wave,
            round: *round,
            results: health(cx, keys).await,
        }),
        _ => None,
    }
}

/// SPEC 6.3 for one step: reachable (the status call answers) and what
/// runs there, then the agent's own preflight. Freezes are the engine's to
/// check; dependencies' health is asked before this by
/// `Effect::CheckDependencies` and judged by the engine, as is drift (from
/// `running` and `baseline`).
pub async fn preflight(
    cx: &ExecContext<'_>,
    key: &StepKey,
    version: &CommitSha,
    baseline: Option<String>,
) -> PreflightResult {
    let (driver, endpoint) = match cx.resolve(key) {
        Ok(x) => x,
        Err(e) => {
            return PreflightResult::Failed {
                reason: e.message,
                kind: FailureKind::Permanent,
            };
        }
    };
    let running = match driver.status(&endpoint, &key.service).await {
        Ok(s) => s.version,
        Err(e) => {
            return PreflightResult::Failed {
                reason: format!("unreachable: {}", e.message),
                kind: e.kind,
            };
        }
    };
    match driver.preflight(&endpoint, &key.service, version).await {
        Ok(PreflightOutcome::NotProvided | PreflightOutcome::Ok) => PreflightResult::Passed {
            running,
            baseline,
            since: None,
        },
        // The agent said no: a human should look (retry when fixed).
        Ok(PreflightOutcome::Refused { reason }) => PreflightResult::Failed {
            reason: format!("the agent refused: {reason}"),
            kind: FailureKind::Permanent,
        },
        Err(e) => PreflightResult::Failed {
            reason: e.message,
            kind: e.kind,
        },
    }
}

async fn deploy(
    cx: &ExecContext<'_>,
    key: &StepKey,
    attempt: u32,
    version: &CommitSha,
    deadline: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Event {
    let failed = |e: DriverError| Event::DeployFailed {
        key: key.clone(),
        attempt,
        kind: e.kind,
        error: e.message,
    };
    let (driver, endpoint) = match cx.resolve(key) {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let req = StepRequest {
        rollout: cx.rollout.clone(),
        endpoint,
        service: key.service.clone(),
        version: version.clone(),
        attempt,
    };
    let budget = (deadline - now).to_std().unwrap_or(Duration::ZERO);
    match tokio::time::timeout(budget, driver.deploy(&req)).await {
        Ok(Ok(())) => Event::DeployAccepted {
            key: key.clone(),
            attempt,
        },
        Ok(Err(e)) => failed(e),
        Err(_) => Event::StepTimedOut {
            key: key.clone(),
            attempt,
        },
    }
}

async fn status(cx: &ExecContext<'_>, key: &StepKey) -> Result<HealthReport, DriverError> {
    let (driver, endpoint) = cx.resolve(key)?;
    let s = driver.status(&endpoint, &key.service).await?;
    Ok(HealthReport {
        version: s.version,
        healthy: s.healthy,
        message: s.message,
    })
}

/// Status of every key, a bounded number at once; an agent that cannot be
/// reached counts as unhealthy (that is what a bake watches for).
async fn health(cx: &ExecContext<'_>, keys: &[StepKey]) -> Vec<(StepKey, HealthReport)> {
    let limit = Arc::new(Semaphore::new(HEALTH_CHECK_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for (n, key) in keys.iter().enumerate() {
        let resolved = cx.resolve(key);
        let key = key.clone();
        let limit = limit.clone();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let report = match resolved {
                Ok((driver, endpoint)) => match driver.status(&endpoint, &key.service).await {
                    Ok(s) => HealthReport {
                        version: s.version,
                        healthy: s.healthy,
                        message: s.message,
                    },
                    Err(e) => unreachable_report(e),
                },
                Err(e) => unreachable_report(e),
            };
            (n, key, report)
        });
    }
    let mut out: Vec<(usize, StepKey, HealthReport)> = Vec::with_capacity(keys.len());
    while let Some(joined) = set.join_next().await {
        if let Ok(r) = joined {
            out.push(r);
        }
    }
    // Keep the order of `keys` so the event is deterministic.
    out.sort_by_key(|(n, _, _)| *n);
    out.into_iter().map(|(_, k, r)| (k, r)).collect()
}

fn unreachable_report(e: DriverError) -> HealthReport {
    HealthReport {
        version: None,
        healthy: false,
        message: Some(format!("status unavailable: {}", e.message)),
    }
}

//! Drift detection and recovery (SPEC 6.6): out-of-band changes are seen,
//! recorded, shown in one tracking issue per repository, and resolved by a
//! human's `/convoy adopt` or `/convoy resync`, never silently destroyed.
//!
//! - [`reconcile`]: the reconciler's decisions, pure (which environments to
//!   ask, when, how many at once, what an answer means, what to write);
//! - [`issue`]: the tracking issue's body and closing comment (templates);
//! - [`service`]: the thin runtime around them: the loop every
//!   `drift.interval`, the drift issue through the report transport, and
//!   the `adopt` / `resync` commands.
//!
//! The per-step check at deploy time is the engine's (`on_drift`); this
//! module only records what it found ([`record_preflight_drift`]) and tells
//! it since when ([`with_drift_since`]).

pub mod issue;
pub mod reconcile;
pub mod service;

use chrono::{DateTime, Utc};

use crate::domain::{RepoName, RolloutId};
use crate::engine::{Event, PreflightResult};
use crate::plan::model::{OnDrift, StepKey};
use crate::store::{DriftKind, DriftObservation, Store};

pub use service::DriftService;

/// The label of the tracking issue.
pub const DRIFT_LABEL: &str = crate::commands::comment::DRIFT_LABEL;

/// Fills in, on a preflight that found drift, since when the environment
/// has differed: when convoy first saw this drift (its open record), else
/// `baseline_at`, when the baseline was written. Other events pass through.
pub async fn with_drift_since(
    store: &dyn Store,
    repo: &RepoName,
    event: Event,
    baseline_at: Option<DateTime<Utc>>,
) -> Event {
    let Event::Preflight {
        key,
        attempt,
        result:
            PreflightResult::Passed {
                running,
                baseline,
                since: _,
            },
    } = event
    else {
        return event;
    };
    let drifted = matches!((&running, &baseline), (Some(r), Some(b)) if r != b);
    let mut since = baseline_at;
    if drifted {
        match store
            .open_drift(repo, &key.environment, &key.service, DriftKind::Drift)
            .await
        {
            Ok(Some(open)) => since = Some(open.first_seen),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading drift records failed"),
        }
    }
    Event::Preflight {
        key,
        attempt,
        result: PreflightResult::Passed {
            running,
            baseline,
            since,
        },
    }
}

/// Records the drift a deploy's preflight found: open (or kept open) for
/// `halt` and `skip`; for `overwrite`, recorded and resolved as overwritten
/// by the rollout, so the record says that convoy replaced it.
pub async fn record_preflight_drift(
    store: &dyn Store,
    repo: &RepoName,
    rollout: &RolloutId,
    key: &StepKey,
    expected: &str,
    found: &str,
    action: OnDrift,
) {
    let now = Utc::now();
    let observation = DriftObservation {
        environment: key.environment.clone(),
        service: key.service.clone(),
        kind: DriftKind::Drift,
        expected: expected.to_owned(),
        found: Some(found.to_owned()),
        detail: None,
    };
    if let Err(e) = store.observe_drift(repo, &observation, now).await {
        tracing::warn!(error = %e, "recording drift failed");
        return;
    }
    if action == OnDrift::Overwrite
        && let Err(e) = store
            .resolve_drift(
                repo,
                &key.environment,
                Some(&key.service),
                DriftKind::Drift,
                "overwritten",
                &format!("rollout {rollout}"),
                now,
            )
            .await
    {
        tracing::warn!(error = %e, "recording an overwritten drift failed");
    }
}

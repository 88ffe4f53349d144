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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EnvName, ServiceName};
    use crate::engine::machine::drift_message;
    use crate::store::SqliteStore;
    use chrono::TimeZone;

    fn preflight(running: &str, baseline: &str) -> Event {
        Event::Preflight {
            key: StepKey {
                environment: EnvName::new("cust-1"),
                service: ServiceName::new("api"),
            },
            attempt: 1,
            result: PreflightResult::Passed {
                running: Some(running.into()),
                baseline: Some(baseline.into()),
                since: None,
            },
        }
    }

    fn since(e: &Event) -> Option<DateTime<Utc>> {
        match e {
            Event::Preflight {
                result: PreflightResult::Passed { since, .. },
                ..
            } => *since,
            _ => None,
        }
    }

    #[test]
    fn the_halt_message_says_since_when() {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 10, 22, 34).unwrap();
        assert_eq!(
            drift_message("abc", "hotfix", Some(t)),
            "drifted: expected abc, found hotfix (changed outside convoy since 2026-11-26T10:22:34Z)"
        );
        assert_eq!(
            drift_message("abc", "hotfix", None),
            "drifted: expected abc, found hotfix"
        );
    }

    #[tokio::test]
    async fn since_is_when_convoy_first_saw_it_else_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db")).await.unwrap();
        let repo = RepoName::new("acme/app");
        let written = Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap();
        let seen = Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap();
        // Never seen: since the baseline was written.
        let e = with_drift_since(&store, &repo, preflight("hotfix", "v1"), Some(written)).await;
        assert_eq!(since(&e), Some(written));
        // Seen by the reconciler: since then.
        store
            .observe_drift(
                &repo,
                &DriftObservation {
                    environment: EnvName::new("cust-1"),
                    service: ServiceName::new("api"),
                    kind: DriftKind::Drift,
                    expected: "v1".into(),
                    found: Some("hotfix".into()),
                    detail: None,
                },
                seen,
            )
            .await
            .unwrap();
        let e = with_drift_since(&store, &repo, preflight("hotfix", "v1"), Some(written)).await;
        assert_eq!(since(&e), Some(seen));
        // Other events pass through untouched.
        let other = Event::Start;
        assert_eq!(
            with_drift_since(&store, &repo, other.clone(), Some(written)).await,
            other
        );
    }

    #[tokio::test]
    async fn overwrite_records_that_it_did_and_halt_keeps_the_drift_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db")).await.unwrap();
        let repo = RepoName::new("acme/app");
        let key = StepKey {
            environment: EnvName::new("cust-1"),
            service: ServiceName::new("api"),
        };
        let rollout = RolloutId::new("r-7");
        record_preflight_drift(&store, &repo, &rollout, &key, "v1", "hot", OnDrift::Halt).await;
        let open = store.drift_records(&repo, false, 10).await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].found.as_deref(), Some("hot"));
        record_preflight_drift(
            &store,
            &repo,
            &rollout,
            &key,
            "v1",
            "hot",
            OnDrift::Overwrite,
        )
        .await;
        assert!(
            store
                .drift_records(&repo, false, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let all = store.drift_records(&repo, true, 10).await.unwrap();
        assert_eq!(all[0].resolution.as_deref(), Some("overwritten"));
        assert_eq!(all[0].resolved_by.as_deref(), Some("rollout r-7"));
    }
}

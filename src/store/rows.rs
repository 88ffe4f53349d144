//! Reading rows into records, shared by the SQLite and PostgreSQL stores.
//! The two databases differ in their SQL (placeholders, types, upserts) but
//! not in what a row means; that part lives here once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{
    AuditEntry, Baseline, DeliveryOutcome, DeliveryState, DriftKind, DriftRecord, FirstAttempts,
    Freeze, InboxItem, Payload, Result, RolloutKind, RolloutRecord, RolloutSummary, StoreError,
    StoredBaseline, StoredTimer, document, from_millis, to_millis,
};
use crate::domain::{
    BranchName, CommitSha, DeliveryId, EnvName, InstallationId, RepoName, RolloutId, ServiceName,
};

/// The column types the stores read, for any database's row.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> sqlx::Result<String>;
    fn opt_text(&self, column: &str) -> sqlx::Result<Option<String>>;
    fn int(&self, column: &str) -> sqlx::Result<i64>;
    fn opt_int(&self, column: &str) -> sqlx::Result<Option<i64>>;
    fn opt_bytes(&self, column: &str) -> sqlx::Result<Option<Vec<u8>>>;
    fn flag(&self, column: &str) -> sqlx::Result<bool>;

    fn time(&self, column: &str) -> sqlx::Result<DateTime<Utc>> {
        Ok(from_millis(self.int(column)?))
    }

    fn opt_time(&self, column: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
        Ok(self.opt_int(column)?.map(from_millis))
    }

    /// A non-negative count or number stored as a signed integer.
    fn opt_number(&self, column: &str) -> sqlx::Result<Option<u64>> {
        Ok(self.opt_int(column)?.map(|n| n.max(0) as u64))
    }
}

macro_rules! columns_for {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> sqlx::Result<String> {
                self.try_get(column)
            }
            fn opt_text(&self, column: &str) -> sqlx::Result<Option<String>> {
                self.try_get(column)
            }
            fn int(&self, column: &str) -> sqlx::Result<i64> {
                self.try_get(column)
            }
            fn opt_int(&self, column: &str) -> sqlx::Result<Option<i64>> {
                self.try_get(column)
            }
            fn opt_bytes(&self, column: &str) -> sqlx::Result<Option<Vec<u8>>> {
                self.try_get(column)
            }
            fn flag(&self, column: &str) -> sqlx::Result<bool> {
                self.try_get(column)
            }
        }
    };
}

columns_for!(sqlx::sqlite::SqliteRow);
columns_for!(sqlx::postgres::PgRow);

/// The columns a rollout is read with, in both stores.
pub(crate) const ROLLOUT_COLUMNS: &str = "id, repo, branch, commit_sha, previous_commit, pull_request, \
    installation_id, kind, parent_id, state, created_at, updated_at, document, error, targets, wave_environments";

/// The columns [`summary`] reads.
pub(crate) const SUMMARY_COLUMNS: &str =
    "id, repo, commit_sha, pull_request, state, created_at, updated_at";

/// SPEC 8's terminal rollout states, as SQL.
pub(crate) const TERMINAL: &str = "('succeeded', 'failed', 'aborted', 'superseded', 'noop')";

/// A step's `state` while a driver call is outstanding for it
/// (`StepRun::is_in_flight`: preflight, deploying, verifying), as SQL.
pub(crate) const IN_FLIGHT_STEP: &str = "('preflight', 'deploying', 'verifying')";

/// (repository, environment) rows, as `Store::in_flight_environments`
/// answers; a row whose environment is not text (a step of another
/// shape) is left out.
pub(crate) fn environments(rows: Vec<(String, Option<String>)>) -> Vec<(RepoName, EnvName)> {
    rows.into_iter()
        .filter_map(|(repo, env)| Some((RepoName::new(repo), EnvName::new(env?))))
        .collect()
}

/// A deploy rollout, as SQL: any kind `RolloutKind::parse` reads as one.
pub(crate) const DEPLOY: &str = "kind NOT IN ('rollback', 'resync')";

/// The row as stored: its `document` is only the header. Callers want the
/// record made whole by [`Parts::complete`].
pub(crate) fn rollout_record(row: &impl Columns) -> Result<RolloutRecord> {
    Ok(RolloutRecord {
        id: RolloutId::new(row.text("id")?),
        repo: RepoName::new(row.text("repo")?),
        branch: BranchName::new(row.text("branch")?),
        commit: CommitSha::new(row.text("commit_sha")?),
        previous_commit: row.opt_text("previous_commit")?.map(CommitSha::new),
        pull_request: row.opt_number("pull_request")?,
        installation: row.opt_int("installation_id")?.map(InstallationId),
        kind: RolloutKind::parse(&row.text("kind")?),
        parent: row.opt_text("parent_id")?.map(RolloutId::new),
        state: row.text("state")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        document: row.opt_text("document")?,
        error: row.opt_text("error")?,
    })
}

/// A rollout row read with [`ROLLOUT_COLUMNS`], before its steps are read.
pub(crate) struct Parts {
    pub record: RolloutRecord,
    targets: Option<String>,
    environments: Option<String>,
}

impl Parts {
    pub fn read(row: &impl Columns) -> Result<Parts> {
        Ok(Parts {
            record: rollout_record(row)?,
            targets: row.opt_text("targets")?,
            environments: row.opt_text("wave_environments")?,
        })
    }

    /// Whether the document was stored split, so its steps must be read
    /// (a rollout whose planning failed has no document at all).
    pub fn split(&self) -> bool {
        self.record.document.is_some() && self.targets.is_some() && self.environments.is_some()
    }

    /// The record with its document made whole from header, targets and
    /// `steps` (wave, step JSON) in (wave, idx) order.
    pub fn complete(self, steps: Vec<(i64, String)>) -> Result<RolloutRecord> {
        let mut record = self.record;
        if let (Some(header), Some(targets), Some(environments)) =
            (record.document.as_deref(), self.targets, self.environments)
        {
            let whole =
                document::assemble(header, &targets, &environments, steps).map_err(|message| {
                    StoreError::Corrupt {
                        id: record.id.to_string(),
                        message,
                    }
                })?;
            record.document = Some(whole);
        }
        Ok(record)
    }
}

pub(crate) fn summary(row: &impl Columns) -> Result<RolloutSummary> {
    Ok(RolloutSummary {
        id: RolloutId::new(row.text("id")?),
        repo: RepoName::new(row.text("repo")?),
        commit: CommitSha::new(row.text("commit_sha")?),
        pull_request: row.opt_number("pull_request")?,
        state: row.text("state")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(crate) fn inbox_item(row: &impl Columns) -> Result<InboxItem> {
    let stored = row.opt_bytes("payload")?;
    let read = stored
        .ok_or_else(|| "the stored payload is missing".to_owned())
        .and_then(|b| {
            Payload::from_stored(b)
                .decompress()
                .map_err(|e| e.to_string())
        });
    let (payload, damaged) = match read {
        Ok(payload) => (payload, None),
        Err(e) => (String::new(), Some(e)),
    };
    Ok(InboxItem {
        id: DeliveryId::new(row.text("delivery_id")?),
        event: row.text("event")?,
        payload,
        damaged,
        received_at: row.time("received_at")?,
        state: DeliveryState::parse(&row.text("state")?),
        attempts: row.int("attempts")?.clamp(0, i64::from(u32::MAX)) as u32,
        last_error: row.opt_text("last_error")?,
    })
}

/// What an outcome writes: state, error, next attempt and processed time
/// (Unix milliseconds).
pub(crate) fn outcome_columns(
    outcome: &DeliveryOutcome,
    now: i64,
) -> (DeliveryState, Option<&str>, i64, Option<i64>) {
    let (state, error, next) = match outcome {
        DeliveryOutcome::Done => (DeliveryState::Done, None, now),
        DeliveryOutcome::Dropped(reason) => (DeliveryState::Dropped, Some(reason.as_str()), now),
        DeliveryOutcome::Retry { error, at } => {
            (DeliveryState::Pending, Some(error.as_str()), to_millis(*at))
        }
        DeliveryOutcome::Failed(error) => (DeliveryState::Failed, Some(error.as_str()), now),
    };
    let processed = (state != DeliveryState::Pending).then_some(now);
    (state, error, next, processed)
}

pub(crate) fn audit_entry(row: &impl Columns) -> Result<AuditEntry> {
    Ok(AuditEntry {
        at: row.time("at")?,
        actor: row.text("actor")?,
        repo: row.opt_text("repo")?.map(RepoName::new),
        rollout_id: row.opt_text("rollout_id")?.map(RolloutId::new),
        location: row.opt_text("location")?,
        action: row.text("action")?,
        result: row.text("result")?,
        detail: row.opt_text("detail")?,
        line: row.opt_int("line")?.and_then(|n| u32::try_from(n).ok()),
    })
}

pub(crate) fn timer(row: &impl Columns) -> Result<StoredTimer> {
    Ok(StoredTimer {
        timer: row.text("timer")?,
        at: row.time("at")?,
    })
}

pub(crate) fn baseline(row: &impl Columns) -> Result<Baseline> {
    Ok(Baseline {
        version: row.text("version")?,
        source: row.text("source")?,
        at: row.time("at")?,
    })
}

/// Baselines read for `keys` (rows that name their environment and
/// service), in the keys' order; `None` where a key has none.
pub(crate) fn baselines_in_order<R: Columns>(
    keys: &[(EnvName, ServiceName)],
    rows: &[R],
) -> Result<Vec<Option<Baseline>>> {
    let mut found = BTreeMap::new();
    for row in rows {
        found.insert(
            (row.text("environment")?, row.text("service")?),
            baseline(row)?,
        );
    }
    Ok(keys
        .iter()
        .map(|(e, s)| found.get(&(e.to_string(), s.to_string())).cloned())
        .collect())
}

pub(crate) fn freeze(row: &impl Columns) -> Result<Freeze> {
    Ok(Freeze {
        scope: row.text("scope")?,
        until: row.opt_time("until")?,
        reason: row.opt_text("reason")?,
        by: row.text("frozen_by")?,
        at: row.time("at")?,
    })
}

/// First-attempt outcomes per environment, from rows of `environment` and
/// `succeeded`.
pub(crate) fn first_attempts<R: Columns>(rows: &[R]) -> Result<BTreeMap<EnvName, FirstAttempts>> {
    let mut out: BTreeMap<EnvName, FirstAttempts> = BTreeMap::new();
    for row in rows {
        let entry = out
            .entry(EnvName::new(row.text("environment")?))
            .or_default();
        entry.attempts += 1;
        entry.successes += u32::from(row.flag("succeeded")?);
    }
    Ok(out)
}

/// Every baseline of a repository (or all), with where it is.
pub(crate) fn stored_baseline(row: &impl Columns) -> Result<StoredBaseline> {
    Ok(StoredBaseline {
        repo: RepoName::new(row.text("repo")?),
        environment: EnvName::new(row.text("environment")?),
        service: ServiceName::new(row.text("service")?),
        baseline: baseline(row)?,
    })
}

/// The columns a drift record is read with, in both stores.
pub(crate) const DRIFT_COLUMNS: &str = "id, repo, environment, service, kind, expected, found, \
    detail, first_seen, last_seen, resolved_at, resolution, resolved_by";

pub(crate) fn drift_record(row: &impl Columns) -> Result<DriftRecord> {
    Ok(DriftRecord {
        id: row.int("id")?,
        repo: RepoName::new(row.text("repo")?),
        environment: EnvName::new(row.text("environment")?),
        service: ServiceName::new(row.text("service")?),
        kind: DriftKind::parse(&row.text("kind")?),
        expected: row.text("expected")?,
        found: row.opt_text("found")?,
        detail: row.opt_text("detail")?,
        first_seen: row.time("first_seen")?,
        last_seen: row.time("last_seen")?,
        resolved_at: row.opt_time("resolved_at")?,
        resolution: row.opt_text("resolution")?,
        resolved_by: row.opt_text("resolved_by")?,
    })
}

#[cfg(test)]
mod tests {
    use crate::engine::{StepRun, StepState};

    /// `IN_FLIGHT_STEP` names, as stored, exactly the states in which the
    /// engine calls a step in flight.
    #[test]
    fn the_in_flight_states_are_the_engine_s() {
        for state in [
            StepState::Pending,
            StepState::Preflight,
            StepState::Deploying,
            StepState::Verifying,
            StepState::Succeeded,
            StepState::Failed,
            StepState::Skipped,
            StepState::RolledBack,
        ] {
            let step: StepRun = serde_json::from_value(serde_json::json!({
                "environment": "e", "service": "s", "state": state,
                "attempts": 0, "run_attempts": 0, "version": "v",
            }))
            .unwrap();
            let stored = serde_json::to_value(state).unwrap();
            let name = format!("'{}'", stored.as_str().unwrap());
            assert_eq!(
                super::IN_FLIGHT_STEP.contains(&name),
                step.is_in_flight(),
                "{state:?}"
            );
        }
    }
}

//! Durable state behind one `Store` trait: SQLite now, PostgreSQL next.
//!
//! Callers hold an `Arc<dyn Store>` and never see SQL. Times cross this
//! boundary as `DateTime<Utc>` and are stored as Unix milliseconds, which
//! both databases compare and index the same way.

mod document;
mod migrations;
pub mod postgres;
pub mod records;
pub(crate) mod rows;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::config::DatabaseUrl;
use std::collections::BTreeMap;

use crate::domain::{
    BranchName, CommitSha, DeliveryId, EnvName, InstallationId, RepoName, RolloutId, ServiceName,
};
pub use records::*;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the database folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("stored rollout {id} cannot be read: {message}")]
    Corrupt { id: String, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A verified delivery to be written to the inbox.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub event: String,
    /// The raw body, exactly as GitHub sent it (already checked to be JSON),
    /// compressed by the request that received it.
    pub payload: Payload,
    pub received_at: DateTime<Utc>,
}

/// A webhook body, LZ4-compressed. Compressing on the request's own thread
/// keeps the single database writer's work (and the bytes it writes) small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload(Vec<u8>);

impl Payload {
    pub fn compress(body: &str) -> Payload {
        Payload(lz4_flex::compress_prepend_size(body.as_bytes()))
    }

    pub fn from_stored(bytes: Vec<u8>) -> Payload {
        Payload(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The body again; an error for bytes that are not a stored payload.
    pub fn decompress(&self) -> Result<String> {
        let raw = lz4_flex::decompress_size_prepended(&self.0)
            .map_err(|e| StoreError::Unsupported(format!("stored payload is damaged: {e}")))?;
        String::from_utf8(raw)
            .map_err(|_| StoreError::Unsupported("stored payload is not UTF-8".into()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Done,
    Dropped,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Done => "done",
            DeliveryState::Dropped => "dropped",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> DeliveryState {
        match text {
            "done" => DeliveryState::Done,
            "dropped" => DeliveryState::Dropped,
            "failed" => DeliveryState::Failed,
            _ => DeliveryState::Pending,
        }
    }
}

/// A delivery as stored.
#[derive(Clone, Debug)]
pub struct InboxItem {
    pub id: DeliveryId,
    pub event: String,
    pub payload: String,
    pub received_at: DateTime<Utc>,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// What became of one processing attempt.
#[derive(Clone, Debug)]
pub enum DeliveryOutcome {
    Done,
    /// Not for convoy (unhandled event, no installation): kept for the
    /// record, with the reason.
    Dropped(String),
    /// Failed; try again at the given time.
    Retry {
        error: String,
        at: DateTime<Utc>,
    },
    /// Failed for the last time; kept with its error, never lost.
    Failed(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxCounts {
    pub pending: u64,
    pub failed: u64,
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// A GitHub login, or `convoy` / `operator` for convoy's own actions.
    pub actor: String,
    pub repo: Option<RepoName>,
    pub rollout_id: Option<RolloutId>,
    /// Where it came from: `pr#42 comment 123`, `check_run 77`, `cli`.
    pub location: Option<String>,
    /// What was asked, e.g. `/convoy retry acme-eu`.
    pub action: String,
    /// `accepted`, `refused: …`, `failed: …`.
    pub result: String,
    pub detail: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database does (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    // --- inbox -----------------------------------------------------------

    /// Writes a group of deliveries in one transaction (one commit for the
    /// whole group is what makes intake fast). For each, `true` when it was
    /// new and `false` when its id had been seen before.
    async fn insert_deliveries(&self, batch: &[NewDelivery]) -> Result<Vec<bool>>;

    /// Pending deliveries due at `now`, oldest first.
    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<InboxItem>>;

    /// Records the outcome of processing attempts, in one transaction.
    async fn finish_deliveries(
        &self,
        results: &[(DeliveryId, DeliveryOutcome)],
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// When the next pending delivery falls due, if any.
    async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>>;

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<InboxItem>>;

    async fn inbox_counts(&self) -> Result<InboxCounts>;

    // --- installations ---------------------------------------------------

    async fn upsert_installation(
        &self,
        id: InstallationId,
        account: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;

    async fn set_installation_suspended(
        &self,
        id: InstallationId,
        suspended: bool,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Forgets the installation and its repositories.
    async fn delete_installation(&self, id: InstallationId) -> Result<()>;

    /// Records that the installation can act on these repositories (a
    /// repository moves when another installation claims it).
    async fn add_installation_repos(&self, id: InstallationId, repos: &[RepoName]) -> Result<()>;

    async fn remove_installation_repos(&self, id: InstallationId, repos: &[RepoName])
    -> Result<()>;

    async fn installation_for_repo(&self, repo: &RepoName) -> Result<Option<InstallationId>>;

    async fn installation_repos(&self, id: InstallationId) -> Result<Vec<RepoName>>;

    // --- audit -----------------------------------------------------------

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()>;

    async fn audit_for_rollout(&self, rollout: &RolloutId) -> Result<Vec<AuditEntry>>;

    // --- rollouts --------------------------------------------------------

    /// Creates the rollout, or finds the deploy rollout of the same
    /// (repository, branch, commit) that a sibling event already created.
    async fn create_rollout(&self, record: &RolloutRecord) -> Result<Created>;

    async fn attach_pull_request(&self, id: &RolloutId, pull_request: u64) -> Result<()>;

    /// Persists one engine step (or a batch of them): state, header, the
    /// changed steps, new timers, fired timers deleted, attempt history,
    /// step locks released and taken, atomically. Timers of the same kind
    /// replace older ones. Answers, for each of `write.lock` in order,
    /// whether the lock is now this rollout's.
    async fn save_rollout(
        &self,
        id: &RolloutId,
        write: &RolloutWrite,
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>>;

    /// The rollout with its complete document (header, targets and steps
    /// put back together).
    async fn rollout(&self, id: &RolloutId) -> Result<Option<RolloutRecord>>;

    /// The deploy rollout of (repository, branch, commit), if any.
    async fn rollout_for_commit(
        &self,
        repo: &RepoName,
        branch: &BranchName,
        commit: &CommitSha,
    ) -> Result<Option<RolloutRecord>>;

    /// The newest deploy rollout of a pull request's merge, if any (what
    /// a command on that pull request acts on).
    async fn latest_rollout_for_pull_request(
        &self,
        repo: &RepoName,
        pull_request: u64,
    ) -> Result<Option<RolloutRecord>>;

    /// Newest first.
    async fn list_rollouts(
        &self,
        repo: Option<&RepoName>,
        limit: u32,
    ) -> Result<Vec<RolloutSummary>>;

    /// Rollouts in a state that is not terminal, oldest first.
    async fn unfinished_rollouts(&self) -> Result<Vec<RolloutRecord>>;

    /// The commit of the newest succeeded deploy rollout on the branch.
    async fn last_succeeded_commit(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> Result<Option<CommitSha>>;

    async fn timers(&self, id: &RolloutId) -> Result<Vec<StoredTimer>>;

    async fn delete_timer(&self, id: &RolloutId, timer: &str) -> Result<()>;

    // --- history, baselines, locks ---------------------------------------

    /// Per environment, first-attempt outcomes over its last 50 deploys.
    async fn first_attempts(&self, repo: &RepoName) -> Result<BTreeMap<EnvName, FirstAttempts>>;

    /// The version the newest successful deploy of (environment, service)
    /// put there, not counting `excluding` (the rollout being rolled back).
    async fn last_good_version(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        excluding: Option<&RolloutId>,
    ) -> Result<Option<CommitSha>>;

    async fn baseline(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
    ) -> Result<Option<Baseline>>;

    #[allow(clippy::too_many_arguments)]
    async fn set_baseline(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        version: &str,
        source: &str,
        rollout: Option<&RolloutId>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Takes the lock of (environment, service) for `rollout`; `false` when
    /// another rollout holds it. Taking a lock one already holds succeeds.
    async fn try_lock_step(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        rollout: &RolloutId,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Records an emergency freeze (replacing one of the same scope).
    async fn set_freeze(&self, freeze: &Freeze) -> Result<()>;

    /// Lifts the freeze of the scope; `false` when there was none.
    async fn clear_freeze(&self, scope: &str) -> Result<bool>;

    /// Freezes of `repo` and of everything (`*`), active or expired.
    async fn freezes_for(&self, repo: &RepoName) -> Result<Vec<Freeze>>;

    async fn unlock_step(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        rollout: &RolloutId,
    ) -> Result<()>;

    // --- drift (SPEC 6.6) ------------------------------------------------

    /// Every baseline of `repo` (all repositories when `None`), ordered by
    /// repository, environment, service.
    async fn baselines(&self, repo: Option<&RepoName>) -> Result<Vec<StoredBaseline>>;

    /// The (repository, environment, service) step locks held now: deploys
    /// in flight, in any rollout of any replica.
    async fn held_step_locks(&self) -> Result<Vec<(RepoName, EnvName, ServiceName)>>;

    /// Records an observation: updates the open record of (repo,
    /// environment, service, kind) (expected, found, detail, last seen =
    /// `now`) or opens one (first seen = `now`). Returns the record.
    async fn observe_drift(
        &self,
        repo: &RepoName,
        observation: &DriftObservation,
        now: DateTime<Utc>,
    ) -> Result<DriftRecord>;

    /// Resolves the open records of `kind` for (repo, environment) and, when
    /// given, only `service`: `how` (adopted, resynced, overwritten,
    /// converged, reachable) and `by` whom. How many were open.
    #[allow(clippy::too_many_arguments)]
    async fn resolve_drift(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: Option<&ServiceName>,
        kind: DriftKind,
        how: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<u64>;

    /// The open record of (repo, environment, service, kind), if any.
    async fn open_drift(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        kind: DriftKind,
    ) -> Result<Option<DriftRecord>>;

    /// A repository's records: every open one, then (with
    /// `include_resolved`) resolved ones, newest first; at most `limit` in
    /// all. Open ones are ordered by environment, service, kind.
    async fn drift_records(
        &self,
        repo: &RepoName,
        include_resolved: bool,
        limit: u32,
    ) -> Result<Vec<DriftRecord>>;
}

/// Opens (creating when needed) the database named by the configuration and
/// applies the migrations.
pub async fn open(url: &DatabaseUrl) -> Result<Arc<dyn Store>> {
    match url {
        DatabaseUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        DatabaseUrl::Postgres(url) => Ok(Arc::new(PostgresStore::open(url).await?)),
    }
}

pub(crate) fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

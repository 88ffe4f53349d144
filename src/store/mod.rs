//! Durable state behind one `Store` trait: SQLite now, PostgreSQL next.
//!
//! Callers hold an `Arc<dyn Store>` and never see SQL. Times cross this
//! boundary as `DateTime<Utc>` and are stored as Unix milliseconds, which
//! both databases compare and index the same way.

mod migrations;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::config::DatabaseUrl;
use crate::domain::{DeliveryId, InstallationId, RepoName, RolloutId};

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
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A verified delivery to be written to the inbox.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub event: String,
    /// The raw body, exactly as GitHub sent it (already checked to be JSON).
    pub payload: String,
    pub received_at: DateTime<Utc>,
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
}

/// Opens (creating when needed) the database named by the configuration and
/// applies the migrations.
pub async fn open(url: &DatabaseUrl) -> Result<Arc<dyn Store>> {
    match url {
        DatabaseUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        DatabaseUrl::Postgres(_) => Err(StoreError::Unsupported(
            "database.url: PostgreSQL is not supported by this build yet; use sqlite://".into(),
        )),
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

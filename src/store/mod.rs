//! Durable state behind one `Store` trait: SQLite now, PostgreSQL next.
//!
//! Callers hold an `Arc<dyn Store>` and never see SQL. Times cross this
//! boundary as `DateTime<Utc>` and are stored as Unix milliseconds, which
//! both databases compare and index the same way.

pub mod checkpoint;
mod delivery_order;
mod document;
mod inbox_commit;
pub mod log_sync;
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
pub use log_sync::Durable;
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
    /// A write carried a lease this replica no longer holds (another
    /// replica took the work over): nothing was written.
    #[error("lease lost: {0}")]
    Fenced(String),
    /// The database's log could not be made durable (`log_sync`).
    #[error("{0}")]
    Sync(String),
    /// The inbox's own SQLite connection failed (`inbox_commit`).
    #[error("{0}")]
    Inbox(#[from] inbox_commit::CommitError),
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
    /// Stored already claimed: the replica that received the delivery
    /// processes it from memory, without reading it back (see
    /// `runtime::intake`). `None` leaves it for any replica to claim.
    pub claim: Option<Claim>,
}

/// One transaction's writes to the inbox ([`Store::write_inbox`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct InboxWrite<'a> {
    pub new: &'a [NewDelivery],
    pub finished: &'a [Finished],
    pub claims: &'a [ClaimDue],
}

/// The outcome of processing a delivery, from the replica that claimed
/// it. Recorded only while `owner` still holds the claim and the delivery
/// is pending: a replica whose claim ran out (paused, cut off from the
/// database) and was taken over must not overwrite the outcome of the
/// replica that took it, nor send a finished delivery back to pending.
#[derive(Clone, Debug)]
pub struct Finished {
    pub id: DeliveryId,
    pub owner: String,
    pub outcome: DeliveryOutcome,
}

impl Finished {
    /// Each of `results`, as `owner`'s.
    pub fn by(
        owner: &str,
        results: impl IntoIterator<Item = (DeliveryId, DeliveryOutcome)>,
    ) -> Vec<Finished> {
        results
            .into_iter()
            .map(|(id, outcome)| Finished {
                id,
                owner: owner.to_owned(),
                outcome,
            })
            .collect()
    }
}

/// A claim on up to `limit` deliveries due now, oldest first, for `owner`
/// until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimDue {
    pub owner: String,
    pub until: DateTime<Utc>,
    pub limit: u32,
}

/// What [`Store::write_inbox`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxWritten {
    /// For each new delivery: whether it was new.
    pub fresh: Vec<bool>,
    /// For each claim: the deliveries it took.
    pub claimed: Vec<Vec<DeliveryId>>,
}

/// A claim on a delivery: `owner` processes it, and no other replica takes
/// it before `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub owner: String,
    pub until: DateTime<Utc>,
}

/// A webhook body, LZ4-compressed. Compressing on the request's own thread
/// keeps the single database writer's work (and the bytes it writes) small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload(Vec<u8>);

impl Payload {
    /// The body compressed, in the format of `lz4_flex`'s
    /// `compress_prepend_size` (its length, 4 bytes little-endian, then the
    /// block). Compressed into this thread's scratch buffer, then copied
    /// out at its size: allocating LZ4's worst case (a little more than the
    /// body) for every delivery, and keeping it until the commit, was a
    /// good part of the intake's time in the allocator.
    pub fn compress(body: impl AsRef<[u8]>) -> Payload {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let input = body.as_ref();
        let Ok(length) = u32::try_from(input.len()) else {
            return Payload(lz4_flex::compress_prepend_size(input));
        };
        SCRATCH.with_borrow_mut(|scratch| {
            let need = lz4_flex::block::get_maximum_output_size(input.len());
            if scratch.len() < need {
                scratch.resize(need, 0);
            }
            match lz4_flex::block::compress_into(input, scratch) {
                Ok(n) => {
                    let mut out = Vec::with_capacity(4 + n);
                    out.extend_from_slice(&length.to_le_bytes());
                    out.extend_from_slice(&scratch[..n]);
                    Payload(out)
                }
                Err(_) => Payload(lz4_flex::compress_prepend_size(input)),
            }
        })
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
    /// Why its stored body could not be read back (damaged on disk), with
    /// `payload` left empty: the worker keeps such a delivery as failed,
    /// where an error for the whole read would fail every delivery
    /// claimed with it, again after each claim ran out.
    pub damaged: Option<String>,
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
    /// The line of the comment it was written on (1-based), for a command
    /// from a comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database does (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Whether the database runs one write transaction at a time (SQLite).
    /// The worker's inbox writes then join the intake's group commit
    /// instead of queueing behind it; a database that commits many
    /// transactions at once (PostgreSQL) does better with them apart.
    fn one_writer(&self) -> bool {
        false
    }

    /// The database under this store, for components that keep tables of
    /// their own in it (the report ledger), so that they write through the
    /// store's connections instead of opening more.
    fn shared_database(&self) -> SharedDatabase;

    // --- inbox -----------------------------------------------------------

    /// Writes new deliveries, the outcomes of processed ones and claims on
    /// due ones in one transaction: one commit for everything the intake
    /// and the worker have waiting is what makes intake fast. New
    /// deliveries go first, then outcomes ([`Store::finish_deliveries`]),
    /// then claims ([`Store::claim_deliveries`]), each claim taking what
    /// the ones before it left.
    async fn write_inbox(&self, write: InboxWrite<'_>, now: DateTime<Utc>) -> Result<InboxWritten>;

    /// [`Store::write_inbox`], returning once the write is committed and
    /// visible but perhaps before it is durable: nothing it wrote may be
    /// acknowledged before the returned [`Durable`] is. A store whose
    /// commits wait for the disk lets the next transaction start
    /// meanwhile; by default the write is durable on return.
    async fn write_inbox_unsynced(
        &self,
        write: InboxWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<(InboxWritten, Durable)> {
        Ok((self.write_inbox(write, now).await?, Durable::Now))
    }

    /// [`Store::write_inbox`] with new deliveries only: for each, `true`
    /// when it was new and `false` when its id had been seen before (a
    /// repeat within `batch` is a duplicate too).
    async fn insert_deliveries(&self, batch: &[NewDelivery]) -> Result<Vec<bool>> {
        let write = InboxWrite {
            new: batch,
            ..InboxWrite::default()
        };
        Ok(self.write_inbox(write, Utc::now()).await?.fresh)
    }

    /// The stored deliveries with these ids, oldest first (unknown ids are
    /// left out).
    async fn deliveries(&self, ids: &[DeliveryId]) -> Result<Vec<InboxItem>>;

    /// Pending deliveries due at `now`, oldest first.
    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<InboxItem>>;

    /// Records the outcome of processing attempts by `owner`, in one
    /// transaction, and releases their claims; an outcome for a delivery
    /// whose claim `owner` no longer holds is not recorded ([`Finished`]).
    /// An id appears at most once.
    async fn finish_deliveries(
        &self,
        owner: &str,
        results: &[(DeliveryId, DeliveryOutcome)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let finished = Finished::by(owner, results.iter().cloned());
        let write = InboxWrite {
            finished: &finished,
            ..InboxWrite::default()
        };
        self.write_inbox(write, now).await.map(|_| ())
    }

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

    /// Marks the installation suspended or not, as GitHub said at
    /// `changed_at`, unless a change GitHub made later is recorded already
    /// (deliveries are not always processed in the order GitHub made
    /// them); `false` when it was older and left alone. At the same time
    /// an unsuspension wins: GitHub dates an unsuspension by the
    /// installation's `updated_at`, which its own example leaves at the
    /// time of the suspension it lifts. An undated change (`None`) applies
    /// and leaves the recorded time as it was.
    async fn set_installation_suspended(
        &self,
        id: InstallationId,
        suspended: bool,
        changed_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Forgets the installation and its repositories.
    async fn delete_installation(&self, id: InstallationId) -> Result<()>;

    /// The installations GitHub says are suspended (`installation.suspend`,
    /// until `unsuspend`), with their accounts, by id: GitHub refuses
    /// their API calls, so nothing convoy reports reaches their
    /// repositories meanwhile.
    async fn suspended_installations(&self) -> Result<Vec<(InstallationId, String)>>;

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

    /// The audit entries written at `location` (a comment) of `repo`,
    /// oldest first: the lines of that comment already acted on, whether
    /// or not a rollout was involved.
    async fn audit_at(&self, repo: &RepoName, location: &str) -> Result<Vec<AuditEntry>>;

    // --- rollouts --------------------------------------------------------

    /// Creates the rollout, or finds the deploy rollout of the same
    /// (repository, branch, commit) that a sibling event already created;
    /// that one takes `record`'s pull request if it had none.
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

    /// The unfinished deploy rollouts of a branch, oldest first, without
    /// their documents: admission asks on every merge and whenever a
    /// rollout ends, and needs only their states, while a
    /// 10,000-environment rollout's document is megabytes.
    async fn unfinished_deploys(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> Result<Vec<RolloutSummary>>;

    /// The deploy rollouts of the branch made after `than` (by creation
    /// time, then id) that have started (running, halted, paused …) or
    /// deployed anything, oldest first, without their documents: a
    /// finished rollout may run again (a retry) only if none did. One still
    /// queued, or that ended without deploying (an invalid `convoy.yml`, a
    /// noop, aborted before its first step), changed nothing to put back.
    async fn deploys_after(
        &self,
        repo: &RepoName,
        branch: &BranchName,
        than: &RolloutRecord,
    ) -> Result<Vec<RolloutSummary>>;

    /// The commit of the newest succeeded deploy rollout on the branch, by
    /// when it was made (merge order): being rolled back later re-saves a
    /// rollout, and must not make it the newest.
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
    /// put there; with `excluding` (the rollout being rolled back), the
    /// newest from before that rollout's first deploy there (SPEC 6.8:
    /// "before this rollout"), so later rollouts do not count either.
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

    /// The baselines of these (environment, service) pairs of `repo`, in
    /// their order: the one read a batch of preflights needs, instead of
    /// one read per step.
    async fn baselines_of(
        &self,
        repo: &RepoName,
        keys: &[(EnvName, ServiceName)],
    ) -> Result<Vec<Option<Baseline>>>;

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

    // --- several replicas: leases and claims ------------------------------

    /// Claims the lease (`kind`, `key`) for `owner` until `until`: taken
    /// when nobody holds it, when it expired (at `now`), or when `owner`
    /// holds it already. Every claim raises the generation. `None` while
    /// another replica holds it.
    async fn claim_lease(
        &self,
        kind: &str,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<Lease>>;

    /// Extends to `until` every lease of `kind` that `owner` still holds;
    /// answers those (key, generation). One that is missing was taken over.
    async fn renew_leases(
        &self,
        kind: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>>;

    /// Who holds the lease (`kind`, `key`), if anyone ever did: the owner
    /// (`None` once released) and the lease (for operators and tests).
    async fn lease(&self, kind: &str, key: &str) -> Result<Option<(Option<String>, Lease)>>;

    /// Gives the lease up, if `owner` still holds it at `generation`.
    async fn release_lease(
        &self,
        kind: &str,
        key: &str,
        owner: &str,
        generation: i64,
    ) -> Result<()>;

    /// Gives up every lease and inbox claim of `owner` (a graceful stop):
    /// other replicas take the work at once instead of after the lease.
    async fn release_all_leases(&self, owner: &str, now: DateTime<Utc>) -> Result<()>;

    /// Gives up `owner`'s claims on pending deliveries, due at `now`; how
    /// many. At start: a replica keeps its id across a restart, and the
    /// deliveries it had claimed when it died are due at once instead of
    /// when their claims would have run out.
    async fn release_delivery_claims(&self, owner: &str, now: DateTime<Utc>) -> Result<u64>;

    /// Rollouts nobody drives that need driving, without a lease that is
    /// held at `now`: unfinished ones that started (not queued), and ended
    /// ones still draining (an abort's deploys in flight, whose replica
    /// died while it waited for them). Oldest first.
    async fn orphaned_rollouts(&self, now: DateTime<Utc>) -> Result<Vec<RolloutId>>;

    /// Ended rollouts still draining (`RolloutWrite::draining`), whoever
    /// holds their lease: a process that stopped while an aborted rollout
    /// waited for its deploys in flight finds them at its next start.
    /// Oldest first.
    async fn draining_rollouts(&self) -> Result<Vec<RolloutId>>;

    /// Clears a rollout's draining mark without a save: for one listed as
    /// draining that has nothing left in flight to drive, or whose stored
    /// state cannot be read, so that its locks are not held for ever.
    async fn stop_draining(&self, id: &RolloutId) -> Result<()>;

    /// Branches (repository, branch) with a queued deploy rollout and no
    /// started one: their next rollout should start (its replica may have
    /// died between finishing one rollout and starting the next).
    async fn idle_queued_branches(&self) -> Result<Vec<(RepoName, BranchName)>>;

    /// Claims up to `limit` deliveries due at `now` for `owner` until
    /// `until`, oldest first: no other replica gets them before the claim
    /// expires or they are finished.
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<InboxItem>> {
        let claim = ClaimDue {
            owner: owner.to_owned(),
            until,
            limit,
        };
        let write = InboxWrite {
            claims: std::slice::from_ref(&claim),
            ..InboxWrite::default()
        };
        let written = self.write_inbox(write, now).await?;
        match written.claimed.first() {
            Some(ids) if !ids.is_empty() => self.deliveries(ids).await,
            _ => Ok(Vec::new()),
        }
    }

    /// Extends `owner`'s claims on these deliveries to `until` (while it is
    /// still processing them).
    async fn renew_delivery_claims(
        &self,
        owner: &str,
        ids: &[DeliveryId],
        until: DateTime<Utc>,
    ) -> Result<()>;

    /// Queues an input (a command or event, as JSON) for the replica that
    /// drives the rollout; its id, to wait for the answer.
    async fn push_rollout_input(
        &self,
        rollout: &RolloutId,
        input: &str,
        now: DateTime<Utc>,
    ) -> Result<i64>;

    /// Unanswered inputs of rollouts whose lease `owner` holds, in order:
    /// (input id, rollout, input).
    async fn open_rollout_inputs(&self, owner: &str) -> Result<Vec<(i64, RolloutId, String)>>;

    /// Records the answer to an input: empty when accepted, else why not.
    /// `false` when it had an answer already (the first answer stands).
    async fn answer_rollout_input(&self, id: i64, answer: &str, now: DateTime<Utc>)
    -> Result<bool>;

    /// The answer to an input, once there is one.
    async fn rollout_input_answer(&self, id: i64) -> Result<Option<String>>;

    /// Takes one GitHub write from the installation's bucket, shared by all
    /// replicas (SPEC 7.5): the bucket holds at most `per_minute` and
    /// refills at `per_minute` a minute. `None` when a write was taken, else
    /// how long until one is available.
    async fn take_write_token(
        &self,
        installation: InstallationId,
        per_minute: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<std::time::Duration>>;

    // --- drift (SPEC 6.6) ------------------------------------------------

    /// Every baseline of `repo` (all repositories when `None`), ordered by
    /// repository, environment, service.
    async fn baselines(&self, repo: Option<&RepoName>) -> Result<Vec<StoredBaseline>>;

    /// The (repository, environment) pairs with a step in preflight,
    /// deploying or verifying in an unfinished rollout, each once. Read from
    /// the stored steps alone: the drift pass asks every interval, and
    /// reading every unfinished rollout whole (a 10,000-environment one is
    /// megabytes) only to find these was most of its work.
    async fn in_flight_environments(&self) -> Result<Vec<(RepoName, EnvName)>>;

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

/// A lease as claimed: the generation to carry on writes, and its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub generation: i64,
    pub expires_at: DateTime<Utc>,
}

/// The lease a rollout write is made under: `save_rollout` writes only
/// while `owner` holds the rollout's lease at `generation`, unexpired;
/// otherwise it fails with [`StoreError::Fenced`] and writes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub generation: i64,
}

/// The lease kind of driving a rollout (key: the rollout id).
pub const LEASE_ROLLOUT: &str = "rollout";
/// The lease kind of an admission decision on a branch (key: repo#branch).
pub const LEASE_BRANCH: &str = "branch";

/// A store's database, as [`Store::shared_database`] lends it.
#[derive(Clone, Debug)]
pub enum SharedDatabase {
    /// The SQLite store's writer connection: writes queue behind the
    /// store's own, never beside them inside SQLite.
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
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

/// The token bucket behind [`Store::take_write_token`], pure so both
/// stores decide the same way and it is tested without a database.
pub mod pacing {
    /// With `tokens` in the bucket last written at `updated_ms`, at
    /// `now_ms`: whether a write may go, the tokens left, and (when it may
    /// not) how long until one is there. The bucket never holds more than
    /// `capacity`; a clock that went backwards refills nothing.
    pub fn take(
        tokens: f64,
        updated_ms: i64,
        now_ms: i64,
        capacity: f64,
        per_ms: f64,
    ) -> (bool, f64, std::time::Duration) {
        let elapsed = (now_ms - updated_ms).max(0) as f64;
        let tokens = (tokens + elapsed * per_ms).min(capacity);
        if tokens >= 1.0 {
            (true, tokens - 1.0, std::time::Duration::ZERO)
        } else {
            let wait_ms = ((1.0 - tokens) / per_ms.max(f64::MIN_POSITIVE)).ceil();
            (
                false,
                tokens,
                std::time::Duration::from_millis(wait_ms.min(3_600_000.0) as u64),
            )
        }
    }

    #[cfg(test)]
    mod tests {
        use super::take;

        #[test]
        fn a_full_bucket_gives_its_capacity_then_refills_at_the_rate() {
            let per_ms = 60.0 / 60_000.0; // 60 a minute: one a second
            let mut tokens = 60.0;
            for _ in 0..60 {
                let (ok, left, _) = take(tokens, 0, 0, 60.0, per_ms);
                assert!(ok);
                tokens = left;
            }
            let (ok, _, wait) = take(tokens, 0, 0, 60.0, per_ms);
            assert!(!ok);
            assert_eq!(wait.as_millis(), 1000);
            let (ok, _, _) = take(tokens, 0, 1000, 60.0, per_ms);
            assert!(ok, "a second later one write is due");
        }

        #[test]
        fn never_more_than_capacity_and_no_refill_backwards() {
            let per_ms = 1.0 / 60_000.0;
            let (_, left, _) = take(0.5, 0, 10_000_000, 1.0, per_ms);
            assert_eq!(left, 0.0, "capped at one, one taken");
            let (ok, left, _) = take(0.5, 1_000, 0, 1.0, per_ms);
            assert!(!ok);
            assert_eq!(left, 0.5);
        }
    }
}

#[cfg(test)]
mod payload_tests {
    use super::Payload;

    /// Bodies stored before and after the scratch buffer must read the
    /// same: the bytes are `compress_prepend_size`'s, also after a larger
    /// body grew the buffer and a smaller one follows.
    #[test]
    fn a_payload_is_lz4_with_its_size_prepended() {
        let random: String = (0..30_000)
            .map(|_| char::from(b'a' + fastrand::u8(..26)))
            .collect();
        let bodies = [
            String::new(),
            "{}".to_owned(),
            format!("{{\"padding\":\"{}\"}}", "x".repeat(25_000)),
            random,
            "{\"é\":\"ü\"}".to_owned(),
        ];
        for body in bodies.iter().chain(bodies.iter().rev()) {
            let payload = Payload::compress(body);
            assert_eq!(
                payload.as_bytes(),
                lz4_flex::compress_prepend_size(body.as_bytes()),
                "{} bytes",
                body.len()
            );
            assert_eq!(&payload.decompress().unwrap(), body);
        }
    }
}

//! A store that counts what the runtime asks of it, around any other:
//! transactions, rollout saves and what they write, and the reads a step's
//! preflight makes. The rollout bench reports them per step; tests hold
//! them down, so that batching the runtime relies on cannot quietly go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    BranchName, CommitSha, DeliveryId, EnvName, InstallationId, RepoName, RolloutId, ServiceName,
};
use crate::store::{
    AuditEntry, Baseline, Created, FirstAttempts, Freeze, InboxCounts, InboxItem, InboxWrite,
    InboxWritten, RolloutRecord, RolloutSummary, RolloutWrite, Store, StoredTimer,
};

type StoreResult<T> = crate::store::Result<T>;

/// Counts what the runtime writes: every call that writes is one
/// transaction (`save_rollout`, `create_rollout` explicitly; the others are
/// single statements, each its own transaction).
pub struct Counting {
    pub inner: Arc<dyn Store>,
    pub writes: AtomicU64,
    pub saves: AtomicU64,
    /// Bytes of rollout JSON saved (headers and steps).
    pub bytes: AtomicU64,
    pub step_rows: AtomicU64,
    /// Rows a save writes beside the steps: timers set, timers fired,
    /// attempts, locks taken, locks released.
    pub side_rows: [AtomicU64; 5],
    /// Reads on a step's path (the baseline a preflight compares with):
    /// one per query, however many steps it answers for.
    pub step_reads: AtomicU64,
}

impl Counting {
    pub fn new(inner: Arc<dyn Store>) -> Counting {
        Counting {
            inner,
            writes: AtomicU64::new(0),
            saves: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            step_rows: AtomicU64::new(0),
            side_rows: Default::default(),
            step_reads: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl Store for Counting {
    fn one_writer(&self) -> bool {
        self.inner.one_writer()
    }
    fn shared_database(&self) -> crate::store::SharedDatabase {
        self.inner.shared_database()
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn write_inbox(
        &self,
        write: InboxWrite<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<InboxWritten> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write_inbox(write, now).await
    }
    async fn deliveries(&self, ids: &[DeliveryId]) -> StoreResult<Vec<InboxItem>> {
        self.inner.deliveries(ids).await
    }
    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<InboxItem>> {
        self.inner.due_deliveries(now, limit).await
    }
    async fn next_delivery_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        self.inner.next_delivery_due().await
    }
    async fn delivery(&self, id: &DeliveryId) -> StoreResult<Option<InboxItem>> {
        self.inner.delivery(id).await
    }
    async fn inbox_counts(&self) -> StoreResult<InboxCounts> {
        self.inner.inbox_counts().await
    }
    async fn upsert_installation(
        &self,
        id: InstallationId,
        account: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.upsert_installation(id, account, now).await
    }
    async fn set_installation_suspended(
        &self,
        id: InstallationId,
        suspended: bool,
        changed_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .set_installation_suspended(id, suspended, changed_at, now)
            .await
    }
    async fn suspended_installations(&self) -> StoreResult<Vec<(InstallationId, String)>> {
        self.inner.suspended_installations().await
    }
    async fn delete_installation(&self, id: InstallationId) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete_installation(id).await
    }
    async fn add_installation_repos(
        &self,
        id: InstallationId,
        repos: &[RepoName],
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.add_installation_repos(id, repos).await
    }
    async fn remove_installation_repos(
        &self,
        id: InstallationId,
        repos: &[RepoName],
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.remove_installation_repos(id, repos).await
    }
    async fn installation_for_repo(&self, repo: &RepoName) -> StoreResult<Option<InstallationId>> {
        self.inner.installation_for_repo(repo).await
    }
    async fn installation_repos(&self, id: InstallationId) -> StoreResult<Vec<RepoName>> {
        self.inner.installation_repos(id).await
    }
    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.append_audit(entry).await
    }
    async fn audit_for_rollout(&self, rollout: &RolloutId) -> StoreResult<Vec<AuditEntry>> {
        self.inner.audit_for_rollout(rollout).await
    }
    async fn create_rollout(&self, record: &RolloutRecord) -> StoreResult<Created> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.create_rollout(record).await
    }
    async fn attach_pull_request(&self, id: &RolloutId, pull_request: u64) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.attach_pull_request(id, pull_request).await
    }
    async fn save_rollout(
        &self,
        id: &RolloutId,
        write: &RolloutWrite,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.saves.fetch_add(1, Ordering::Relaxed);
        let bytes = write.document.len() + write.steps.iter().map(|s| s.step.len()).sum::<usize>();
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.step_rows
            .fetch_add(write.steps.len() as u64, Ordering::Relaxed);
        let side = [
            write.timers.len(),
            write.fired.len(),
            write.attempts.len(),
            write.lock.len(),
            write.unlock.len(),
        ];
        for (counter, n) in self.side_rows.iter().zip(side) {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.inner.save_rollout(id, write, now).await
    }
    async fn rollout(&self, id: &RolloutId) -> StoreResult<Option<RolloutRecord>> {
        self.inner.rollout(id).await
    }
    async fn rollout_for_commit(
        &self,
        repo: &RepoName,
        branch: &BranchName,
        commit: &CommitSha,
    ) -> StoreResult<Option<RolloutRecord>> {
        self.inner.rollout_for_commit(repo, branch, commit).await
    }
    async fn latest_rollout_for_pull_request(
        &self,
        repo: &RepoName,
        pull_request: u64,
    ) -> StoreResult<Option<RolloutRecord>> {
        self.inner
            .latest_rollout_for_pull_request(repo, pull_request)
            .await
    }
    async fn list_rollouts(
        &self,
        repo: Option<&RepoName>,
        limit: u32,
    ) -> StoreResult<Vec<RolloutSummary>> {
        self.inner.list_rollouts(repo, limit).await
    }
    async fn unfinished_rollouts(&self) -> StoreResult<Vec<RolloutRecord>> {
        self.inner.unfinished_rollouts().await
    }
    async fn unfinished_deploys(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> StoreResult<Vec<RolloutSummary>> {
        self.inner.unfinished_deploys(repo, branch).await
    }
    async fn deploys_after(
        &self,
        repo: &RepoName,
        branch: &BranchName,
        than: &RolloutRecord,
    ) -> StoreResult<Vec<RolloutSummary>> {
        self.inner.deploys_after(repo, branch, than).await
    }
    async fn last_succeeded_commit(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> StoreResult<Option<CommitSha>> {
        self.inner.last_succeeded_commit(repo, branch).await
    }
    async fn timers(&self, id: &RolloutId) -> StoreResult<Vec<StoredTimer>> {
        self.inner.timers(id).await
    }
    async fn delete_timer(&self, id: &RolloutId, timer: &str) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete_timer(id, timer).await
    }
    async fn first_attempts(
        &self,
        repo: &RepoName,
    ) -> StoreResult<BTreeMap<EnvName, FirstAttempts>> {
        self.inner.first_attempts(repo).await
    }
    async fn last_good_version(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        excluding: Option<&RolloutId>,
    ) -> StoreResult<Option<CommitSha>> {
        self.inner
            .last_good_version(repo, environment, service, excluding)
            .await
    }
    async fn baseline(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
    ) -> StoreResult<Option<Baseline>> {
        self.step_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.baseline(repo, environment, service).await
    }
    async fn baselines_of(
        &self,
        repo: &RepoName,
        keys: &[(EnvName, ServiceName)],
    ) -> StoreResult<Vec<Option<Baseline>>> {
        self.step_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.baselines_of(repo, keys).await
    }
    async fn set_baseline(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        version: &str,
        source: &str,
        rollout: Option<&RolloutId>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .set_baseline(repo, environment, service, version, source, rollout, now)
            .await
    }
    async fn try_lock_step(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        rollout: &RolloutId,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .try_lock_step(repo, environment, service, rollout, now)
            .await
    }
    async fn set_freeze(&self, freeze: &Freeze) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.set_freeze(freeze).await
    }
    async fn clear_freeze(&self, scope: &str) -> StoreResult<bool> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.clear_freeze(scope).await
    }
    async fn freezes_for(&self, repo: &RepoName) -> StoreResult<Vec<Freeze>> {
        self.inner.freezes_for(repo).await
    }
    async fn unlock_step(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        rollout: &RolloutId,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .unlock_step(repo, environment, service, rollout)
            .await
    }
    async fn claim_lease(
        &self,
        kind: &str,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<Option<crate::store::Lease>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.claim_lease(kind, key, owner, now, until).await
    }
    async fn renew_leases(
        &self,
        kind: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<Vec<(String, i64)>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.renew_leases(kind, owner, until).await
    }
    async fn lease(
        &self,
        kind: &str,
        key: &str,
    ) -> StoreResult<Option<(Option<String>, crate::store::Lease)>> {
        self.inner.lease(kind, key).await
    }
    async fn release_lease(
        &self,
        kind: &str,
        key: &str,
        owner: &str,
        generation: i64,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.release_lease(kind, key, owner, generation).await
    }
    async fn release_all_leases(&self, owner: &str, now: DateTime<Utc>) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.release_all_leases(owner, now).await
    }
    async fn release_delivery_claims(&self, owner: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.release_delivery_claims(owner, now).await
    }
    async fn orphaned_rollouts(&self, now: DateTime<Utc>) -> StoreResult<Vec<RolloutId>> {
        self.inner.orphaned_rollouts(now).await
    }
    async fn idle_queued_branches(&self) -> StoreResult<Vec<(RepoName, BranchName)>> {
        self.inner.idle_queued_branches().await
    }
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<InboxItem>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.claim_deliveries(owner, now, until, limit).await
    }
    async fn renew_delivery_claims(
        &self,
        owner: &str,
        ids: &[DeliveryId],
        until: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.renew_delivery_claims(owner, ids, until).await
    }
    async fn push_rollout_input(
        &self,
        rollout: &RolloutId,
        input: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<i64> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.push_rollout_input(rollout, input, now).await
    }
    async fn open_rollout_inputs(&self, owner: &str) -> StoreResult<Vec<(i64, RolloutId, String)>> {
        self.inner.open_rollout_inputs(owner).await
    }
    async fn answer_rollout_input(
        &self,
        id: i64,
        answer: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.answer_rollout_input(id, answer, now).await
    }
    async fn rollout_input_answer(&self, id: i64) -> StoreResult<Option<String>> {
        self.inner.rollout_input_answer(id).await
    }
    async fn take_write_token(
        &self,
        installation: InstallationId,
        per_minute: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<std::time::Duration>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .take_write_token(installation, per_minute, now)
            .await
    }
    async fn baselines(
        &self,
        repo: Option<&RepoName>,
    ) -> StoreResult<Vec<crate::store::StoredBaseline>> {
        self.inner.baselines(repo).await
    }
    async fn stop_draining(&self, id: &RolloutId) -> StoreResult<()> {
        self.inner.stop_draining(id).await
    }
    async fn draining_rollouts(&self) -> StoreResult<Vec<RolloutId>> {
        self.inner.draining_rollouts().await
    }
    async fn audit_at(&self, repo: &RepoName, location: &str) -> StoreResult<Vec<AuditEntry>> {
        self.inner.audit_at(repo, location).await
    }
    async fn in_flight_environments(&self) -> StoreResult<Vec<(RepoName, EnvName)>> {
        self.inner.in_flight_environments().await
    }

    async fn held_step_locks(&self) -> StoreResult<Vec<(RepoName, EnvName, ServiceName)>> {
        self.inner.held_step_locks().await
    }
    async fn observe_drift(
        &self,
        repo: &RepoName,
        observation: &crate::store::DriftObservation,
        now: DateTime<Utc>,
    ) -> StoreResult<crate::store::DriftRecord> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.observe_drift(repo, observation, now).await
    }
    async fn resolve_drift(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: Option<&ServiceName>,
        kind: crate::store::DriftKind,
        how: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .resolve_drift(repo, environment, service, kind, how, by, now)
            .await
    }
    async fn open_drift(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        kind: crate::store::DriftKind,
    ) -> StoreResult<Option<crate::store::DriftRecord>> {
        self.inner
            .open_drift(repo, environment, service, kind)
            .await
    }
    async fn drift_records(
        &self,
        repo: &RepoName,
        include_resolved: bool,
        limit: u32,
    ) -> StoreResult<Vec<crate::store::DriftRecord>> {
        self.inner
            .drift_records(repo, include_resolved, limit)
            .await
    }
}

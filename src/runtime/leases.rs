//! Several replicas on one database: who this replica is, how long its
//! leases last, and what it knows locally about a lease it holds.
//!
//! Work is claimed through the database (`Store::claim_lease`,
//! `Store::claim_deliveries`); the database decides who holds what. This
//! module holds the small, pure decisions around that: when to renew, when
//! to look for orphaned work, and whether a lease is still safe to act
//! under — checked before every driver call, so a replica that was paused
//! past its lease (SIGSTOP, a long GC-like stall, a frozen VM) does not
//! deploy on work another replica has taken over.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{InstallationId, RepoName};
use crate::github::{
    CheckRun, CheckRunUpdate, GitHubApi, GitHubResult, Issue, IssueComment, IssueFilter,
    IssueUpdate, NewCheckRun, NewIssue, Permission, PullRequest, Reaction, Repository,
    TeamMembership,
};
use crate::store::{Fence, Lease, Store};

/// The default lease (`server.lease`).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// Who this replica is and how long its leases last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Stable across restarts of the same installation (host and data
    /// folder), so a restarted convoy takes its own work back at once
    /// instead of waiting for its old leases to expire.
    pub id: String,
    pub lease: Duration,
}

impl Replica {
    pub fn new(id: impl Into<String>, lease: Duration) -> Replica {
        Replica {
            id: id.into(),
            lease: lease.max(Duration::from_millis(100)),
        }
    }

    /// The id of the convoy that keeps its files in `data_dir` on this
    /// host. Two replicas must not share a data folder on one host (their
    /// git caches would collide too); `docs/operating.md` says so.
    pub fn for_data_dir(data_dir: &Path, lease: Duration) -> Replica {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
        Replica::new(replica_id(&host, &dir.display().to_string()), lease)
    }

    /// A lease claimed now ends here.
    pub fn until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(15))
    }

    /// How often held leases are renewed: three renewals fit in one lease,
    /// so one slow database round does not lose it.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// How often a replica looks for orphaned work (a bound on how late a
    /// takeover comes after the lease expired).
    pub fn scan_every(&self) -> Duration {
        self.lease / 3
    }

    /// Acting under a lease stops this long before its end: a driver call
    /// started just before the end could otherwise still be running when
    /// another replica takes over.
    pub fn margin(&self) -> Duration {
        self.lease / 4
    }
}

/// `host` plus a short hash of the data folder: readable in logs and in
/// the `leases` table, unique per (host, folder).
pub fn replica_id(host: &str, data_dir: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(data_dir.as_bytes());
    format!("{host}-{}", hex::encode(&digest[..4]))
}

/// What a replica knows locally about one lease it holds: the generation
/// its writes carry, and until when acting under it is safe.
#[derive(Debug)]
pub struct HeldLease {
    pub generation: i64,
    /// Unix ms after which nothing is started under this lease; zero once
    /// it is lost or given up.
    safe_until: AtomicI64,
}

impl HeldLease {
    pub fn new(lease: Lease, replica: &Replica) -> HeldLease {
        let held = HeldLease {
            generation: lease.generation,
            safe_until: AtomicI64::new(0),
        };
        held.extended(lease.expires_at, replica);
        held
    }

    /// The lease now ends at `expires_at` (a renewal came back).
    pub fn extended(&self, expires_at: DateTime<Utc>, replica: &Replica) {
        let margin = i64::try_from(replica.margin().as_millis()).unwrap_or(i64::MAX);
        self.safe_until.store(
            expires_at.timestamp_millis().saturating_sub(margin),
            Ordering::SeqCst,
        );
    }

    /// Lost or given up: nothing more is started under it.
    pub fn revoke(&self) {
        self.safe_until.store(0, Ordering::SeqCst);
    }

    /// Whether work may still be started under this lease at `now`.
    pub fn valid(&self, now: DateTime<Utc>) -> bool {
        now.timestamp_millis() < self.safe_until.load(Ordering::SeqCst)
    }

    pub fn fence(&self, replica: &Replica) -> Fence {
        Fence {
            owner: replica.id.clone(),
            generation: self.generation,
        }
    }
}

/// The lease key of admission decisions on a branch.
pub fn branch_key(repo: &str, branch: &str) -> String {
    format!("{repo}#{branch}")
}

/// GitHub write pacing shared by every replica (SPEC 7.5): each
/// content-creating call (POST, PATCH) first takes a token from the
/// installation's bucket in the database, so `github.writes_per_minute`
/// holds for the installation however many replicas write. Each replica's
/// transport still coalesces and orders its own writes (terminal and
/// waiting first); this is only the shared cap at the I/O edge. Reads pass
/// straight through. A database that does not answer does not stop
/// reporting: the write goes unpaced (and is logged).
pub struct SharedWritePacing {
    inner: std::sync::Arc<dyn GitHubApi>,
    store: std::sync::Arc<dyn Store>,
    per_minute: u32,
}

/// The longest one wait for a token, before asking again.
const MAX_TOKEN_WAIT: Duration = Duration::from_secs(5);

impl SharedWritePacing {
    pub fn new(
        inner: std::sync::Arc<dyn GitHubApi>,
        store: std::sync::Arc<dyn Store>,
        per_minute: u32,
    ) -> SharedWritePacing {
        SharedWritePacing {
            inner,
            store,
            per_minute,
        }
    }

    async fn token(&self, inst: InstallationId) {
        loop {
            match self
                .store
                .take_write_token(inst, self.per_minute, Utc::now())
                .await
            {
                Ok(None) => return,
                Ok(Some(wait)) => tokio::time::sleep(wait.min(MAX_TOKEN_WAIT)).await,
                Err(e) => {
                    tracing::warn!(error = %e, installation = inst.0, "shared write pacing unavailable; writing unpaced");
                    return;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl GitHubApi for SharedWritePacing {
    async fn create_check_run(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        run: &NewCheckRun,
    ) -> GitHubResult<CheckRun> {
        self.token(inst).await;
        self.inner.create_check_run(inst, repo, run).await
    }

    async fn update_check_run(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        check_run_id: u64,
        update: &CheckRunUpdate,
    ) -> GitHubResult<CheckRun> {
        self.token(inst).await;
        self.inner
            .update_check_run(inst, repo, check_run_id, update)
            .await
    }

    async fn list_check_runs(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        git_ref: &str,
        name: Option<&str>,
    ) -> GitHubResult<Vec<CheckRun>> {
        self.inner.list_check_runs(inst, repo, git_ref, name).await
    }

    async fn create_comment(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        issue_number: u64,
        body: &str,
    ) -> GitHubResult<IssueComment> {
        self.token(inst).await;
        self.inner
            .create_comment(inst, repo, issue_number, body)
            .await
    }

    async fn update_comment(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        comment_id: u64,
        body: &str,
    ) -> GitHubResult<IssueComment> {
        self.token(inst).await;
        self.inner
            .update_comment(inst, repo, comment_id, body)
            .await
    }

    async fn list_comments(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        issue_number: u64,
    ) -> GitHubResult<Vec<IssueComment>> {
        self.inner.list_comments(inst, repo, issue_number).await
    }

    async fn add_reaction(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        comment_id: u64,
        reaction: Reaction,
    ) -> GitHubResult<()> {
        self.token(inst).await;
        self.inner
            .add_reaction(inst, repo, comment_id, reaction)
            .await
    }

    async fn get_permission(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        user: &str,
    ) -> GitHubResult<Permission> {
        self.inner.get_permission(inst, repo, user).await
    }

    async fn get_pull_request(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        number: u64,
    ) -> GitHubResult<PullRequest> {
        self.inner.get_pull_request(inst, repo, number).await
    }

    async fn create_issue(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        issue: &NewIssue,
    ) -> GitHubResult<Issue> {
        self.token(inst).await;
        self.inner.create_issue(inst, repo, issue).await
    }

    async fn update_issue(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        number: u64,
        update: &IssueUpdate,
    ) -> GitHubResult<Issue> {
        self.token(inst).await;
        self.inner.update_issue(inst, repo, number, update).await
    }

    async fn list_issues_by_label(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        label: &str,
        filter: IssueFilter,
    ) -> GitHubResult<Vec<Issue>> {
        self.inner
            .list_issues_by_label(inst, repo, label, filter)
            .await
    }

    async fn get_repository(
        &self,
        inst: InstallationId,
        repo: &RepoName,
    ) -> GitHubResult<Repository> {
        self.inner.get_repository(inst, repo).await
    }

    async fn get_team_membership(
        &self,
        inst: InstallationId,
        org: &str,
        team_slug: &str,
        user: &str,
    ) -> GitHubResult<Option<TeamMembership>> {
        self.inner
            .get_team_membership(inst, org, team_slug, user)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(ms: u64) -> Replica {
        Replica::new("r1", Duration::from_millis(ms))
    }

    #[test]
    fn a_lease_is_safe_until_a_margin_before_its_end() {
        let r = replica(2000);
        let now = Utc::now();
        let held = HeldLease::new(
            Lease {
                generation: 3,
                expires_at: r.until(now),
            },
            &r,
        );
        assert!(held.valid(now));
        assert!(held.valid(now + chrono::Duration::milliseconds(1400)));
        assert!(!held.valid(now + chrono::Duration::milliseconds(1500)));
        // A renewal moves the end; a revocation ends it at once.
        held.extended(r.until(now + chrono::Duration::seconds(10)), &r);
        assert!(held.valid(now + chrono::Duration::seconds(11)));
        held.revoke();
        assert!(!held.valid(now));
        assert_eq!(held.fence(&r).generation, 3);
    }

    #[test]
    fn renewals_fit_three_times_in_a_lease_and_before_the_margin() {
        let r = replica(15_000);
        assert_eq!(r.renew_every(), Duration::from_secs(5));
        assert!(r.renew_every() + r.margin() < r.lease);
        assert!(replica(1).lease >= Duration::from_millis(100), "floored");
    }

    #[test]
    fn ids_differ_by_folder_and_host_and_are_stable() {
        let a = replica_id("h1", "/srv/a");
        assert_eq!(a, replica_id("h1", "/srv/a"));
        assert_ne!(a, replica_id("h1", "/srv/b"));
        assert_ne!(a, replica_id("h2", "/srv/a"));
        assert!(a.starts_with("h1-"));
    }
}

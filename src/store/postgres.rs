//! The PostgreSQL store: what several replicas share. The same tables and
//! meanings as the SQLite store (row reading is shared, in `rows`); the
//! SQL differs where PostgreSQL has a better or a necessary form.
//!
//! Every write that two replicas could race on is decided by the database:
//! the inbox insert and rollout creation by unique indexes with
//! `ON CONFLICT`, step locks by an upsert that only the holder's own
//! rollout can update, and a rollout's save by locking its row first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::rows::{
    self, DEPLOY, DRIFT_COLUMNS, IN_FLIGHT_STEP, Parts, ROLLOUT_COLUMNS, SUMMARY_COLUMNS, TERMINAL,
};
use super::{
    AttemptRecord, AuditEntry, Baseline, Created, DriftKind, DriftObservation, DriftRecord,
    FirstAttempts, Freeze, InboxCounts, InboxItem, InboxWrite, InboxWritten, LEASE_ROLLOUT, Lease,
    Result, RolloutRecord, RolloutSummary, RolloutWrite, Store, StoreError, StoredBaseline,
    StoredStep, StoredTimer, document, from_millis, to_millis,
};
use crate::domain::{
    BranchName, CommitSha, DeliveryId, EnvName, InstallationId, RepoName, RolloutId, ServiceName,
};

/// Connections per process. Each replica holds this many at most; a
/// PostgreSQL server's default `max_connections` (100) leaves room for
/// several replicas and the operator's own sessions.
const MAX_CONNECTIONS: u32 = 10;

/// How long a session may sit inside a transaction without sending
/// anything before the server ends it (ms).
const IDLE_IN_TRANSACTION: &str = "2000";

/// Reads that span several statements (a rollout's header and its steps)
/// see one snapshot. PostgreSQL's default, READ COMMITTED, takes a new
/// snapshot per statement; SQLite's read transactions are snapshots anyway.
const SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Environment and service names as two arrays, for `UNNEST`.
fn columns<'a>(
    keys: impl IntoIterator<Item = &'a (EnvName, ServiceName)>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    keys.into_iter()
        .map(|(e, s)| (e.as_str(), s.as_str()))
        .unzip()
}

/// Takes the locks of (environment, service) for `rollout` unless another
/// rollout holds them; for each, in the order given, whether `rollout`
/// holds it now. One statement for all of them.
///
/// The upsert only updates a row the same rollout already holds, so a lock
/// held by another rollout returns nothing; a concurrent insert of the same
/// key waits for the other transaction and then sees its row. The keys are
/// taken in sorted order (and each once), so two transactions taking
/// overlapping sets cannot deadlock.
async fn lock_steps(
    tx: &mut sqlx::PgConnection,
    repo: &str,
    keys: &[(EnvName, ServiceName)],
    rollout: &RolloutId,
    now_ms: i64,
) -> Result<Vec<bool>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let unique: BTreeSet<&(EnvName, ServiceName)> = keys.iter().collect();
    let (environments, services) = columns(unique);
    // A lock whose holder has ended, is not draining (no deploy of it
    // still in flight) and is driven by no replica is free: it was left
    // behind, and nothing would ever release it. A draining holder keeps
    // its locks until its deploys end, also while nobody drives it (until
    // a process takes it over); the lease covers a replica of a version
    // that does not mark rollouts draining.
    let held: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO step_locks (repo, environment, service, rollout_id, acquired_at) \
         SELECT $1, e, s, $2, $3 FROM UNNEST($4::TEXT[], $5::TEXT[]) WITH ORDINALITY AS t (e, s, n) \
         ORDER BY n \
         ON CONFLICT (repo, environment, service) DO UPDATE SET rollout_id = excluded.rollout_id, \
           acquired_at = CASE WHEN step_locks.rollout_id = excluded.rollout_id \
                              THEN step_locks.acquired_at ELSE excluded.acquired_at END \
         WHERE step_locks.rollout_id = excluded.rollout_id \
            OR (EXISTS (SELECT 1 FROM rollouts r WHERE r.id = step_locks.rollout_id \
                        AND r.state IN {TERMINAL} AND NOT r.draining) \
                AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.kind = '{LEASE_ROLLOUT}' \
                                AND l.key = step_locks.rollout_id AND l.owner IS NOT NULL \
                                AND l.expires_at > $3)) \
         RETURNING environment, service"
    )))
    .bind(repo)
    .bind(rollout.as_str())
    .bind(now_ms)
    .bind(environments)
    .bind(services)
    .fetch_all(&mut *tx)
    .await?;
    let held: BTreeSet<(String, String)> = held.into_iter().collect();
    Ok(keys
        .iter()
        .map(|(e, s)| held.contains(&(e.to_string(), s.to_string())))
        .collect())
}

/// New timers, each replacing one of the same kind (the last of a kind
/// given twice wins).
async fn write_timers(
    tx: &mut sqlx::PgConnection,
    id: &RolloutId,
    timers: &[StoredTimer],
) -> Result<()> {
    if timers.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = timers.iter().map(|t| t.timer.as_str()).collect();
    let times: Vec<i64> = timers.iter().map(|t| to_millis(t.at)).collect();
    sqlx::query(
        "INSERT INTO rollout_timers (rollout_id, timer, at) \
         SELECT DISTINCT ON (k) $1, k, a FROM UNNEST($2::TEXT[], $3::BIGINT[]) WITH ORDINALITY \
           AS t (k, a, n) ORDER BY k, n DESC \
         ON CONFLICT (rollout_id, timer) DO UPDATE SET at = excluded.at",
    )
    .bind(id.as_str())
    .bind(names)
    .bind(times)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deploy attempts into the history (in order: newest last), and each
/// successful one's version as its (environment, service)'s baseline.
async fn write_attempts(
    tx: &mut sqlx::PgConnection,
    repo: &str,
    id: &RolloutId,
    attempts: &[AttemptRecord],
    now_ms: i64,
) -> Result<()> {
    if attempts.is_empty() {
        return Ok(());
    }
    let environments: Vec<&str> = attempts.iter().map(|a| a.environment.as_str()).collect();
    let services: Vec<&str> = attempts.iter().map(|a| a.service.as_str()).collect();
    let versions: Vec<&str> = attempts.iter().map(|a| a.version.as_str()).collect();
    let numbers: Vec<i64> = attempts.iter().map(|a| i64::from(a.attempt)).collect();
    let succeeded: Vec<bool> = attempts.iter().map(|a| a.succeeded).collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    sqlx::query(
        "WITH t AS (SELECT * FROM UNNEST($4::TEXT[], $5::TEXT[], $6::TEXT[], $7::BIGINT[], \
             $8::BOOLEAN[], $9::TEXT[]) WITH ORDINALITY AS t (e, s, v, k, ok, err, n)), \
         history AS (INSERT INTO deploy_history (repo, environment, service, version, \
             rollout_id, attempt, succeeded, error, at) \
           SELECT $1, e, s, v, $2, k, ok, err, $3 FROM t ORDER BY n) \
         INSERT INTO baselines (repo, environment, service, version, source, rollout_id, at) \
         SELECT DISTINCT ON (e, s) $1, e, s, v, 'deployed', $2, $3 FROM t WHERE ok \
           ORDER BY e, s, n DESC \
         ON CONFLICT (repo, environment, service) DO UPDATE SET \
           version = excluded.version, source = excluded.source, \
           rollout_id = excluded.rollout_id, at = excluded.at",
    )
    .bind(repo)
    .bind(id.as_str())
    .bind(now_ms)
    .bind(environments)
    .bind(services)
    .bind(versions)
    .bind(numbers)
    .bind(succeeded)
    .bind(errors)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Writes steps at their places, replacing what was there: one statement
/// for any number of steps (arrays, unnested by the server).
async fn write_steps(
    tx: &mut sqlx::PgConnection,
    id: &RolloutId,
    steps: &[StoredStep],
) -> Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    let waves: Vec<i64> = steps.iter().map(|s| i64::from(s.wave)).collect();
    let places: Vec<i64> = steps.iter().map(|s| i64::from(s.idx)).collect();
    let texts: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
    sqlx::query(
        "INSERT INTO rollout_steps (rollout_id, wave, idx, step) \
         SELECT $1, w, i, s FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::TEXT[]) AS t (w, i, s) \
         ON CONFLICT (rollout_id, wave, idx) DO UPDATE SET step = excluded.step",
    )
    .bind(id.as_str())
    .bind(waves)
    .bind(places)
    .bind(texts)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The record of a row read with [`ROLLOUT_COLUMNS`], made whole with its
/// steps read in the same transaction (so from the same snapshot).
async fn complete(
    tx: &mut sqlx::PgConnection,
    row: &sqlx::postgres::PgRow,
) -> Result<RolloutRecord> {
    let parts = Parts::read(row)?;
    let steps = if parts.split() {
        sqlx::query_as(
            "SELECT wave, step FROM rollout_steps WHERE rollout_id = $1 ORDER BY wave, idx",
        )
        .bind(parts.record.id.as_str())
        .fetch_all(&mut *tx)
        .await?
    } else {
        Vec::new()
    };
    parts.complete(steps)
}

/// The start of a query for whole inbox items; the caller adds `WHERE …`.
macro_rules! inbox_items {
    () => {
        "SELECT delivery_id, event, payload, received_at, state, attempts, last_error FROM inbox "
    };
}

/// Claims (owner $1, until $2) up to $4 deliveries due at $3, oldest
/// first; the caller adds what it returns. SKIP LOCKED: replicas claiming at
/// the same moment each take other rows instead of waiting for one another.
macro_rules! claim_due {
    () => {
        "UPDATE inbox SET claimed_by = $1, next_attempt_at = $2 WHERE delivery_id IN \
           (SELECT delivery_id FROM inbox WHERE state = 'pending' AND next_attempt_at <= $3 \
            ORDER BY next_attempt_at, received_at LIMIT $4 FOR UPDATE SKIP LOCKED) "
    };
}

#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database named by `url` (`postgres://…`) and applies
    /// the migrations. Several replicas starting at once are safe: sqlx
    /// holds an advisory lock while migrating.
    pub async fn open(url: &str) -> Result<PostgresStore> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(
                options
                    .application_name("convoy")
                    // A replica stopped inside a transaction (SIGSTOP, a
                    // frozen VM) would hold its row locks, and with them
                    // the takeover of its rollouts, until it continued. The
                    // server ends such a session instead; convoy's own
                    // transactions never wait on the client this long.
                    .options([("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION)]),
            )
            .await?;
        super::migrations::postgres().run(&pool).await?;
        Ok(PostgresStore { pool })
    }

    /// The pool, for a component that keeps tables of its own in the
    /// database (`Store::shared_database` lends the same).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The first rollout matching `filter` (SQL after `WHERE`, with `$1`
    /// for `arg` and `$2` for `number`), made whole: header and steps read
    /// in one transaction, so from the same snapshot.
    async fn one_rollout(
        &self,
        filter: &str,
        args: &[&str],
        number: Option<i64>,
    ) -> Result<Option<RolloutRecord>> {
        // A snapshot: the header and the steps of one version of the
        // rollout, even while a replica saves the next.
        let mut tx = self.pool.begin_with(SNAPSHOT).await?;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE {filter}"
        )));
        for arg in args {
            query = query.bind(arg.to_string());
        }
        if let Some(n) = number {
            query = query.bind(n);
        }
        let found = match query.fetch_optional(&mut *tx).await? {
            Some(row) => Some(complete(&mut tx, &row).await?),
            None => None,
        };
        tx.commit().await?;
        Ok(found)
    }
}

/// Gives an owner's claims on pending deliveries back, due at once
/// (`release_all_leases`, `release_delivery_claims`): (now, owner).
const RELEASE_DELIVERY_CLAIMS: &str = "UPDATE inbox SET claimed_by = NULL, next_attempt_at = $1 \
     WHERE claimed_by = $2 AND state = 'pending'";

#[async_trait]
impl Store for PostgresStore {
    fn shared_database(&self) -> super::SharedDatabase {
        super::SharedDatabase::Postgres(self.pool.clone())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn write_inbox(&self, write: InboxWrite<'_>, now: DateTime<Utc>) -> Result<InboxWritten> {
        let InboxWrite {
            new,
            finished,
            claims,
        } = write;
        if new.is_empty() && finished.is_empty() && claims.is_empty() {
            return Ok(InboxWritten::default());
        }
        let now = to_millis(now);
        // New deliveries alone (the intake's usual group) are one statement
        // outside a transaction: one round trip instead of three.
        let alone = finished.is_empty() && claims.is_empty();
        let mut tx = if alone {
            None
        } else {
            Some(self.pool.begin().await?)
        };
        let mut inserted = std::collections::HashSet::new();
        if !new.is_empty() {
            // One statement for the whole group. ON CONFLICT DO NOTHING
            // keeps the first copy of an id, whichever replica wrote it;
            // RETURNING names the rows this statement inserted.
            let ids: Vec<&str> = new.iter().map(|d| d.id.as_str()).collect();
            let events: Vec<&str> = new.iter().map(|d| d.event.as_str()).collect();
            let payloads: Vec<&[u8]> = new.iter().map(|d| d.payload.as_bytes()).collect();
            let times: Vec<i64> = new.iter().map(|d| to_millis(d.received_at)).collect();
            let nexts: Vec<i64> = new
                .iter()
                .map(|d| {
                    d.claim
                        .as_ref()
                        .map_or(to_millis(d.received_at), |c| to_millis(c.until))
                })
                .collect();
            let owners: Vec<Option<&str>> = new
                .iter()
                .map(|d| d.claim.as_ref().map(|c| c.owner.as_str()))
                .collect();
            let rows = sqlx::query_scalar::<_, String>(
                "INSERT INTO inbox (delivery_id, event, payload, received_at, next_attempt_at, claimed_by) \
                 SELECT d, e, p, t, x, o FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BYTEA[], $4::BIGINT[], \
                 $5::BIGINT[], $6::TEXT[]) WITH ORDINALITY AS b (d, e, p, t, x, o, n) ORDER BY n \
                 ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id",
            )
            .bind(ids)
            .bind(events)
            .bind(payloads)
            .bind(times)
            .bind(nexts)
            .bind(owners);
            let rows: Vec<String> = match tx.as_mut() {
                Some(tx) => rows.fetch_all(&mut **tx).await?,
                None => rows.fetch_all(&self.pool).await?,
            };
            inserted.extend(rows);
        }
        if let (false, Some(tx)) = (finished.is_empty(), tx.as_mut()) {
            let mut ids = Vec::with_capacity(finished.len());
            let mut states = Vec::with_capacity(finished.len());
            let mut errors = Vec::with_capacity(finished.len());
            let mut nexts = Vec::with_capacity(finished.len());
            let mut processed = Vec::with_capacity(finished.len());
            let mut owners = Vec::with_capacity(finished.len());
            for f in finished {
                let (state, error, next, done_at) = rows::outcome_columns(&f.outcome, now);
                ids.push(f.id.as_str());
                states.push(state.as_str());
                errors.push(error);
                nexts.push(next);
                processed.push(done_at);
                owners.push(f.owner.as_str());
            }
            // Only while the claim is still the finisher's (`Finished`).
            sqlx::query(
                "UPDATE inbox SET state = f.s, attempts = inbox.attempts + 1, last_error = f.e, \
                 next_attempt_at = f.x, processed_at = f.p, claimed_by = NULL \
                 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], \
                 $6::TEXT[]) AS f (d, s, e, x, p, o) \
                 WHERE inbox.delivery_id = f.d AND inbox.claimed_by = f.o \
                 AND inbox.state = 'pending'",
            )
            .bind(ids)
            .bind(states)
            .bind(errors)
            .bind(nexts)
            .bind(processed)
            .bind(owners)
            .execute(&mut **tx)
            .await?;
        }
        let mut claimed = Vec::with_capacity(claims.len());
        if let Some(tx) = tx.as_mut() {
            for claim in claims {
                let ids: Vec<String> =
                    sqlx::query_scalar(concat!(claim_due!(), "RETURNING delivery_id"))
                        .bind(&claim.owner)
                        .bind(to_millis(claim.until))
                        .bind(now)
                        .bind(i64::from(claim.limit))
                        .fetch_all(&mut **tx)
                        .await?;
                claimed.push(ids.into_iter().map(DeliveryId::new).collect());
            }
        }
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        // The first occurrence of an inserted id is new; a repeat within the
        // group, like one seen before, is a duplicate.
        Ok(InboxWritten {
            fresh: new.iter().map(|d| inserted.remove(d.id.as_str())).collect(),
            claimed,
        })
    }

    async fn deliveries(&self, ids: &[DeliveryId]) -> Result<Vec<InboxItem>> {
        let ids: Vec<&str> = ids.iter().map(|d| d.as_str()).collect();
        let rows = sqlx::query(concat!(
            inbox_items!(),
            "WHERE delivery_id = ANY($1) ORDER BY received_at, delivery_id"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::inbox_item).collect()
    }

    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<InboxItem>> {
        let rows = sqlx::query(concat!(
            inbox_items!(),
            "WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, received_at LIMIT $2"
        ))
        .bind(to_millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::inbox_item).collect()
    }

    async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM inbox WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?;
        Ok(next.map(from_millis))
    }

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<InboxItem>> {
        let row = sqlx::query(concat!(inbox_items!(), "WHERE delivery_id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::inbox_item).transpose()
    }

    async fn inbox_counts(&self) -> Result<InboxCounts> {
        let (pending, failed): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE state = 'pending'), \
                    COUNT(*) FILTER (WHERE state = 'failed') \
             FROM inbox WHERE state IN ('pending', 'failed')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(InboxCounts {
            pending: pending.max(0) as u64,
            failed: failed.max(0) as u64,
        })
    }

    async fn upsert_installation(
        &self,
        id: InstallationId,
        account: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO installations (id, account, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET account = excluded.account, \
             updated_at = excluded.updated_at",
        )
        .bind(id.0)
        .bind(account)
        .bind(to_millis(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_installation_suspended(
        &self,
        id: InstallationId,
        suspended: bool,
        changed_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let Some(at) = changed_at.map(to_millis) else {
            sqlx::query("UPDATE installations SET suspended = $1, updated_at = $2 WHERE id = $3")
                .bind(suspended)
                .bind(to_millis(now))
                .bind(id.0)
                .execute(&self.pool)
                .await?;
            return Ok(true);
        };
        // Newer wins; at the same time an unsuspension wins (`Store`).
        let done = sqlx::query(
            "UPDATE installations SET suspended = $1, suspension_changed_at = $2, updated_at = $3 \
             WHERE id = $4 AND (suspension_changed_at IS NULL OR suspension_changed_at < $2 \
             OR (suspension_changed_at = $2 AND (NOT $1 OR suspended = $1)))",
        )
        .bind(suspended)
        .bind(at)
        .bind(to_millis(now))
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_installation(&self, id: InstallationId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM installation_repositories WHERE installation_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM installations WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_installation_repos(&self, id: InstallationId, repos: &[RepoName]) -> Result<()> {
        let names: Vec<&str> = repos.iter().map(|r| r.as_str()).collect();
        sqlx::query(
            "INSERT INTO installation_repositories (repo, installation_id) \
             SELECT DISTINCT r, $2::BIGINT FROM UNNEST($1::TEXT[]) AS t (r) \
             ON CONFLICT (repo) DO UPDATE SET installation_id = excluded.installation_id",
        )
        .bind(names)
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove_installation_repos(
        &self,
        id: InstallationId,
        repos: &[RepoName],
    ) -> Result<()> {
        let names: Vec<&str> = repos.iter().map(|r| r.as_str()).collect();
        sqlx::query(
            "DELETE FROM installation_repositories \
             WHERE repo = ANY($1::TEXT[]) AND installation_id = $2",
        )
        .bind(names)
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn suspended_installations(&self) -> Result<Vec<(InstallationId, String)>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, account FROM installations WHERE suspended ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, account)| (InstallationId(id), account))
            .collect())
    }

    async fn installation_for_repo(&self, repo: &RepoName) -> Result<Option<InstallationId>> {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT installation_id FROM installation_repositories WHERE repo = $1",
        )
        .bind(repo.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(InstallationId))
    }

    async fn installation_repos(&self, id: InstallationId) -> Result<Vec<RepoName>> {
        let repos: Vec<String> = sqlx::query_scalar(
            "SELECT repo FROM installation_repositories WHERE installation_id = $1 \
             ORDER BY repo COLLATE \"C\"",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(repos.into_iter().map(RepoName::new).collect())
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, repo, rollout_id, location, action, result, detail, \
             line) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(to_millis(entry.at))
        .bind(&entry.actor)
        .bind(entry.repo.as_ref().map(|r| r.as_str()))
        .bind(entry.rollout_id.as_ref().map(|r| r.as_str()))
        .bind(entry.location.as_deref())
        .bind(&entry.action)
        .bind(&entry.result)
        .bind(entry.detail.as_deref())
        .bind(entry.line.map(i64::from))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_at(&self, repo: &RepoName, location: &str) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, actor, repo, rollout_id, location, action, result, detail, line \
             FROM audit_log WHERE location = $1 AND repo = $2 ORDER BY id",
        )
        .bind(location)
        .bind(repo.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::audit_entry).collect()
    }

    async fn audit_for_rollout(&self, rollout: &RolloutId) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, actor, repo, rollout_id, location, action, result, detail, line \
             FROM audit_log WHERE rollout_id = $1 ORDER BY id",
        )
        .bind(rollout.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::audit_entry).collect()
    }

    async fn create_rollout(&self, r: &RolloutRecord) -> Result<Created> {
        let split = r.document.as_deref().and_then(document::split);
        let mut tx = self.pool.begin().await?;
        // The partial unique index decides which of two racing creators of
        // the same deploy wins; the loser inserts nothing (a concurrent
        // insert of the key is waited for) and finds the winner's row.
        // Rollbacks and resyncs are not in that index and always insert.
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO rollouts (id, repo, branch, commit_sha, previous_commit, pull_request, \
             installation_id, kind, parent_id, state, created_at, updated_at, document, error, \
             targets, wave_environments) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (repo, branch, commit_sha) WHERE kind = 'deploy' DO NOTHING \
             RETURNING id",
        )
        .bind(r.id.as_str())
        .bind(r.repo.as_str())
        .bind(r.branch.as_str())
        .bind(r.commit.as_str())
        .bind(r.previous_commit.as_ref().map(|c| c.as_str()))
        .bind(r.pull_request.map(|n| n as i64))
        .bind(r.installation.map(|i| i.0))
        .bind(r.kind.as_str())
        .bind(r.parent.as_ref().map(|p| p.as_str()))
        .bind(&r.state)
        .bind(to_millis(r.created_at))
        .bind(to_millis(r.updated_at))
        .bind(
            split
                .as_ref()
                .map_or(r.document.as_deref(), |s| Some(&s.header)),
        )
        .bind(r.error.as_deref())
        .bind(split.as_ref().map(|s| &s.targets))
        .bind(split.as_ref().map(|s| &s.environments))
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT id FROM rollouts WHERE repo = $1 AND branch = $2 AND commit_sha = $3 \
                 AND kind = 'deploy'",
            )
            .bind(r.repo.as_str())
            .bind(r.branch.as_str())
            .bind(r.commit.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            // The push and the pull request's merge race to create one
            // rollout; whichever loses may be the one that knows the
            // pull request's number.
            if let (Some(id), Some(pr)) = (&existing, r.pull_request) {
                sqlx::query(
                    "UPDATE rollouts SET pull_request = $1 WHERE id = $2 AND pull_request IS NULL",
                )
                .bind(pr as i64)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            return match existing {
                Some(id) => Ok(Created::Existing(RolloutId::new(id))),
                None => Err(StoreError::Unsupported(format!(
                    "rollout {} was neither created nor found",
                    r.id
                ))),
            };
        }
        if let Some(split) = &split {
            write_steps(&mut tx, &r.id, &split.steps).await?;
        }
        tx.commit().await?;
        Ok(Created::New)
    }

    async fn attach_pull_request(&self, id: &RolloutId, pull_request: u64) -> Result<()> {
        sqlx::query("UPDATE rollouts SET pull_request = $1 WHERE id = $2")
            .bind(pull_request as i64)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn save_rollout(
        &self,
        id: &RolloutId,
        write: &RolloutWrite,
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        let now_ms = to_millis(now);
        let mut tx = self.pool.begin().await?;
        // Locking the row makes two saves of one rollout (two replicas)
        // one after the other, never interleaved.
        let repo: Option<String> =
            sqlx::query_scalar("SELECT repo FROM rollouts WHERE id = $1 FOR UPDATE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(repo) = repo else {
            return Err(StoreError::Unsupported(format!("no rollout {id} to save")));
        };
        if let Some(fence) = &write.fence {
            // FOR SHARE: a replica taking the lease over (an UPDATE of this
            // row) waits until this save is committed, and then reads it.
            let held: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM leases WHERE kind = $1 AND key = $2 AND owner = $3 \
                 AND generation = $4 AND expires_at > $5 FOR SHARE",
            )
            .bind(LEASE_ROLLOUT)
            .bind(id.as_str())
            .bind(&fence.owner)
            .bind(fence.generation)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() {
                return Err(StoreError::Fenced(format!(
                    "rollout {id} (generation {})",
                    fence.generation
                )));
            }
        }
        sqlx::query(
            "UPDATE rollouts SET state = $1, document = $2, updated_at = $3, draining = $4 \
             WHERE id = $5",
        )
        .bind(&write.state)
        .bind(&write.document)
        .bind(now_ms)
        .bind(write.draining)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        write_steps(&mut tx, id, &write.steps).await?;
        if !write.fired.is_empty() {
            sqlx::query("DELETE FROM rollout_timers WHERE rollout_id = $1 AND timer = ANY($2)")
                .bind(id.as_str())
                .bind(&write.fired)
                .execute(&mut *tx)
                .await?;
        }
        write_timers(&mut tx, id, &write.timers).await?;
        write_attempts(&mut tx, &repo, id, &write.attempts, now_ms).await?;
        if !write.unlock.is_empty() {
            let (environments, services) = columns(&write.unlock);
            sqlx::query(
                "DELETE FROM step_locks WHERE repo = $1 AND rollout_id = $2 \
                 AND (environment, service) IN \
                   (SELECT e, s FROM UNNEST($3::TEXT[], $4::TEXT[]) AS t (e, s))",
            )
            .bind(&repo)
            .bind(id.as_str())
            .bind(environments)
            .bind(services)
            .execute(&mut *tx)
            .await?;
        }
        let locked = lock_steps(&mut tx, &repo, &write.lock, id, now_ms).await?;
        tx.commit().await?;
        Ok(locked)
    }

    async fn rollout(&self, id: &RolloutId) -> Result<Option<RolloutRecord>> {
        self.one_rollout("id = $1", &[id.as_str()], None).await
    }

    async fn rollout_for_commit(
        &self,
        repo: &RepoName,
        branch: &BranchName,
        commit: &CommitSha,
    ) -> Result<Option<RolloutRecord>> {
        self.one_rollout(
            "repo = $1 AND branch = $2 AND commit_sha = $3 AND kind = 'deploy'",
            &[repo.as_str(), branch.as_str(), commit.as_str()],
            None,
        )
        .await
    }

    async fn latest_rollout_for_pull_request(
        &self,
        repo: &RepoName,
        pull_request: u64,
    ) -> Result<Option<RolloutRecord>> {
        self.one_rollout(
            "repo = $1 AND pull_request = $2 AND kind = 'deploy' \
             ORDER BY created_at DESC, id COLLATE \"C\" DESC LIMIT 1",
            &[repo.as_str()],
            Some(i64::try_from(pull_request).unwrap_or(i64::MAX)),
        )
        .await
    }

    async fn list_rollouts(
        &self,
        repo: Option<&RepoName>,
        limit: u32,
    ) -> Result<Vec<RolloutSummary>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUMMARY_COLUMNS} FROM rollouts WHERE ($1::TEXT IS NULL OR repo = $1) \
             ORDER BY created_at DESC, id COLLATE \"C\" DESC LIMIT $2"
        )))
        .bind(repo.map(|r| r.as_str()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::summary).collect()
    }

    async fn unfinished_deploys(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> Result<Vec<RolloutSummary>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUMMARY_COLUMNS} FROM rollouts WHERE repo = $1 AND branch = $2 AND {DEPLOY} \
             AND state NOT IN {TERMINAL} ORDER BY created_at, id COLLATE \"C\""
        )))
        .bind(repo.as_str())
        .bind(branch.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::summary).collect()
    }

    async fn unfinished_rollouts(&self) -> Result<Vec<RolloutRecord>> {
        let mut tx = self.pool.begin_with(SNAPSHOT).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE state NOT IN {TERMINAL} \
             ORDER BY created_at, id COLLATE \"C\""
        )))
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(complete(&mut tx, row).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn deploys_after(
        &self,
        repo: &RepoName,
        branch: &BranchName,
        than: &RolloutRecord,
    ) -> Result<Vec<RolloutSummary>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUMMARY_COLUMNS} FROM rollouts WHERE repo = $1 AND branch = $2 AND {DEPLOY} \
             AND (created_at > $3 OR (created_at = $3 AND id COLLATE \"C\" > $4)) \
             AND ((state NOT IN {TERMINAL} AND state <> 'queued') \
                  OR EXISTS (SELECT 1 FROM deploy_history h WHERE h.repo = $1 \
                             AND h.rollout_id = rollouts.id)) \
             ORDER BY created_at, id COLLATE \"C\""
        )))
        .bind(repo.as_str())
        .bind(branch.as_str())
        .bind(to_millis(than.created_at))
        .bind(than.id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::summary).collect()
    }

    async fn last_succeeded_commit(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> Result<Option<CommitSha>> {
        let sha: Option<String> = sqlx::query_scalar(
            "SELECT commit_sha FROM rollouts WHERE repo = $1 AND branch = $2 AND kind = 'deploy' \
             AND state = 'succeeded' ORDER BY created_at DESC, id COLLATE \"C\" DESC LIMIT 1",
        )
        .bind(repo.as_str())
        .bind(branch.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(sha.map(CommitSha::new))
    }

    async fn timers(&self, id: &RolloutId) -> Result<Vec<StoredTimer>> {
        let rows =
            sqlx::query("SELECT timer, at FROM rollout_timers WHERE rollout_id = $1 ORDER BY at, timer COLLATE \"C\"")
                .bind(id.as_str())
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(rows::timer).collect()
    }

    async fn delete_timer(&self, id: &RolloutId, timer: &str) -> Result<()> {
        sqlx::query("DELETE FROM rollout_timers WHERE rollout_id = $1 AND timer = $2")
            .bind(id.as_str())
            .bind(timer)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn first_attempts(&self, repo: &RepoName) -> Result<BTreeMap<EnvName, FirstAttempts>> {
        // The last 50 deploys (first attempts) of each environment.
        let found = sqlx::query(
            "SELECT environment, succeeded FROM ( \
               SELECT environment, succeeded, ROW_NUMBER() OVER \
                 (PARTITION BY environment ORDER BY id DESC) AS n \
               FROM deploy_history WHERE repo = $1 AND attempt = 1 \
             ) AS recent WHERE n <= 50",
        )
        .bind(repo.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows::first_attempts(&found)
    }

    async fn last_good_version(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        excluding: Option<&RolloutId>,
    ) -> Result<Option<CommitSha>> {
        let version: Option<String> = sqlx::query_scalar(
            "SELECT version FROM deploy_history WHERE repo = $1 AND environment = $2 \
             AND service = $3 AND succeeded AND ($4::TEXT IS NULL OR (rollout_id <> $4 \
               AND id < COALESCE((SELECT MIN(id) FROM deploy_history WHERE repo = $1 \
                   AND environment = $2 AND service = $3 AND rollout_id = $4), id + 1))) \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(repo.as_str())
        .bind(environment.as_str())
        .bind(service.as_str())
        .bind(excluding.map(|r| r.as_str()))
        .fetch_optional(&self.pool)
        .await?;
        Ok(version.map(CommitSha::new))
    }

    async fn baseline(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
    ) -> Result<Option<Baseline>> {
        let row = sqlx::query(
            "SELECT version, source, at FROM baselines WHERE repo = $1 AND environment = $2 \
             AND service = $3",
        )
        .bind(repo.as_str())
        .bind(environment.as_str())
        .bind(service.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::baseline).transpose()
    }

    async fn baselines_of(
        &self,
        repo: &RepoName,
        keys: &[(EnvName, ServiceName)],
    ) -> Result<Vec<Option<Baseline>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (environments, services) = columns(keys);
        let rows = sqlx::query(
            "SELECT environment, service, version, source, at FROM baselines WHERE repo = $1 \
             AND (environment, service) IN \
               (SELECT e, s FROM UNNEST($2::TEXT[], $3::TEXT[]) AS t (e, s))",
        )
        .bind(repo.as_str())
        .bind(environments)
        .bind(services)
        .fetch_all(&self.pool)
        .await?;
        rows::baselines_in_order(keys, &rows)
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
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO baselines (repo, environment, service, version, source, rollout_id, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (repo, environment, service) DO UPDATE SET \
             version = excluded.version, source = excluded.source, \
             rollout_id = excluded.rollout_id, at = excluded.at",
        )
        .bind(repo.as_str())
        .bind(environment.as_str())
        .bind(service.as_str())
        .bind(version)
        .bind(source)
        .bind(rollout.map(|r| r.as_str()))
        .bind(to_millis(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn try_lock_step(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        rollout: &RolloutId,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let key = [(environment.clone(), service.clone())];
        let held = lock_steps(&mut tx, repo.as_str(), &key, rollout, to_millis(now)).await?;
        tx.commit().await?;
        Ok(held.first().copied().unwrap_or(false))
    }

    async fn set_freeze(&self, f: &Freeze) -> Result<()> {
        sqlx::query(
            "INSERT INTO freezes (scope, until, reason, frozen_by, at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (scope) DO UPDATE SET until = excluded.until, reason = excluded.reason, \
             frozen_by = excluded.frozen_by, at = excluded.at",
        )
        .bind(&f.scope)
        .bind(f.until.map(to_millis))
        .bind(f.reason.as_deref())
        .bind(&f.by)
        .bind(to_millis(f.at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn clear_freeze(&self, scope: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM freezes WHERE scope = $1")
            .bind(scope)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn freezes_for(&self, repo: &RepoName) -> Result<Vec<Freeze>> {
        let rows = sqlx::query(
            "SELECT scope, until, reason, frozen_by, at FROM freezes WHERE scope IN ($1, '*') \
             ORDER BY scope COLLATE \"C\"",
        )
        .bind(repo.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::freeze).collect()
    }

    async fn unlock_step(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        rollout: &RolloutId,
    ) -> Result<()> {
        sqlx::query(
            "DELETE FROM step_locks WHERE repo = $1 AND environment = $2 AND service = $3 \
             AND rollout_id = $4",
        )
        .bind(repo.as_str())
        .bind(environment.as_str())
        .bind(service.as_str())
        .bind(rollout.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_lease(
        &self,
        kind: &str,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<Lease>> {
        // One conditional upsert: of two replicas claiming at once, the
        // second waits on the row and then finds it held.
        let row: Option<(i64, i64)> = sqlx::query_as(
            "INSERT INTO leases (kind, key, owner, generation, expires_at) VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner, \
             generation = leases.generation + 1, expires_at = excluded.expires_at \
             WHERE leases.owner IS NULL OR leases.owner = excluded.owner OR leases.expires_at <= $5 \
             RETURNING generation, expires_at",
        )
        .bind(kind)
        .bind(key)
        .bind(owner)
        .bind(to_millis(until))
        .bind(to_millis(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(generation, at)| Lease {
            generation,
            expires_at: from_millis(at),
        }))
    }

    async fn renew_leases(
        &self,
        kind: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "UPDATE leases SET expires_at = $1 WHERE kind = $2 AND owner = $3 \
             RETURNING key, generation",
        )
        .bind(to_millis(until))
        .bind(kind)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn lease(&self, kind: &str, key: &str) -> Result<Option<(Option<String>, Lease)>> {
        let row: Option<(Option<String>, i64, i64)> = sqlx::query_as(
            "SELECT owner, generation, expires_at FROM leases WHERE kind = $1 AND key = $2",
        )
        .bind(kind)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(owner, generation, at)| {
            (
                owner,
                Lease {
                    generation,
                    expires_at: from_millis(at),
                },
            )
        }))
    }

    async fn release_lease(
        &self,
        kind: &str,
        key: &str,
        owner: &str,
        generation: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE leases SET owner = NULL, expires_at = 0 \
             WHERE kind = $1 AND key = $2 AND owner = $3 AND generation = $4",
        )
        .bind(kind)
        .bind(key)
        .bind(owner)
        .bind(generation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_all_leases(&self, owner: &str, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE leases SET owner = NULL, expires_at = 0 WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        sqlx::query(RELEASE_DELIVERY_CLAIMS)
            .bind(to_millis(now))
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn release_delivery_claims(&self, owner: &str, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(RELEASE_DELIVERY_CLAIMS)
            .bind(to_millis(now))
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn orphaned_rollouts(&self, now: DateTime<Utc>) -> Result<Vec<RolloutId>> {
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT r.id FROM rollouts r LEFT JOIN leases l \
               ON l.kind = '{LEASE_ROLLOUT}' AND l.key = r.id \
             WHERE ((r.state NOT IN {TERMINAL} AND r.state <> 'queued') \
                    OR (r.state IN {TERMINAL} AND r.draining)) \
               AND (l.owner IS NULL OR l.expires_at <= $1) \
             ORDER BY r.created_at, r.id"
        )))
        .bind(to_millis(now))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(RolloutId::new).collect())
    }

    async fn stop_draining(&self, id: &RolloutId) -> Result<()> {
        sqlx::query("UPDATE rollouts SET draining = FALSE WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn draining_rollouts(&self) -> Result<Vec<RolloutId>> {
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT r.id FROM rollouts r WHERE r.state IN {TERMINAL} AND r.draining \
             ORDER BY r.created_at, r.id COLLATE \"C\""
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(RolloutId::new).collect())
    }

    async fn idle_queued_branches(&self) -> Result<Vec<(RepoName, BranchName)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT q.repo, q.branch FROM rollouts q \
             WHERE q.kind = 'deploy' AND q.state = 'queued' AND NOT EXISTS \
               (SELECT 1 FROM rollouts r WHERE r.repo = q.repo AND r.branch = q.branch \
                AND r.kind = 'deploy' AND r.state <> 'queued' AND r.state NOT IN {TERMINAL}) \
             ORDER BY q.repo, q.branch"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(repo, branch)| (RepoName::new(repo), BranchName::new(branch)))
            .collect())
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<InboxItem>> {
        // Alone, a claim is one statement that returns the rows whole (the
        // trait's default claims in a transaction, then reads them).
        let rows = sqlx::query(concat!(
            claim_due!(),
            "RETURNING delivery_id, event, payload, received_at, state, attempts, last_error"
        ))
        .bind(owner)
        .bind(to_millis(until))
        .bind(to_millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows
            .iter()
            .map(rows::inbox_item)
            .collect::<Result<Vec<_>>>()?;
        // RETURNING has no order.
        items.sort_by(|a, b| (a.received_at, a.id.as_str()).cmp(&(b.received_at, b.id.as_str())));
        Ok(items)
    }

    async fn renew_delivery_claims(
        &self,
        owner: &str,
        ids: &[DeliveryId],
        until: DateTime<Utc>,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = ids.iter().map(|d| d.as_str()).collect();
        sqlx::query(
            "UPDATE inbox SET next_attempt_at = $1 \
             WHERE delivery_id = ANY($2) AND claimed_by = $3 AND state = 'pending'",
        )
        .bind(to_millis(until))
        .bind(ids)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn push_rollout_input(
        &self,
        rollout: &RolloutId,
        input: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO rollout_inputs (rollout_id, input, created_at) VALUES ($1, $2, $3) \
             RETURNING id",
        )
        .bind(rollout.as_str())
        .bind(input)
        .bind(to_millis(now))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn open_rollout_inputs(&self, owner: &str) -> Result<Vec<(i64, RolloutId, String)>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT i.id, i.rollout_id, i.input FROM rollout_inputs i JOIN leases l \
               ON l.kind = '{LEASE_ROLLOUT}' AND l.key = i.rollout_id \
             WHERE i.answered_at IS NULL AND l.owner = $1 ORDER BY i.id"
        )))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, rollout, input)| (id, RolloutId::new(rollout), input))
            .collect())
    }

    async fn answer_rollout_input(
        &self,
        id: i64,
        answer: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE rollout_inputs SET answer = $1, answered_at = $2 \
             WHERE id = $3 AND answered_at IS NULL",
        )
        .bind(answer)
        .bind(to_millis(now))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn rollout_input_answer(&self, id: i64) -> Result<Option<String>> {
        let answer: Option<Option<String>> =
            sqlx::query_scalar("SELECT answer FROM rollout_inputs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(answer.flatten())
    }

    async fn take_write_token(
        &self,
        installation: InstallationId,
        per_minute: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<std::time::Duration>> {
        let capacity = f64::from(per_minute.max(1));
        let per_ms = capacity / 60_000.0;
        let now_ms = to_millis(now);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO write_pacing (installation_id, tokens, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (installation_id) DO NOTHING",
        )
        .bind(installation.0)
        .bind(capacity)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        // The row lock makes replicas take from the bucket one at a time.
        let (tokens, updated): (f64, i64) = sqlx::query_as(
            "SELECT tokens, updated_at FROM write_pacing WHERE installation_id = $1 FOR UPDATE",
        )
        .bind(installation.0)
        .fetch_one(&mut *tx)
        .await?;
        let (taken, left, wait) = super::pacing::take(tokens, updated, now_ms, capacity, per_ms);
        sqlx::query(
            "UPDATE write_pacing SET tokens = $1, updated_at = $2 WHERE installation_id = $3",
        )
        .bind(left)
        .bind(now_ms.max(updated))
        .bind(installation.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((!taken).then_some(wait))
    }

    async fn baselines(&self, repo: Option<&RepoName>) -> Result<Vec<StoredBaseline>> {
        let rows = sqlx::query(
            "SELECT repo, environment, service, version, source, at FROM baselines \
             WHERE ($1::TEXT IS NULL OR repo = $1) \
             ORDER BY repo COLLATE \"C\", environment COLLATE \"C\", service COLLATE \"C\"",
        )
        .bind(repo.map(|r| r.as_str()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::stored_baseline).collect()
    }

    async fn in_flight_environments(&self) -> Result<Vec<(RepoName, EnvName)>> {
        // Every rollout here is stored split (no PostgreSQL database
        // predates per-step storage), so its steps are all rows.
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT r.repo, s.step::json ->> 'environment' \
             FROM rollouts r JOIN rollout_steps s ON s.rollout_id = r.id \
             WHERE r.state NOT IN {TERMINAL} \
               AND s.step::json ->> 'state' IN {IN_FLIGHT_STEP}"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows::environments(rows))
    }

    async fn held_step_locks(&self) -> Result<Vec<(RepoName, EnvName, ServiceName)>> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT repo, environment, service FROM step_locks")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(r, e, s)| (RepoName::new(r), EnvName::new(e), ServiceName::new(s)))
            .collect())
    }

    async fn observe_drift(
        &self,
        repo: &RepoName,
        o: &DriftObservation,
        now: DateTime<Utc>,
    ) -> Result<DriftRecord> {
        // One statement: two replicas observing at once update the one
        // open record (the partial unique index) rather than open two.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO drift (repo, environment, service, kind, expected, found, detail, \
             first_seen, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (repo, environment, service, kind) WHERE resolved_at IS NULL \
             DO UPDATE SET expected = excluded.expected, found = excluded.found, \
             detail = excluded.detail, last_seen = excluded.last_seen \
             RETURNING {DRIFT_COLUMNS}"
        )))
        .bind(repo.as_str())
        .bind(o.environment.as_str())
        .bind(o.service.as_str())
        .bind(o.kind.as_str())
        .bind(&o.expected)
        .bind(o.found.as_deref())
        .bind(o.detail.as_deref())
        .bind(to_millis(now))
        .fetch_one(&self.pool)
        .await?;
        rows::drift_record(&row)
    }

    async fn resolve_drift(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: Option<&ServiceName>,
        kind: DriftKind,
        how: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE drift SET resolved_at = $1, resolution = $2, resolved_by = $3 \
             WHERE repo = $4 AND environment = $5 AND ($6::TEXT IS NULL OR service = $6) \
             AND kind = $7 AND resolved_at IS NULL",
        )
        .bind(to_millis(now))
        .bind(how)
        .bind(by)
        .bind(repo.as_str())
        .bind(environment.as_str())
        .bind(service.map(|s| s.as_str()))
        .bind(kind.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn open_drift(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        kind: DriftKind,
    ) -> Result<Option<DriftRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DRIFT_COLUMNS} FROM drift WHERE repo = $1 AND environment = $2 \
             AND service = $3 AND kind = $4 AND resolved_at IS NULL"
        )))
        .bind(repo.as_str())
        .bind(environment.as_str())
        .bind(service.as_str())
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::drift_record).transpose()
    }

    async fn drift_records(
        &self,
        repo: &RepoName,
        include_resolved: bool,
        limit: u32,
    ) -> Result<Vec<DriftRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DRIFT_COLUMNS} FROM drift WHERE repo = $1 \
             AND (resolved_at IS NULL OR $2) \
             ORDER BY resolved_at IS NOT NULL, \
             CASE WHEN resolved_at IS NULL THEN environment END COLLATE \"C\", \
             CASE WHEN resolved_at IS NULL THEN service END COLLATE \"C\", \
             CASE WHEN resolved_at IS NULL THEN kind END COLLATE \"C\", id DESC LIMIT $3"
        )))
        .bind(repo.as_str())
        .bind(include_resolved)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::drift_record).collect()
    }
}

//! The SQLite store: one file, WAL journal, created when missing.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use std::collections::BTreeMap;

use super::checkpoint::{Checkpointer, WRITER_PAGES};
use super::delivery_order::delivery_order;
use super::inbox_commit::{CommitError, InboxCommitter};
use super::log_sync::LogSyncer;
use super::rows::{
    self, DEPLOY, DRIFT_COLUMNS, IN_FLIGHT_STEP, Parts, ROLLOUT_COLUMNS, SUMMARY_COLUMNS, TERMINAL,
};
use super::{
    AttemptRecord, AuditEntry, Baseline, Created, DriftKind, DriftObservation, DriftRecord,
    Durable, FirstAttempts, Freeze, InboxCounts, InboxItem, InboxWrite, InboxWritten,
    LEASE_ROLLOUT, Lease, Result, RolloutKind, RolloutRecord, RolloutSummary, RolloutWrite, Store,
    StoreError, StoredBaseline, StoredStep, StoredTimer, document, from_millis, to_millis,
};
use crate::domain::{
    BranchName, CommitSha, DeliveryId, EnvName, InstallationId, RepoName, RolloutId, ServiceName,
};

/// The record of a row read with [`ROLLOUT_COLUMNS`], made whole with its
/// steps read in the same transaction (so from the same snapshot).
async fn complete(
    tx: &mut sqlx::SqliteConnection,
    row: &sqlx::sqlite::SqliteRow,
) -> Result<RolloutRecord> {
    let parts = Parts::read(row)?;
    let steps = if parts.split() {
        sqlx::query_as(
            "SELECT wave, step FROM rollout_steps WHERE rollout_id = ? ORDER BY wave, idx",
        )
        .bind(parts.record.id.as_str())
        .fetch_all(&mut *tx)
        .await?
    } else {
        Vec::new()
    };
    parts.complete(steps)
}

/// `(environment, service)` pairs as one JSON array of pairs, bound as a
/// single parameter and read back with `json_each`: a save writes any
/// number of rows in one statement (one round trip to SQLite's thread)
/// whose text never changes, so it stays prepared.
fn pairs_json<'a>(pairs: impl IntoIterator<Item = &'a (EnvName, ServiceName)>) -> Result<String> {
    let pairs: Vec<(&str, &str)> = pairs
        .into_iter()
        .map(|(e, s)| (e.as_str(), s.as_str()))
        .collect();
    json_rows(&pairs)
}

/// Rows as one JSON array for `json_each`. Names and numbers always
/// serialize; should one not, the write fails rather than writing nothing.
fn json_rows(rows: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(rows)
        .map_err(|e| StoreError::Unsupported(format!("rows for json_each: {e}")))
}

/// Takes the locks of `keys` (environment, service) for `rollout` where no
/// other rollout holds them; for each key, in order, whether `rollout`
/// holds it now.
async fn lock_steps(
    tx: &mut sqlx::SqliteConnection,
    repo: &str,
    keys: &[(EnvName, ServiceName)],
    rollout: &RolloutId,
    now_ms: i64,
) -> Result<Vec<bool>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    // A lock whose holder has ended, is not draining (no deploy of it
    // still in flight) and is driven by no replica is free: it was left
    // behind, and nothing would ever release it. A draining holder keeps
    // its locks until its deploys end, also while nobody drives it (until
    // a process takes it over); the lease covers a replica of a version
    // that does not mark rollouts draining. A lock this rollout holds
    // already is "updated" to itself, so that RETURNING names it too.
    // Written once: every save that starts deploys takes locks.
    static LOCK_STEPS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO step_locks (repo, environment, service, rollout_id, acquired_at) \
             SELECT ?1, j.value ->> 0, j.value ->> 1, ?2, ?3 FROM json_each(?4) AS j \
             WHERE true ORDER BY j.key \
             ON CONFLICT (repo, environment, service) DO UPDATE \
             SET rollout_id = excluded.rollout_id, \
                 acquired_at = CASE WHEN step_locks.rollout_id = excluded.rollout_id \
                                    THEN step_locks.acquired_at ELSE excluded.acquired_at END \
             WHERE step_locks.rollout_id = excluded.rollout_id \
                OR (EXISTS (SELECT 1 FROM rollouts r WHERE r.id = step_locks.rollout_id \
                            AND r.state IN {TERMINAL} AND NOT r.draining) \
                    AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.kind = '{LEASE_ROLLOUT}' \
                                    AND l.key = step_locks.rollout_id AND l.owner IS NOT NULL \
                                    AND l.expires_at > ?3)) \
             RETURNING environment, service"
        )
    });
    let held: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(LOCK_STEPS.as_str()))
        .bind(repo)
        .bind(rollout.as_str())
        .bind(now_ms)
        .bind(pairs_json(keys)?)
        .fetch_all(&mut *tx)
        .await?;
    let held: std::collections::BTreeSet<(String, String)> = held.into_iter().collect();
    Ok(keys
        .iter()
        .map(|(e, s)| held.contains(&(e.to_string(), s.to_string())))
        .collect())
}

/// Releases `rollout`'s locks of `keys`, in one statement.
async fn unlock_steps(
    tx: &mut sqlx::SqliteConnection,
    repo: &str,
    keys: &[(EnvName, ServiceName)],
    rollout: &RolloutId,
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM step_locks WHERE repo = ?1 AND rollout_id = ?2 \
         AND (environment, service) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?3))",
    )
    .bind(repo)
    .bind(rollout.as_str())
    .bind(pairs_json(keys)?)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes the timers that fired and sets the new ones (each replacing
/// one of the same kind; the last of a kind given twice wins): one
/// statement each, whatever their number.
async fn write_timers(
    tx: &mut sqlx::SqliteConnection,
    id: &RolloutId,
    fired: &[String],
    timers: &[StoredTimer],
) -> Result<()> {
    if !fired.is_empty() {
        sqlx::query(
            "DELETE FROM rollout_timers WHERE rollout_id = ?1 \
             AND timer IN (SELECT value FROM json_each(?2))",
        )
        .bind(id.as_str())
        .bind(json_rows(&fired)?)
        .execute(&mut *tx)
        .await?;
    }
    if !timers.is_empty() {
        let rows: Vec<(&str, i64)> = timers
            .iter()
            .map(|t| (t.timer.as_str(), to_millis(t.at)))
            .collect();
        sqlx::query(
            "INSERT INTO rollout_timers (rollout_id, timer, at) \
             SELECT ?1, j.value ->> 0, j.value ->> 1 FROM json_each(?2) AS j \
             WHERE true ORDER BY j.key \
             ON CONFLICT (rollout_id, timer) DO UPDATE SET at = excluded.at",
        )
        .bind(id.as_str())
        .bind(json_rows(&rows)?)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Records attempts in the deploy history and moves the baseline of each
/// that succeeded (the last of a target given twice wins): two
/// statements, whatever their number.
async fn write_attempts(
    tx: &mut sqlx::SqliteConnection,
    repo: &str,
    id: &RolloutId,
    attempts: &[AttemptRecord],
    now_ms: i64,
) -> Result<()> {
    if attempts.is_empty() {
        return Ok(());
    }
    // Each attempt as [environment, service, version, attempt, succeeded,
    // error]: the columns the statements below read by position.
    let rows: Vec<serde_json::Value> = attempts
        .iter()
        .map(|a| {
            serde_json::json!([
                a.environment.as_str(),
                a.service.as_str(),
                a.version.as_str(),
                a.attempt,
                a.succeeded,
                a.error.as_deref(),
            ])
        })
        .collect();
    let rows = json_rows(&rows)?;
    sqlx::query(
        "INSERT INTO deploy_history (repo, environment, service, version, rollout_id, \
         attempt, succeeded, error, at) \
         SELECT ?1, j.value ->> 0, j.value ->> 1, j.value ->> 2, ?2, j.value ->> 3, \
                j.value ->> 4, j.value ->> 5, ?3 \
         FROM json_each(?4) AS j ORDER BY j.key",
    )
    .bind(repo)
    .bind(id.as_str())
    .bind(now_ms)
    .bind(&rows)
    .execute(&mut *tx)
    .await?;
    if attempts.iter().any(|a| a.succeeded) {
        sqlx::query(
            "INSERT INTO baselines (repo, environment, service, version, source, \
             rollout_id, at) \
             SELECT ?1, j.value ->> 0, j.value ->> 1, j.value ->> 2, 'deployed', ?2, ?3 \
             FROM json_each(?4) AS j WHERE j.value ->> 4 ORDER BY j.key \
             ON CONFLICT (repo, environment, service) DO UPDATE SET \
             version = excluded.version, source = excluded.source, \
             rollout_id = excluded.rollout_id, at = excluded.at",
        )
        .bind(repo)
        .bind(id.as_str())
        .bind(now_ms)
        .bind(&rows)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The pull request's number on a rollout that has none: the push and the
/// pull request's merge race to create one rollout, and whichever loses
/// may be the one that knows the number.
async fn attach_if_none(
    tx: &mut sqlx::SqliteConnection,
    id: &str,
    pull_request: Option<u64>,
) -> Result<()> {
    if let Some(pr) = pull_request {
        sqlx::query("UPDATE rollouts SET pull_request = ? WHERE id = ? AND pull_request IS NULL")
            .bind(pr as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Step rows per INSERT: each statement is a round trip to SQLite's worker
/// thread, so a batch of thousands of steps (a start, a recovery) goes in
/// a few statements rather than one per row. 4 parameters a row stays far
/// below SQLite's limit of 32,766.
const STEPS_PER_INSERT: usize = 250;

/// `rows` groups of `columns` `?` placeholders — `(?, ?), (?, ?)` — for a
/// statement that writes many rows at once.
pub(super) fn placeholders(rows: usize, columns: usize) -> String {
    let group = format!("({})", vec!["?"; columns].join(", "));
    vec![group; rows].join(", ")
}

/// Writes steps at their places, replacing what was there.
async fn write_steps(
    tx: &mut sqlx::SqliteConnection,
    id: &RolloutId,
    steps: &[StoredStep],
) -> Result<()> {
    for chunk in steps.chunks(STEPS_PER_INSERT) {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO rollout_steps (rollout_id, wave, idx, step) VALUES {} \
             ON CONFLICT (rollout_id, wave, idx) DO UPDATE SET step = excluded.step",
            placeholders(chunk.len(), 4)
        )));
        for s in chunk {
            query = query
                .bind(id.as_str())
                .bind(i64::from(s.wave))
                .bind(i64::from(s.idx))
                .bind(&s.step);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// How long a write waits for another process's write lock on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The compressed bodies of an inbox group beyond which its commit runs
/// in `block_in_place` (`SqliteStore::commit_inbox`): a group under load
/// holds about 24 bodies of 3 KB and commits in well under a millisecond.
const LARGE_GROUP_BYTES: usize = 1024 * 1024;

/// The start of a query for whole inbox items (rows with their bodies);
/// the caller adds `WHERE …`.
macro_rules! inbox_items {
    () => {
        "SELECT delivery_id, event, \
                CASE WHEN inbox.body_len IS NULL THEN payload \
                     ELSE substr(payload, inbox.body_at + 1, inbox.body_len) END AS payload, \
                received_at, state, attempts, last_error \
         FROM inbox LEFT JOIN inbox_bodies ON inbox_bodies.seq = inbox.body "
    };
}

#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Readers: several connections, WAL lets them run beside the writer.
    pool: SqlitePool,
    /// The writer of everything but the inbox's group commits, which the
    /// inbox's own connection (`inbox`) makes while holding this one.
    /// SQLite allows one write transaction at a time; a second connection
    /// that tries waits in SQLite's busy handler, which sleeps in coarse
    /// steps. One connection queues writers in order instead.
    writer: SqlitePool,
    /// Copies the log into the file beside the writer; stops with the
    /// last clone.
    checkpoints: Arc<Checkpointer>,
    /// Syncs the log for the inbox's commits; stops with the last clone.
    log: Arc<LogSyncer>,
    /// Commits the inbox's groups on the caller's thread (`inbox_commit`).
    inbox: Arc<InboxCommitter>,
}

impl SqliteStore {
    /// Holds the inbox's log syncs back until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn hold_log_syncs(&self) -> super::log_sync::HoldGuard<'_> {
        self.log.hold()
    }

    /// Opens the file (creating it and its folder) and migrates it.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            // Webhook bodies are stored compressed (a 25 KB body takes about
            // 3 KB), so SQLite's default page fits them; larger pages only
            // made every commit write more. Takes effect when the file is
            // created.
            .page_size(4096)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, FULL syncs the log on every commit: an acknowledged
            // delivery survives a power loss, not only a crash. Intake groups
            // many deliveries into one commit, so this costs little.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Checkpoints run in the background (`checkpoint`); the
            // writer's own, rarer, only finishes them so the log can start
            // over.
            .pragma("wal_autocheckpoint", WRITER_PAGES.to_string())
            // A log that grew in a burst is cut back when it starts over.
            .pragma("journal_size_limit", (64 * 1024 * 1024).to_string())
            .busy_timeout(BUSY_TIMEOUT);
        // Every write of the store holds this one connection (the inbox's
        // too, `write_inbox_unsynced`): each time it is back (after a
        // write, or one of the few reads made on it), an idle checkpointer
        // looks at the log again.
        let wrote = Arc::new(tokio::sync::Notify::new());
        let told = wrote.clone();
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A connection in this process: there is nothing to test, and
            // the test is one more round trip for every write.
            .test_before_acquire(false)
            // Nor anything to recycle; and a connection closed for its
            // age is not released, so it would not tell the checkpointer.
            .max_lifetime(None)
            .after_release(move |_, _| {
                told.notify_one();
                Box::pin(std::future::ready(Ok(true)))
            })
            .connect_with(options.clone())
            .await?;
        super::migrations::sqlite().run(&writer).await?;
        let checkpoints = Arc::new(Checkpointer::start(options.clone(), wrote).await?);
        // The file as SQLite names it (it resolves symbolic links), and
        // its log beside it.
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(&writer)
                .await?;
        let inbox = Arc::new(InboxCommitter::open(&file)?);
        let log = format!("{file}-wal");
        let log = LogSyncer::start(log.clone().into()).map_err(|e| {
            StoreError::Sync(format!(
                "cannot open the database log {log} to sync it: {e}"
            ))
        })?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore {
            pool,
            writer,
            checkpoints,
            log: Arc::new(log),
            inbox,
        })
    }

    /// The writer connection, for a component that keeps tables of its own
    /// in the file (`Store::shared_database` lends the same).
    pub fn write_pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// A write transaction that takes SQLite's write lock at once. A
    /// deferred one that reads first fails outright (SQLITE_BUSY_SNAPSHOT,
    /// not retried) when another process on the same file wrote since it
    /// began: with two replicas on one file that is common.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Commits an inbox group on the inbox's own connection, on this
    /// thread. A group large enough to hold the thread for long runs in
    /// `block_in_place`, so that the runtime's other tasks move to another
    /// thread meanwhile. While another connection (another process's)
    /// holds SQLite's write lock this waits without blocking the thread and
    /// tries again, for as long as the store's other connections would.
    async fn commit_inbox(
        &self,
        write: &InboxWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(i64, String)>> {
        let bytes: usize = write.new.iter().map(|d| d.payload.as_bytes().len()).sum();
        let large = bytes > LARGE_GROUP_BYTES;
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            match beside_runtime(large, || self.inbox.commit(write, now)) {
                Err(CommitError::Busy) if std::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                result => return Ok(result?),
            }
        }
    }
}

/// Runs `f`, which may hold this thread for `long`, on this thread: when
/// `long`, in `block_in_place`, so that a multi-threaded runtime moves its
/// other tasks to another thread meanwhile.
fn beside_runtime<T>(long: bool, f: impl FnOnce() -> T) -> T {
    let movable = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if long && movable {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// A bound value of [`SqliteStore::one_rollout`]'s filter.
enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

impl SqliteStore {
    /// The first rollout matching `filter` (SQL after `WHERE`, with `?`
    /// for `args`), made whole: header and steps read in one transaction,
    /// so from the same snapshot.
    async fn one_rollout(&self, filter: &str, args: &[Arg<'_>]) -> Result<Option<RolloutRecord>> {
        let mut tx = self.pool.begin().await?;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE {filter}"
        )));
        for arg in args {
            query = match arg {
                Arg::Text(text) => query.bind(text.to_string()),
                Arg::Int(n) => query.bind(*n),
            };
        }
        match query.fetch_optional(&mut *tx).await? {
            Some(row) => Ok(Some(complete(&mut tx, &row).await?)),
            None => Ok(None),
        }
    }
}

/// Gives an owner's claims on pending deliveries back, due at once
/// (`release_all_leases`, `release_delivery_claims`): (now, owner).
const RELEASE_DELIVERY_CLAIMS: &str = "UPDATE inbox SET claimed_by = NULL, next_attempt_at = ? \
     WHERE claimed_by = ? AND state = 'pending'";

#[async_trait]
impl Store for SqliteStore {
    fn one_writer(&self) -> bool {
        true
    }

    fn shared_database(&self) -> super::SharedDatabase {
        super::SharedDatabase::Sqlite(self.writer.clone())
    }

    async fn ping(&self) -> Result<()> {
        if let Some(why) = self.log.poisoned() {
            return Err(StoreError::Sync(why));
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn write_inbox(&self, write: InboxWrite<'_>, now: DateTime<Utc>) -> Result<InboxWritten> {
        let (written, durable) = self.write_inbox_unsynced(write, now).await?;
        durable.wait().await?;
        Ok(written)
    }

    async fn write_inbox_unsynced(
        &self,
        write: InboxWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<(InboxWritten, Durable)> {
        if write.new.is_empty() && write.finished.is_empty() && write.claims.is_empty() {
            return Ok((InboxWritten::default(), Durable::Now));
        }
        // Held while the inbox's own connection writes: no other write of
        // this store is then inside SQLite (`inbox_commit`).
        let _writer = self.writer.acquire().await?;
        let rows = self.commit_inbox(&write, now).await?;
        let durable = self.log.after_commit();
        if self.checkpoints.take_long_log() {
            // Still before any other write (`checkpoint`'s module comment).
            match beside_runtime(true, || self.inbox.checkpoint()) {
                Ok(true) => {}
                Ok(false) => tracing::debug!("the log is not all copied yet; asked again later"),
                Err(e) => {
                    tracing::warn!(error = %e, "finishing a checkpoint of the inbox's log failed");
                }
            }
        }
        let mut inserted = std::collections::HashSet::new();
        let mut claimed = vec![Vec::new(); write.claims.len()];
        for (part, id) in rows {
            match usize::try_from(part).ok().and_then(|p| p.checked_sub(1)) {
                None => {
                    inserted.insert(id);
                }
                Some(claim) => {
                    if let Some(ids) = claimed.get_mut(claim) {
                        ids.push(DeliveryId::new(id));
                    }
                }
            }
        }
        // The first occurrence of an inserted id is new; a repeat within the
        // group, like one seen before, is a duplicate.
        let written = InboxWritten {
            fresh: write
                .new
                .iter()
                .map(|d| inserted.remove(d.id.as_str()))
                .collect(),
            claimed,
        };
        Ok((written, durable))
    }

    async fn deliveries(&self, ids: &[DeliveryId]) -> Result<Vec<InboxItem>> {
        let mut items = Vec::with_capacity(ids.len());
        // Each once: a join returns a row for every copy of its id.
        let ids: Vec<&str> = ids
            .iter()
            .map(DeliveryId::as_str)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        // Read beside the writer, not by it: a body never changes. A join
        // with the ids, as SQLite does not look a row value `IN (VALUES …)`
        // up in the index.
        for chunk in ids.chunks(500) {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                concat!(
                    inbox_items!(),
                    "JOIN (VALUES {}) AS v \
                     ON inbox.delivery_order = v.column1 AND inbox.delivery_id = v.column2"
                ),
                placeholders(chunk.len(), 2)
            )));
            for id in chunk {
                query = query.bind(delivery_order(id)).bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                items.push(rows::inbox_item(&row)?);
            }
        }
        items.sort_by(|a, b| (a.received_at, a.id.as_str()).cmp(&(b.received_at, b.id.as_str())));
        Ok(items)
    }

    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<InboxItem>> {
        let rows = sqlx::query(concat!(
            inbox_items!(),
            "\
             WHERE state = 'pending' AND next_attempt_at <= ? \
             ORDER BY next_attempt_at, received_at LIMIT ?"
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
        let row = sqlx::query(concat!(
            inbox_items!(),
            "WHERE delivery_order = ? AND delivery_id = ?"
        ))
        .bind(delivery_order(id.as_str()))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::inbox_item).transpose()
    }

    async fn inbox_counts(&self) -> Result<InboxCounts> {
        let row = sqlx::query(
            // Each count from its own partial index (migration 0010).
            "SELECT (SELECT COUNT(*) FROM inbox WHERE state = 'pending') AS pending, \
                    (SELECT COUNT(*) FROM inbox WHERE state = 'failed') AS failed",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(InboxCounts {
            pending: row.try_get::<i64, _>("pending")?.max(0) as u64,
            failed: row.try_get::<i64, _>("failed")?.max(0) as u64,
        })
    }

    async fn upsert_installation(
        &self,
        id: InstallationId,
        account: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO installations (id, account, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET account = excluded.account, \
             updated_at = excluded.updated_at",
        )
        .bind(id.0)
        .bind(account)
        .bind(to_millis(now))
        .bind(to_millis(now))
        .execute(&self.writer)
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
            sqlx::query("UPDATE installations SET suspended = ?, updated_at = ? WHERE id = ?")
                .bind(suspended)
                .bind(to_millis(now))
                .bind(id.0)
                .execute(&self.writer)
                .await?;
            return Ok(true);
        };
        // Newer wins; at the same time an unsuspension wins (`Store`).
        let done = sqlx::query(
            "UPDATE installations SET suspended = ?1, suspension_changed_at = ?2, updated_at = ?3 \
             WHERE id = ?4 AND (suspension_changed_at IS NULL OR suspension_changed_at < ?2 \
             OR (suspension_changed_at = ?2 AND (NOT ?1 OR suspended = ?1)))",
        )
        .bind(suspended)
        .bind(at)
        .bind(to_millis(now))
        .bind(id.0)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_installation(&self, id: InstallationId) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM installation_repositories WHERE installation_id = ?")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM installations WHERE id = ?")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_installation_repos(&self, id: InstallationId, repos: &[RepoName]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for repo in repos {
            sqlx::query(
                "INSERT INTO installation_repositories (repo, installation_id) VALUES (?, ?) \
                 ON CONFLICT (repo) DO UPDATE SET installation_id = excluded.installation_id",
            )
            .bind(repo.as_str())
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remove_installation_repos(
        &self,
        id: InstallationId,
        repos: &[RepoName],
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for repo in repos {
            sqlx::query(
                "DELETE FROM installation_repositories WHERE repo = ? AND installation_id = ?",
            )
            .bind(repo.as_str())
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn suspended_installations(&self) -> Result<Vec<(InstallationId, String)>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, account FROM installations WHERE suspended <> 0 ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, account)| (InstallationId(id), account))
            .collect())
    }

    async fn installation_for_repo(&self, repo: &RepoName) -> Result<Option<InstallationId>> {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT installation_id FROM installation_repositories WHERE repo = ?",
        )
        .bind(repo.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(InstallationId))
    }

    async fn installation_repos(&self, id: InstallationId) -> Result<Vec<RepoName>> {
        let repos: Vec<String> = sqlx::query_scalar(
            "SELECT repo FROM installation_repositories WHERE installation_id = ? ORDER BY repo",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(repos.into_iter().map(RepoName::new).collect())
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, repo, rollout_id, location, action, result, detail, \
             line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn audit_at(&self, repo: &RepoName, location: &str) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, actor, repo, rollout_id, location, action, result, detail, line \
             FROM audit_log WHERE location = ?1 AND repo = ?2 ORDER BY id",
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
             FROM audit_log WHERE rollout_id = ? ORDER BY id",
        )
        .bind(rollout.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::audit_entry).collect()
    }

    async fn create_rollout(&self, r: &RolloutRecord) -> Result<Created> {
        // Split before taking the writer: parsing a large document should
        // not hold up other writes.
        let split = r.document.as_deref().and_then(document::split);
        let mut tx = self.write_tx().await?;
        if r.kind == RolloutKind::Deploy {
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT id FROM rollouts WHERE repo = ? AND branch = ? AND commit_sha = ? \
                 AND kind = 'deploy'",
            )
            .bind(r.repo.as_str())
            .bind(r.branch.as_str())
            .bind(r.commit.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = existing {
                attach_if_none(&mut tx, &id, r.pull_request).await?;
                tx.commit().await?;
                return Ok(Created::Existing(RolloutId::new(id)));
            }
        }
        sqlx::query(
            "INSERT INTO rollouts (id, repo, branch, commit_sha, previous_commit, pull_request, \
             installation_id, kind, parent_id, state, created_at, updated_at, document, error, \
             targets, wave_environments) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&mut *tx)
        .await?;
        if let Some(split) = &split {
            write_steps(&mut tx, &r.id, &split.steps).await?;
        }
        tx.commit().await?;
        Ok(Created::New)
    }

    async fn attach_pull_request(&self, id: &RolloutId, pull_request: u64) -> Result<()> {
        sqlx::query("UPDATE rollouts SET pull_request = ? WHERE id = ?")
            .bind(pull_request as i64)
            .bind(id.as_str())
            .execute(&self.writer)
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
        let mut tx = self.write_tx().await?;
        let repo: Option<String> = sqlx::query_scalar("SELECT repo FROM rollouts WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(repo) = repo else {
            return Err(StoreError::Unsupported(format!("no rollout {id} to save")));
        };
        if let Some(fence) = &write.fence {
            let held: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM leases WHERE kind = ? AND key = ? AND owner = ? \
                 AND generation = ? AND expires_at > ?",
            )
            .bind(super::LEASE_ROLLOUT)
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
            "UPDATE rollouts SET state = ?, document = ?, updated_at = ?, draining = ? WHERE id = ?",
        )
        .bind(&write.state)
        .bind(&write.document)
        .bind(now_ms)
        .bind(write.draining)
        .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        write_steps(&mut tx, id, &write.steps).await?;
        write_timers(&mut tx, id, &write.fired, &write.timers).await?;
        write_attempts(&mut tx, &repo, id, &write.attempts, now_ms).await?;
        unlock_steps(&mut tx, &repo, &write.unlock, id).await?;
        let locked = lock_steps(&mut tx, &repo, &write.lock, id, now_ms).await?;
        tx.commit().await?;
        Ok(locked)
    }

    async fn rollout(&self, id: &RolloutId) -> Result<Option<RolloutRecord>> {
        self.one_rollout("id = ?", &[Arg::Text(id.as_str())]).await
    }

    async fn rollout_for_commit(
        &self,
        repo: &RepoName,
        branch: &BranchName,
        commit: &CommitSha,
    ) -> Result<Option<RolloutRecord>> {
        self.one_rollout(
            "repo = ? AND branch = ? AND commit_sha = ? AND kind = 'deploy'",
            &[
                Arg::Text(repo.as_str()),
                Arg::Text(branch.as_str()),
                Arg::Text(commit.as_str()),
            ],
        )
        .await
    }

    async fn latest_rollout_for_pull_request(
        &self,
        repo: &RepoName,
        pull_request: u64,
    ) -> Result<Option<RolloutRecord>> {
        self.one_rollout(
            "repo = ? AND pull_request = ? AND kind = 'deploy' \
             ORDER BY created_at DESC, id DESC LIMIT 1",
            &[
                Arg::Text(repo.as_str()),
                Arg::Int(i64::try_from(pull_request).unwrap_or(i64::MAX)),
            ],
        )
        .await
    }

    async fn list_rollouts(
        &self,
        repo: Option<&RepoName>,
        limit: u32,
    ) -> Result<Vec<RolloutSummary>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUMMARY_COLUMNS} FROM rollouts WHERE (? IS NULL OR repo = ?) \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        )))
        .bind(repo.map(|r| r.as_str()))
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
            "SELECT {SUMMARY_COLUMNS} FROM rollouts WHERE repo = ? AND branch = ? AND {DEPLOY} \
             AND state NOT IN {TERMINAL} ORDER BY created_at, id"
        )))
        .bind(repo.as_str())
        .bind(branch.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::summary).collect()
    }

    async fn unfinished_rollouts(&self) -> Result<Vec<RolloutRecord>> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE state NOT IN {TERMINAL} \
             ORDER BY created_at, id"
        )))
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(complete(&mut tx, row).await?);
        }
        Ok(out)
    }

    async fn deploys_after(
        &self,
        repo: &RepoName,
        branch: &BranchName,
        than: &RolloutRecord,
    ) -> Result<Vec<RolloutSummary>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUMMARY_COLUMNS} FROM rollouts WHERE repo = ?1 AND branch = ?2 AND {DEPLOY} \
             AND (created_at > ?3 OR (created_at = ?3 AND id > ?4)) \
             AND ((state NOT IN {TERMINAL} AND state <> 'queued') \
                  OR EXISTS (SELECT 1 FROM deploy_history h WHERE h.repo = ?1 \
                             AND h.rollout_id = rollouts.id)) \
             ORDER BY created_at, id"
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
            "SELECT commit_sha FROM rollouts WHERE repo = ? AND branch = ? AND kind = 'deploy' \
             AND state = 'succeeded' ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(repo.as_str())
        .bind(branch.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(sha.map(CommitSha::new))
    }

    async fn timers(&self, id: &RolloutId) -> Result<Vec<StoredTimer>> {
        let rows =
            sqlx::query("SELECT timer, at FROM rollout_timers WHERE rollout_id = ? ORDER BY at")
                .bind(id.as_str())
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(rows::timer).collect()
    }

    async fn delete_timer(&self, id: &RolloutId, timer: &str) -> Result<()> {
        sqlx::query("DELETE FROM rollout_timers WHERE rollout_id = ? AND timer = ?")
            .bind(id.as_str())
            .bind(timer)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn first_attempts(&self, repo: &RepoName) -> Result<BTreeMap<EnvName, FirstAttempts>> {
        // The last 50 deploys (first attempts) of each environment.
        let rows = sqlx::query(
            "SELECT environment, succeeded FROM ( \
               SELECT environment, succeeded, ROW_NUMBER() OVER \
                 (PARTITION BY environment ORDER BY id DESC) AS n \
               FROM deploy_history WHERE repo = ? AND attempt = 1 \
             ) WHERE n <= 50",
        )
        .bind(repo.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows::first_attempts(&rows)
    }

    async fn last_good_version(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        excluding: Option<&RolloutId>,
    ) -> Result<Option<CommitSha>> {
        let version: Option<String> = sqlx::query_scalar(
            "SELECT version FROM deploy_history WHERE repo = ?1 AND environment = ?2 \
             AND service = ?3 AND succeeded = 1 AND (?4 IS NULL OR (rollout_id <> ?4 \
               AND id < IFNULL((SELECT MIN(id) FROM deploy_history WHERE repo = ?1 \
                   AND environment = ?2 AND service = ?3 AND rollout_id = ?4), id + 1))) \
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
            "SELECT version, source, at FROM baselines WHERE repo = ? AND environment = ? \
             AND service = ?",
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
        let rows = sqlx::query(
            "SELECT environment, service, version, source, at FROM baselines WHERE repo = ?1 \
             AND (environment, service) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?2))",
        )
        .bind(repo.as_str())
        .bind(pairs_json(keys)?)
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
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repo, environment, service) DO UPDATE SET \
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
        .execute(&self.writer)
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
        let mut tx = self.write_tx().await?;
        let key = [(environment.clone(), service.clone())];
        let locked = lock_steps(&mut tx, repo.as_str(), &key, rollout, to_millis(now)).await?;
        tx.commit().await?;
        Ok(locked.first().copied().unwrap_or(false))
    }

    async fn set_freeze(&self, f: &Freeze) -> Result<()> {
        sqlx::query(
            "INSERT INTO freezes (scope, until, reason, frozen_by, at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (scope) DO UPDATE SET until = excluded.until, reason = excluded.reason, \
             frozen_by = excluded.frozen_by, at = excluded.at",
        )
        .bind(&f.scope)
        .bind(f.until.map(to_millis))
        .bind(f.reason.as_deref())
        .bind(&f.by)
        .bind(to_millis(f.at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn clear_freeze(&self, scope: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM freezes WHERE scope = ?")
            .bind(scope)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn freezes_for(&self, repo: &RepoName) -> Result<Vec<Freeze>> {
        let rows = sqlx::query(
            "SELECT scope, until, reason, frozen_by, at FROM freezes WHERE scope IN (?, '*') \
             ORDER BY scope",
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
            "DELETE FROM step_locks WHERE repo = ? AND environment = ? AND service = ? \
             AND rollout_id = ?",
        )
        .bind(repo.as_str())
        .bind(environment.as_str())
        .bind(service.as_str())
        .bind(rollout.as_str())
        .execute(&self.writer)
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
        // One conditional statement: atomic however many replicas try.
        let row: Option<(i64, i64)> = sqlx::query_as(
            "INSERT INTO leases (kind, key, owner, generation, expires_at) VALUES (?, ?, ?, 1, ?) \
             ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner, \
             generation = leases.generation + 1, expires_at = excluded.expires_at \
             WHERE leases.owner IS NULL OR leases.owner = excluded.owner OR leases.expires_at <= ? \
             RETURNING generation, expires_at",
        )
        .bind(kind)
        .bind(key)
        .bind(owner)
        .bind(to_millis(until))
        .bind(to_millis(now))
        .fetch_optional(&self.writer)
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
            "UPDATE leases SET expires_at = ? WHERE kind = ? AND owner = ? \
             RETURNING key, generation",
        )
        .bind(to_millis(until))
        .bind(kind)
        .bind(owner)
        .fetch_all(&self.writer)
        .await?)
    }

    async fn lease(&self, kind: &str, key: &str) -> Result<Option<(Option<String>, Lease)>> {
        let row: Option<(Option<String>, i64, i64)> = sqlx::query_as(
            "SELECT owner, generation, expires_at FROM leases WHERE kind = ? AND key = ?",
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
             WHERE kind = ? AND key = ? AND owner = ? AND generation = ?",
        )
        .bind(kind)
        .bind(key)
        .bind(owner)
        .bind(generation)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn release_all_leases(&self, owner: &str, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE leases SET owner = NULL, expires_at = 0 WHERE owner = ?")
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
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn orphaned_rollouts(&self, now: DateTime<Utc>) -> Result<Vec<RolloutId>> {
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT r.id FROM rollouts r LEFT JOIN leases l \
               ON l.kind = '{LEASE_ROLLOUT}' AND l.key = r.id \
             WHERE ((r.state NOT IN {TERMINAL} AND r.state <> 'queued') \
                    OR (r.state IN {TERMINAL} AND r.draining)) \
               AND (l.owner IS NULL OR l.expires_at <= ?) \
             ORDER BY r.created_at, r.id"
        )))
        .bind(to_millis(now))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(RolloutId::new).collect())
    }

    async fn stop_draining(&self, id: &RolloutId) -> Result<()> {
        sqlx::query("UPDATE rollouts SET draining = 0 WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn draining_rollouts(&self) -> Result<Vec<RolloutId>> {
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT r.id FROM rollouts r WHERE r.state IN {TERMINAL} AND r.draining \
             ORDER BY r.created_at, r.id"
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

    async fn renew_delivery_claims(
        &self,
        owner: &str,
        ids: &[DeliveryId],
        until: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for id in ids {
            sqlx::query(
                "UPDATE inbox SET next_attempt_at = ? \
                 WHERE delivery_order = ? AND delivery_id = ? AND claimed_by = ? \
                 AND state = 'pending'",
            )
            .bind(to_millis(until))
            .bind(delivery_order(id.as_str()))
            .bind(id.as_str())
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn push_rollout_input(
        &self,
        rollout: &RolloutId,
        input: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO rollout_inputs (rollout_id, input, created_at) VALUES (?, ?, ?) \
             RETURNING id",
        )
        .bind(rollout.as_str())
        .bind(input)
        .bind(to_millis(now))
        .fetch_one(&self.writer)
        .await?)
    }

    async fn open_rollout_inputs(&self, owner: &str) -> Result<Vec<(i64, RolloutId, String)>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT i.id, i.rollout_id, i.input FROM rollout_inputs i JOIN leases l \
               ON l.kind = '{LEASE_ROLLOUT}' AND l.key = i.rollout_id \
             WHERE i.answered_at IS NULL AND l.owner = ? ORDER BY i.id"
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
            "UPDATE rollout_inputs SET answer = ?, answered_at = ? \
             WHERE id = ? AND answered_at IS NULL",
        )
        .bind(answer)
        .bind(to_millis(now))
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn rollout_input_answer(&self, id: i64) -> Result<Option<String>> {
        let answer: Option<Option<String>> =
            sqlx::query_scalar("SELECT answer FROM rollout_inputs WHERE id = ?")
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
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO write_pacing (installation_id, tokens, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (installation_id) DO NOTHING",
        )
        .bind(installation.0)
        .bind(capacity)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let (tokens, updated): (f64, i64) =
            sqlx::query_as("SELECT tokens, updated_at FROM write_pacing WHERE installation_id = ?")
                .bind(installation.0)
                .fetch_one(&mut *tx)
                .await?;
        let (taken, left, wait) = super::pacing::take(tokens, updated, now_ms, capacity, per_ms);
        sqlx::query("UPDATE write_pacing SET tokens = ?, updated_at = ? WHERE installation_id = ?")
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
             WHERE (? IS NULL OR repo = ?) ORDER BY repo, environment, service",
        )
        .bind(repo.map(|r| r.as_str()))
        .bind(repo.map(|r| r.as_str()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::stored_baseline).collect()
    }

    async fn in_flight_environments(&self) -> Result<Vec<(RepoName, EnvName)>> {
        // Steps are rows of `rollout_steps`; the second half reads those of
        // a document stored whole (one that did not have a rollout's shape
        // when stored: `document::split`), whose steps are still inside it.
        // A split document's header has empty `steps`, so nothing is read
        // twice.
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT r.repo, json_extract(s.step, '$.environment') \
             FROM rollouts r JOIN rollout_steps s ON s.rollout_id = r.id \
             WHERE r.state NOT IN {TERMINAL} \
               AND json_extract(s.step, '$.state') IN {IN_FLIGHT_STEP} \
             UNION \
             SELECT r.repo, json_extract(s.value, '$.environment') \
             FROM rollouts r, \
               json_each(CASE WHEN json_valid(r.document) THEN r.document ELSE '{{}}' END, \
                         '$.waves') w, \
               json_each(w.value, '$.steps') s \
             WHERE r.state NOT IN {TERMINAL} \
               AND json_extract(s.value, '$.state') IN {IN_FLIGHT_STEP}"
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
        let now_ms = to_millis(now);
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO drift (repo, environment, service, kind, expected, found, detail, \
             first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (repo, environment, service, kind) WHERE resolved_at IS NULL \
             DO UPDATE SET expected = excluded.expected, found = excluded.found, \
             detail = excluded.detail, last_seen = excluded.last_seen",
        )
        .bind(repo.as_str())
        .bind(o.environment.as_str())
        .bind(o.service.as_str())
        .bind(o.kind.as_str())
        .bind(&o.expected)
        .bind(o.found.as_deref())
        .bind(o.detail.as_deref())
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DRIFT_COLUMNS} FROM drift WHERE repo = ? AND environment = ? \
             AND service = ? AND kind = ? AND resolved_at IS NULL"
        )))
        .bind(repo.as_str())
        .bind(o.environment.as_str())
        .bind(o.service.as_str())
        .bind(o.kind.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let record = rows::drift_record(&row)?;
        tx.commit().await?;
        Ok(record)
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
            "UPDATE drift SET resolved_at = ?, resolution = ?, resolved_by = ? \
             WHERE repo = ? AND environment = ? AND (? IS NULL OR service = ?) AND kind = ? \
             AND resolved_at IS NULL",
        )
        .bind(to_millis(now))
        .bind(how)
        .bind(by)
        .bind(repo.as_str())
        .bind(environment.as_str())
        .bind(service.map(|s| s.as_str()))
        .bind(service.map(|s| s.as_str()))
        .bind(kind.as_str())
        .execute(&self.writer)
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
            "SELECT {DRIFT_COLUMNS} FROM drift WHERE repo = ? AND environment = ? \
             AND service = ? AND kind = ? AND resolved_at IS NULL"
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
            "SELECT {DRIFT_COLUMNS} FROM drift WHERE repo = ? \
             AND (resolved_at IS NULL OR ?) \
             ORDER BY resolved_at IS NOT NULL, \
             CASE WHEN resolved_at IS NULL THEN environment END, \
             CASE WHEN resolved_at IS NULL THEN service END, \
             CASE WHEN resolved_at IS NULL THEN kind END, id DESC LIMIT ?"
        )))
        .bind(repo.as_str())
        .bind(include_resolved)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::drift_record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::inbox_commit::inbox_chunks;
    use crate::store::log_sync::still_waiting;
    use crate::store::{DeliveryOutcome, DeliveryState, Finished, NewDelivery, Payload};

    fn delivery(n: usize, body: &str) -> NewDelivery {
        NewDelivery {
            id: DeliveryId::new(format!("d{n}")),
            event: "ping".into(),
            payload: Payload::compress(body),
            received_at: Utc::now(),
            claim: None,
        }
    }

    #[tokio::test]
    async fn steps_in_flight_are_found_in_a_document_stored_whole_too() {
        let (_dir, store) = new_store().await;
        // No `targets`: not a rollout's shape when stored, so kept whole
        // (`document::split`), steps and all.
        let whole = r#"{"waves":[{"steps":[{"environment":"e1","service":"api","state":"verifying"},{"environment":"e2","service":"api","state":"pending"}]}]}"#;
        let now = Utc::now();
        for (id, document) in [
            ("r-whole", Some(whole)),
            ("r-none", None),
            ("r-bad", Some("{not json")),
        ] {
            store
                .create_rollout(&RolloutRecord {
                    id: RolloutId::new(id),
                    repo: RepoName::new("acme/app"),
                    branch: BranchName::new("main"),
                    commit: CommitSha::new(id),
                    previous_commit: None,
                    pull_request: None,
                    installation: None,
                    kind: RolloutKind::Deploy,
                    parent: None,
                    state: "running".into(),
                    created_at: now,
                    updated_at: now,
                    document: document.map(str::to_owned),
                    error: None,
                })
                .await
                .unwrap();
        }
        let step_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rollout_steps")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(step_rows, 0, "stored whole, not split");
        assert_eq!(
            store.in_flight_environments().await.unwrap(),
            vec![(RepoName::new("acme/app"), EnvName::new("e1"))],
            "a missing or unreadable document is no error"
        );
    }

    /// A store on a file of its own, in a folder dropped with the guard.
    async fn new_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("convoy.db"))
            .await
            .unwrap();
        (dir, store)
    }

    /// `n` random letters: LZ4 leaves them about their size.
    fn letters(n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'a' + fastrand::u8(..26)))
            .collect()
    }

    /// Rows in `inbox_bodies`.
    async fn body_rows(store: &SqliteStore) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM inbox_bodies")
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    /// Another process's write lock on the file: the inbox's commit waits
    /// for it without holding the thread (this test's runtime has one),
    /// and commits once it is released.
    #[tokio::test]
    async fn an_inbox_write_waits_for_another_process_without_blocking_the_thread() {
        use sqlx::Connection as _;
        let (dir, store) = new_store().await;
        let options = SqliteConnectOptions::new().filename(dir.path().join("convoy.db"));
        let mut other = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let writer = store.clone();
        let write =
            tokio::spawn(async move { writer.insert_deliveries(&[delivery(1, "{}")]).await });
        // This task runs while the write waits: the thread is free.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!write.is_finished(), "the write waits for the lock");
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        let fresh = tokio::time::timeout(Duration::from_secs(5), write)
            .await
            .expect("written once the lock is released")
            .unwrap()
            .unwrap();
        assert_eq!(fresh, vec![true]);
    }

    /// A group that fails inside its transaction stores none of its
    /// deliveries, and the next group commits.
    #[tokio::test]
    async fn a_failed_inbox_group_stores_nothing_and_the_next_commits() {
        let (_dir, store) = new_store().await;
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON inbox WHEN NEW.delivery_id = 'd2' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&store.writer)
        .await
        .unwrap();
        let error = store
            .insert_deliveries(&[delivery(1, "{}"), delivery(2, "{}")])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("refused"), "{error}");
        assert_eq!(
            store.insert_deliveries(&[delivery(3, "{}")]).await.unwrap(),
            vec![true]
        );
        // The failed group's first delivery was not kept: new when it comes again.
        assert_eq!(
            store.insert_deliveries(&[delivery(1, "{}")]).await.unwrap(),
            vec![true]
        );
    }

    /// A long call hands the runtime's other tasks to another thread: on a
    /// runtime of one worker, a task spawned while the call waits for it
    /// still runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_long_call_beside_the_runtime_lets_other_tasks_run() {
        let ran = tokio::spawn(async {
            let (tx, rx) = std::sync::mpsc::channel();
            beside_runtime(true, move || {
                tokio::spawn(async move { tx.send(()).unwrap() });
                rx.recv_timeout(Duration::from_secs(5)).is_ok()
            })
        });
        assert!(ran.await.unwrap(), "the spawned task ran during the call");
    }

    /// A group too large to commit on the runtime's thread (over
    /// `LARGE_GROUP_BYTES`) commits beside it, whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_inbox_group_commits_whole() {
        let (_dir, store) = new_store().await;
        let body = letters(20_000);
        let batch: Vec<NewDelivery> = (0..100).map(|n| delivery(n, &body)).collect();
        let fresh = store.insert_deliveries(&batch).await.unwrap();
        assert_eq!(fresh, vec![true; 100]);
        let item = store
            .delivery(&DeliveryId::new("d99"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(item.payload, body);
    }

    /// The inbox's connection leaves SQLite's own checkpoint for a longer
    /// log (`inbox_commit`). Once the background finds the log long, the
    /// inbox's next commit copies all of it, and the commit after that
    /// starts the log over: SQLite then writes new salts into the log's
    /// header.
    #[tokio::test]
    async fn a_long_log_is_finished_by_the_inbox_s_next_commit() {
        let (dir, store) = new_store().await;
        store.checkpoints.stop();
        // A checkpoint already sent to SQLite's thread still runs.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = dir.path().join("convoy.db-wal");
        let salts = || std::fs::read(&log).unwrap()[16..24].to_vec();
        let mut n = 0;
        let mut group = || {
            n += 10;
            (n - 10..n).map(|i| delivery(i, "{}")).collect::<Vec<_>>()
        };
        store.insert_deliveries(&group()).await.unwrap();
        let first = salts();
        store.insert_deliveries(&group()).await.unwrap();
        assert_eq!(salts(), first, "nothing copies the log yet");
        store.checkpoints.mark_long_log();
        store.insert_deliveries(&group()).await.unwrap();
        assert_eq!(salts(), first, "copied, not yet started over");
        store.insert_deliveries(&group()).await.unwrap();
        assert_ne!(salts(), first, "the log started over");
    }

    /// Checkpoints made from now until they stop for `quiet` (the
    /// checkpointer is idle), within 5 s.
    async fn settled(store: &SqliteStore, quiet: Duration) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = store.checkpoints.made();
        loop {
            tokio::time::sleep(quiet).await;
            let now = store.checkpoints.made();
            if now == seen || std::time::Instant::now() > deadline {
                return now;
            }
            seen = now;
        }
    }

    /// Whether, within 5 s, a write of the store ends an idle wait of the
    /// checkpointer after the `since`th (the 2 s pace does not count).
    async fn woken_after(store: &SqliteStore, since: u64) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if store.checkpoints.woken() > since {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// An idle store's log is looked at every 2 s, not every 5 ms; a write
    /// of the inbox's, or any other through the writer, wakes the
    /// checkpointer.
    #[tokio::test]
    async fn an_idle_store_is_checkpointed_only_after_it_writes() {
        let (_dir, store) = new_store().await;
        let idle = settled(&store, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let later = store.checkpoints.made();
        // At 5 ms, a hundred; an early `settled` leaves one or two more.
        assert!(
            later - idle <= 3,
            "{} checkpoints in half a second of doing nothing",
            later - idle
        );

        let woken = store.checkpoints.woken();
        store.insert_deliveries(&[delivery(1, "{}")]).await.unwrap();
        assert!(
            woken_after(&store, woken).await,
            "the inbox's write did not wake the checkpointer"
        );

        settled(&store, Duration::from_millis(100)).await;
        let woken = store.checkpoints.woken();
        store
            .upsert_installation(InstallationId(7), "acme", Utc::now())
            .await
            .unwrap();
        assert!(
            woken_after(&store, woken).await,
            "a write through the writer did not wake the checkpointer"
        );
    }

    /// Without the background checkpointer the log holds everything below
    /// the writer's threshold (16 MB) and the database file does not grow.
    #[tokio::test]
    async fn the_log_is_copied_into_the_database_file_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("convoy.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        // 2 MB in all.
        let body = letters(20_000);
        let batch: Vec<NewDelivery> = (0..100).map(|n| delivery(n, &body)).collect();
        store.insert_deliveries(&batch).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let grown = std::fs::metadata(&path).unwrap().len() - before;
            if grown > 1_500_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the database file grew by {grown} bytes only"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Groups whose sizes need filling (3 new, one of them twice; 3
    /// finished) store and finish each delivery once, and a later group of
    /// the same shape reuses the statements without carrying anything over.
    #[tokio::test]
    async fn a_filled_group_writes_each_row_once() {
        let (_dir, store) = new_store().await;
        for round in 0..2 {
            let base = round * 10;
            let new = vec![
                delivery(base + 1, "{}"),
                delivery(base + 2, "{}"),
                delivery(base + 1, "{}"),
            ];
            let written = store.insert_deliveries(&new).await.unwrap();
            assert_eq!(written, vec![true, true, false], "round {round}");
            let now = Utc::now();
            let claimed = store
                .claim_deliveries("me", now, now + chrono::Duration::seconds(15), 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 2, "round {round}");
            let finished: Vec<Finished> = [base + 1, base + 2, base + 1]
                .iter()
                .map(|n| Finished {
                    id: DeliveryId::new(format!("d{n}")),
                    owner: "me".into(),
                    outcome: DeliveryOutcome::Done,
                })
                .collect();
            store
                .write_inbox(
                    InboxWrite {
                        finished: &finished,
                        ..InboxWrite::default()
                    },
                    Utc::now(),
                )
                .await
                .unwrap();
            for n in [base + 1, base + 2] {
                let item = store
                    .delivery(&DeliveryId::new(format!("d{n}")))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(item.attempts, 1, "d{n}");
                assert_eq!(item.state, DeliveryState::Done, "d{n}");
            }
        }
        // One packed row per round.
        assert_eq!(body_rows(&store).await, 2);
    }

    /// A group of three chunks: in the first, redeliveries of earlier
    /// deliveries after the new ones, so its last packed rows hold only
    /// their bodies and are deleted again, their numbers taken by the next
    /// chunk; in the last, a body larger than a packed row and an id that
    /// was new in the first. Every delivery reads back its own body, every
    /// row names a stored body and every stored body is named.
    #[tokio::test]
    async fn a_group_of_several_chunks_keeps_every_body_and_no_other() {
        let (_dir, store) = new_store().await;
        let earlier: Vec<NewDelivery> = (0..28)
            .map(|n| NewDelivery {
                id: DeliveryId::new(format!("r{n}")),
                ..delivery(0, &format!("{{\"earlier\":{n}}}"))
            })
            .collect();
        store.insert_deliveries(&earlier).await.unwrap();

        let mut bodies: std::collections::HashMap<String, String> = earlier
            .iter()
            .map(|d| (d.id.as_str().to_owned(), d.payload.decompress().unwrap()))
            .collect();
        let mut group = Vec::new();
        let mut fresh = Vec::new();
        let mut add = |id: String, body: String, new: bool| {
            if new {
                bodies.insert(id.clone(), body.clone());
            }
            group.push(NewDelivery {
                id: DeliveryId::new(id),
                ..delivery(0, &body)
            });
            fresh.push(new);
        };
        for n in 0..100 {
            add(format!("n{n}"), letters(3_000 + n * 37 % 7_000), true);
        }
        for n in 0..28 {
            add(format!("r{n}"), letters(5_000), false);
        }
        for n in 100..250 {
            let size = if n == 200 {
                40_000
            } else {
                3_000 + n * 37 % 7_000
            };
            add(format!("n{n}"), letters(size), true);
        }
        add("n5".into(), letters(4_000), false);
        for n in 250..300 {
            add(format!("n{n}"), letters(3_000 + n * 37 % 7_000), true);
        }
        assert_eq!(inbox_chunks(&group).count(), 3);
        let written = store.insert_deliveries(&group).await.unwrap();
        assert_eq!(written, fresh);

        let ids: Vec<DeliveryId> = bodies
            .keys()
            .map(|id| DeliveryId::new(id.as_str()))
            .collect();
        let items = store.deliveries(&ids).await.unwrap();
        assert_eq!(items.len(), bodies.len());
        for item in items {
            assert!(
                item.payload == bodies[item.id.as_str()],
                "{} read back another body",
                item.id.as_str()
            );
        }
        let unstored: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM inbox LEFT JOIN inbox_bodies ON seq = body \
             WHERE body IS NOT NULL AND seq IS NULL",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(unstored, 0, "rows naming a body not stored");
        let unnamed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM inbox_bodies \
             WHERE seq NOT IN (SELECT body FROM inbox WHERE body IS NOT NULL)",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(unnamed, 0, "bodies no row names");
    }

    /// Packed bodies come back each whole and alone, in a group that
    /// fills several rows and redelivers one delivery with another body,
    /// and a group of redeliveries only stores no row.
    #[tokio::test]
    async fn packed_bodies_read_back_each_its_own() {
        let (_dir, store) = new_store().await;
        // 5–15 KB each.
        let bodies: Vec<String> = (0..9).map(|n| letters(5_000 + n * 1_200)).collect();
        let mut group: Vec<NewDelivery> = bodies
            .iter()
            .enumerate()
            .map(|(n, body)| delivery(n, body))
            .collect();
        group.push(delivery(4, "{\"other\":true}"));
        let written = store.insert_deliveries(&group).await.unwrap();
        assert_eq!(written.iter().filter(|f| **f).count(), 9);
        let packed_rows = body_rows(&store).await;
        assert!((2..9).contains(&packed_rows), "{packed_rows} rows");
        let again = [delivery(2, "{}"), delivery(7, "{}")];
        store.insert_deliveries(&again).await.unwrap();
        assert_eq!(
            body_rows(&store).await,
            packed_rows,
            "redeliveries store nothing"
        );
        let ids: Vec<DeliveryId> = (0..9).map(|n| DeliveryId::new(format!("d{n}"))).collect();
        let items = store.deliveries(&ids).await.unwrap();
        assert_eq!(items.len(), 9);
        for item in items {
            let n: usize = item.id.as_str()[1..].parse().unwrap();
            assert_eq!(item.payload, bodies[n], "{}", item.id.as_str());
        }
        for (n, body) in bodies.iter().enumerate() {
            let item = store
                .delivery(&DeliveryId::new(format!("d{n}")))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&item.payload, body, "d{n}");
        }
    }

    /// A database file migrated up to, not including, `version`, for tests
    /// of what a migration does to rows written before it.
    async fn migrated_before(version: i64) -> (tempfile::TempDir, std::path::PathBuf, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("convoy.db");
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        let all = super::super::migrations::sqlite();
        let before = sqlx::migrate::Migrator::with_migrations(
            all.iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
        );
        before.run(&pool).await.unwrap();
        (dir, path, pool)
    }

    /// Migration 0013 marks as draining the ended rollouts that still hold
    /// locks and have steps in flight, stored as rows or inside a document
    /// stored whole; not one with nothing in flight, nor one without locks.
    #[tokio::test]
    async fn rollouts_draining_before_migration_13_are_found_after_it() {
        let (_dir, path, pool) = migrated_before(13).await;
        let step =
            |state: &str| format!(r#"{{"environment":"e","service":"api","state":"{state}"}}"#);
        for (n, (id, document, steps, locked)) in [
            (
                "r-rows",
                "{}",
                vec![step("succeeded"), step("verifying")],
                true,
            ),
            ("r-done", "{}", vec![step("succeeded")], true),
            ("r-unlocked", "{}", vec![step("deploying")], false),
            (
                "r-whole",
                &*format!(r#"{{"waves":[{{"steps":[{}]}}]}}"#, step("deploying")),
                vec![],
                true,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            sqlx::query(
                "INSERT INTO rollouts (id, repo, branch, commit_sha, kind, state, created_at, \
                 updated_at, document) VALUES (?, 'acme/app', 'main', ?, 'deploy', 'aborted', ?, ?, ?)",
            )
            .bind(id)
            .bind(format!("{n:0>40}"))
            .bind(n as i64)
            .bind(n as i64)
            .bind(document)
            .execute(&pool)
            .await
            .unwrap();
            for (idx, step) in steps.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO rollout_steps (rollout_id, wave, idx, step) VALUES (?, 0, ?, ?)",
                )
                .bind(id)
                .bind(idx as i64)
                .bind(step)
                .execute(&pool)
                .await
                .unwrap();
            }
            if locked {
                sqlx::query(
                    "INSERT INTO step_locks (repo, environment, service, rollout_id, acquired_at) \
                     VALUES ('acme/app', ?, 'api', ?, 1)",
                )
                .bind(id)
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
            }
        }
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let draining: Vec<String> = store
            .draining_rollouts()
            .await
            .unwrap()
            .into_iter()
            .map(|id| id.to_string())
            .collect();
        assert_eq!(draining, ["r-rows", "r-whole"]);
        store
            .stop_draining(&RolloutId::new("r-rows"))
            .await
            .unwrap();
        let draining = store.draining_rollouts().await.unwrap();
        assert_eq!(draining, [RolloutId::new("r-whole")]);
    }

    /// Migrations 0008 and 0009 move the bodies of a database written
    /// before them out of the inbox rows and under numbers; bodies stored
    /// after them take the numbers that follow.
    #[tokio::test]
    async fn bodies_stored_before_migration_8_are_read_after_it() {
        let (_dir, path, pool) = migrated_before(8).await;
        let body = r#"{"zen":"Keep it logically awesome."}"#;
        sqlx::query(
            "INSERT INTO inbox (delivery_id, event, payload, received_at, next_attempt_at) \
             VALUES ('old', 'ping', ?, 1, 1)",
        )
        .bind(Payload::compress(body).as_bytes())
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let item = store
            .delivery(&DeliveryId::new("old"))
            .await
            .unwrap()
            .expect("still there");
        assert_eq!(item.payload, body);
        let due = store.due_deliveries(Utc::now(), 10).await.unwrap();
        assert_eq!(due.len(), 1);

        store
            .insert_deliveries(&[delivery(1, "{\"new\":1}"), delivery(2, "{\"new\":2}")])
            .await
            .unwrap();
        let bodies: Vec<(String, i64)> =
            sqlx::query_as("SELECT delivery_id, body FROM inbox ORDER BY body, body_at")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        let ids: Vec<&str> = bodies.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, vec!["old", "d1", "d2"], "{bodies:?}");
        for (n, expected) in [(1, "{\"new\":1}"), (2, "{\"new\":2}")] {
            let item = store
                .delivery(&DeliveryId::new(format!("d{n}")))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(item.payload, expected);
        }
        let old = store.delivery(&DeliveryId::new("old")).await.unwrap();
        assert_eq!(old.unwrap().payload, body, "not overwritten");
    }

    /// Migration 0010 orders the inbox's unique index by when GitHub made
    /// each id. The order it computes in SQL for the rows already stored
    /// must be the one the store computes for a redelivery (fails if the
    /// two differ: the redelivery would be taken as new), and every kind of
    /// id must still be found.
    #[tokio::test]
    async fn deliveries_stored_before_migration_10_stay_duplicates_after_it() {
        let (_dir, path, pool) = migrated_before(10).await;
        let ids = [
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "0b989ba4-242f-11e5-81e1-c7b6966d2516",
            "72D3162E-CC78-11E3-81AB-4C9367DC0958",
            "72d3162e-cc78-41e3-81ab-4c9367dc0958",
            "72d3162e-cc78-11e3-81ab-4c9367dc095é",
            "72d3162e-cc78-11e3-81ab-4c9367dc\u{0}958",
            "delivery-1",
        ];
        for (seq, id) in ids.iter().enumerate() {
            sqlx::query("INSERT INTO inbox_bodies (seq, payload) VALUES (?, ?)")
                .bind(seq as i64 + 1)
                .bind(Payload::compress(format!("{{\"n\":{seq}}}")).as_bytes())
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO inbox (delivery_id, event, received_at, next_attempt_at, body) \
                 VALUES (?, 'ping', 1, 1, ?)",
            )
            .bind(*id)
            .bind(seq as i64 + 1)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let orders: Vec<(String, String)> =
            sqlx::query_as("SELECT delivery_id, delivery_order FROM inbox ORDER BY rowid")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        for (id, order) in &orders {
            assert_eq!(order, &delivery_order(id), "{id}");
        }
        assert_eq!(orders[0].1, "1e3cc7872d3162e");
        let again: Vec<NewDelivery> = ids
            .iter()
            .map(|id| NewDelivery {
                id: DeliveryId::new(*id),
                ..delivery(0, "{}")
            })
            .collect();
        let fresh = store.insert_deliveries(&again).await.unwrap();
        assert_eq!(fresh, vec![false; ids.len()], "redeliveries are not new");
        for (seq, id) in ids.iter().enumerate() {
            let item = store.delivery(&DeliveryId::new(*id)).await.unwrap();
            assert_eq!(item.unwrap().payload, format!("{{\"n\":{seq}}}"), "{id}");
        }
        let wanted: Vec<DeliveryId> = ids
            .iter()
            .chain(&ids[..2])
            .map(|id| DeliveryId::new(*id))
            .collect();
        assert_eq!(store.deliveries(&wanted).await.unwrap().len(), ids.len());
    }
    /// An inbox write is visible when `write_inbox_unsynced` returns and
    /// durable only once the log's sync after it is done (fails if the
    /// commit waited for the sync, or did not wait for one at all); the
    /// connection's other transactions sync as they commit again.
    #[tokio::test]
    async fn an_inbox_write_is_durable_after_the_log_sync_that_follows_it() {
        let (_dir, store) = new_store().await;
        // Twice: the second time the transaction's statements come from
        // the connection's cache.
        for n in [1, 2] {
            let hold = store.hold_log_syncs();
            let new = [delivery(n, "{}")];
            let write = InboxWrite {
                new: &new,
                ..InboxWrite::default()
            };
            let unsynced = store.write_inbox_unsynced(write, Utc::now());
            let (written, durable) = tokio::time::timeout(Duration::from_secs(10), unsynced)
                .await
                .expect("the commit waited for the sync")
                .unwrap();
            assert_eq!(written.fresh, vec![true]);
            let stored = store.delivery(&DeliveryId::new(format!("d{n}"))).await;
            assert!(stored.unwrap().is_some(), "visible before it is synced");
            let mut durable = Box::pin(durable.wait());
            assert!(
                still_waiting(&mut durable).await,
                "durable before the log was synced"
            );
            drop(hold);
            durable.await.unwrap();
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&store.writer)
                .await
                .unwrap();
            assert_eq!(sync, 2, "FULL again for the connection's other writes");
        }
        store.ping().await.unwrap();
    }

    /// Once a sync of the log failed, every inbox write fails and the store
    /// is not ready (`/readyz`), until convoy restarts.
    #[tokio::test]
    async fn a_failed_log_sync_fails_the_inbox_and_readiness() {
        let (_dir, store) = new_store().await;
        store.log.fail_syncs();
        let error = store
            .insert_deliveries(&[delivery(1, "{}")])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("restart convoy"), "{error}");
        assert!(store.ping().await.is_err());
        assert!(store.insert_deliveries(&[delivery(2, "{}")]).await.is_err());
    }
}

//! The SQLite store: one file, WAL journal, created when missing.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    AuditEntry, DeliveryOutcome, DeliveryState, InboxCounts, InboxItem, NewDelivery, Result, Store,
    StoreError, from_millis, to_millis,
};
use crate::domain::{DeliveryId, InstallationId, RepoName, RolloutId};

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
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
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, FULL syncs the log on every commit: an acknowledged
            // delivery survives a power loss, not only a crash. Intake groups
            // many deliveries into one commit, so this costs little.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        super::migrations::sqlite().run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// For stores of later features that share the same file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn inbox_item(row: &sqlx::sqlite::SqliteRow) -> Result<InboxItem> {
    Ok(InboxItem {
        id: DeliveryId::new(row.try_get::<String, _>("delivery_id")?),
        event: row.try_get("event")?,
        payload: row.try_get("payload")?,
        received_at: from_millis(row.try_get("received_at")?),
        state: DeliveryState::parse(&row.try_get::<String, _>("state")?),
        attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
        last_error: row.try_get("last_error")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_deliveries(&self, batch: &[NewDelivery]) -> Result<Vec<bool>> {
        let mut tx = self.pool.begin().await?;
        let mut fresh = Vec::with_capacity(batch.len());
        for d in batch {
            let at = to_millis(d.received_at);
            let done = sqlx::query(
                "INSERT INTO inbox (delivery_id, event, payload, received_at, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING",
            )
            .bind(d.id.as_str())
            .bind(&d.event)
            .bind(&d.payload)
            .bind(at)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            fresh.push(done.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(fresh)
    }

    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<InboxItem>> {
        let rows = sqlx::query(
            "SELECT delivery_id, event, payload, received_at, state, attempts, last_error \
             FROM inbox WHERE state = 'pending' AND next_attempt_at <= ? \
             ORDER BY next_attempt_at, received_at LIMIT ?",
        )
        .bind(to_millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(inbox_item).collect()
    }

    async fn finish_deliveries(
        &self,
        results: &[(DeliveryId, DeliveryOutcome)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let now = to_millis(now);
        let mut tx = self.pool.begin().await?;
        for (id, outcome) in results {
            let (state, error, next) = match outcome {
                DeliveryOutcome::Done => (DeliveryState::Done, None, now),
                DeliveryOutcome::Dropped(reason) => (DeliveryState::Dropped, Some(reason), now),
                DeliveryOutcome::Retry { error, at } => {
                    (DeliveryState::Pending, Some(error), to_millis(*at))
                }
                DeliveryOutcome::Failed(error) => (DeliveryState::Failed, Some(error), now),
            };
            let processed = (state != DeliveryState::Pending).then_some(now);
            sqlx::query(
                "UPDATE inbox SET state = ?, attempts = attempts + 1, last_error = ?, \
                 next_attempt_at = ?, processed_at = ? WHERE delivery_id = ?",
            )
            .bind(state.as_str())
            .bind(error)
            .bind(next)
            .bind(processed)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM inbox WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?;
        Ok(next.map(from_millis))
    }

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<InboxItem>> {
        let row = sqlx::query(
            "SELECT delivery_id, event, payload, received_at, state, attempts, last_error \
             FROM inbox WHERE delivery_id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(inbox_item).transpose()
    }

    async fn inbox_counts(&self) -> Result<InboxCounts> {
        let row = sqlx::query(
            "SELECT \
               COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0) AS pending, \
               COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0) AS failed \
             FROM inbox WHERE state IN ('pending', 'failed')",
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_installation_suspended(
        &self,
        id: InstallationId,
        suspended: bool,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("UPDATE installations SET suspended = ?, updated_at = ? WHERE id = ?")
            .bind(suspended)
            .bind(to_millis(now))
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_installation(&self, id: InstallationId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
            "INSERT INTO audit_log (at, actor, repo, rollout_id, location, action, result, detail) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(to_millis(entry.at))
        .bind(&entry.actor)
        .bind(entry.repo.as_ref().map(|r| r.as_str()))
        .bind(entry.rollout_id.as_ref().map(|r| r.as_str()))
        .bind(entry.location.as_deref())
        .bind(&entry.action)
        .bind(&entry.result)
        .bind(entry.detail.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_for_rollout(&self, rollout: &RolloutId) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, actor, repo, rollout_id, location, action, result, detail \
             FROM audit_log WHERE rollout_id = ? ORDER BY id",
        )
        .bind(rollout.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: from_millis(row.try_get("at")?),
                    actor: row.try_get("actor")?,
                    repo: row.try_get::<Option<String>, _>("repo")?.map(RepoName::new),
                    rollout_id: row
                        .try_get::<Option<String>, _>("rollout_id")?
                        .map(RolloutId::new),
                    location: row.try_get("location")?,
                    action: row.try_get("action")?,
                    result: row.try_get("result")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}

//! What convoy last put on GitHub, per key: the object's GitHub id and the
//! digest of the body sent. Kept in the database so a restart neither
//! re-creates comments and check runs nor re-sends unchanged bodies.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use super::schedule::{ReportKey, ReportObject};
use crate::domain::{InstallationId, RepoName, RolloutId};
use crate::store::rows::Columns;

/// One key's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub object_id: Option<u64>,
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
#[error("report ledger: {0}")]
pub struct LedgerError(pub String);

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        LedgerError(e.to_string())
    }
}

#[async_trait]
pub trait ReportLedger: Send + Sync {
    async fn get(&self, key: &ReportKey) -> Result<Option<LedgerEntry>, LedgerError>;
    async fn record(&self, key: &ReportKey, entry: &LedgerEntry) -> Result<(), LedgerError>;
    /// Every record (read once at startup).
    async fn load_all(&self) -> Result<Vec<(ReportKey, LedgerEntry)>, LedgerError>;
}

/// For tests and the demo.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    map: Mutex<HashMap<ReportKey, LedgerEntry>>,
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ReportLedger for MemoryLedger {
    async fn get(&self, key: &ReportKey) -> Result<Option<LedgerEntry>, LedgerError> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned())
    }
    async fn record(&self, key: &ReportKey, entry: &LedgerEntry) -> Result<(), LedgerError> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), entry.clone());
        Ok(())
    }
    async fn load_all(&self) -> Result<Vec<(ReportKey, LedgerEntry)>, LedgerError> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

fn object_columns(o: &ReportObject) -> (&'static str, &str, i64) {
    match o {
        ReportObject::CheckRun { name, generation } => ("check_run", name, i64::from(*generation)),
        ReportObject::Comment { issue } => ("comment", "", *issue as i64),
        ReportObject::Issue { label } => ("issue", label, 0),
    }
}

fn object_from(kind: &str, name: String, number: i64) -> Option<ReportObject> {
    match kind {
        "check_run" => Some(ReportObject::CheckRun {
            name,
            generation: u32::try_from(number).ok()?,
        }),
        "comment" => Some(ReportObject::Comment {
            issue: u64::try_from(number).ok()?,
        }),
        "issue" => Some(ReportObject::Issue { label: name }),
        _ => None,
    }
}

/// The records of `report_ledger` rows (every column), skipping rows of a
/// kind this version does not know.
fn entries(rows: &[impl Columns]) -> Result<Vec<(ReportKey, LedgerEntry)>, LedgerError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let kind = r.text("object_kind")?;
        let Some(object) = object_from(&kind, r.text("object_name")?, r.int("object_number")?)
        else {
            tracing::warn!(kind, "report ledger row of an unknown kind ignored");
            continue;
        };
        out.push((
            ReportKey {
                installation: InstallationId(r.int("installation_id")?),
                repo: RepoName::new(r.text("repo")?),
                rollout: RolloutId::new(r.text("rollout_id")?),
                object,
            },
            entry(r)?,
        ));
    }
    Ok(out)
}

/// The entry of a row with `github_id` and `body_hash`.
fn entry(r: &impl Columns) -> Result<LedgerEntry, LedgerError> {
    Ok(LedgerEntry {
        object_id: r.opt_int("github_id")?.and_then(|i| u64::try_from(i).ok()),
        digest: r.text("body_hash")?,
    })
}

// The statements, written once for both databases: numbered parameters
// (`$1`) are PostgreSQL's and are understood by SQLite too.
const GET: &str = "SELECT github_id, body_hash FROM report_ledger WHERE repo = $1 \
    AND rollout_id = $2 AND object_kind = $3 AND object_name = $4 AND object_number = $5";
const RECORD: &str = "INSERT INTO report_ledger (repo, rollout_id, object_kind, object_name, \
    object_number, installation_id, github_id, body_hash, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (repo, rollout_id, object_kind, object_name, object_number) DO UPDATE SET \
    github_id = excluded.github_id, body_hash = excluded.body_hash, updated_at = excluded.updated_at";
const LOAD_ALL: &str = "SELECT rollout_id, object_kind, object_name, object_number, \
    installation_id, repo, github_id, body_hash FROM report_ledger";

/// A ledger kept in table `report_ledger` of a database (migration 0002),
/// one type per database: the same statements through its pool.
macro_rules! sql_ledger {
    ($(#[$doc:meta])* $name:ident, $pool:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            pool: $pool,
        }

        impl $name {
            /// The pool's database must have the migrations applied.
            pub fn new(pool: $pool) -> Self {
                $name { pool }
            }
        }

        #[async_trait]
        impl ReportLedger for $name {
            async fn get(&self, key: &ReportKey) -> Result<Option<LedgerEntry>, LedgerError> {
                let (kind, name, number) = object_columns(&key.object);
                let row = sqlx::query(GET)
                    .bind(key.repo.as_str())
                    .bind(key.rollout.as_str())
                    .bind(kind)
                    .bind(name)
                    .bind(number)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(entry).transpose()
            }

            async fn record(&self, key: &ReportKey, entry: &LedgerEntry) -> Result<(), LedgerError> {
                let (kind, name, number) = object_columns(&key.object);
                sqlx::query(RECORD)
                    .bind(key.repo.as_str())
                    .bind(key.rollout.as_str())
                    .bind(kind)
                    .bind(name)
                    .bind(number)
                    .bind(key.installation.0)
                    .bind(entry.object_id.and_then(|i| i64::try_from(i).ok()))
                    .bind(&entry.digest)
                    .bind(chrono::Utc::now().timestamp_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn load_all(&self) -> Result<Vec<(ReportKey, LedgerEntry)>, LedgerError> {
                let rows = sqlx::query(LOAD_ALL).fetch_all(&self.pool).await?;
                entries(&rows)
            }
        }
    };
}

sql_ledger!(
    /// The ledger in the SQLite file (migrations/0002_report.sql).
    SqliteLedger,
    SqlitePool
);

sql_ledger!(
    /// The ledger in PostgreSQL (migrations/postgres/0002_report.sql):
    /// shared by every replica.
    PostgresLedger,
    PgPool
);

//! Wiring for `convoy serve`: with a GitHub App key configured, a GitHub
//! client, the report ledger in the database, the reporter, and the event
//! handler for what the reporter needs from webhooks (the PR-time
//! preflight, and a rollout's comment when its pull request attaches late).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::domain::DeliveryId;
use crate::drivers::Drivers;
use crate::engine::Importance;
use crate::github::{GitHubApi, GitHubClient, GitHubClientConfig};
use crate::runtime::merges::TokenSource;
use crate::runtime::rollouts::ReportSink;
use crate::runtime::worker::{EventHandler, HandlerError};
use crate::store::{SharedDatabase, Store};
use crate::webhook::{Envelope, Event};

use super::preflight::Preflight;
use super::render::RenderOptions;
use super::reporter::Reporter;
use super::transport::ledger::PostgresLedger;
use super::transport::{PacingConfig, ReportLedger, SqliteLedger};

/// The reporter and its tasks, as `convoy serve` runs them.
pub struct Reporting {
    pub reporter: Reporter,
    pub api: Arc<dyn GitHubApi>,
    /// The same client, as the source of installation tokens for git.
    pub tokens: Arc<dyn TokenSource>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// The report ledger, kept in the store's database so that what was
/// reported survives restarts and, on PostgreSQL, is shared by replicas;
/// written through the store's own connections (on SQLite its one writer,
/// so the ledger's writes queue behind the store's instead of meeting them
/// inside SQLite).
pub fn ledger_for(store: &dyn Store) -> Arc<dyn ReportLedger> {
    match store.shared_database() {
        SharedDatabase::Sqlite(pool) => Arc::new(SqliteLedger::new(pool)),
        SharedDatabase::Postgres(pool) => Arc::new(PostgresLedger::new(pool)),
    }
}

pub fn render_options(config: &Config) -> RenderOptions {
    RenderOptions {
        public_url: config.server.public_url.clone(),
        prefix: config.github.command_prefix.clone(),
    }
}

/// Starts reporting when the operator configured the App's key; `None`
/// without one (convoy then cannot call GitHub at all).
pub async fn from_config(
    config: &Config,
    store: Arc<dyn Store>,
) -> Result<Option<Reporting>, String> {
    let Some(client_config) = GitHubClientConfig::from_config(&config.github) else {
        return Ok(None);
    };
    let client = Arc::new(GitHubClient::new(client_config).map_err(|e| format!("github: {e}"))?);
    // Writes paced per installation across every replica (SPEC 7.5).
    let api: Arc<dyn GitHubApi> = Arc::new(crate::runtime::leases::SharedWritePacing::new(
        client.clone(),
        store.clone(),
        config.github.writes_per_minute,
    ));
    let tokens: Arc<dyn TokenSource> = client;
    let ledger = ledger_for(store.as_ref());
    let (reporter, tasks) = Reporter::start(
        store,
        api.clone(),
        ledger,
        PacingConfig::from_config(&config.github),
        render_options(config),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(Some(Reporting {
        reporter,
        api,
        tokens,
        tasks,
    }))
}

impl Reporting {
    /// The reporter as the rollout runtime takes it.
    pub fn sink(&self) -> Arc<dyn ReportSink> {
        Arc::new(self.reporter.clone())
    }

    /// The webhook side of reporting.
    pub fn handler(
        &self,
        config: Arc<Config>,
        store: Arc<dyn Store>,
        drivers: Drivers,
        tokens: Arc<dyn TokenSource>,
    ) -> Arc<dyn EventHandler> {
        Arc::new(ReportHandler {
            reporter: self.reporter.clone(),
            store: store.clone(),
            preflight: Preflight::new(config, store, drivers, tokens, self.api.clone()),
        })
    }
}

/// Pull-request events: opened, reopened, synchronize → `convoy/preflight`;
/// closed and merged, and pushes → the rollout of the commit is shown again
/// (its pull request may have attached after its last change, and a
/// rollout that failed before planning is shown only from here). Runs after
/// the merge handler, which creates the rollout.
pub struct ReportHandler {
    reporter: Reporter,
    store: Arc<dyn Store>,
    preflight: Preflight,
}

#[async_trait]
impl EventHandler for ReportHandler {
    async fn handle(&self, _: &DeliveryId, envelope: &Envelope) -> Result<(), HandlerError> {
        let Some(installation) = envelope.installation else {
            return Ok(());
        };
        let pr = match &envelope.event {
            Event::PullRequest(pr) => pr,
            Event::Push(push) => {
                // A rollout that failed before it was planned (an invalid
                // convoy.yml) never reaches the runtime: show it from here.
                if let Some(branch) = push.branch()
                    && let Ok(Some(r)) = self
                        .store
                        .rollout_for_commit(&push.repo, &branch, &push.after)
                        .await
                {
                    self.reporter
                        .rollout_changed(&r.id, Importance::Matters)
                        .await;
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        if let Some(sha) = pr.merged_commit() {
            if let Ok(Some(r)) = self
                .store
                .rollout_for_commit(&pr.repo, &pr.base_ref, sha)
                .await
            {
                self.reporter
                    .rollout_changed(&r.id, Importance::Matters)
                    .await;
            }
            return Ok(());
        }
        if matches!(pr.action.as_str(), "opened" | "reopened" | "synchronize") {
            self.preflight.run(installation, pr).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{InstallationId, RepoName, RolloutId};
    use crate::report::transport::{LedgerEntry, ReportKey, ReportObject};
    use crate::store::SqliteStore;

    /// What the ledger records is in the store's database file: another
    /// store opened on that file reads it back.
    #[tokio::test]
    async fn the_ledger_keeps_its_records_in_the_stores_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("convoy.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let key = ReportKey {
            installation: InstallationId(7),
            repo: RepoName::new("acme/app"),
            rollout: RolloutId::new("r1"),
            object: ReportObject::Comment { issue: 3 },
        };
        let entry = LedgerEntry {
            object_id: Some(42),
            digest: "d".into(),
        };
        ledger_for(&store).record(&key, &entry).await.unwrap();
        let again = SqliteStore::open(&path).await.unwrap();
        let read = ledger_for(&again).get(&key).await.unwrap().unwrap();
        assert_eq!((read.object_id, read.digest), (Some(42), "d".to_owned()));
    }
}

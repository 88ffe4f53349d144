//! Process-level wiring for `convoy serve`: logging, configuration, the
//! store, the workers and the HTTP server, and how the process exits.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::drivers::Drivers;
use crate::github::{GitHubApi, GitHubClient, GitHubClientConfig};
use crate::metrics::Metrics;
use crate::runtime::commands::{CommandHandler, CommandHooks};
use crate::runtime::intake::{HANDOFF, InboxWriter, handoff};
use crate::runtime::leases::Replica;
use crate::runtime::merges::{MergeHandler, NoToken, TokenSource};
use crate::runtime::rollouts::{ReportSink, RolloutRuntime};
use crate::runtime::worker::{Chain, Dispatcher, EventHandler, Worker};
use crate::store::{self, Store};
use crate::web::{self, AppState};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` filters (default
/// `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// What `start` builds from the configuration unless given: tests and the
/// demo bring their own.
#[derive(Default)]
pub struct Services {
    pub store: Option<Arc<dyn Store>>,
    pub drivers: Option<Drivers>,
    pub tokens: Option<Arc<dyn TokenSource>>,
    pub reporter: Option<Arc<dyn ReportSink>>,
    /// Runs after the built-in handlers, for every handled event.
    pub extra_handler: Option<Arc<dyn EventHandler>>,
    /// GitHub as commands see it; default: a client built from `[github]`
    /// when a private key is configured.
    pub github: Option<Arc<dyn GitHubApi>>,
    /// Preflight and drift support for `/convoy plan`, `adopt`, `resync`.
    pub command_hooks: CommandHooks,
}

impl Services {
    pub fn with_handler(handler: Arc<dyn EventHandler>) -> Services {
        Services {
            extra_handler: Some(handler),
            ..Services::default()
        }
    }
}

/// A running convoy: its address, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub runtime: RolloutRuntime,
    /// Drift detection; `pass()` runs a reconciliation now.
    pub drift: crate::drift::DriftService,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops taking requests, lets the worker finish its round, gives this
    /// replica's leases back (other replicas take its rollouts over at
    /// once) and returns when everything has stopped.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.runtime.release_leases().await;
    }

    /// Waits until the process is asked to stop (Ctrl-C or SIGTERM).
    pub async fn until_signalled(&self) {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("configuration error: {0}")]
    Config(String),
    #[error("{0}")]
    Runtime(#[from] crate::runtime::rollouts::RuntimeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the store, starts intake, the worker, the rollout runtime (resuming
/// unfinished rollouts) and the HTTP server.
pub async fn start(config: Config, services: Services) -> Result<Running, StartError> {
    let store = match services.store.clone() {
        Some(s) => s,
        None => store::open(&config.database.url).await?,
    };
    let drivers = match services.drivers.clone() {
        Some(d) => d,
        None => Drivers::from_config(&config.drivers)
            .map_err(|e| StartError::Config(format!("drivers: {e}")))?,
    };
    if config.github.private_key.is_none() {
        tracing::warn!(
            "github.private_key_path is not set: convoy takes and stores deliveries but cannot call GitHub"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let wake = Arc::new(Notify::new());
    let (shutdown, shutdown_rx) = watch::channel(false);

    let config = Arc::new(config);
    let replica = Replica::for_data_dir(&config.server.data_dir, config.server.lease);
    tracing::info!(replica = %replica.id, lease = ?replica.lease, "replica");
    // Before anything is taken in this run: claims in this replica's name
    // are left from before a restart (a crash; a graceful stop gives them
    // back), and would otherwise hold their deliveries for up to a lease.
    match store
        .release_delivery_claims(&replica.id, chrono::Utc::now())
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deliveries = n,
            "took back the delivery claims left from before a restart"
        ),
        // They run out by themselves.
        Err(e) => tracing::warn!(error = %e, "giving back old delivery claims failed"),
    }
    // New deliveries reach this replica's worker in memory, claimed for it.
    let (handoff_tx, handoff_rx) = handoff(replica.clone(), HANDOFF);
    let writer = InboxWriter::spawn(store.clone(), wake.clone(), Some(handoff_tx));
    // Check runs and the PR comment, when the App's key is configured and
    // the caller brought no reporter of its own.
    let reporting = match services.reporter {
        Some(_) => None,
        None => crate::report::setup::from_config(&config, store.clone())
            .await
            .map_err(StartError::Config)?,
    };
    if let Some(r) = &reporting {
        r.reporter.set_replica(replica.id.clone());
    }
    let reporter = services
        .reporter
        .clone()
        .or_else(|| reporting.as_ref().map(|r| r.sink()));
    let runtime = RolloutRuntime::with_replica(
        store.clone(),
        drivers.clone(),
        reporter.clone(),
        replica.clone(),
    );
    // Git fetches authenticate with the App's installation token when the
    // App is configured; without it only open remotes (file://) work.
    let tokens = services
        .tokens
        .clone()
        .or_else(|| reporting.as_ref().map(|r| r.tokens.clone()))
        .unwrap_or_else(|| Arc::new(NoToken));
    let mut handlers: Vec<Arc<dyn EventHandler>> = vec![Arc::new(MergeHandler::new(
        config.clone(),
        runtime.clone(),
        tokens.clone(),
    ))];
    // One GitHub client for everything: the caller's, else the reporter's,
    // else one built from [github] (when a key is configured).
    let github = services
        .github
        .clone()
        .or_else(|| reporting.as_ref().map(|r| r.api.clone()))
        .or_else(|| github_from_config(&config));
    let mut hooks = services.command_hooks.clone();
    if hooks.preflight.is_none()
        && let Some(api) = &github
    {
        hooks.preflight = Some(Arc::new(crate::report::preflight::Preflight::new(
            config.clone(),
            store.clone(),
            drivers.clone(),
            tokens.clone(),
            api.clone(),
        )));
    }
    // Drift detection (SPEC 6.6): the reconciler, the tracking issue
    // through the reporter's transport, and `adopt` / `resync`.
    let drift = crate::drift::DriftService::new(
        store.clone(),
        runtime.clone(),
        Arc::new(crate::drift::service::DriverSource(drivers.clone())),
        reporting.as_ref().map(|r| r.reporter.transport().clone()),
        github.clone(),
        crate::drift::issue::IssueOptions {
            public_url: config.server.public_url.clone(),
            prefix: config.github.command_prefix.clone(),
        },
        config.drift.interval,
    );
    if hooks.drift.is_none() {
        hooks.drift = Some(Arc::new(drift.clone()));
    }
    handlers.push(Arc::new(CommandHandler::new(
        &config,
        runtime.clone(),
        github,
        reporter.clone(),
        hooks,
    )));
    handlers.extend(
        reporting
            .as_ref()
            .map(|r| r.handler(config.clone(), store.clone(), drivers, tokens)),
    );
    handlers.extend(services.extra_handler.clone());
    let dispatcher: Arc<dyn EventHandler> = Arc::new(Dispatcher::new(
        store.clone(),
        Some(Arc::new(Chain(handlers))),
    ));
    runtime.recover().await?;
    let mut report_tasks = Vec::new();
    if let Some(r) = reporting {
        r.reporter.resume().await;
        report_tasks = r.tasks;
        let reporter = r.reporter;
        let mut stop = shutdown_rx.clone();
        report_tasks.push(tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            reporter.stop();
        }));
    }
    let freeze_watch =
        runtime.watch_freezes(std::time::Duration::from_secs(2), shutdown_rx.clone());
    report_tasks.push(freeze_watch);
    report_tasks.push(drift.spawn(shutdown_rx.clone()));
    report_tasks.push(runtime.keep_leases(shutdown_rx.clone()));
    let worker = Worker::new(store.clone(), dispatcher, metrics.clone(), wake).as_replica(replica);
    let worker_task = tokio::spawn(
        worker
            .with_intake(handoff_rx, writer.clone())
            .run(shutdown_rx.clone()),
    );

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.server.listen,
        source,
    })?;
    let state = AppState::new(web::Shared {
        config: config.clone(),
        store: store.clone(),
        writer,
        metrics: metrics.clone(),
    });
    let app = web::router(state);
    let mut stop = shutdown_rx;
    let server_task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server stopped with an error");
        }
    });
    tracing::info!(%addr, "convoy is listening");
    Ok(Running {
        addr,
        store,
        metrics,
        runtime,
        drift,
        shutdown,
        tasks: [server_task, worker_task]
            .into_iter()
            .chain(report_tasks)
            .collect(),
    })
}

/// The GitHub client for a configured private key (`None` without one, or
/// when the key cannot be used: logged, convoy still takes deliveries).
fn github_from_config(config: &Config) -> Option<Arc<dyn GitHubApi>> {
    let client_config = GitHubClientConfig::from_config(&config.github)?;
    match GitHubClient::new(client_config) {
        Ok(client) => Some(Arc::new(client)),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the GitHub client: commands get no answers");
            None
        }
    }
}

/// `convoy serve`: exit 2 on a configuration error, 1 on a runtime failure.
pub fn serve_main(config_path: &Path, format: LogFormat) -> ExitCode {
    init_logging(format);
    let config = match Config::load(config_path).and_then(|c| c.verify_private_key().map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("convoy: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("convoy: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let running = match start(config, Services::default()).await {
            Ok(r) => r,
            Err(
                e @ (StartError::Store(store::StoreError::Unsupported(_)) | StartError::Config(_)),
            ) => {
                eprintln!("convoy: configuration error: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("convoy: {e}");
                return ExitCode::from(1);
            }
        };
        running.until_signalled().await;
        tracing::info!("shutting down");
        running.stop().await;
        ExitCode::SUCCESS
    })
}

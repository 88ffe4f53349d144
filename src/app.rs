//! Process-level wiring for `convoy serve`: logging, configuration, the
//! store, the workers and the HTTP server, and how the process exits.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

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
    tracing::info!(listen = %config.server.listen, "configuration loaded");
    ExitCode::SUCCESS
}

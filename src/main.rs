//! The command line. Each subcommand hands off to the library at once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "convoy",
    version,
    about = "Rollouts across a fleet, driven from GitHub pull requests"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = convoy::app::LogFormat::Text)]
    log_format: convoy::app::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the GitHub App: take webhooks, run rollouts, report on GitHub.
    Serve {
        /// The operator configuration file.
        #[arg(long, default_value = "config/convoy.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => convoy::app::serve_main(&config, cli.log_format),
    }
}

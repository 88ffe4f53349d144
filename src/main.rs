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
    /// Validate a convoy.yml; exit 1 with `FILE:LINE:COL: message` lines.
    Check {
        /// The file to check.
        #[arg(default_value = "convoy.yml")]
        file: PathBuf,
        /// Also check drivers and hosts against this operator configuration.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the plan and risk for a commit range, without deploying.
    Plan {
        /// The local repository.
        #[arg(long)]
        repo: PathBuf,
        /// Last rolled-out commit (default: the parent of --to).
        #[arg(long)]
        from: Option<String>,
        /// The commit to roll out (default: HEAD).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = convoy::plan::cli::PlanFormat::Text)]
        format: convoy::plan::cli::PlanFormat,
        /// Also check drivers and hosts against this operator configuration.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => convoy::app::serve_main(&config, cli.log_format),
        Command::Check { file, config } => {
            convoy::spec::cli::check_main(Some(&file), config.as_deref())
        }
        Command::Plan {
            repo,
            from,
            to,
            format,
            config,
        } => convoy::plan::cli::plan_main(
            &repo,
            from.as_deref(),
            to.as_deref(),
            format,
            config.as_deref(),
        ),
    }
}

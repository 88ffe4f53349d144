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
    /// The whole loop on this machine: a simulated fleet, a stand-in for
    /// GitHub, a merge in a scratch repository, progress in the terminal.
    Demo {
        /// Environments in the simulated fleet.
        #[arg(long, default_value_t = 50)]
        environments: usize,
        /// Share of deploys the agents answer with a transient 503.
        #[arg(long, default_value_t = 0.02)]
        failure_rate: f64,
        /// Seed of the agents' failures.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Port for convoy (another free one when taken; 0: any).
        #[arg(long, default_value_t = 3000)]
        port: u16,
        /// Exit when the rollout has ended instead of serving its page on.
        #[arg(long)]
        exit_when_done: bool,
        /// The seed experiment: this many rollouts, then one table.
        #[arg(long)]
        runs: Option<usize>,
        /// How long an agent takes to deploy.
        #[arg(long, default_value = "800ms")]
        deploy_time: String,
        /// How long the demo user waits before approving the gated wave.
        #[arg(long, default_value = "4s")]
        approve_after: String,
        /// Bake time of the canary wave.
        #[arg(long, default_value = "5s")]
        bake: String,
        /// Do not make the first canary's first deploy fail.
        #[arg(long)]
        no_injected_failure: bool,
    },
    /// Stop every rollout of every repository from starting new steps.
    Freeze {
        /// Every repository (required).
        #[arg(long)]
        all: bool,
        /// Lift the freeze by itself after this long (e.g. `2h`).
        #[arg(long = "for")]
        duration: Option<String>,
        /// Why; shown on every frozen rollout.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value = "config/convoy.toml")]
        config: PathBuf,
    },
    /// Lift `convoy freeze --all`.
    Unfreeze {
        /// Every repository (required).
        #[arg(long)]
        all: bool,
        #[arg(long, default_value = "config/convoy.toml")]
        config: PathBuf,
    },
}

fn duration_arg(flag: &str, text: &str) -> Result<std::time::Duration, ExitCode> {
    convoy::duration::parse_duration(text).map_err(|e| {
        eprintln!("convoy demo: --{flag}: {e}");
        ExitCode::from(2)
    })
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
        Command::Demo {
            environments,
            failure_rate,
            seed,
            port,
            exit_when_done,
            runs,
            deploy_time,
            approve_after,
            bake,
            no_injected_failure,
        } => {
            let durations = (|| {
                Ok::<_, ExitCode>((
                    duration_arg("deploy-time", &deploy_time)?,
                    duration_arg("approve-after", &approve_after)?,
                    duration_arg("bake", &bake)?,
                ))
            })();
            let (deploy_time, approve_after, bake) = match durations {
                Ok(d) => d,
                Err(code) => return code,
            };
            convoy::demo::demo_main(convoy::demo::DemoOptions {
                environments,
                failure_rate,
                seed,
                port,
                exit_when_done,
                runs,
                deploy_time,
                approve_after,
                bake,
                inject_failure: !no_injected_failure,
            })
        }
        Command::Freeze {
            all,
            duration,
            reason,
            config,
        } => convoy::cli_freeze::freeze_main(&config, all, duration.as_deref(), reason.as_deref()),
        Command::Unfreeze { all, config } => convoy::cli_freeze::unfreeze_main(&config, all),
    }
}

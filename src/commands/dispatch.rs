//! What an accepted command does, decided without I/O: which engine command
//! (or rollback, report refresh, preflight, drift call) it becomes, the
//! names a rollout offers for validation, and how the audit log writes
//! where a command came from and what became of it.

use chrono::{DateTime, Utc};

use crate::domain::{EnvName, ServiceName};
use crate::engine::{self, Rollout};

use super::command::{Command, RetryTarget, RollbackTarget};
use super::validate::Context;

/// The work an accepted command asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Reply with the generated help.
    Help,
    /// Refresh the rollout's comment and check run now.
    RefreshReport,
    /// Rerun the preflight check of the open pull request.
    RerunPreflight,
    /// One engine command on the rollout the command acts on.
    Engine(engine::Command),
    /// A linked rollback rollout; empty: every environment touched.
    Rollback(Vec<EnvName>),
    /// An engine command (freeze or unfreeze) on every unfinished rollout
    /// of the repository: the emergency stop of SPEC 7.4.
    RepositoryWide(engine::Command),
    Adopt {
        environment: EnvName,
        service: Option<ServiceName>,
    },
    Resync {
        environment: EnvName,
    },
}

/// The action for `command`, run by `by` at `now` (a freeze duration ends
/// at `now + duration`; one too large to add never ends on its own).
pub fn action_for(command: &Command, by: &str, now: DateTime<Utc>) -> Action {
    let by = by.to_owned();
    match command {
        Command::Help => Action::Help,
        Command::Status => Action::RefreshReport,
        Command::Plan => Action::RerunPreflight,
        Command::Retry { target } => Action::Engine(engine::Command::Retry {
            environments: match target {
                RetryTarget::Failed => Vec::new(),
                RetryTarget::Environments(envs) => envs.clone(),
            },
            by,
        }),
        Command::Skip { environments } => Action::Engine(engine::Command::Skip {
            environments: environments.clone(),
            by,
        }),
        Command::Pause => Action::Engine(engine::Command::Pause { by }),
        Command::Resume => Action::Engine(engine::Command::Resume { by }),
        Command::Abort => Action::Engine(engine::Command::Abort { by }),
        Command::Approve { wave } => Action::Engine(engine::Command::Approve {
            wave: wave.clone(),
            by,
        }),
        Command::Rollback { target } => Action::Rollback(match target {
            RollbackTarget::All => Vec::new(),
            RollbackTarget::Environments(envs) => envs.clone(),
        }),
        Command::Adopt {
            environment,
            service,
        } => Action::Adopt {
            environment: environment.clone(),
            service: service.clone(),
        },
        Command::Resync { environment } => Action::Resync {
            environment: environment.clone(),
        },
        Command::Freeze { duration, reason } => {
            let until = duration
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .and_then(|d| now.checked_add_signed(d));
            Action::RepositoryWide(engine::Command::Freeze {
                until,
                reason: reason.clone(),
                by,
            })
        }
        Command::Unfreeze => Action::RepositoryWide(engine::Command::Unfreeze { by }),
    }
}

/// The names a command on `rollout` may use: its waves, the environments
/// it deploys to and the services it deploys.
pub fn context_of(rollout: &Rollout) -> Context {
    let mut environments: Vec<EnvName> = Vec::new();
    for wave in &rollout.waves {
        for env in &wave.environments {
            if !environments.contains(env) {
                environments.push(env.clone());
            }
        }
    }
    Context {
        environments,
        waves: rollout.waves.iter().map(|w| w.name.clone()).collect(),
        services: rollout.affected_services.clone(),
    }
}

/// Where a comment command came from, for the audit log:
/// `pr#42 comment 123`, or `issue#7 comment 9` on the drift issue.
pub fn comment_location(on_pull_request: bool, issue_number: u64, comment_id: i64) -> String {
    let kind = if on_pull_request { "pr" } else { "issue" };
    format!("{kind}#{issue_number} comment {comment_id}")
}

/// Where a button click came from: `check_run 77`.
pub fn check_run_location(check_run_id: i64) -> String {
    format!("check_run {check_run_id}")
}

/// What became of one command, as the audit log's `result` says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Not run: not allowed, invalid, or not applicable.
    Refused(String),
    /// Allowed and valid, but carrying it out failed.
    Failed(String),
}

impl Outcome {
    /// `accepted`, `refused: …` or `failed: …`, on one line.
    pub fn audit_result(&self) -> String {
        let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        match self {
            Outcome::Accepted => "accepted".to_owned(),
            Outcome::Refused(why) => format!("refused: {}", one_line(why)),
            Outcome::Failed(why) => format!("failed: {}", one_line(why)),
        }
    }

    pub fn is_accepted(&self) -> bool {
        matches!(self, Outcome::Accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Duration;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 0).unwrap()
    }

    #[test]
    fn retry_failed_is_an_engine_retry_of_everything() {
        let a = action_for(
            &Command::Retry {
                target: RetryTarget::Failed,
            },
            "alice",
            now(),
        );
        assert_eq!(
            a,
            Action::Engine(engine::Command::Retry {
                environments: vec![],
                by: "alice".into()
            })
        );
    }

    #[test]
    fn freeze_ends_after_its_duration_and_is_repository_wide() {
        let a = action_for(
            &Command::Freeze {
                duration: Some(Duration::from_secs(3600)),
                reason: Some("incident".into()),
            },
            "bob",
            now(),
        );
        assert_eq!(
            a,
            Action::RepositoryWide(engine::Command::Freeze {
                until: Some(now() + chrono::Duration::hours(1)),
                reason: Some("incident".into()),
                by: "bob".into(),
            })
        );
        let open_ended = action_for(
            &Command::Freeze {
                duration: Some(Duration::from_secs(u64::MAX)),
                reason: None,
            },
            "bob",
            now(),
        );
        assert!(matches!(
            open_ended,
            Action::RepositoryWide(engine::Command::Freeze { until: None, .. })
        ));
    }

    #[test]
    fn rollback_all_names_no_environment() {
        assert_eq!(
            action_for(
                &Command::Rollback {
                    target: RollbackTarget::All
                },
                "a",
                now()
            ),
            Action::Rollback(vec![])
        );
    }

    #[test]
    fn locations_and_results_read_well() {
        assert_eq!(comment_location(true, 42, 123), "pr#42 comment 123");
        assert_eq!(comment_location(false, 7, 9), "issue#7 comment 9");
        assert_eq!(check_run_location(77), "check_run 77");
        assert_eq!(Outcome::Accepted.audit_result(), "accepted");
        assert_eq!(
            Outcome::Refused("needs\nwrite".into()).audit_result(),
            "refused: needs write"
        );
        assert_eq!(
            Outcome::Failed("nothing to retry".into()).audit_result(),
            "failed: nothing to retry"
        );
    }
}

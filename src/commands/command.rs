//! What a parsed command *is*, and how it is written back as text (for the
//! "exact command to recover" in comments and for the audit log).

use std::time::Duration;

use serde::Serialize;

use crate::domain::{EnvName, ServiceName, WaveName};
use crate::duration::format_duration;

use super::table::Verb;

/// Which failed steps `retry` retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryTarget {
    /// Every failed step (`retry` or `retry failed`).
    Failed,
    /// The failed steps of these environments, in the order named, without
    /// repeats.
    Environments(Vec<EnvName>),
}

/// Which environments `rollback` rolls back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackTarget {
    /// Every environment this rollout touched (`rollback` or `rollback all`).
    All,
    /// These environments, in the order named, without repeats.
    Environments(Vec<EnvName>),
}

/// A slash command with its arguments, as typed (names not yet checked
/// against a rollout: see [`super::validate`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Help,
    Status,
    Plan,
    Retry {
        target: RetryTarget,
    },
    Skip {
        environments: Vec<EnvName>,
    },
    Pause,
    Resume,
    Abort,
    Approve {
        /// `None`: whichever wave is waiting.
        wave: Option<WaveName>,
    },
    Rollback {
        target: RollbackTarget,
    },
    Adopt {
        environment: EnvName,
        /// `None`: every service of the environment.
        service: Option<ServiceName>,
    },
    Resync {
        environment: EnvName,
    },
    Freeze {
        /// `None`: until `unfreeze`.
        #[serde(with = "optional_duration_text")]
        duration: Option<Duration>,
        reason: Option<String>,
    },
    Unfreeze,
}

impl Command {
    pub fn verb(&self) -> Verb {
        match self {
            Command::Help => Verb::Help,
            Command::Status => Verb::Status,
            Command::Plan => Verb::Plan,
            Command::Retry { .. } => Verb::Retry,
            Command::Skip { .. } => Verb::Skip,
            Command::Pause => Verb::Pause,
            Command::Resume => Verb::Resume,
            Command::Abort => Verb::Abort,
            Command::Approve { .. } => Verb::Approve,
            Command::Rollback { .. } => Verb::Rollback,
            Command::Adopt { .. } => Verb::Adopt,
            Command::Resync { .. } => Verb::Resync,
            Command::Freeze { .. } => Verb::Freeze,
            Command::Unfreeze => Verb::Unfreeze,
        }
    }

    /// The canonical text of this command after `prefix`, e.g.
    /// `/convoy retry acme-eu acme-us`. Parsing it gives back the same
    /// command (tested), so it can be shown as "the exact command to run".
    pub fn to_line(&self, prefix: &str) -> String {
        let mut line = format!("{prefix} {}", self.verb().name());
        let mut push = |word: &str| {
            line.push(' ');
            line.push_str(word);
        };
        match self {
            Command::Retry {
                target: RetryTarget::Environments(envs),
            }
            | Command::Rollback {
                target: RollbackTarget::Environments(envs),
            }
            | Command::Skip { environments: envs } => {
                envs.iter().for_each(|env| push(env.as_str()));
            }
            Command::Retry {
                target: RetryTarget::Failed,
            } => push("failed"),
            Command::Rollback {
                target: RollbackTarget::All,
            } => push("all"),
            Command::Approve { wave: Some(wave) } => push(wave.as_str()),
            Command::Adopt {
                environment,
                service,
            } => {
                push(environment.as_str());
                if let Some(service) = service {
                    push(service.as_str());
                }
            }
            Command::Resync { environment } => push(environment.as_str()),
            Command::Freeze { duration, reason } => {
                if let Some(duration) = duration {
                    push(&format_duration(*duration));
                }
                if let Some(reason) = reason {
                    push(reason);
                }
            }
            Command::Help
            | Command::Status
            | Command::Plan
            | Command::Pause
            | Command::Resume
            | Command::Abort
            | Command::Approve { wave: None }
            | Command::Unfreeze => {}
        }
        line
    }
}

/// Writes a freeze duration as `"1h30m"` (or `null`) in JSON, the form a
/// person reads in the audit log.
mod optional_duration_text {
    use std::time::Duration;

    use serde::Serializer;

    use crate::duration::format_duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

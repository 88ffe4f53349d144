//! How convoy talks to an environment: `http-agent` and `command`, behind one
//! trait (SPEC 4). A driver only carries out one call; what a failure means
//! for the rollout (retry, fail, halt) is the engine's decision.

pub mod command;
pub mod exec;
pub mod http_agent;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::DriverConfig;
use crate::domain::{CommitSha, EnvName, RolloutId, ServiceName};
pub use crate::engine::FailureKind;

pub use command::CommandDriverImpl;
pub use http_agent::HttpAgent;

/// Where an environment is reached: its name and, for `http-agent`, the base
/// URL from `convoy.yml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub environment: EnvName,
    pub url: Option<String>,
}

/// One deploy: SPEC 4.1's request body plus where to send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRequest {
    pub rollout: RolloutId,
    pub endpoint: Endpoint,
    pub service: ServiceName,
    pub version: CommitSha,
    pub attempt: u32,
}

/// `GET /status` (and `status_argv`) answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub service: String,
    /// `None`: the service was never deployed there (not drift). The key
    /// must be there (`"version": null`): read as absent, a misspelt
    /// `Version` would hide every drift and keep every verify waiting.
    #[serde(deserialize_with = "present_or_null")]
    pub version: Option<String>,
    pub healthy: bool,
    #[serde(default)]
    pub message: Option<String>,
}

fn present_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

impl AgentStatus {
    /// Reads an agent's status answer about `asked`; the error says what
    /// is wrong with it. An answer about another service is refused: its
    /// version is not this service's.
    pub fn read(answer: &[u8], asked: &ServiceName) -> Result<AgentStatus, String> {
        let status: AgentStatus = serde_json::from_slice(answer).map_err(|e| e.to_string())?;
        if status.service != asked.as_str() {
            return Err(format!(
                "it is about service `{}`, not `{asked}`",
                truncate_chars(&status.service, 64)
            ));
        }
        Ok(status)
    }
}

/// The agent's own preflight (SPEC 4.1, optional).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreflightOutcome {
    /// The agent has no preflight (404) or the driver has none.
    NotProvided,
    Ok,
    Refused {
        reason: String,
    },
}

/// A failed driver call. The message never contains configured headers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DriverError {
    pub kind: FailureKind,
    pub message: String,
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl DriverError {
    pub fn transient(message: impl Into<String>) -> DriverError {
        DriverError {
            kind: FailureKind::Transient,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> DriverError {
        DriverError {
            kind: FailureKind::Permanent,
            message: message.into(),
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind == FailureKind::Transient
    }
}

/// One way of reaching environments. Implementations must treat a repeated
/// deploy of the same step as a no-op on the agent's side (SPEC 4), which
/// for `http-agent` is the agent's job.
#[async_trait]
pub trait Driver: Send + Sync {
    /// Starts a deploy; `Ok` means accepted (not yet verified).
    async fn deploy(&self, req: &StepRequest) -> Result<(), DriverError>;
    /// What runs at `endpoint` for `service`, and whether it is healthy.
    async fn status(
        &self,
        endpoint: &Endpoint,
        service: &ServiceName,
    ) -> Result<AgentStatus, DriverError>;
    /// The agent's own go/no-go for deploying `version`.
    async fn preflight(
        &self,
        endpoint: &Endpoint,
        service: &ServiceName,
        version: &CommitSha,
    ) -> Result<PreflightOutcome, DriverError>;
}

/// Checks that an environment can use `driver` with `url`, without sending
/// anything: the driver must be one the operator defined, and for
/// `http-agent` the URL must be http(s) with a host in `allowed_hosts`.
/// The error is a message for `convoy.yml` validation.
pub fn check_target(
    drivers: &BTreeMap<String, DriverConfig>,
    driver: &str,
    url: Option<&str>,
) -> Result<(), String> {
    let Some(cfg) = drivers.get(driver) else {
        return Err(unknown_driver(drivers.keys().map(|k| k.as_str()), driver));
    };
    match cfg {
        DriverConfig::HttpAgent(agent) => {
            let url = url.ok_or_else(|| {
                format!("driver `{driver}` is an http-agent: the environment needs a `url`")
            })?;
            http_agent::check_url(&agent.allowed_hosts, driver, url).map(|_| ())
        }
        DriverConfig::Command(_) => Ok(()),
    }
}

fn unknown_driver<'a>(known: impl Iterator<Item = &'a str> + Clone, name: &str) -> String {
    let list: Vec<&str> = known.clone().collect();
    let defined = if list.is_empty() {
        "the operator defined no drivers".to_string()
    } else {
        format!("the operator defined: {}", list.join(", "))
    };
    format!(
        "unknown driver `{name}` ({defined}){}",
        crate::suggest::did_you_mean(name, known)
    )
}

/// The drivers the operator defined, by name.
#[derive(Clone, Default)]
pub struct Drivers {
    by_name: BTreeMap<String, Arc<dyn Driver>>,
    configs: BTreeMap<String, DriverConfig>,
}

impl fmt::Debug for Drivers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drivers")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Drivers {
    /// Builds every driver of `[drivers.*]`. Fails only on a configuration
    /// that cannot work (a header that is not a valid HTTP header).
    pub fn from_config(configs: &BTreeMap<String, DriverConfig>) -> Result<Drivers, DriverError> {
        let mut by_name: BTreeMap<String, Arc<dyn Driver>> = BTreeMap::new();
        for (name, cfg) in configs {
            let driver: Arc<dyn Driver> = match cfg {
                DriverConfig::HttpAgent(c) => Arc::new(HttpAgent::new(name, c)?),
                DriverConfig::Command(c) => Arc::new(CommandDriverImpl::new(name, c)),
            };
            by_name.insert(name.clone(), driver);
        }
        Ok(Drivers {
            by_name,
            configs: configs.clone(),
        })
    }

    /// Adds or replaces a driver (tests, `convoy demo`).
    pub fn insert(&mut self, name: impl Into<String>, driver: Arc<dyn Driver>) {
        self.by_name.insert(name.into(), driver);
    }

    /// The driver of that name; a name the operator did not define is a
    /// permanent error (a repository can never bring its own).
    pub fn get(&self, name: &str) -> Result<Arc<dyn Driver>, DriverError> {
        self.by_name.get(name).cloned().ok_or_else(|| {
            DriverError::permanent(unknown_driver(
                self.by_name.keys().map(|k| k.as_str()),
                name,
            ))
        })
    }

    /// [`check_target`] against these drivers' configuration.
    pub fn check_target(&self, driver: &str, url: Option<&str>) -> Result<(), String> {
        if !self.configs.contains_key(driver) && self.by_name.contains_key(driver) {
            return Ok(()); // inserted by hand (tests, demo)
        }
        check_target(&self.configs, driver, url)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(|k| k.as_str())
    }
}

/// Shortens text for an error message, on a char boundary.
pub(crate) fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_answer_names_its_version_and_is_about_the_service_asked() {
        let api = ServiceName::new("api");
        let read = |answer: &str| AgentStatus::read(answer.as_bytes(), &api);
        let never = read(r#"{"service":"api","version":null,"healthy":false}"#).unwrap();
        assert_eq!((never.version, never.message), (None, None));
        let runs = read(r#"{"service":"api","version":"abc","healthy":true,"message":"m"}"#);
        assert_eq!(runs.unwrap().version.as_deref(), Some("abc"));
        // A misspelt or missing key is not "never deployed".
        let e = read(r#"{"service":"api","Version":"abc","healthy":true}"#).unwrap_err();
        assert!(e.contains("missing field `version`"), "{e}");
        let e = read(r#"{"service":"web","version":"abc","healthy":true}"#).unwrap_err();
        assert_eq!(e, "it is about service `web`, not `api`");
    }
}

//! `http-agent`: the convoy agent protocol of SPEC 4.1, over reqwest.
//!
//! The environment's URL comes from `convoy.yml` (untrusted), so its host is
//! checked against the operator's `allowed_hosts` before every request, and
//! redirects are never followed (a redirect could lead anywhere). Configured
//! headers are marked sensitive and never appear in errors or logs.

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::{
    AgentStatus, Driver, DriverError, Endpoint, PreflightOutcome, StepRequest, truncate_chars,
};
use crate::config::{HttpAgentDriver, host_allowed};
use crate::domain::{CommitSha, ServiceName};

/// Answers larger than this are refused: an agent's answer is a few lines.
const MAX_BODY: usize = 1024 * 1024;

/// Parses `url` and checks scheme and host; the error names the driver and
/// the host so the repository owner knows what to fix.
pub fn check_url(allowed_hosts: &[String], driver: &str, url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "`{url}`: driver `{driver}` speaks http or https, not `{}`",
            parsed.scheme()
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "`{url}`: credentials in the URL are not allowed; the operator configures headers"
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if !host_allowed(allowed_hosts, bare) {
        return Err(format!(
            "host `{bare}` is not in the allowed_hosts of driver `{driver}`"
        ));
    }
    Ok(parsed)
}

#[derive(Clone)]
pub struct HttpAgent {
    name: String,
    allowed_hosts: Vec<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAgent")
            .field("name", &self.name)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct DeployBody<'a> {
    rollout: &'a str,
    environment: &'a str,
    service: &'a str,
    version: &'a str,
    attempt: u32,
}

#[derive(Deserialize)]
struct PreflightBody {
    ok: bool,
    #[serde(default)]
    reason: Option<String>,
}

impl HttpAgent {
    pub fn new(name: &str, cfg: &HttpAgentDriver) -> Result<HttpAgent, DriverError> {
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name_ = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                DriverError::permanent(format!(
                    "drivers.{name}.headers: `{k}` is not a valid header name"
                ))
            })?;
            let mut value = HeaderValue::from_str(v.expose()).map_err(|_| {
                // Never echo the value: it is a secret.
                DriverError::permanent(format!(
                    "drivers.{name}.headers.{k}: the value is not a valid header value"
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(name_, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(std::time::Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("convoy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DriverError::permanent(format!("drivers.{name}: {e}")))?;
        Ok(HttpAgent {
            name: name.to_string(),
            allowed_hosts: cfg.allowed_hosts.clone(),
            client,
        })
    }

    /// `{base}/{path}` after the host check; refuses before any request.
    fn url(&self, endpoint: &Endpoint, path: &str) -> Result<Url, DriverError> {
        let base = endpoint.url.as_deref().ok_or_else(|| {
            DriverError::permanent(format!(
                "environment `{}` has no url for driver `{}`",
                endpoint.environment, self.name
            ))
        })?;
        let base =
            check_url(&self.allowed_hosts, &self.name, base).map_err(DriverError::permanent)?;
        let joined = format!("{}/{path}", base.as_str().trim_end_matches('/'));
        Url::parse(&joined).map_err(|e| DriverError::permanent(format!("`{joined}`: {e}")))
    }
}

/// Network-level failures are transient: the agent may come back.
fn request_error(what: &str, e: reqwest::Error) -> DriverError {
    let why = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        // reqwest's Display may include the URL, never headers.
        e.to_string()
    };
    DriverError::transient(format!("{what}: {why}"))
}

async fn read_body(what: &str, mut resp: reqwest::Response) -> Result<Vec<u8>, DriverError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| request_error(what, e))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(DriverError::permanent(format!(
                "{what}: answer larger than {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn status_error(what: &str, status: StatusCode, body: &[u8]) -> DriverError {
    let text = truncate_chars(String::from_utf8_lossy(body).trim(), 300);
    let msg = if text.is_empty() {
        format!("{what}: HTTP {}", status.as_u16())
    } else {
        format!("{what}: HTTP {}: {text}", status.as_u16())
    };
    if status.is_client_error() {
        DriverError::permanent(msg)
    } else {
        DriverError::transient(msg)
    }
}

#[async_trait]
impl Driver for HttpAgent {
    async fn deploy(&self, req: &StepRequest) -> Result<(), DriverError> {
        let url = self.url(&req.endpoint, "deploy")?;
        let body = DeployBody {
            rollout: req.rollout.as_str(),
            environment: req.endpoint.environment.as_str(),
            service: req.service.as_str(),
            version: req.version.as_str(),
            attempt: req.attempt,
        };
        let resp = self
            .client
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| request_error("deploy", e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = read_body("deploy", resp).await.unwrap_or_default();
        if status.is_redirection() {
            return Err(DriverError::permanent(format!(
                "deploy: HTTP {} (redirects are not followed)",
                status.as_u16()
            )));
        }
        Err(status_error("deploy", status, &body))
    }

    async fn status(
        &self,
        endpoint: &Endpoint,
        service: &ServiceName,
    ) -> Result<AgentStatus, DriverError> {
        let mut url = self.url(endpoint, "status")?;
        url.query_pairs_mut()
            .append_pair("service", service.as_str());
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| request_error("status", e))?;
        let status = resp.status();
        let body = read_body("status", resp).await?;
        if !status.is_success() {
            return Err(status_error("status", status, &body));
        }
        AgentStatus::read(&body, service).map_err(|e| {
            DriverError::permanent(format!("status: the agent's answer is not valid: {e}"))
        })
    }

    async fn preflight(
        &self,
        endpoint: &Endpoint,
        service: &ServiceName,
        version: &CommitSha,
    ) -> Result<PreflightOutcome, DriverError> {
        let mut url = self.url(endpoint, "preflight")?;
        url.query_pairs_mut()
            .append_pair("service", service.as_str())
            .append_pair("version", version.as_str());
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| request_error("preflight", e))?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(PreflightOutcome::NotProvided);
        }
        let body = read_body("preflight", resp).await?;
        if !status.is_success() {
            return Err(status_error("preflight", status, &body));
        }
        let answer: PreflightBody = serde_json::from_slice(&body).map_err(|e| {
            DriverError::permanent(format!("preflight: the agent's answer is not valid: {e}"))
        })?;
        Ok(if answer.ok {
            PreflightOutcome::Ok
        } else {
            PreflightOutcome::Refused {
                reason: answer
                    .reason
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or_else(|| "the agent refused without a reason".into()),
            }
        })
    }
}

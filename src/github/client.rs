//! The real [`GitHubApi`]: octocrab's HTTP client (hyper + rustls) used for
//! raw requests, because its typed builders lack check-run `actions` and
//! its `update_comment` sends POST where GitHub documents PATCH. Retries,
//! rate limits and the per-installation concurrency bound live here; the
//! decisions themselves are in [`super::retry`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderMap, Method};
use octocrab::Octocrab;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::api::{GitHubApi, GitHubError, GitHubResult};
use super::auth::{AppAuth, SystemClock, WallClock};
use super::limits;
use super::retry::{self, RateHeaders, RetryPolicy, Verdict};
use super::types::*;
use crate::config::{GithubConfig, Secret};
use crate::domain::{InstallationId, RepoName};

/// Everything the client needs; [`GitHubClientConfig::from_config`] builds
/// it from the operator's `[github]` section.
#[derive(Clone, Debug)]
pub struct GitHubClientConfig {
    /// API root: `https://api.github.com`, `https://ghes.example.com/api/v3`
    /// or a stand-in's `http://127.0.0.1:PORT`.
    pub api_url: String,
    pub app_id: u64,
    pub private_key: Secret,
    pub retry: RetryPolicy,
    /// Requests in flight per installation (GitHub asks integrators not to
    /// run many concurrently; 10 keeps a 1,000-environment rollout smooth).
    pub max_in_flight: usize,
    /// Renew installation tokens this long before they expire.
    pub token_renew_margin: Duration,
}

impl GitHubClientConfig {
    pub fn new(api_url: impl Into<String>, app_id: u64, private_key: Secret) -> Self {
        GitHubClientConfig {
            api_url: api_url.into(),
            app_id,
            private_key,
            retry: RetryPolicy::default(),
            max_in_flight: 10,
            token_renew_margin: Duration::from_secs(5 * 60),
        }
    }

    /// `None` when the operator configured no private key.
    pub fn from_config(github: &GithubConfig) -> Option<Self> {
        let key = github.private_key.as_ref()?;
        Some(Self::new(
            github.api_url.clone(),
            github.app_id,
            key.pem.clone(),
        ))
    }
}

/// `x-ratelimit-remaining` per installation, as last seen. Shared with
/// `/metrics` through [`RateLimitGauge::register`].
#[derive(Clone, Default, Debug)]
pub struct RateLimitGauge {
    family: Family<Vec<(String, String)>, Gauge>,
    seen: Arc<Mutex<HashMap<InstallationId, i64>>>,
}

impl RateLimitGauge {
    /// Registers `convoy_github_ratelimit_remaining{installation="…"}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "convoy_github_ratelimit_remaining",
            "x-ratelimit-remaining last reported by GitHub, per installation",
            self.family.clone(),
        );
    }

    pub fn get(&self, inst: InstallationId) -> Option<i64> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&inst)
            .copied()
    }

    fn set(&self, inst: InstallationId, remaining: i64) {
        self.family
            .get_or_create(&vec![("installation".to_owned(), inst.to_string())])
            .set(remaining);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(inst, remaining);
    }
}

/// Who a request acts as.
#[derive(Clone, Copy, Debug)]
enum Actor {
    App,
    Installation(InstallationId),
}

/// Whether a request may simply be repeated when its fate is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    /// GET, PATCH and other requests whose repetition changes nothing.
    Safe,
    /// A POST that creates something: after a timeout, a connection error or
    /// a 5xx the caller must look before creating again, so the error is
    /// handed back instead of retried here. Rate-limit refusals (403/429)
    /// are still retried: GitHub did nothing.
    Creates,
}

struct Reply {
    status: u16,
    body: String,
}

struct Inner {
    octo: Octocrab,
    auth: AppAuth,
    policy: RetryPolicy,
    clock: Arc<dyn WallClock>,
    max_in_flight: usize,
    gates: Mutex<HashMap<InstallationId, Arc<Semaphore>>>,
    /// Set when GitHub said `x-ratelimit-remaining: 0`: no request of that
    /// installation leaves before the reset.
    blocked_until: Mutex<HashMap<InstallationId, tokio::time::Instant>>,
    rate: RateLimitGauge,
}

/// The GitHub client. Cheap to clone.
#[derive(Clone)]
pub struct GitHubClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubClient")
            .field("app_id", &self.inner.auth.app_id())
            .finish_non_exhaustive()
    }
}

impl GitHubClient {
    pub fn new(config: GitHubClientConfig) -> GitHubResult<Self> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// With an injected wall clock (token expiry tests).
    pub fn with_clock(config: GitHubClientConfig, clock: Arc<dyn WallClock>) -> GitHubResult<Self> {
        let auth = AppAuth::new(config.app_id, &config.private_key, clock.clone())?
            .with_renew_margin(config.token_renew_margin);
        let octo = Octocrab::builder()
            .base_uri(config.api_url.trim_end_matches('/'))
            .map_err(|e| GitHubError::Request(format!("github.api_url is not a URL: {e}")))?
            // Retries are ours: octocrab's would repeat creating POSTs blindly.
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
            .set_connect_timeout(Some(config.retry.request_timeout))
            .build()
            .map_err(|e| GitHubError::Request(format!("cannot build the HTTP client: {e}")))?;
        Ok(GitHubClient {
            inner: Arc::new(Inner {
                octo,
                auth,
                policy: config.retry,
                clock,
                max_in_flight: config.max_in_flight.max(1),
                gates: Mutex::new(HashMap::new()),
                blocked_until: Mutex::new(HashMap::new()),
                rate: RateLimitGauge::default(),
            }),
        })
    }

    /// The rate-limit gauge (for `/metrics` and tests).
    pub fn rate_limits(&self) -> RateLimitGauge {
        self.inner.rate.clone()
    }

    /// The App's JWT auth (tests inspect claims through the stand-in).
    pub fn app_auth(&self) -> &AppAuth {
        &self.inner.auth
    }

    fn gate(&self, inst: InstallationId) -> Arc<Semaphore> {
        let mut gates = self.inner.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry(inst)
            .or_insert_with(|| Arc::new(Semaphore::new(self.inner.max_in_flight)))
            .clone()
    }

    async fn wait_if_blocked(&self, inst: InstallationId) {
        let until = {
            let blocked = self
                .inner
                .blocked_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            blocked.get(&inst).copied()
        };
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }

    fn observe_rate(&self, actor: Actor, rate: &RateHeaders) {
        let Actor::Installation(inst) = actor else {
            return;
        };
        if let Some(remaining) = rate.remaining {
            self.inner.rate.set(inst, remaining);
        }
        if let Some(wait) = rate.exhausted_for(self.inner.clock.now().timestamp()) {
            let wait = wait.min(self.inner.policy.max_wait);
            self.inner
                .blocked_until
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(inst, tokio::time::Instant::now() + wait);
        }
    }

    /// The installation's access token (cached; renewed before it
    /// expires), for git fetches over https.
    pub async fn token(&self, inst: InstallationId) -> GitHubResult<Secret> {
        self.installation_token(inst).await
    }

    async fn installation_token(&self, inst: InstallationId) -> GitHubResult<Secret> {
        self.inner
            .auth
            .installation_token(inst, |jwt| async move {
                let path = format!("/app/installations/{}/access_tokens", inst.0);
                // Boxed: `send` reaches this function for installation calls.
                let reply = Box::pin(self.send(
                    Actor::App,
                    Some(jwt),
                    Method::POST,
                    &path,
                    None,
                    Repeat::Safe,
                ))
                .await?;
                decode::<InstallationTokenResponse>(&reply.body)
            })
            .await
    }

    /// One HTTP exchange, no retries.
    async fn exchange(
        &self,
        bearer: &Secret,
        method: &Method,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, HeaderMap, String), GitHubError> {
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header(http::header::USER_AGENT, "convoy")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", bearer.expose()),
            );
        let body: octocrab::OctoBody = match body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                b.to_owned().into()
            }
            None => {
                req = req.header(http::header::CONTENT_LENGTH, "0");
                octocrab::OctoBody::empty()
            }
        };
        let req = req
            .body(body)
            .map_err(|e| GitHubError::Request(format!("cannot build request {path}: {e}")))?;
        let octo = &self.inner.octo;
        let work = async {
            let resp = octo
                .execute(req)
                .await
                .map_err(|e| GitHubError::Transport(transport_message(&e)))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let text = octo
                .body_to_string(resp)
                .await
                .map_err(|e| GitHubError::Transport(transport_message(&e)))?;
            Ok((status, headers, text))
        };
        match tokio::time::timeout(self.inner.policy.request_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(GitHubError::Timeout),
        }
    }

    /// Sends with retries per [`retry`]. `bearer` overrides the token (the
    /// App JWT for the token exchange).
    async fn send(
        &self,
        actor: Actor,
        bearer: Option<Secret>,
        method: Method,
        path: &str,
        body: Option<&str>,
        repeat: Repeat,
    ) -> GitHubResult<Reply> {
        let policy = &self.inner.policy;
        let mut attempt = 0u32;
        let mut secondary_hits = 0u32;
        let mut refreshed_after_401 = false;
        loop {
            attempt += 1;
            let (bearer, permit) = match actor {
                Actor::App => (
                    match &bearer {
                        Some(b) => b.clone(),
                        None => self.inner.auth.jwt()?,
                    },
                    None,
                ),
                Actor::Installation(inst) => {
                    self.wait_if_blocked(inst).await;
                    let token = self.installation_token(inst).await?;
                    let permit = self
                        .gate(inst)
                        .acquire_owned()
                        .await
                        .map_err(|_| GitHubError::Request("client is shutting down".into()))?;
                    (token, Some(permit))
                }
            };
            let exchanged = self.exchange(&bearer, &method, path, body).await;
            // Not held while backing off: the bound is on requests in flight.
            drop(permit);
            let verdict = match exchanged {
                Ok((status, headers, text)) => {
                    let rate = RateHeaders::from_headers(&headers);
                    self.observe_rate(actor, &rate);
                    if status == 401
                        && let Actor::Installation(inst) = actor
                        && !refreshed_after_401
                    {
                        // A revoked or expired token: fetch a new one, once.
                        refreshed_after_401 = true;
                        self.inner.auth.invalidate(inst).await;
                        attempt -= 1;
                        continue;
                    }
                    let v = retry::after_response(
                        policy,
                        status,
                        &rate,
                        &text,
                        attempt,
                        secondary_hits,
                        self.inner.clock.now().timestamp(),
                        fastrand::f64(),
                    );
                    match v {
                        Verdict::Done => return Ok(Reply { status, body: text }),
                        Verdict::Retry {
                            reason: retry::RetryReason::Server,
                            ..
                        } if repeat == Repeat::Creates => {
                            return Err(GitHubError::Server { status });
                        }
                        other => other,
                    }
                }
                Err(e @ (GitHubError::Timeout | GitHubError::Transport(_))) => {
                    if repeat == Repeat::Creates {
                        return Err(e);
                    }
                    retry::after_transport_error(policy, e, attempt, fastrand::f64())
                }
                Err(e) => return Err(e),
            };
            match verdict {
                // Done returned above with the reply.
                Verdict::Done => {
                    return Err(GitHubError::Decode(
                        "retry loop ended without a reply".into(),
                    ));
                }
                Verdict::Fail(e) => return Err(e),
                Verdict::Retry { after, reason } => {
                    if reason == retry::RetryReason::SecondaryLimit {
                        secondary_hits += 1;
                    }
                    tracing::warn!(
                        method = %method,
                        path,
                        attempt,
                        wait_ms = after.as_millis() as u64,
                        reason = ?reason,
                        "GitHub request will be retried"
                    );
                    tokio::time::sleep(after).await;
                }
            }
        }
    }

    async fn request<T: DeserializeOwned>(
        &self,
        inst: InstallationId,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        repeat: Repeat,
    ) -> GitHubResult<T> {
        let body = body
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| GitHubError::Request(format!("cannot encode request: {e}")))?;
        let reply = self
            .send(
                Actor::Installation(inst),
                None,
                method,
                path,
                body.as_deref(),
                repeat,
            )
            .await?;
        if reply.status == 204 {
            return decode("null");
        }
        decode(&reply.body)
    }

    async fn paginate<T: DeserializeOwned>(
        &self,
        inst: InstallationId,
        path_and_query: &str,
    ) -> GitHubResult<Vec<T>> {
        const PER_PAGE: usize = 100;
        const MAX_PAGES: usize = 100;
        let sep = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = format!("{path_and_query}{sep}per_page={PER_PAGE}&page={page}");
            let items: Vec<T> = self
                .request(inst, Method::GET, &path, None::<&()>, Repeat::Safe)
                .await?;
            let n = items.len();
            all.extend(items);
            if n < PER_PAGE {
                break;
            }
        }
        Ok(all)
    }

    async fn backoff_before_recreate(&self, attempt: u32) {
        tokio::time::sleep(retry::backoff(&self.inner.policy, attempt, fastrand::f64())).await;
    }
}

fn transport_message(e: &octocrab::Error) -> String {
    // octocrab's Display is terse; the source chain says what happened
    // (connection refused, reset, …). Never includes headers or tokens.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn decode<T: DeserializeOwned>(body: &str) -> GitHubResult<T> {
    serde_json::from_str(body).map_err(|e| GitHubError::Decode(e.to_string()))
}

/// Percent-encodes one path segment or query value.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn repo_path(repo: &RepoName) -> GitHubResult<String> {
    let (owner, name) = repo
        .split()
        .filter(|(o, n)| !o.is_empty() && !n.is_empty())
        .ok_or_else(|| GitHubError::Request(format!("repository {repo:?} is not owner/name")))?;
    Ok(format!(
        "/repos/{}/{}",
        encode_component(owner),
        encode_component(name)
    ))
}

/// Applies GitHub's limits to a check-run output and splits annotations
/// into the first batch and the follow-ups.
fn prepare_output(output: &CheckRunOutput) -> (CheckRunOutput, Vec<Vec<Annotation>>) {
    let mut clamped = limits::clamp_output(output);
    let mut batches: Vec<Vec<Annotation>> = clamped
        .annotations
        .chunks(limits::ANNOTATIONS_PER_REQUEST)
        .map(<[Annotation]>::to_vec)
        .collect();
    clamped.annotations = if batches.is_empty() {
        Vec::new()
    } else {
        batches.remove(0)
    };
    (clamped, batches)
}

#[derive(Serialize)]
struct CommentBody<'a> {
    body: &'a str,
}

#[derive(Serialize)]
struct ReactionBody {
    content: Reaction,
}

/// The collaborator-permission answer, before folding unknown values.
#[derive(serde::Deserialize)]
struct RawPermission {
    permission: String,
    #[serde(default)]
    role_name: Option<String>,
}

impl GitHubClient {
    async fn append_annotations(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        id: u64,
        output: &CheckRunOutput,
        batches: Vec<Vec<Annotation>>,
    ) -> GitHubResult<Option<CheckRun>> {
        let mut last = None;
        for batch in batches {
            // GitHub appends annotations sent in an update; title and
            // summary are required with every output.
            let update = CheckRunUpdate {
                output: Some(CheckRunOutput {
                    title: output.title.clone(),
                    summary: output.summary.clone(),
                    text: output.text.clone(),
                    annotations: batch,
                }),
                ..Default::default()
            };
            let path = format!("{}/check-runs/{id}", repo_path(repo)?);
            last = Some(
                self.request(inst, Method::PATCH, &path, Some(&update), Repeat::Safe)
                    .await?,
            );
        }
        Ok(last)
    }

    /// After a create whose fate is unknown: a check run on the commit with
    /// the same name, `external_id`, status, conclusion and output title and
    /// summary is the one the lost POST created. Without an `external_id`
    /// nothing identifies it, and the POST is repeated.
    async fn find_created_check_run(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        run: &NewCheckRun,
    ) -> GitHubResult<Option<CheckRun>> {
        let Some(external_id) = &run.external_id else {
            return Ok(None);
        };
        let runs = self
            .list_check_runs(inst, repo, &run.head_sha, Some(&run.name))
            .await?;
        let status = serde_json::to_value(run.status).ok();
        let conclusion = run.conclusion.and_then(|c| serde_json::to_value(c).ok());
        Ok(runs.into_iter().find(|r| {
            r.external_id.as_ref() == Some(external_id)
                && status.as_ref().and_then(|s| s.as_str()) == Some(r.status.as_str())
                && conclusion.as_ref().and_then(|c| c.as_str()) == r.conclusion.as_deref()
                && match (&run.output, &r.output) {
                    (Some(want), Some(got)) => {
                        got.title.as_deref() == Some(want.title.as_str())
                            && got.summary.as_deref() == Some(want.summary.as_str())
                    }
                    (None, _) => true,
                    (Some(_), None) => false,
                }
        }))
    }

    /// The comment of `issue_number` whose body carries `marker`.
    pub async fn find_comment_by_marker(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        issue_number: u64,
        marker: &str,
    ) -> GitHubResult<Option<IssueComment>> {
        let comments = self.list_comments(inst, repo, issue_number).await?;
        Ok(comments
            .into_iter()
            .find(|c| c.body.as_deref().is_some_and(|b| b.contains(marker))))
    }
}

#[async_trait]
impl GitHubApi for GitHubClient {
    async fn create_check_run(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        run: &NewCheckRun,
    ) -> GitHubResult<CheckRun> {
        limits::check_actions(&run.actions).map_err(GitHubError::Request)?;
        let mut first = run.clone();
        let mut rest = Vec::new();
        if let Some(output) = &run.output {
            let (clamped, batches) = prepare_output(output);
            first.output = Some(clamped);
            rest = batches;
        }
        let path = format!("{}/check-runs", repo_path(repo)?);
        let max = self.inner.policy.max_attempts;
        let mut attempt = 0;
        let created: CheckRun = loop {
            attempt += 1;
            let result = self
                .request(inst, Method::POST, &path, Some(&first), Repeat::Creates)
                .await;
            match result {
                Err(e) if e.is_transient() && attempt < max => {
                    if let Some(found) = self.find_created_check_run(inst, repo, &first).await? {
                        break found;
                    }
                    self.backoff_before_recreate(attempt).await;
                }
                other => break other?,
            }
        };
        match (&first.output, rest.is_empty()) {
            (Some(output), false) => Ok(self
                .append_annotations(inst, repo, created.id, output, rest)
                .await?
                .unwrap_or(created)),
            _ => Ok(created),
        }
    }

    async fn update_check_run(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        check_run_id: u64,
        update: &CheckRunUpdate,
    ) -> GitHubResult<CheckRun> {
        if let Some(actions) = &update.actions {
            limits::check_actions(actions).map_err(GitHubError::Request)?;
        }
        let mut first = update.clone();
        let mut rest = Vec::new();
        if let Some(output) = &update.output {
            let (clamped, batches) = prepare_output(output);
            first.output = Some(clamped);
            rest = batches;
        }
        let path = format!("{}/check-runs/{check_run_id}", repo_path(repo)?);
        let updated: CheckRun = self
            .request(inst, Method::PATCH, &path, Some(&first), Repeat::Safe)
            .await?;
        match (&first.output, rest.is_empty()) {
            (Some(output), false) => Ok(self
                .append_annotations(inst, repo, check_run_id, output, rest)
                .await?
                .unwrap_or(updated)),
            _ => Ok(updated),
        }
    }

    async fn list_check_runs(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        git_ref: &str,
        name: Option<&str>,
    ) -> GitHubResult<Vec<CheckRun>> {
        #[derive(serde::Deserialize)]
        struct Page {
            check_runs: Vec<CheckRun>,
        }
        const PER_PAGE: usize = 100;
        let mut path = format!(
            "{}/commits/{}/check-runs?filter=all",
            repo_path(repo)?,
            encode_component(git_ref)
        );
        if let Some(name) = name {
            path.push_str(&format!("&check_name={}", encode_component(name)));
        }
        let mut all = Vec::new();
        for page in 1..=100 {
            let p: Page = self
                .request(
                    inst,
                    Method::GET,
                    &format!("{path}&per_page={PER_PAGE}&page={page}"),
                    None::<&()>,
                    Repeat::Safe,
                )
                .await?;
            let n = p.check_runs.len();
            all.extend(p.check_runs);
            if n < PER_PAGE {
                break;
            }
        }
        Ok(all)
    }

    async fn create_comment(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        issue_number: u64,
        body: &str,
    ) -> GitHubResult<IssueComment> {
        let body = limits::truncate_comment_body(body);
        let marker = limits::hidden_marker(&body).map(str::to_owned);
        let path = format!("{}/issues/{issue_number}/comments", repo_path(repo)?);
        let max = self.inner.policy.max_attempts;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .request(
                    inst,
                    Method::POST,
                    &path,
                    Some(&CommentBody { body: &body }),
                    Repeat::Creates,
                )
                .await;
            match result {
                Err(e) if e.is_transient() && attempt < max => {
                    // The POST may have landed. Look before posting again.
                    if let Some(marker) = &marker
                        && let Some(found) = self
                            .find_comment_by_marker(inst, repo, issue_number, marker)
                            .await?
                    {
                        tracing::info!(
                            comment = found.id,
                            "found the comment of a timed-out POST by its marker"
                        );
                        return Ok(found);
                    }
                    self.backoff_before_recreate(attempt).await;
                }
                other => return other,
            }
        }
    }

    async fn update_comment(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        comment_id: u64,
        body: &str,
    ) -> GitHubResult<IssueComment> {
        let body = limits::truncate_comment_body(body);
        let path = format!("{}/issues/comments/{comment_id}", repo_path(repo)?);
        self.request(
            inst,
            Method::PATCH,
            &path,
            Some(&CommentBody { body: &body }),
            Repeat::Safe,
        )
        .await
    }

    async fn list_comments(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        issue_number: u64,
    ) -> GitHubResult<Vec<IssueComment>> {
        let path = format!("{}/issues/{issue_number}/comments", repo_path(repo)?);
        self.paginate(inst, &path).await
    }

    async fn add_reaction(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        comment_id: u64,
        reaction: Reaction,
    ) -> GitHubResult<()> {
        let path = format!(
            "{}/issues/comments/{comment_id}/reactions",
            repo_path(repo)?
        );
        // Adding the same reaction twice is a no-op on GitHub (200).
        let _: serde_json::Value = self
            .request(
                inst,
                Method::POST,
                &path,
                Some(&ReactionBody { content: reaction }),
                Repeat::Safe,
            )
            .await?;
        Ok(())
    }

    async fn get_permission(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        user: &str,
    ) -> GitHubResult<Permission> {
        let path = format!(
            "{}/collaborators/{}/permission",
            repo_path(repo)?,
            encode_component(user)
        );
        let raw: RawPermission = self
            .request(inst, Method::GET, &path, None::<&()>, Repeat::Safe)
            .await?;
        let permission = match raw.permission.as_str() {
            "admin" => PermissionLevel::Admin,
            "write" | "maintain" => PermissionLevel::Write,
            "read" | "triage" => PermissionLevel::Read,
            _ => PermissionLevel::None,
        };
        Ok(Permission {
            role_name: raw.role_name.unwrap_or_else(|| raw.permission.clone()),
            permission,
        })
    }

    async fn get_pull_request(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        number: u64,
    ) -> GitHubResult<PullRequest> {
        let path = format!("{}/pulls/{number}", repo_path(repo)?);
        self.request(inst, Method::GET, &path, None::<&()>, Repeat::Safe)
            .await
    }

    async fn create_issue(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        issue: &NewIssue,
    ) -> GitHubResult<Issue> {
        let issue = NewIssue {
            body: limits::truncate_comment_body(&issue.body),
            ..issue.clone()
        };
        let path = format!("{}/issues", repo_path(repo)?);
        let max = self.inner.policy.max_attempts;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .request(inst, Method::POST, &path, Some(&issue), Repeat::Creates)
                .await;
            match result {
                Err(e) if e.is_transient() && attempt < max => {
                    // Look for an issue with our title and first label
                    // before creating another.
                    if let Some(label) = issue.labels.first() {
                        let open = self
                            .list_issues_by_label(inst, repo, label, IssueFilter::Open)
                            .await?;
                        if let Some(found) = open.into_iter().find(|i| i.title == issue.title) {
                            return Ok(found);
                        }
                    }
                    self.backoff_before_recreate(attempt).await;
                }
                other => return other,
            }
        }
    }

    async fn update_issue(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        number: u64,
        update: &IssueUpdate,
    ) -> GitHubResult<Issue> {
        let update = IssueUpdate {
            body: update.body.as_deref().map(limits::truncate_comment_body),
            ..update.clone()
        };
        let path = format!("{}/issues/{number}", repo_path(repo)?);
        self.request(inst, Method::PATCH, &path, Some(&update), Repeat::Safe)
            .await
    }

    async fn list_issues_by_label(
        &self,
        inst: InstallationId,
        repo: &RepoName,
        label: &str,
        filter: IssueFilter,
    ) -> GitHubResult<Vec<Issue>> {
        let path = format!(
            "{}/issues?labels={}&state={}",
            repo_path(repo)?,
            encode_component(label),
            filter.as_str()
        );
        let all: Vec<Issue> = self.paginate(inst, &path).await?;
        Ok(all
            .into_iter()
            .filter(|i| i.pull_request.is_none())
            .collect())
    }

    async fn get_repository(
        &self,
        inst: InstallationId,
        repo: &RepoName,
    ) -> GitHubResult<Repository> {
        let path = repo_path(repo)?;
        self.request(inst, Method::GET, &path, None::<&()>, Repeat::Safe)
            .await
    }

    async fn get_team_membership(
        &self,
        inst: InstallationId,
        org: &str,
        team_slug: &str,
        user: &str,
    ) -> GitHubResult<Option<TeamMembership>> {
        let path = format!(
            "/orgs/{}/teams/{}/memberships/{}",
            encode_component(org),
            encode_component(team_slug),
            encode_component(user)
        );
        match self
            .request(inst, Method::GET, &path, None::<&()>, Repeat::Safe)
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(GitHubError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode_component("convoy-drift"), "convoy-drift");
        assert_eq!(encode_component("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_component("é"), "%C3%A9");
    }

    #[test]
    fn repo_names_must_have_owner_and_name() {
        assert!(repo_path(&RepoName::new("acme/app")).is_ok());
        assert!(repo_path(&RepoName::new("acme")).is_err());
        assert!(repo_path(&RepoName::new("/app")).is_err());
    }

    #[test]
    fn annotations_are_split_in_fifties() {
        let a = Annotation {
            path: "convoy.yml".into(),
            start_line: 1,
            end_line: 1,
            start_column: None,
            end_column: None,
            annotation_level: AnnotationLevel::Failure,
            message: "bad".into(),
            title: None,
        };
        let out = CheckRunOutput {
            title: "t".into(),
            summary: "s".into(),
            text: None,
            annotations: vec![a; 120],
        };
        let (first, rest) = prepare_output(&out);
        assert_eq!(first.annotations.len(), 50);
        assert_eq!(rest.iter().map(Vec::len).collect::<Vec<_>>(), vec![50, 20]);
    }
}

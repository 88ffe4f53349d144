//! A stateful stand-in for GitHub's REST API on 127.0.0.1, for tests and for
//! `convoy demo`.
//!
//! The real client (octocrab underneath, the real App auth) talks to it over
//! HTTP. It exchanges App JWTs for installation tokens (verifying the JWT
//! against the App's public key), keeps check runs, comments, reactions,
//! permissions, pull requests, issues, repositories and team memberships,
//! and keeps every version of every object so tests can assert on history.
//!
//! Every request is checked against GitHub's own OpenAPI description (when
//! one is given) plus the limits the description lacks; a violation is
//! recorded, answered with 422 as GitHub would, and fails the test
//! ([`GitHubStandIn::assert_no_violations`], and at drop unless disabled).
//!
//! Faults can be injected: the next K requests (optionally only matching
//! ones) fail with 502, a secondary rate limit, an exhausted primary rate
//! limit, or are slow (processed, then answered late — the case where a
//! client cannot know whether its POST landed).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::openapi::{OpenApi, percent_decode};
use crate::github::auth::JwtClaims;

/// The test App's private key (PKCS#1 PEM). TEST ONLY: generated for this
/// repository's tests and the offline demo; it grants nothing anywhere.
pub const TEST_APP_PRIVATE_KEY_PEM: &str = include_str!("../../tests/fixtures/test-app-key.pem");
/// The public half of [`TEST_APP_PRIVATE_KEY_PEM`].
pub const TEST_APP_PUBLIC_KEY_PEM: &str = include_str!("../../tests/fixtures/test-app-key.pub.pem");
/// The App id the test key belongs to.
pub const TEST_APP_ID: u64 = 4242;

const COMMENT_MAX_CHARS: usize = 65_536;
const OUTPUT_MAX_BYTES: usize = 65_535;

/// How the stand-in behaves.
#[derive(Clone)]
pub struct StandInConfig {
    pub app_id: u64,
    /// The App's public key; JWTs are verified against it. `None` accepts
    /// any JWT-looking bearer (only for a demo without keys).
    pub app_public_key_pem: Option<String>,
    /// GitHub's API description; `None` skips contract checks (an installed
    /// `convoy demo` may not have the file).
    pub openapi: Option<&'static OpenApi>,
    /// Lifetime of issued installation tokens (GitHub: one hour).
    pub token_ttl: Duration,
    /// The login comments created with an installation token get.
    pub bot_login: String,
    /// Panic at drop when violations were recorded and nobody checked.
    pub fail_on_drop: bool,
}

impl StandInConfig {
    /// The test App key, GitHub's description from `../shared/github/`
    /// (required: tests must not silently skip the contract check).
    pub fn for_tests() -> Self {
        let openapi = OpenApi::shared();
        assert!(
            openapi.is_some(),
            "../shared/github/rest-api.openapi.json is missing: the stand-in cannot check requests"
        );
        StandInConfig {
            app_id: TEST_APP_ID,
            app_public_key_pem: Some(TEST_APP_PUBLIC_KEY_PEM.to_owned()),
            openapi,
            token_ttl: Duration::from_secs(3600),
            bot_login: "convoy[bot]".to_owned(),
            fail_on_drop: true,
        }
    }

    /// For `convoy demo`: the test key, contract checks when the description
    /// is present, never a panic.
    pub fn for_demo() -> Self {
        StandInConfig {
            app_id: TEST_APP_ID,
            app_public_key_pem: Some(TEST_APP_PUBLIC_KEY_PEM.to_owned()),
            openapi: OpenApi::shared(),
            token_ttl: Duration::from_secs(3600),
            bot_login: "convoy[bot]".to_owned(),
            fail_on_drop: false,
        }
    }
}

/// What a fault does to a request it hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// 502 Bad Gateway; nothing happens.
    BadGateway,
    /// 403 secondary rate limit with `retry-after: secs`.
    SecondaryRateLimit { retry_after_secs: u64 },
    /// 403 secondary rate limit without any header.
    SecondaryRateLimitBare,
    /// 403 with `x-ratelimit-remaining: 0` and a reset `secs` ahead.
    PrimaryRateLimit { reset_in_secs: u64 },
    /// The request is processed, then answered after the delay.
    Slow(Duration),
    /// 404 Not Found; nothing happens (GitHub's answer to what the App
    /// may not see).
    NotFound,
}

/// A fault for the next `count` matching requests.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    pub count: usize,
    pub method: Option<Method>,
    /// Matches when the request path contains this.
    pub path_contains: Option<String>,
}

impl Fault {
    pub fn new(kind: FaultKind, count: usize) -> Self {
        Fault {
            kind,
            count,
            method: None,
            path_contains: None,
        }
    }

    /// Only requests with this method and a path containing `path_part`.
    pub fn on(mut self, method: Method, path_part: &str) -> Self {
        self.method = Some(method);
        self.path_contains = Some(path_part.to_owned());
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.count > 0
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

/// A request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub body: Option<Value>,
    /// The documented path template it matched, when known.
    pub route: Option<String>,
    pub status: u16,
}

/// A departure from GitHub's documented API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub method: String,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.method, self.path, self.message)
    }
}

/// A reaction on a comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactionRecord {
    pub comment_id: u64,
    pub content: String,
    pub user: String,
}

/// Everything the stand-in holds, as a snapshot for assertions. Objects are
/// the JSON GitHub would return; `*_history` keeps every version, oldest
/// first.
#[derive(Clone, Debug, Default)]
pub struct StandInState {
    pub repos: BTreeMap<String, Value>,
    pub check_runs: BTreeMap<u64, Vec<Value>>,
    /// Annotations per check run, in the order they were appended.
    pub annotations: BTreeMap<u64, Vec<Value>>,
    pub comments: BTreeMap<u64, Vec<Value>>,
    pub reactions: Vec<ReactionRecord>,
    /// Keyed by (repo full name, number).
    pub issues: BTreeMap<(String, u64), Vec<Value>>,
    pub pulls: BTreeMap<(String, u64), Value>,
    pub requests: Vec<RecordedRequest>,
    pub violations: Vec<Violation>,
    /// Claims of every JWT exchanged for a token.
    pub jwt_claims: Vec<JwtClaims>,
    /// Tokens issued, per installation.
    pub tokens_issued: BTreeMap<i64, usize>,
}

impl StandInState {
    /// Current version of a check run.
    pub fn check_run(&self, id: u64) -> Option<&Value> {
        self.check_runs.get(&id).and_then(|v| v.last())
    }

    /// Current bodies of the comments on one issue or PR, oldest first.
    pub fn comments_on(&self, repo: &str, issue: u64) -> Vec<&Value> {
        let url = format!("/repos/{repo}/issues/{issue}");
        self.comments
            .values()
            .filter_map(|v| v.last())
            .filter(|c| c["issue_url"].as_str().is_some_and(|u| u.ends_with(&url)))
            .collect()
    }

    /// Requests with this method whose path contains `part`.
    pub fn count_requests(&self, method: &Method, part: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.method == *method && r.path.contains(part))
            .count()
    }
}

#[derive(Default)]
struct Inner {
    state: StandInState,
    /// token → (installation, expires_at)
    tokens: HashMap<String, (i64, DateTime<Utc>)>,
    permissions: HashMap<(String, String), (String, String)>,
    teams: HashMap<(String, String, String), (String, String)>,
    faults: Vec<Fault>,
    next_id: u64,
    next_number: HashMap<String, u64>,
    remaining: HashMap<i64, i64>,
    checked: bool,
}

impl Inner {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

struct Shared {
    config: StandInConfig,
    addr: SocketAddr,
    inner: Mutex<Inner>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A running stand-in. Stops when dropped.
pub struct GitHubStandIn {
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl GitHubStandIn {
    /// Serves on 127.0.0.1 at a free port.
    pub async fn start(config: StandInConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            addr,
            inner: Mutex::new(Inner {
                next_id: 1000,
                ..Default::default()
            }),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = server.await {
                tracing::error!(error = %e, "GitHub stand-in stopped");
            }
        });
        Ok(GitHubStandIn {
            shared,
            shutdown: Some(tx),
        })
    }

    /// The API root to give the client (`github.api_url`).
    pub fn url(&self) -> String {
        self.shared.base()
    }

    pub fn state(&self) -> StandInState {
        self.shared.lock().state.clone()
    }

    /// Creates a repository (idempotent).
    pub fn add_repo(&self, full_name: &str, default_branch: &str) {
        let mut inner = self.shared.lock();
        let id = inner.id();
        let base = self.shared.base();
        inner
            .state
            .repos
            .entry(full_name.to_owned())
            .or_insert_with(|| repo_json(&base, id, full_name, default_branch));
    }

    fn ensure_repo(&self, full_name: &str) {
        let known = self.shared.lock().state.repos.contains_key(full_name);
        if !known {
            self.add_repo(full_name, "main");
        }
    }

    /// `permission` as GitHub reports it (admin, write, read, none) and the
    /// exact `role_name` (e.g. maintain, triage, or a custom role).
    pub fn set_permission(&self, repo: &str, user: &str, permission: &str, role_name: &str) {
        self.ensure_repo(repo);
        self.shared.lock().permissions.insert(
            (repo.to_owned(), user.to_owned()),
            (permission.to_owned(), role_name.to_owned()),
        );
    }

    /// `state` active or pending; `role` member or maintainer.
    pub fn add_team_member(&self, org: &str, team: &str, user: &str, role: &str, state: &str) {
        self.shared.lock().teams.insert(
            (org.to_owned(), team.to_owned(), user.to_owned()),
            (role.to_owned(), state.to_owned()),
        );
    }

    /// Adds a pull request (and its repository when new).
    #[allow(clippy::too_many_arguments)]
    pub fn add_pull_request(
        &self,
        repo: &str,
        number: u64,
        author: &str,
        head_sha: &str,
        head_ref: &str,
        base_ref: &str,
        merged: bool,
    ) {
        self.ensure_repo(repo);
        let base = self.shared.base();
        let mut inner = self.shared.lock();
        let id = inner.id();
        let pr = json!({
            "id": id,
            "number": number,
            "state": if merged { "closed" } else { "open" },
            "title": format!("PR {number}"),
            "user": user_json(author, false),
            "head": {"ref": head_ref, "sha": head_sha, "label": format!("{}:{head_ref}", owner_of(repo))},
            "base": {"ref": base_ref, "sha": "0".repeat(40), "label": format!("{}:{base_ref}", owner_of(repo))},
            "merged": merged,
            "merge_commit_sha": if merged { Value::String("f".repeat(40)) } else { Value::Null },
            "html_url": format!("{base}/{repo}/pull/{number}"),
            "url": format!("{base}/repos/{repo}/pulls/{number}"),
        });
        inner.state.pulls.insert((repo.to_owned(), number), pr);
        let next = inner.next_number.entry(repo.to_owned()).or_insert(1);
        *next = (*next).max(number + 1);
    }

    /// A comment written by a human (for command tests); returns its id.
    pub fn add_user_comment(&self, repo: &str, issue: u64, user: &str, body: &str) -> u64 {
        self.ensure_repo(repo);
        let base = self.shared.base();
        let mut inner = self.shared.lock();
        let id = inner.id();
        let c = comment_json(
            &base,
            repo,
            issue,
            id,
            body,
            user_json(user, false),
            Utc::now(),
        );
        inner.state.comments.insert(id, vec![c]);
        id
    }

    /// The most requests the stand-in was ever serving at once.
    pub fn max_concurrent_requests(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Sets the installation's remaining primary rate limit; the next
    /// answer reports one less.
    pub fn set_rate_limit_remaining(&self, installation: i64, remaining: i64) {
        self.shared.lock().remaining.insert(installation, remaining);
    }

    /// Queues a fault; faults apply in the order queued.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.shared.lock().state.violations.clone()
    }

    /// Takes the recorded violations (for a test that expects some) and
    /// marks them as seen.
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut self.shared.lock().state.violations)
    }

    /// Fails the test if any request broke GitHub's documented contract.
    #[track_caller]
    pub fn assert_no_violations(&self) {
        let mut inner = self.shared.lock();
        inner.checked = true;
        let v = &inner.state.violations;
        if !v.is_empty() {
            let lines: Vec<String> = v.iter().map(ToString::to_string).collect();
            let msg = format!(
                "{} request(s) broke GitHub's API contract:\n{}",
                v.len(),
                lines.join("\n")
            );
            drop(inner);
            panic!("{msg}");
        }
    }
}

impl Drop for GitHubStandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if self.shared.config.fail_on_drop && !std::thread::panicking() {
            let inner = self.shared.lock();
            if !inner.state.violations.is_empty() {
                let lines: Vec<String> = inner
                    .state
                    .violations
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let msg = format!(
                    "the GitHub stand-in recorded contract violations nobody asserted on:\n{}",
                    lines.join("\n")
                );
                drop(inner);
                panic!("{msg}");
            }
        }
    }
}

fn owner_of(repo: &str) -> &str {
    repo.split_once('/').map(|(o, _)| o).unwrap_or(repo)
}

fn user_json(login: &str, bot: bool) -> Value {
    // Stable ids from the login, so tests can compare users.
    let id = login
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
        % 1_000_000_000;
    json!({"login": login, "id": id, "type": if bot { "Bot" } else { "User" }})
}

fn repo_json(base: &str, id: u64, full_name: &str, default_branch: &str) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap_or((full_name, full_name));
    json!({
        "id": id,
        "name": name,
        "full_name": full_name,
        "owner": user_json(owner, false),
        "private": true,
        "default_branch": default_branch,
        "html_url": format!("{base}/{full_name}"),
        "url": format!("{base}/repos/{full_name}"),
    })
}

fn comment_json(
    base: &str,
    repo: &str,
    issue: u64,
    id: u64,
    body: &str,
    user: Value,
    at: DateTime<Utc>,
) -> Value {
    json!({
        "id": id,
        "body": body,
        "user": user,
        "html_url": format!("{base}/{repo}/issues/{issue}#issuecomment-{id}"),
        "url": format!("{base}/repos/{repo}/issues/comments/{id}"),
        "issue_url": format!("{base}/repos/{repo}/issues/{issue}"),
        "author_association": "NONE",
        "created_at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "updated_at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// An answer before headers are added.
struct Answer {
    status: StatusCode,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

fn answer(status: StatusCode, body: Value) -> Answer {
    Answer {
        status,
        body,
        headers: Vec::new(),
    }
}

fn not_found() -> Answer {
    answer(
        StatusCode::NOT_FOUND,
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
    )
}

fn invalid(message: String) -> Answer {
    answer(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"message": "Validation Failed", "errors": [message]}),
    )
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().map(str::to_owned);
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let (answer, delay) = process(&shared, &method, &path, query.as_deref(), &headers, &body);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = (answer.status, axum::Json(answer.body)).into_response();
    for (k, v) in answer.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// Everything but the delay, under one lock: validation, faults, auth, the
/// state change, the answer.
fn process(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    raw_body: &[u8],
) -> (Answer, Option<Duration>) {
    let mut inner = shared.lock();
    let mut violations = Vec::new();

    let body: Option<Value> = if raw_body.is_empty() {
        None
    } else {
        match serde_json::from_slice(raw_body) {
            Ok(v) => Some(v),
            Err(e) => {
                violations.push(format!("body is not JSON: {e}"));
                None
            }
        }
    };
    if body.is_some()
        && !headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    {
        violations.push("JSON body without content-type application/json".to_owned());
    }

    let mut route = None;
    if let Some(api) = shared.config.openapi {
        let (matched, problems) = api.check_request(method.as_str(), path, query, body.as_ref());
        route = matched.map(|m| m.template);
        violations.extend(problems);
    }
    violations.extend(extra_limits(path, body.as_ref()));

    let record = |inner: &mut Inner, status: StatusCode, violations: &[String]| {
        for v in violations {
            inner.state.violations.push(Violation {
                method: method.to_string(),
                path: path.to_owned(),
                message: v.clone(),
            });
        }
        inner.state.requests.push(RecordedRequest {
            method: method.clone(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            body: body.clone(),
            route: route.clone(),
            status: status.as_u16(),
        });
    };

    if !violations.is_empty() {
        let a = invalid(violations.join("; "));
        record(&mut inner, a.status, &violations);
        return (a, None);
    }

    // Faults.
    let mut delay = None;
    if let Some(fault) = inner.faults.iter_mut().find(|f| f.matches(method, path)) {
        fault.count -= 1;
        let kind = fault.kind.clone();
        let now = Utc::now().timestamp();
        let refused = match kind {
            FaultKind::BadGateway => Some(answer(
                StatusCode::BAD_GATEWAY,
                json!({"message": "Server Error"}),
            )),
            FaultKind::NotFound => Some(answer(
                StatusCode::NOT_FOUND,
                json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
            )),
            FaultKind::SecondaryRateLimit { retry_after_secs } => {
                let mut a = answer(
                    StatusCode::FORBIDDEN,
                    json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}),
                );
                a.headers
                    .push(("retry-after", retry_after_secs.to_string()));
                Some(a)
            }
            FaultKind::SecondaryRateLimitBare => Some(answer(
                StatusCode::FORBIDDEN,
                json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}),
            )),
            FaultKind::PrimaryRateLimit { reset_in_secs } => {
                let mut a = answer(
                    StatusCode::FORBIDDEN,
                    json!({"message": "API rate limit exceeded for installation."}),
                );
                a.headers.push(("x-ratelimit-remaining", "0".to_owned()));
                a.headers.push(("x-ratelimit-limit", "5000".to_owned()));
                a.headers.push((
                    "x-ratelimit-reset",
                    (now + reset_in_secs as i64).to_string(),
                ));
                Some(a)
            }
            FaultKind::Slow(d) => {
                delay = Some(d);
                None
            }
        };
        inner.faults.retain(|f| f.count > 0);
        if let Some(a) = refused {
            record(&mut inner, a.status, &[]);
            return (a, None);
        }
    }

    let base = shared.base();
    let mut a = route_request(
        shared,
        &mut inner,
        &base,
        method,
        path,
        query,
        headers,
        body.as_ref(),
    );
    if a.status == StatusCode::UNPROCESSABLE_ENTITY {
        // A semantic refusal GitHub would give (e.g. completed without a
        // conclusion) is a contract violation too.
        let msg = a.body["errors"].to_string();
        record(&mut inner, a.status, &[msg]);
    } else {
        record(&mut inner, a.status, &[]);
    }
    // Rate-limit headers, as GitHub sends on every answer.
    if let Some(inst) = token_installation(&inner, headers) {
        let remaining = inner.remaining.entry(inst).or_insert(5000);
        *remaining = (*remaining - 1).max(0);
        let r = *remaining;
        a.headers.push(("x-ratelimit-limit", "5000".to_owned()));
        a.headers.push(("x-ratelimit-remaining", r.to_string()));
        a.headers.push((
            "x-ratelimit-reset",
            (Utc::now().timestamp() + 3600).to_string(),
        ));
    }
    (a, delay)
}

/// Limits GitHub enforces that its description does not state.
fn extra_limits(path: &str, body: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(body) = body else { return out };
    if (path.contains("/comments") || path.ends_with("/issues") || path.contains("/issues/"))
        && let Some(b) = body.get("body").and_then(Value::as_str)
    {
        let n = b.chars().count();
        if n > COMMENT_MAX_CHARS {
            out.push(format!(
                "body has {n} characters, GitHub accepts at most {COMMENT_MAX_CHARS}"
            ));
        }
    }
    if path.contains("/check-runs")
        && let Some(output) = body.get("output")
    {
        for field in ["summary", "text"] {
            if let Some(s) = output.get(field).and_then(Value::as_str)
                && s.len() > OUTPUT_MAX_BYTES
            {
                out.push(format!(
                    "output.{field} has {} bytes, GitHub accepts at most {OUTPUT_MAX_BYTES}",
                    s.len()
                ));
            }
        }
    }
    out
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .or_else(|| {
            headers
                .get("authorization")?
                .to_str()
                .ok()?
                .strip_prefix("token ")
        })
}

fn token_installation(inner: &Inner, headers: &HeaderMap) -> Option<i64> {
    let token = bearer(headers)?;
    inner.tokens.get(token).map(|(inst, _)| *inst)
}

fn unauthorized(msg: &str) -> Answer {
    answer(
        StatusCode::UNAUTHORIZED,
        json!({"message": msg, "documentation_url": "https://docs.github.com/rest"}),
    )
}

fn verify_jwt(shared: &Shared, inner: &mut Inner, headers: &HeaderMap) -> Result<(), Answer> {
    let Some(jwt) = bearer(headers) else {
        return Err(unauthorized("A JSON web token could not be decoded"));
    };
    let Some(pem) = &shared.config.app_public_key_pem else {
        return Ok(());
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| unauthorized(&format!("stand-in has a bad public key: {e}")))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<JwtClaims>(jwt, &key, &validation)
        .map_err(|e| unauthorized(&format!("A JSON web token could not be decoded: {e}")))?;
    let c = data.claims;
    let now = Utc::now().timestamp();
    if c.iss != shared.config.app_id.to_string() {
        return Err(unauthorized("'Issuer' claim ('iss') must be the App's id"));
    }
    if c.iat > now + 1 {
        return Err(unauthorized(
            "'Issued at' claim ('iat') must be an Integer representing a time in the past",
        ));
    }
    if c.exp > now + 600 {
        return Err(unauthorized(
            "'Expiration time' claim ('exp') is too far in the future",
        ));
    }
    inner.state.jwt_claims.push(c);
    Ok(())
}

fn require_token(inner: &Inner, headers: &HeaderMap) -> Result<i64, Answer> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized("Requires authentication"));
    };
    match inner.tokens.get(token) {
        Some((inst, expires)) if *expires > Utc::now() => Ok(*inst),
        _ => Err(unauthorized("Bad credentials")),
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| percent_decode(k) == name)
        .map(|(_, v)| percent_decode(v))
}

fn paginate(items: Vec<Value>, query: Option<&str>) -> Value {
    let per_page = query_param(query, "per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page = query_param(query, "page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    Value::Array(
        items
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect(),
    )
}

fn now_str() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[allow(clippy::too_many_arguments)]
fn route_request(
    shared: &Shared,
    inner: &mut Inner,
    base: &str,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> Answer {
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let empty = json!({});
    let body = body.unwrap_or(&empty);

    // The token exchange: App JWT in, installation token out.
    if let (&Method::POST, ["app", "installations", inst, "access_tokens"]) = (method, s.as_slice())
    {
        if let Err(a) = verify_jwt(shared, inner, headers) {
            return a;
        }
        let Ok(inst) = inst.parse::<i64>() else {
            return not_found();
        };
        // Deliberately not 40 characters: GitHub's tokens changed length.
        let token = format!(
            "ghs_{}",
            std::iter::repeat_with(fastrand::alphanumeric)
                .take(60)
                .collect::<String>()
        );
        let ttl = chrono::Duration::from_std(shared.config.token_ttl)
            .unwrap_or(chrono::Duration::hours(1));
        let expires_at = Utc::now() + ttl;
        inner.tokens.insert(token.clone(), (inst, expires_at));
        *inner.state.tokens_issued.entry(inst).or_default() += 1;
        return answer(
            StatusCode::CREATED,
            json!({
                "token": token,
                "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "permissions": {"checks": "write", "issues": "write", "pull_requests": "write", "contents": "read"},
                "repository_selection": "all",
            }),
        );
    }

    if let Err(a) = require_token(inner, headers) {
        return a;
    }

    if let (&Method::GET, ["orgs", org, "teams", team, "memberships", user]) =
        (method, s.as_slice())
    {
        return match inner
            .teams
            .get(&(org.to_string(), team.to_string(), user.to_string()))
        {
            Some((role, state)) => answer(
                StatusCode::OK,
                json!({"role": role, "state": state, "url": format!("{base}/orgs/{org}/teams/{team}/memberships/{user}")}),
            ),
            None => not_found(),
        };
    }

    let ["repos", owner, name, rest @ ..] = s.as_slice() else {
        return not_found();
    };
    let repo = format!("{owner}/{name}");
    if !inner.state.repos.contains_key(&repo) {
        return not_found();
    }
    let bot = user_json(&shared.config.bot_login, true);

    match (method, rest) {
        (&Method::GET, []) => answer(StatusCode::OK, inner.state.repos[&repo].clone()),

        (&Method::POST, ["check-runs"]) => {
            if body.get("status").and_then(Value::as_str) == Some("completed")
                && body.get("conclusion").is_none()
            {
                return invalid("conclusion is required when status is completed".into());
            }
            let id = inner.id();
            let mut run = json!({
                "id": id,
                "name": body["name"],
                "head_sha": body["head_sha"],
                "status": body.get("status").cloned().unwrap_or(json!("queued")),
                "conclusion": Value::Null,
                "external_id": body.get("external_id").cloned().unwrap_or(Value::Null),
                "details_url": body.get("details_url").cloned().unwrap_or(Value::Null),
                "html_url": format!("{base}/{repo}/runs/{id}"),
                "url": format!("{base}/repos/{repo}/check-runs/{id}"),
                "started_at": body.get("started_at").cloned().unwrap_or(json!(now_str())),
                "completed_at": Value::Null,
                "output": {"title": Value::Null, "summary": Value::Null, "text": Value::Null, "annotations_count": 0},
                "actions": body.get("actions").cloned().unwrap_or(json!([])),
                "app": {"id": shared.config.app_id, "slug": "convoy"},
            });
            apply_check_run_changes(inner, id, &mut run, body);
            inner.state.check_runs.insert(id, vec![run.clone()]);
            answer(StatusCode::CREATED, run)
        }
        (&Method::PATCH, ["check-runs", id]) => {
            let Some(id) = id.parse::<u64>().ok() else {
                return not_found();
            };
            let Some(mut run) = inner
                .state
                .check_runs
                .get(&id)
                .and_then(|v| v.last())
                .cloned()
            else {
                return not_found();
            };
            if body.get("status").and_then(Value::as_str) == Some("completed")
                && body.get("conclusion").is_none()
                && run["conclusion"].is_null()
            {
                return invalid("conclusion is required when status is completed".into());
            }
            for k in ["name", "status", "external_id", "details_url", "actions"] {
                if let Some(v) = body.get(k) {
                    run[k] = v.clone();
                }
            }
            apply_check_run_changes(inner, id, &mut run, body);
            if let Some(history) = inner.state.check_runs.get_mut(&id) {
                history.push(run.clone());
            }
            answer(StatusCode::OK, run)
        }
        (&Method::GET, ["check-runs", id]) => {
            match id
                .parse::<u64>()
                .ok()
                .and_then(|id| inner.state.check_runs.get(&id))
                .and_then(|v| v.last())
            {
                Some(run) => answer(StatusCode::OK, run.clone()),
                None => not_found(),
            }
        }

        (&Method::GET, ["commits", git_ref, "check-runs"]) => {
            let name = query_param(query, "check_name");
            let latest = query_param(query, "filter").as_deref() != Some("all");
            let mut runs: Vec<Value> = inner
                .state
                .check_runs
                .values()
                .filter_map(|v| v.last())
                .filter(|r| r["head_sha"].as_str() == Some(git_ref))
                .filter(|r| {
                    r["url"]
                        .as_str()
                        .is_some_and(|u| u.contains(&format!("/repos/{repo}/check-runs/")))
                })
                .filter(|r| {
                    name.as_deref()
                        .is_none_or(|n| r["name"].as_str() == Some(n))
                })
                .cloned()
                .collect();
            runs.reverse(); // newest first, as GitHub lists them
            if latest {
                let mut seen = std::collections::HashSet::new();
                runs.retain(|r| seen.insert(r["name"].to_string()));
            }
            let total = runs.len();
            answer(
                StatusCode::OK,
                json!({"total_count": total, "check_runs": paginate(runs, query)}),
            )
        }

        (&Method::POST, ["issues", number, "comments"]) => {
            let Some(number) = number.parse::<u64>().ok() else {
                return not_found();
            };
            if !issue_exists(inner, &repo, number) {
                return not_found();
            }
            let id = inner.id();
            let text = body["body"].as_str().unwrap_or_default();
            let c = comment_json(base, &repo, number, id, text, bot, Utc::now());
            inner.state.comments.insert(id, vec![c.clone()]);
            answer(StatusCode::CREATED, c)
        }
        (&Method::GET, ["issues", number, "comments"]) => {
            let Some(number) = number.parse::<u64>().ok() else {
                return not_found();
            };
            if !issue_exists(inner, &repo, number) {
                return not_found();
            }
            let all: Vec<Value> = inner
                .state
                .comments_on(&repo, number)
                .into_iter()
                .cloned()
                .collect();
            answer(StatusCode::OK, paginate(all, query))
        }
        (&Method::PATCH, ["issues", "comments", id]) => {
            let Some(id) = id.parse::<u64>().ok() else {
                return not_found();
            };
            let Some(history) = inner.state.comments.get_mut(&id) else {
                return not_found();
            };
            let Some(mut c) = history.last().cloned() else {
                return not_found();
            };
            c["body"] = body["body"].clone();
            c["updated_at"] = json!(now_str());
            history.push(c.clone());
            answer(StatusCode::OK, c)
        }
        (&Method::GET, ["issues", "comments", id]) => {
            match id
                .parse::<u64>()
                .ok()
                .and_then(|id| inner.state.comments.get(&id))
                .and_then(|v| v.last())
            {
                Some(c) => answer(StatusCode::OK, c.clone()),
                None => not_found(),
            }
        }
        (&Method::POST, ["issues", "comments", id, "reactions"]) => {
            let Some(id) = id.parse::<u64>().ok() else {
                return not_found();
            };
            if !inner.state.comments.contains_key(&id) {
                return not_found();
            }
            let content = body["content"].as_str().unwrap_or_default().to_owned();
            let user = shared.config.bot_login.clone();
            let existing = inner
                .state
                .reactions
                .iter()
                .any(|r| r.comment_id == id && r.content == content && r.user == user);
            let rid = inner.id();
            let reply =
                json!({"id": rid, "content": content, "user": bot, "created_at": now_str()});
            if existing {
                answer(StatusCode::OK, reply)
            } else {
                inner.state.reactions.push(ReactionRecord {
                    comment_id: id,
                    content,
                    user,
                });
                answer(StatusCode::CREATED, reply)
            }
        }

        (&Method::GET, ["collaborators", user, "permission"]) => {
            let (permission, role) = inner
                .permissions
                .get(&(repo.clone(), user.to_string()))
                .cloned()
                .unwrap_or_else(|| ("none".to_owned(), "none".to_owned()));
            answer(
                StatusCode::OK,
                json!({"permission": permission, "role_name": role, "user": user_json(user, false)}),
            )
        }

        (&Method::GET, ["pulls", number]) => {
            match number
                .parse::<u64>()
                .ok()
                .and_then(|n| inner.state.pulls.get(&(repo.clone(), n)))
            {
                Some(pr) => answer(StatusCode::OK, pr.clone()),
                None => not_found(),
            }
        }

        (&Method::POST, ["issues"]) => {
            let number = {
                let next = inner.next_number.entry(repo.clone()).or_insert(1);
                let n = *next;
                *next += 1;
                n
            };
            let id = inner.id();
            let issue = json!({
                "id": id,
                "number": number,
                "title": body["title"],
                "body": body.get("body").cloned().unwrap_or(Value::Null),
                "state": "open",
                "labels": labels_json(body.get("labels")),
                "user": bot,
                "html_url": format!("{base}/{repo}/issues/{number}"),
                "url": format!("{base}/repos/{repo}/issues/{number}"),
                "created_at": now_str(),
                "updated_at": now_str(),
            });
            inner
                .state
                .issues
                .insert((repo.clone(), number), vec![issue.clone()]);
            answer(StatusCode::CREATED, issue)
        }
        (&Method::PATCH, ["issues", number]) => {
            let Some(number) = number.parse::<u64>().ok() else {
                return not_found();
            };
            let Some(history) = inner.state.issues.get_mut(&(repo.clone(), number)) else {
                return not_found();
            };
            let Some(mut issue) = history.last().cloned() else {
                return not_found();
            };
            for k in ["title", "body", "state"] {
                if let Some(v) = body.get(k) {
                    issue[k] = v.clone();
                }
            }
            if let Some(labels) = body.get("labels") {
                issue["labels"] = labels_json(Some(labels));
            }
            issue["updated_at"] = json!(now_str());
            history.push(issue.clone());
            answer(StatusCode::OK, issue)
        }
        (&Method::GET, ["issues", number]) => {
            match number
                .parse::<u64>()
                .ok()
                .and_then(|n| inner.state.issues.get(&(repo.clone(), n)))
                .and_then(|v| v.last())
            {
                Some(i) => answer(StatusCode::OK, i.clone()),
                None => not_found(),
            }
        }
        (&Method::GET, ["issues"]) => {
            let state = query_param(query, "state").unwrap_or_else(|| "open".to_owned());
            let wanted: Vec<String> = query_param(query, "labels")
                .map(|l| l.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            let list: Vec<Value> = inner
                .state
                .issues
                .iter()
                .filter(|((r, _), _)| r == &repo)
                .filter_map(|(_, v)| v.last())
                .filter(|i| state == "all" || i["state"].as_str() == Some(state.as_str()))
                .filter(|i| {
                    wanted.iter().all(|w| {
                        i["labels"]
                            .as_array()
                            .is_some_and(|ls| ls.iter().any(|l| l["name"].as_str() == Some(w)))
                    })
                })
                .cloned()
                .collect();
            answer(StatusCode::OK, paginate(list, query))
        }

        _ => not_found(),
    }
}

fn issue_exists(inner: &Inner, repo: &str, number: u64) -> bool {
    inner.state.pulls.contains_key(&(repo.to_owned(), number))
        || inner.state.issues.contains_key(&(repo.to_owned(), number))
}

fn labels_json(labels: Option<&Value>) -> Value {
    let names: Vec<Value> = labels
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .filter_map(|l| {
                    l.as_str()
                        .map(str::to_owned)
                        .or_else(|| l["name"].as_str().map(str::to_owned))
                })
                .map(|name| json!({"name": name}))
                .collect()
        })
        .unwrap_or_default();
    Value::Array(names)
}

/// Conclusion, completion and output (annotations are appended, as GitHub
/// does).
fn apply_check_run_changes(inner: &mut Inner, id: u64, run: &mut Value, body: &Value) {
    if let Some(c) = body.get("conclusion") {
        run["conclusion"] = c.clone();
        run["status"] = json!("completed");
        run["completed_at"] = body
            .get("completed_at")
            .cloned()
            .unwrap_or_else(|| json!(now_str()));
    }
    if let Some(output) = body.get("output") {
        for k in ["title", "summary", "text"] {
            if let Some(v) = output.get(k) {
                run["output"][k] = v.clone();
            }
        }
        if let Some(new) = output.get("annotations").and_then(Value::as_array) {
            let list = inner.state.annotations.entry(id).or_default();
            list.extend(new.iter().cloned());
            run["output"]["annotations_count"] = json!(list.len());
        }
    }
}

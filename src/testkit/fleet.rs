//! A simulated fleet of convoy agents (SPEC 4.1) on 127.0.0.1, with knobs per
//! environment, for tests, benchmarks and `convoy demo`.
//!
//! One listener serves every environment under a path prefix: the base URL
//! of environment `acme` is `http://127.0.0.1:PORT/env/acme`, so thousands of
//! environments cost one socket. An *unreachable* environment gets a base
//! URL on a port nothing listens on, so connections are refused like a dead
//! host's would be.
//!
//! Every deploy is recorded with the time it was received and the time it
//! completed (the agent answered and the new version was in place), so a
//! test can assert that no two deploys to the same (environment, service)
//! overlapped, and how many ran at once.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// How one environment's agent behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentKnobs {
    /// Share of deploys answered 503 (drawn from the fleet's seeded RNG).
    pub transient_failure_rate: f64,
    /// Every deploy answered 422.
    pub permanent_failure: bool,
    /// How long a deploy takes before the new version runs.
    pub deploy_duration: Duration,
    /// After the new version runs, how long it reports unhealthy.
    pub healthy_after: Duration,
    /// Always reports unhealthy.
    pub unhealthy: bool,
    /// Connections are refused (the base URL points at a closed port).
    pub unreachable: bool,
    /// Delay before every answer.
    pub latency: Duration,
    /// The agent's own preflight: `None` answers 404 (no preflight).
    pub preflight: Option<(bool, String)>,
}

impl Default for AgentKnobs {
    fn default() -> Self {
        AgentKnobs {
            transient_failure_rate: 0.0,
            permanent_failure: false,
            deploy_duration: Duration::ZERO,
            healthy_after: Duration::ZERO,
            unhealthy: false,
            unreachable: false,
            latency: Duration::ZERO,
            preflight: None,
        }
    }
}

/// One deploy the fleet accepted (or refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeployRecord {
    pub environment: String,
    pub service: String,
    pub version: String,
    pub rollout: String,
    pub attempt: u32,
    /// HTTP status answered.
    pub status: u16,
    /// A repeat of the version already running or being deployed (no-op).
    pub repeat: bool,
    /// Since the fleet started.
    pub received: Duration,
    /// When the answer was sent and, for an accepted deploy, the version was
    /// in place (whichever is later).
    pub completed: Duration,
}

/// One request as the fleet saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub environment: String,
    pub method: &'static str,
    pub path: &'static str,
    /// Headers as received (this is a test double: values are kept so
    /// tests can check what the driver sent).
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default)]
struct ServiceState {
    version: Option<String>,
    /// A deploy in progress: the version and when it is in place.
    pending: Option<(String, Duration)>,
    /// When the running version turns healthy.
    healthy_from: Duration,
}

#[derive(Debug, Default)]
struct EnvState {
    knobs: AgentKnobs,
    services: HashMap<String, ServiceState>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    rng: fastrand::Rng,
    envs: HashMap<String, EnvState>,
    deploys: Vec<DeployRecord>,
    requests: Vec<RequestRecord>,
    in_flight: usize,
    peak_in_flight: usize,
}

impl Inner {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Moves finished deploys into place.
    fn settle(&mut self, env: &str, service: &str) -> Option<&mut ServiceState> {
        let now = self.now();
        let e = self.envs.get_mut(env)?;
        let healthy_after = e.knobs.healthy_after;
        let s = e.services.entry(service.to_string()).or_default();
        if let Some((v, ready)) = s.pending.clone()
            && now >= ready
        {
            s.version = Some(v);
            s.pending = None;
            s.healthy_from = ready + healthy_after;
        }
        Some(s)
    }
}

/// The running fleet. Dropping it stops the server.
pub struct Fleet {
    addr: SocketAddr,
    dead_addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Deserialize)]
struct DeployBody {
    rollout: String,
    environment: String,
    service: String,
    version: String,
    attempt: u32,
}

#[derive(Deserialize)]
struct ServiceQuery {
    service: Option<String>,
    version: Option<String>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panicking test thread must not wedge every other request.
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn headers_of(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

impl Fleet {
    /// Starts a fleet with these environments, all well-behaved; `seed`
    /// drives the transient failures.
    pub async fn start<I, S>(environments: I, seed: u64) -> std::io::Result<Fleet>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // A port that was just free and is closed again: connections to it
        // are refused.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")?;
        let dead_addr = dead.local_addr()?;
        drop(dead);
        let inner = Arc::new(Mutex::new(Inner {
            started: Instant::now(),
            rng: fastrand::Rng::with_seed(seed),
            envs: environments
                .into_iter()
                .map(|e| (e.into(), EnvState::default()))
                .collect(),
            deploys: Vec::new(),
            requests: Vec::new(),
            in_flight: 0,
            peak_in_flight: 0,
        }));
        let app = Router::new()
            .route("/env/{env}/deploy", post(deploy))
            .route("/env/{env}/status", get(status))
            .route("/env/{env}/preflight", get(preflight))
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Fleet {
            addr,
            dead_addr,
            inner,
            server,
        })
    }

    /// The base URL of an environment (its `url:` in `convoy.yml`).
    pub fn url(&self, env: &str) -> String {
        let unreachable = lock(&self.inner)
            .envs
            .get(env)
            .is_some_and(|e| e.knobs.unreachable);
        let addr = if unreachable {
            self.dead_addr
        } else {
            self.addr
        };
        format!("http://{addr}/env/{env}")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds an environment (or resets its knobs).
    pub fn add(&self, env: &str) {
        lock(&self.inner)
            .envs
            .insert(env.to_string(), EnvState::default());
    }

    pub fn set_knobs(&self, env: &str, knobs: AgentKnobs) {
        lock(&self.inner)
            .envs
            .entry(env.to_string())
            .or_default()
            .knobs = knobs;
    }

    pub fn update_knobs(&self, env: &str, f: impl FnOnce(&mut AgentKnobs)) {
        f(&mut lock(&self.inner)
            .envs
            .entry(env.to_string())
            .or_default()
            .knobs);
    }

    /// An out-of-band change: the agent now runs `version` (drift).
    pub fn set_version(&self, env: &str, service: &str, version: Option<&str>) {
        let mut inner = lock(&self.inner);
        let now = inner.now();
        let s = inner
            .envs
            .entry(env.to_string())
            .or_default()
            .services
            .entry(service.to_string())
            .or_default();
        s.version = version.map(str::to_string);
        s.pending = None;
        s.healthy_from = now;
    }

    /// What the agent would answer to `GET /status` now.
    pub fn version_of(&self, env: &str, service: &str) -> Option<String> {
        let mut inner = lock(&self.inner);
        inner.settle(env, service).and_then(|s| s.version.clone())
    }

    pub fn deploys(&self) -> Vec<DeployRecord> {
        lock(&self.inner).deploys.clone()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.inner).requests.clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.inner).requests.len()
    }

    /// The most requests the fleet was handling at once.
    pub fn peak_concurrent_requests(&self) -> usize {
        lock(&self.inner).peak_in_flight
    }

    /// Pairs of accepted, non-repeat deploys to the same (environment,
    /// service) whose [received, completed] intervals overlap. Empty when
    /// convoy kept its promise (SPEC 6.5).
    pub fn overlapping_deploys(&self) -> Vec<(DeployRecord, DeployRecord)> {
        let deploys = self.deploys();
        let mut by_step: HashMap<(&str, &str), Vec<&DeployRecord>> = HashMap::new();
        for d in deploys.iter().filter(|d| d.status < 300 && !d.repeat) {
            by_step
                .entry((d.environment.as_str(), d.service.as_str()))
                .or_default()
                .push(d);
        }
        let mut out = Vec::new();
        for list in by_step.values_mut() {
            list.sort_by_key(|d| d.received);
            for pair in list.windows(2) {
                if pair[1].received < pair[0].completed {
                    out.push((pair[0].clone(), pair[1].clone()));
                }
            }
        }
        out
    }

    /// The most accepted deploys in progress at once, over the whole fleet.
    pub fn peak_concurrent_deploys(&self) -> usize {
        let deploys = self.deploys();
        let mut edges: Vec<(Duration, i32)> = deploys
            .iter()
            .filter(|d| d.status < 300 && !d.repeat)
            .flat_map(|d| [(d.received, 1), (d.completed, -1)])
            .collect();
        // Ends before starts at the same instant: touching is not overlap.
        edges.sort();
        let (mut cur, mut peak) = (0i32, 0i32);
        for (_, delta) in edges {
            cur += delta;
            peak = peak.max(cur);
        }
        peak.max(0) as usize
    }
}

struct InFlight(Arc<Mutex<Inner>>);

impl InFlight {
    fn enter(inner: &Arc<Mutex<Inner>>) -> InFlight {
        let mut g = lock(inner);
        g.in_flight += 1;
        g.peak_in_flight = g.peak_in_flight.max(g.in_flight);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
    }
}

fn not_found(env: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no environment `{env}` in this fleet"),
    )
        .into_response()
}

async fn deploy(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: Result<Json<DeployBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let _guard = InFlight::enter(&inner);
    let latency = {
        let mut g = lock(&inner);
        g.requests.push(RequestRecord {
            environment: env.clone(),
            method: "POST",
            path: "deploy",
            headers: headers_of(&headers),
        });
        match g.envs.get(&env) {
            Some(e) => e.knobs.latency,
            None => return not_found(&env),
        }
    };
    let received = lock(&inner).now();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Ok(Json(body)) = body else {
        return (StatusCode::BAD_REQUEST, "invalid deploy body").into_response();
    };
    let mut g = lock(&inner);
    let now = g.now();
    let knobs = g
        .envs
        .get(&env)
        .map(|e| e.knobs.clone())
        .unwrap_or_default();
    let (status, repeat) = if body.environment != env {
        (StatusCode::BAD_REQUEST, false)
    } else if knobs.permanent_failure {
        (StatusCode::UNPROCESSABLE_ENTITY, false)
    } else if knobs.transient_failure_rate > 0.0 && g.rng.f64() < knobs.transient_failure_rate {
        (StatusCode::SERVICE_UNAVAILABLE, false)
    } else {
        let ready = now + knobs.deploy_duration;
        let Some(s) = g.settle(&env, &body.service) else {
            return not_found(&env);
        };
        let repeat = s.pending.as_ref().is_some_and(|(v, _)| *v == body.version)
            || (s.pending.is_none() && s.version.as_deref() == Some(body.version.as_str()));
        if !repeat {
            s.pending = Some((body.version.clone(), ready));
            if knobs.deploy_duration.is_zero() {
                s.version = Some(body.version.clone());
                s.pending = None;
                s.healthy_from = ready + knobs.healthy_after;
            }
        }
        (StatusCode::ACCEPTED, repeat)
    };
    let completed = if status == StatusCode::ACCEPTED && !repeat {
        now + knobs.deploy_duration
    } else {
        now
    };
    g.deploys.push(DeployRecord {
        environment: env,
        service: body.service,
        version: body.version,
        rollout: body.rollout,
        attempt: body.attempt,
        status: status.as_u16(),
        repeat,
        received,
        completed,
    });
    let text = match status {
        StatusCode::ACCEPTED => "accepted",
        StatusCode::UNPROCESSABLE_ENTITY => "this agent refuses every deploy",
        StatusCode::SERVICE_UNAVAILABLE => "busy, try again",
        _ => "environment mismatch",
    };
    (status, text).into_response()
}

#[derive(Serialize)]
struct StatusBody {
    service: String,
    version: Option<String>,
    healthy: bool,
    message: String,
}

async fn status(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ServiceQuery>,
) -> Response {
    let _guard = InFlight::enter(&inner);
    let latency = {
        let mut g = lock(&inner);
        g.requests.push(RequestRecord {
            environment: env.clone(),
            method: "GET",
            path: "status",
            headers: headers_of(&headers),
        });
        match g.envs.get(&env) {
            Some(e) => e.knobs.latency,
            None => return not_found(&env),
        }
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Some(service) = q.service else {
        return (StatusCode::BAD_REQUEST, "service is required").into_response();
    };
    let mut g = lock(&inner);
    let now = g.now();
    let unhealthy = g.envs.get(&env).is_some_and(|e| e.knobs.unhealthy);
    let Some(s) = g.settle(&env, &service) else {
        return not_found(&env);
    };
    let healthy = !unhealthy && s.version.is_some() && now >= s.healthy_from;
    let message = if unhealthy {
        "health check failing".to_string()
    } else if s.pending.is_some() {
        "deploying".to_string()
    } else if !healthy && s.version.is_some() {
        "starting".to_string()
    } else {
        "ok".to_string()
    };
    let body = StatusBody {
        service,
        version: s.version.clone(),
        healthy,
        message,
    };
    Json(body).into_response()
}

#[derive(Serialize)]
struct PreflightBody {
    ok: bool,
    reason: String,
}

async fn preflight(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ServiceQuery>,
) -> Response {
    let _guard = InFlight::enter(&inner);
    let (latency, answer) = {
        let mut g = lock(&inner);
        g.requests.push(RequestRecord {
            environment: env.clone(),
            method: "GET",
            path: "preflight",
            headers: headers_of(&headers),
        });
        match g.envs.get(&env) {
            Some(e) => (e.knobs.latency, e.knobs.preflight.clone()),
            None => return not_found(&env),
        }
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if q.service.is_none() || q.version.is_none() {
        return (StatusCode::BAD_REQUEST, "service and version are required").into_response();
    }
    match answer {
        None => (StatusCode::NOT_FOUND, "no preflight").into_response(),
        Some((ok, reason)) => Json(PreflightBody { ok, reason }).into_response(),
    }
}

//! HTTP routes: the webhook intake, health, metrics, pages and the JSON API.

pub mod api;
pub mod pages;
pub mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::runtime::intake::InboxWriter;
use crate::store::Store;

/// What every handler may use. axum clones the state for every request
/// (more than once): behind one `Arc` that is one count, not one for each
/// part and a copy of the replica's name.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`].
pub struct Shared {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub writer: InboxWriter,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhook", post(webhook::receive))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(pages::index))
        .route("/rollouts/{id}", get(pages::rollout))
        .route("/api/rollouts", get(api::rollouts))
        .route("/api/rollouts/{id}", get(api::rollout))
        .route("/api/drift", get(api::drift))
        // The extractor enforces 25 MiB itself and answers 413; axum's
        // default 2 MB limit would refuse large real payloads first.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "database does not answer".to_owned(),
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(counts) = state.store.inbox_counts().await {
        state.metrics.inbox_pending.set(counts.pending as i64);
        state.metrics.inbox_failed.set(counts.failed as i64);
    }
    if let Ok(suspended) = state.store.suspended_installations().await {
        state
            .metrics
            .installations_suspended
            .set(suspended.len() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            // What `prometheus_client` writes (`# EOF`, `_total`
            // samples of a counter family): said as such, Prometheus keeps
            // the metric types.
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

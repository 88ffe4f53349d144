//! The JSON API (SPEC 5 and 8): one rollout, and a repository's rollouts.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::domain::{RepoName, RolloutId};
use crate::engine::{self, Rollout};
use crate::store::{AuditEntry, RolloutRecord};

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// SPEC 8's document for a stored rollout: the engine's view with the
/// store's fields around it, plus the audit log.
pub fn rollout_json(record: &RolloutRecord, audit: &[AuditEntry]) -> Value {
    let mut doc = match record
        .document
        .as_deref()
        .and_then(|d| serde_json::from_str::<Rollout>(d).ok())
    {
        Some(rollout) => serde_json::to_value(engine::view(&rollout)).unwrap_or(Value::Null),
        None => json!({
            "commit": record.commit,
            "previous_commit": record.previous_commit,
            "state": record.state,
            "risk": null,
            "waves": [],
        }),
    };
    if let Value::Object(map) = &mut doc {
        map.insert("id".into(), json!(record.id));
        map.insert("repo".into(), json!(record.repo));
        map.insert("branch".into(), json!(record.branch));
        map.insert("kind".into(), json!(record.kind));
        map.insert("parent".into(), json!(record.parent));
        map.insert("pull_request".into(), json!(record.pull_request));
        map.insert("created_at".into(), json!(record.created_at));
        map.insert("updated_at".into(), json!(record.updated_at));
        map.insert("error".into(), json!(record.error));
        map.insert("audit".into(), json!(audit));
    }
    doc
}

pub async fn rollout(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let id = RolloutId::new(id);
    let record = match state.store.rollout(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no rollout {id}")),
        Err(e) => {
            tracing::error!(error = %e, "reading a rollout failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer",
            );
        }
    };
    let audit = state.store.audit_for_rollout(&id).await.unwrap_or_default();
    Json(rollout_json(&record, &audit)).into_response()
}

#[derive(Deserialize)]
pub struct ListQuery {
    repo: Option<String>,
    limit: Option<u32>,
}

pub async fn rollouts(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let repo = q.repo.map(RepoName::new);
    if repo.as_ref().is_some_and(|r| r.split().is_none()) {
        return error(StatusCode::BAD_REQUEST, "repo must be owner/name");
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match state.store.list_rollouts(repo.as_ref(), limit).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "listing rollouts failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer",
            )
        }
    }
}

#[derive(Deserialize)]
pub struct DriftQuery {
    repo: Option<String>,
    /// `false`: only open records.
    resolved: Option<bool>,
    limit: Option<u32>,
}

/// `GET /api/drift?repo=owner/name`: the repository's drift records (SPEC
/// 6.6), open ones first, then resolved ones, newest first.
pub async fn drift(State(state): State<AppState>, Query(q): Query<DriftQuery>) -> Response {
    let Some(repo) = q.repo.filter(|r| !r.is_empty()).map(RepoName::new) else {
        return error(
            StatusCode::BAD_REQUEST,
            "repo is required: /api/drift?repo=owner/name",
        );
    };
    if repo.split().is_none() {
        return error(StatusCode::BAD_REQUEST, "repo must be owner/name");
    }
    let limit = q.limit.unwrap_or(500).clamp(1, 10_000);
    match state
        .store
        .drift_records(&repo, q.resolved.unwrap_or(true), limit)
        .await
    {
        Ok(list) => Json(list).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading drift records failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer",
            )
        }
    }
}

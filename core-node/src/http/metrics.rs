//! Operational endpoints: `/metrics` (Prometheus text format) and `/health`.

use super::Api;
use crate::storage::StorageHealth;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

/// The text exposition format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    // Rendering walks in-memory counters only: cheap enough for the runtime thread.
    (
        [(header::CONTENT_TYPE, TEXT_FORMAT)],
        api.state.metrics.render(),
    )
}

/// 200 `ok` while storage takes writes; 503 with the reason while it is read-only (disk
/// almost full) or failed (see `storage::health`). Queries are answered either way.
pub(crate) async fn health(State(api): State<Api>) -> (StatusCode, String) {
    let state = api.state.ingest.as_ref().map(|s| s.health());
    match state {
        Some(StorageHealth::ReadOnly { reason }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage read-only: {reason}\n"),
        ),
        Some(StorageHealth::Failed { reason }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage failed: {reason}\n"),
        ),
        Some(StorageHealth::Healthy) | None => (StatusCode::OK, "ok".to_owned()),
    }
}

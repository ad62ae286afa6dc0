//! Operational endpoints: `/metrics` (Prometheus text format) and `/health` (liveness).

use super::Api;
use axum::extract::State;
use axum::http::header;
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

/// 200 `ok` while the process serves HTTP; it says nothing about storage or ingest.
pub(crate) async fn health() -> &'static str {
    "ok"
}

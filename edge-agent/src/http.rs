//! `GET /metrics` (Prometheus text format) and `GET /health`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

/// What `/health` reports: 200 `ok` while ready (the broker accepts MQTT connections and the
/// buffer takes writes), 503 otherwise; a recorded failure wins and names its reason.
#[derive(Debug, Default)]
pub(crate) struct Health {
    ready: AtomicBool,
    failure: OnceLock<String>,
}

impl Health {
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Records why the agent is unhealthy; the first reason stays.
    pub(crate) fn fail(&self, reason: String) {
        let _ = self.failure.set(reason);
    }
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
}

/// Serves until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(health_check))
        .with_state(AppState { metrics, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn health_check(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(reason) = state.health.failure.get() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}"),
        )
    } else if state.health.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready".to_owned())
    }
}

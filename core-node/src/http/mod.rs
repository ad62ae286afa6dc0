//! The Prometheus-compatible HTTP API, ingest over Prometheus remote_write and InfluxDB line
//! protocol, `/metrics` and `/health`.
//!
//! Routes (Prometheus' and InfluxDB's semantics; see `docs/query-api.md` for what differs):
//!
//! | route | methods | file |
//! |---|---|---|
//! | `/api/v1/query` | GET, POST | `query.rs` |
//! | `/api/v1/query_range` | GET, POST | `query.rs` |
//! | `/api/v1/labels` | GET, POST | `labels.rs` |
//! | `/api/v1/label/{name}/values` | GET | `labels.rs` |
//! | `/api/v1/series` | GET, POST | `series.rs` |
//! | `/api/v1/status/buildinfo` | GET | `status.rs` |
//! | `/api/v1/metadata` | GET | `status.rs` |
//! | `/api/v1/query_exemplars` | GET, POST | `status.rs` |
//! | `/api/v1/write` | POST | `remote_write.rs`: Prometheus remote_write 1.0 |
//! | `/write` | POST | `influx.rs`: InfluxDB 1.x line protocol (`precision`) |
//! | `/api/v2/write` | POST | `influx.rs`: InfluxDB 2.x line protocol (`precision`) |
//! | `/metrics` | GET | `metrics.rs` |
//! | `/health` | GET | `metrics.rs` |
//! | `/api/v1/admin/tokens` | GET, POST | `admin.rs` |
//! | `/api/v1/admin/tokens/{id}` | DELETE | `admin.rs` |
//! | `/api/v1/admin/tenant`, `/api/v1/admin/config` | GET | `admin.rs` |
//! | `/api/v1/admin/cluster` | GET | `cluster.rs`: nodes, groups, leaders, applied indexes |
//! | `/api/v1/admin/cluster/init` | POST | `cluster.rs`: create the cluster |
//! | `/api/v1/admin/cluster/checksums` | GET | `cluster.rs`: per-group content checksums |
//!
//! Every route but `/health` needs a token (`auth.rs`: the middleware, the route → role
//! table, 401/403); the token's tenant is the only tenant a request reads or writes.
//! `serve.rs` is the accept loop with header and body read timeouts; `rate_limit.rs` the
//! per-tenant ingest rate limit.
//!
//! Beside the handlers: `params` reads and parses parameters, `encode` writes Prometheus'
//! exact JSON, `response` and `error` are the success and error envelopes; `ingest` is what
//! the write routes share (bounded bodies, batches of [`protocols::wire::AgentId::UNTRACKED`]
//! submitted to storage and awaited until durable, per-protocol error bodies, counters).
//!
//! Every response is counted in `updraft_core_http_requests_total{handler,code}`, `handler`
//! being the route pattern (never the raw path, to keep the label bounded). Request bodies
//! are capped at [`MAX_BODY_BYTES`], write bodies at [`ingest::MAX_WRITE_BODY_BYTES`] (and
//! [`ingest::MAX_DECODED_BYTES`] decompressed), with at most
//! [`ingest::MAX_CONCURRENT_WRITES`] writes decoding at once. Storage is synchronous: every call into the data source
//! runs on tokio's blocking pool, so a slow disk never stalls the runtime, and at most
//! [`MAX_CONCURRENT_READS`] run at once.

mod admin;
mod auth;
#[cfg(test)]
mod auth_tests;
mod cluster;
mod encode;
mod error;
mod influx;
pub mod ingest;
#[cfg(test)]
mod ingest_tests;
mod labels;
mod metrics;
mod params;
mod query;
mod rate_limit;
mod remote_write;
mod response;
mod series;
pub mod serve;
mod status;
#[cfg(test)]
mod tests;

pub use admin::Settings;
pub use error::{ApiError, ErrorType};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Largest accepted request body; a form-encoded query is a few KiB at most.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Counter of responses, by route and status code.
const HTTP_REQUESTS: &str = "updraft_core_http_requests_total";

/// What every HTTP handler can reach.
#[derive(Clone)]
pub struct HttpState {
    /// Stored series, read through the query engine's trait.
    pub source: Arc<dyn ::query::DataSource>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Tokens: who may call, for which tenant (and the development-mode tenant, if any).
    pub auth: Arc<crate::auth::Authenticator>,
    /// Where the write routes submit batches; `None` serves a read-only API (writes answer
    /// 503).
    pub ingest: Option<crate::storage::Storage>,
    /// A clustered node: writes go through its shard groups (`None`: a single node).
    pub cluster: Option<Arc<crate::cluster::node::ClusterNode>>,
    /// Samples per second one tenant may write over HTTP; `None`: no limit.
    pub ingest_rate_limit: Option<f64>,
    /// What `GET /api/v1/admin/tenant` and `/api/v1/admin/config` report.
    pub settings: Arc<Settings>,
    /// Answers `query_range` from cached extents (kept current by storage's writer); `None`
    /// evaluates every range query in full.
    pub range_cache: Option<Arc<crate::cache::RangeCache>>,
}

/// Most storage reads (queries, label and series lookups) running at once: Prometheus'
/// `--query.max-concurrency` default. Each holds a blocking-pool thread and its samples.
pub const MAX_CONCURRENT_READS: usize = 20;

/// The handlers' state: the shared state, the query engine, the read and write slots.
#[derive(Clone)]
struct Api {
    state: HttpState,
    engine: ::query::Engine,
    read_slots: Arc<Semaphore>,
    write_slots: Arc<Semaphore>,
    rate_limit: Option<Arc<rate_limit::IngestRateLimit>>,
}

/// All routes of the core's HTTP listener.
pub fn router(state: HttpState) -> axum::Router {
    let rate_limit = state
        .ingest_rate_limit
        .filter(|r| *r > 0.0)
        .map(|r| Arc::new(rate_limit::IngestRateLimit::new(r)));
    ingest::register_metrics();
    let api = Api {
        state,
        rate_limit,
        engine: ::query::Engine::default(),
        read_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)),
        write_slots: Arc::new(Semaphore::new(ingest::MAX_CONCURRENT_WRITES)),
    };
    axum::Router::new()
        .route("/api/v1/query", get(query::instant).post(query::instant))
        .route("/api/v1/query_range", get(query::range).post(query::range))
        .route("/api/v1/labels", get(labels::names).post(labels::names))
        .route("/api/v1/label/{name}/values", get(labels::values))
        .route("/api/v1/series", get(series::series).post(series::series))
        .route("/api/v1/status/buildinfo", get(status::buildinfo))
        .route("/api/v1/metadata", get(status::metadata))
        .route(
            "/api/v1/query_exemplars",
            get(status::exemplars).post(status::exemplars),
        )
        // The write routes read their bodies themselves, under their own larger limit.
        .route("/api/v1/write", post(remote_write::write))
        .route("/write", post(influx::write_v1))
        .route("/api/v2/write", post(influx::write_v2))
        .route("/metrics", get(metrics::metrics))
        .route("/health", get(metrics::health))
        .route("/api/v1/admin/tokens", get(admin::list).post(admin::create))
        .route("/api/v1/admin/tokens/{id}", delete(admin::revoke))
        .route("/api/v1/admin/tenant", get(admin::tenant))
        .route("/api/v1/admin/config", get(admin::config))
        .route("/api/v1/admin/cluster", get(cluster::status))
        .route("/api/v1/admin/cluster/init", post(cluster::init))
        .route("/api/v1/admin/cluster/checksums", get(cluster::checksums))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn(count_requests))
        .with_state(api)
}

async fn count_requests(req: Request, next: Next) -> Response {
    let handler = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    ::metrics::counter!(
        HTTP_REQUESTS,
        "handler" => handler,
        "code" => response.status().as_str().to_owned()
    )
    .increment(1);
    response
}

impl Api {
    /// Runs `f` (which calls into storage) on the blocking pool, at most
    /// [`MAX_CONCURRENT_READS`] at a time; further requests wait for a slot.
    async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.read_slots)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("read slots closed"))?;
        tokio::task::spawn_blocking(move || {
            // Held by the task, not the request: a client that hangs up does not free the
            // slot of a read that is still running.
            let _permit = permit;
            f()
        })
        .await
        .unwrap_or_else(|e| {
            // A panic in the engine or the storage: answer 500, keep serving.
            Err(ApiError::internal(format!("query task failed: {e}")))
        })
    }
}

//! Endpoints that Grafana and other Prometheus clients call for discovery, answered with what
//! Updraft has: `/api/v1/status/buildinfo`, `/api/v1/metadata` (none stored yet: empty) and
//! `/api/v1/query_exemplars` (no exemplars: empty).

use super::response::Success;

/// Prometheus version whose API and PromQL semantics this node follows. Grafana enables
/// features by this number; the node's own version is in `revision`.
const PROMETHEUS_COMPATIBLE_VERSION: &str = "3.0.0";

pub(crate) async fn buildinfo() -> Success {
    Success::new(format!(
        r#"{{"version":"{PROMETHEUS_COMPATIBLE_VERSION}","revision":"updraft-{}","branch":"","buildUser":"","buildDate":"","goVersion":"","application":"updraft"}}"#,
        env!("CARGO_PKG_VERSION")
    ))
}

/// Metric metadata (type, help, unit) is not stored yet.
pub(crate) async fn metadata() -> Success {
    Success::new("{}".to_owned())
}

/// Exemplars are not stored.
pub(crate) async fn exemplars() -> Success {
    Success::new("[]".to_owned())
}

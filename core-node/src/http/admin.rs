//! The admin API (role `admin`): the tokens of the caller's tenant.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/v1/admin/tokens` | 200, `data`: `[{"id","tenant","role","created","description","expires"}]` (`expires`: RFC 3339, or `null` for never) |
//! | `POST /api/v1/admin/tokens` with `{"role":"read","tenant":"acme","description":"…","expires_in":"30d"}` (`tenant`, `description` and the expiry optional; `expires_at` with an RFC 3339 time instead of `expires_in`) | 201, `data`: the token's fields plus `"token"`, shown this once |
//! | `DELETE /api/v1/admin/tokens/{id}` | 200, `data`: the revoked token's fields; 404 for an unknown id or another tenant's token |
//! | `GET /api/v1/admin/tenant` | 200, `data`: `{"tenant","series","tokens","limits":{…},"retention"}`: the caller's tenant, its series and tokens, and the limits and retention that apply to it |
//! | `GET /api/v1/admin/config` | 200, `data`: the node's effective configuration, without secrets or file paths (see [`Settings`]) |
//!
//! An admin token manages its own tenant's tokens only: asking for another tenant is 403.
//! On a clustered node, tokens live in the cluster's metadata group (see `cluster::tokens`):
//! created or revoked through any node, for every node.
//! The tenant and configuration views are read-only (limits and retention are set by the
//! node's flags or file), and name no other tenant: the retention shown is the caller's.
//! The change goes to the data directory's token store (see [`crate::auth::store`]), where
//! the `core-node tokens` command sees it, and applies at once on this node. Every change is
//! written to the `audit` log target.

use super::Api;
use super::auth::Caller;
use super::error::ApiError;
use super::response::json_response;
use crate::auth::{Role, TokenId, TokenInfo};
use crate::storage::{Limits, Retention};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocols::Tenant;
use serde::Deserialize;

/// What the admin API shows of the node's settings. `node` holds only tenant-neutral,
/// secret-free values (listeners, durability, TLS and encryption on or off, request limits);
/// limits and retention are kept whole so each tenant sees the ones that apply to it.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub limits: Limits,
    pub retention: Retention,
    pub node: serde_json::Map<String, serde_json::Value>,
}

/// `30d`-style text of a retention, `"forever"` for none.
fn retention_text(keep: Option<std::time::Duration>) -> String {
    match keep {
        None => "forever".to_owned(),
        Some(d) => {
            let s = d.as_secs();
            match (s % 86_400, s % 3_600, s % 60) {
                (0, _, _) => format!("{}d", s / 86_400),
                (_, 0, _) => format!("{}h", s / 3_600),
                (_, _, 0) => format!("{}m", s / 60),
                _ => format!("{s}s"),
            }
        }
    }
}

fn limits_json(api: &Api) -> serde_json::Value {
    let l = &api.state.settings.limits;
    serde_json::json!({
        "max_series_per_tenant": l.max_series_per_tenant,
        "max_labels_per_series": l.max_labels_per_series,
        "max_label_name_bytes": l.max_label_name_bytes,
        "max_label_value_bytes": l.max_label_value_bytes,
        "ingest_rate_limit": api.state.ingest_rate_limit.filter(|r| *r > 0.0),
    })
}

pub(crate) async fn tenant(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let tenant = caller.tenant();
    let series = api.state.ingest.as_ref().map(|s| s.tenant_series(tenant));
    success(
        StatusCode::OK,
        serde_json::json!({
            "tenant": tenant.as_str(),
            "series": series,
            "tokens": api.state.auth.list(Some(tenant)).len(),
            "limits": limits_json(&api),
            "retention": retention_text(api.state.settings.retention.of(tenant)),
        }),
    )
}

pub(crate) async fn config(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let mut data = api.state.settings.node.clone();
    data.insert("limits".into(), limits_json(&api));
    data.insert(
        "retention".into(),
        retention_text(api.state.settings.retention.of(caller.tenant())).into(),
    );
    success(StatusCode::OK, serde_json::Value::Object(data))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    role: Role,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    description: String,
    /// A lifetime: `30d`, `12h`, `45m`, `90s`.
    #[serde(default)]
    expires_in: Option<String>,
    /// An RFC 3339 time.
    #[serde(default)]
    expires_at: Option<String>,
}

fn info_json(info: &TokenInfo) -> serde_json::Value {
    let created = chrono::DateTime::from_timestamp_millis(info.created_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let expires = info
        .expires_ms
        .map(|_| crate::auth::format_expiry(info.expires_ms));
    serde_json::json!({
        "id": info.id,
        "tenant": info.tenant,
        "role": info.role,
        "created": created,
        "description": info.description,
        "expires": expires,
    })
}

fn success(status: StatusCode, data: serde_json::Value) -> Response {
    json_response(
        status,
        serde_json::json!({ "status": "success", "data": data }).to_string(),
    )
}

pub(crate) async fn list(State(api): State<Api>, Extension(caller): Extension<Caller>) -> Response {
    let tokens = api.state.auth.list(Some(caller.tenant()));
    success(
        StatusCode::OK,
        serde_json::Value::Array(tokens.iter().map(info_json).collect()),
    )
}

pub(crate) async fn create(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_data(
            format!("invalid token request: {e}"),
            super::error::Reason::BadParam,
        )
    })?;
    let tenant = match req.tenant {
        None => caller.tenant().clone(),
        Some(t) => Tenant::new(t)
            .map_err(|e| ApiError::bad_data(e.to_string(), super::error::Reason::BadParam))?,
    };
    if &tenant != caller.tenant() {
        tracing::warn!(
            target: "audit",
            event = "forbidden",
            token = %caller.principal.who(),
            tenant = caller.tenant().as_str(),
            asked_tenant = tenant.as_str(),
            remote = %caller.remote,
            "token creation for another tenant refused"
        );
        return Err(ApiError::forbidden(
            "an admin token manages its own tenant's tokens only",
        ));
    }
    let expires_ms = crate::auth::expiry_from(
        req.expires_in.as_deref(),
        req.expires_at.as_deref(),
        crate::auth::store::now_ms(),
    )
    .map_err(|e| ApiError::bad_data(e, super::error::Reason::BadParam))?;
    let auth = api.state.auth.clone();
    let (role, description) = (req.role, req.description);
    let t = tenant.clone();
    let (info, token) = match &api.state.cluster {
        // In a cluster the metadata group keeps the tokens, for every node.
        Some(cluster) => cluster
            .create_token(&t, role, &description, expires_ms)
            .await
            .map_err(|e| ApiError::unavailable(format!("creating a token: {e}")))?,
        None => {
            tokio::task::spawn_blocking(move || auth.create(&t, role, &description, expires_ms))
                .await
                .map_err(|e| ApiError::internal(format!("token task failed: {e}")))?
                .map_err(|e| ApiError::internal(format!("creating a token: {e:#}")))?
        }
    };
    tracing::info!(
        target: "audit",
        event = "token_created",
        by = %caller.principal.who(),
        remote = %caller.remote,
        id = %info.id,
        tenant = info.tenant.as_str(),
        role = info.role.as_str(),
        expires = %crate::auth::format_expiry(info.expires_ms),
        "API token created"
    );
    let mut data = info_json(&info);
    data["token"] = serde_json::Value::String(token.reveal());
    Ok(success(StatusCode::CREATED, data))
}

pub(crate) async fn revoke(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id =
        TokenId::parse(&id).map_err(|e| ApiError::bad_data(e, super::error::Reason::BadParam))?;
    let auth = api.state.auth.clone();
    let tenant = caller.tenant().clone();
    let revoked = match &api.state.cluster {
        Some(cluster) => cluster
            .revoke_token(&id, Some(&tenant))
            .await
            .map_err(|e| ApiError::unavailable(format!("revoking a token: {e}")))?,
        None => {
            let id = id.clone();
            tokio::task::spawn_blocking(move || auth.revoke(&id, Some(&tenant)))
                .await
                .map_err(|e| ApiError::internal(format!("token task failed: {e}")))?
                .map_err(|e| ApiError::internal(format!("revoking a token: {e:#}")))?
        }
    };
    let Some(info) = revoked else {
        return Err(ApiError::not_found(format!("no token {id} in this tenant")));
    };
    tracing::info!(
        target: "audit",
        event = "token_revoked",
        by = %caller.principal.who(),
        remote = %caller.remote,
        id = %info.id,
        tenant = info.tenant.as_str(),
        role = info.role.as_str(),
        "API token revoked"
    );
    Ok(success(StatusCode::OK, info_json(&info)).into_response())
}

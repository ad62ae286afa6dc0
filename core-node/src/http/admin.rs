//! The admin API (role `admin`): the tokens of the caller's tenant.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/v1/admin/tokens` | 200, `data`: `[{"id","tenant","role","created","description","expires"}]` (`expires`: RFC 3339, or `null` for never) |
//! | `POST /api/v1/admin/tokens` with `{"role":"read","tenant":"acme","description":"…","expires_in":"30d"}` (`tenant`, `description` and the expiry optional; `expires_at` with an RFC 3339 time instead of `expires_in`) | 201, `data`: the token's fields plus `"token"`, shown this once |
//! | `DELETE /api/v1/admin/tokens/{id}` | 200, `data`: the revoked token's fields; 404 for an unknown id or another tenant's token |
//!
//! An admin token manages its own tenant's tokens only: asking for another tenant is 403.
//! The change goes to the data directory's token store (see [`crate::auth::store`]), where
//! the `core-node tokens` command sees it, and applies at once on this node. Every change is
//! written to the `audit` log target.

use super::Api;
use super::auth::Caller;
use super::error::ApiError;
use super::response::json_response;
use crate::auth::{Role, TokenId, TokenInfo};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocols::Tenant;
use serde::Deserialize;

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
    let (info, token) =
        tokio::task::spawn_blocking(move || auth.create(&t, role, &description, expires_ms))
            .await
            .map_err(|e| ApiError::internal(format!("token task failed: {e}")))?
            .map_err(|e| ApiError::internal(format!("creating a token: {e:#}")))?;
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
    let revoked = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || auth.revoke(&id, Some(&tenant)))
            .await
            .map_err(|e| ApiError::internal(format!("token task failed: {e}")))?
            .map_err(|e| ApiError::internal(format!("revoking a token: {e:#}")))?
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

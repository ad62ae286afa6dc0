//! Authentication and authorization of every request (the middleware in front of all routes).
//!
//! Credentials: `Authorization: Bearer <token>`, `Authorization: Token <token>` (InfluxDB 2.x
//! clients) or HTTP basic auth with the token as the password and any username (Grafana's and
//! Prometheus' `basic_auth`). An empty token or password counts as no credentials.
//!
//! What each route needs ([`access`]):
//!
//! | routes | needs |
//! |---|---|
//! | `/health` | nothing |
//! | query APIs (`/api/v1/query`, `query_range`, `series`, `labels`, `label/{name}/values`, `status/buildinfo`, `metadata`, `query_exemplars`) | `read` |
//! | `/api/v1/write`, `/write`, `/api/v2/write` | `write` |
//! | `/api/v1/admin/...` | `admin` |
//! | `/metrics` | `read` or `admin` |
//! | any other path | any valid token (then 404) |
//!
//! No or bad credentials: 401 with `WWW-Authenticate` and Prometheus' error JSON
//! (`errorType` `unauthorized`); a valid token of the wrong role: 403 (`forbidden`). Both
//! are counted in `updraft_core_auth_failures_total{reason}` and written to the `audit` log
//! target with the client's address. In development mode a request without credentials is
//! let in as the node's `--tenant` with every role.
//!
//! The request then carries a [`Caller`]: every handler reads and writes only its tenant.

use super::Api;
use super::error::ApiError;
use crate::auth::{AUTH_FAILURES, Failure, Principal, Role};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use std::net::SocketAddr;

/// Who made the request, for handlers: the principal, and the client's address for the
/// audit log.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub principal: Principal,
    pub remote: String,
}

impl Caller {
    pub(crate) fn tenant(&self) -> &protocols::Tenant {
        &self.principal.tenant
    }
}

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Public,
    Role(Role),
    /// `/metrics`: node-wide counters, for operators and their Prometheus.
    ReadOrAdmin,
    /// Unknown paths: any valid token (then 404), so probing learns nothing unauthenticated.
    AnyToken,
}

/// The access rule of a route pattern. A route missing from this list needs `admin`: a new
/// route is closed until someone decides otherwise.
pub(crate) fn access(route: Option<&str>) -> Access {
    let Some(route) = route else {
        return Access::AnyToken;
    };
    match route {
        "/health" => Access::Public,
        "/api/v1/query"
        | "/api/v1/query_range"
        | "/api/v1/labels"
        | "/api/v1/label/{name}/values"
        | "/api/v1/series"
        | "/api/v1/status/buildinfo"
        | "/api/v1/metadata"
        | "/api/v1/query_exemplars" => Access::Role(Role::Read),
        "/api/v1/write" | "/write" | "/api/v2/write" => Access::Role(Role::Write),
        "/metrics" => Access::ReadOrAdmin,
        _ => Access::Role(Role::Admin),
    }
}

/// The token in the request's `Authorization` header; `Ok(None)` when there is none.
pub(crate) fn credentials(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| Failure::Malformed)?.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    let token = match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "token" => rest.to_owned(),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| Failure::Malformed)?;
            let decoded = String::from_utf8(decoded).map_err(|_| Failure::Malformed)?;
            // Any username; the password is the token.
            let (_user, password) = decoded.split_once(':').ok_or(Failure::Malformed)?;
            password.to_owned()
        }
        _ => return Err(Failure::Malformed),
    };
    Ok((!token.is_empty()).then_some(token))
}

fn remote_of(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string())
}

/// The middleware: resolves the caller, checks the route's rule, records failures.
pub(crate) async fn authenticate(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let need = access(route.as_deref());
    if need == Access::Public {
        return next.run(req).await;
    }
    let remote = remote_of(&req);
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    let mut presented = None;
    let principal = match credentials(req.headers()) {
        Ok(token) => {
            let result = api.state.auth.authenticate(token.as_deref()).await;
            presented = token;
            result
        }
        Err(f) => Err(f),
    };
    let principal = match principal {
        Ok(p) => p,
        Err(failure) => {
            metrics::counter!(AUTH_FAILURES, "reason" => failure.as_str()).increment(1);
            // An expired token is named (its id is public), so the operator knows which one
            // a client still uses.
            let token = (failure == Failure::Expired)
                .then(|| presented.as_deref().and_then(crate::auth::Token::parse))
                .flatten()
                .map(|t| t.id().to_string());
            tracing::warn!(
                target: "audit",
                event = "auth_failed",
                reason = failure.as_str(),
                token = token.as_deref(),
                %remote,
                %method,
                %path,
                "authentication failed"
            );
            return refuse(failure);
        }
    };
    let allowed = match need {
        Access::Public | Access::AnyToken => true,
        Access::Role(role) => principal.has(role),
        Access::ReadOrAdmin => principal.has(Role::Read) || principal.has(Role::Admin),
    };
    if !allowed {
        let failure = Failure::Forbidden;
        metrics::counter!(AUTH_FAILURES, "reason" => failure.as_str()).increment(1);
        tracing::warn!(
            target: "audit",
            event = "forbidden",
            token = %principal.who(),
            tenant = principal.tenant.as_str(),
            role = principal.role.map_or("dev", Role::as_str),
            %remote,
            %method,
            %path,
            "request refused: role does not allow this endpoint"
        );
        return refuse(failure);
    }
    req.extensions_mut().insert(Caller { principal, remote });
    next.run(req).await
}

fn refuse(failure: Failure) -> Response {
    let mut response = match failure {
        Failure::Forbidden => ApiError::forbidden(failure.message()).into_response(),
        Failure::Internal => ApiError::internal(failure.message()).into_response(),
        _ => ApiError::unauthorized(failure.message()).into_response(),
    };
    if response.status() == axum::http::StatusCode::UNAUTHORIZED {
        let headers = response.headers_mut();
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"updraft\""),
        );
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"updraft\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn credentials_come_from_bearer_token_and_basic_password() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(credentials(&HeaderMap::new()), Ok(None));
        assert_eq!(credentials(&headers("Bearer abc")), Ok(Some("abc".into())));
        assert_eq!(
            credentials(&headers("bearer  abc ")),
            Ok(Some("abc".into()))
        );
        assert_eq!(credentials(&headers("Token abc")), Ok(Some("abc".into())));
        let basic = format!("Basic {}", b64("grafana:abc"));
        assert_eq!(credentials(&headers(&basic)), Ok(Some("abc".into())));
        let empty = format!("Basic {}", b64("grafana:"));
        assert_eq!(credentials(&headers(&empty)), Ok(None));
        assert_eq!(credentials(&headers("Bearer")), Ok(None));
        assert_eq!(credentials(&headers("Basic !!!")), Err(Failure::Malformed));
        let no_colon = format!("Basic {}", b64("abc"));
        assert_eq!(credentials(&headers(&no_colon)), Err(Failure::Malformed));
        assert_eq!(credentials(&headers("Digest x")), Err(Failure::Malformed));
    }

    #[test]
    fn unlisted_routes_need_admin() {
        assert_eq!(access(Some("/api/v1/new_thing")), Access::Role(Role::Admin));
        assert_eq!(access(Some("/health")), Access::Public);
        assert_eq!(access(None), Access::AnyToken);
    }
}

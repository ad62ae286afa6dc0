//! API errors in Prometheus' shape: `{"status":"error","errorType":"bad_data","error":"..."}`.
//!
//! The error type decides the HTTP status as in Prometheus (`bad_data` 400, `execution` 422,
//! `timeout` and `unavailable` 503, `internal` 500; Updraft's own `unauthorized` 401,
//! `forbidden` 403, `not_found` 404). Every error a client caused also bumps
//! `updraft_core_queries_rejected_total{reason}`, so an operator sees bad dashboards and
//! limits being hit without reading logs.

use super::encode;
use super::response::json_response;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use query::{DataSourceError, QueryError};

/// Counter of refused requests, by [`Reason`].
pub(crate) const QUERIES_REJECTED: &str = "updraft_core_queries_rejected_total";

/// Prometheus' `errorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// The request is malformed or asks for something refused; retrying will not help.
    BadData,
    /// The query was valid but failed while running (e.g. a resource limit).
    Execution,
    /// The query ran out of time.
    Timeout,
    /// Storage cannot answer now.
    Unavailable,
    /// A bug or corrupt data.
    Internal,
    /// No valid credentials (401).
    Unauthorized,
    /// Valid credentials that do not allow the request (403).
    Forbidden,
    /// No such thing, e.g. a token id (404).
    NotFound,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Timeout => "timeout",
            ErrorType::Unavailable => "unavailable",
            ErrorType::Internal => "internal",
            ErrorType::Unauthorized => "unauthorized",
            ErrorType::Forbidden => "forbidden",
            ErrorType::NotFound => "not_found",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorType::BadData => StatusCode::BAD_REQUEST,
            ErrorType::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Timeout | ErrorType::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorType::Forbidden => StatusCode::FORBIDDEN,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorType::Timeout | ErrorType::Unavailable)
    }
}

/// Why a request was refused: the `reason` label of [`QUERIES_REJECTED`]. A small, fixed set
/// so the label's cardinality stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The query is not valid PromQL, or has the wrong type for the endpoint.
    Parse,
    /// Valid PromQL this version cannot evaluate.
    Unsupported,
    /// A malformed or missing parameter other than the query.
    BadParam,
    /// A range query asking for more than 11,000 points per series.
    TooManyPoints,
    /// A query that would hold too many samples.
    TooManySamples,
    /// Valid PromQL that failed while evaluating (e.g. many-to-many matching).
    Execution,
    Timeout,
    BodyTooLarge,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Parse => "parse",
            Reason::Execution => "execution",
            Reason::Unsupported => "unsupported",
            Reason::BadParam => "bad_param",
            Reason::TooManyPoints => "too_many_points",
            Reason::TooManySamples => "too_many_samples",
            Reason::Timeout => "timeout",
            Reason::BodyTooLarge => "body_too_large",
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    kind: ErrorType,
    message: String,
    /// Overrides the kind's status (413 for an oversized body).
    status: Option<StatusCode>,
    /// Set when the client caused the error; counted in [`QUERIES_REJECTED`].
    reason: Option<Reason>,
}

impl ApiError {
    fn new(kind: ErrorType, message: impl Into<String>, reason: Option<Reason>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            reason,
        }
    }

    /// A malformed parameter, worded as Prometheus words it: `invalid parameter "step": ...`.
    pub(crate) fn bad_param(name: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorType::BadData,
            format!("invalid parameter {name:?}: {detail}"),
            Some(Reason::BadParam),
        )
    }

    /// A bad request whose message is not about one parameter.
    pub(crate) fn bad_data(message: impl Into<String>, reason: Reason) -> Self {
        Self::new(ErrorType::BadData, message, Some(reason))
    }

    /// The same error, counted under another reason.
    pub(crate) fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// 401; counted as an authentication failure by the caller, not here.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Unauthorized, message, None)
    }

    /// 403.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Forbidden, message, None)
    }

    /// 404.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorType::NotFound, message, None)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Unavailable, message, None)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorType::Internal, message, None)
    }

    pub(crate) fn from_source(e: DataSourceError) -> Self {
        let kind = match e {
            DataSourceError::Unavailable(_) => ErrorType::Unavailable,
            DataSourceError::Corrupt { .. } => ErrorType::Internal,
        };
        Self::new(kind, e.to_string(), None)
    }

    /// An error of a query endpoint, attributed to the parameter at fault as Prometheus does.
    pub(crate) fn from_query(e: QueryError) -> Self {
        let message = e.to_string();
        match e {
            QueryError::Parse(_)
            | QueryError::EmptySelector
            | QueryError::InvalidRangeQueryType { .. } => Self::new(
                ErrorType::BadData,
                format!("invalid parameter \"query\": {message}"),
                Some(Reason::Parse),
            ),
            QueryError::Execution(_) => {
                Self::new(ErrorType::Execution, message, Some(Reason::Execution))
            }
            QueryError::Unsupported(_) => Self::new(
                ErrorType::BadData,
                format!("invalid parameter \"query\": {message}"),
                Some(Reason::Unsupported),
            ),
            QueryError::EndBeforeStart => Self::bad_param("end", message),
            QueryError::NonPositiveStep => Self::bad_param("step", message),
            QueryError::TooManyPoints => Self::bad_data(message, Reason::TooManyPoints),
            QueryError::TooManySamples => {
                Self::new(ErrorType::Execution, message, Some(Reason::TooManySamples))
            }
            QueryError::Timeout => Self::new(ErrorType::Timeout, message, Some(Reason::Timeout)),
            QueryError::Source(e) => Self::from_source(e),
        }
    }

    pub(crate) fn from_body_rejection(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let mut err = Self::bad_data(
                format!(
                    "request body is larger than {} bytes",
                    super::MAX_BODY_BYTES
                ),
                Reason::BodyTooLarge,
            );
            err.status = Some(StatusCode::PAYLOAD_TOO_LARGE);
            err
        } else {
            Self::bad_data(
                format!("error parsing form values: {}", e.body_text()),
                Reason::BadParam,
            )
        }
    }

    pub fn kind(&self) -> ErrorType {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(reason) = self.reason {
            metrics::counter!(QUERIES_REJECTED, "reason" => reason.as_str()).increment(1);
        }
        let status = self.status.unwrap_or_else(|| self.kind.status());
        if status.is_server_error() {
            tracing::warn!(error_type = self.kind.as_str(), error = %self.message, "API request failed");
        } else {
            tracing::debug!(error_type = self.kind.as_str(), error = %self.message, "API request refused");
        }
        json_response(status, encode::error(self.kind.as_str(), &self.message))
    }
}

//! Successful API responses: `{"status":"success","data":...}` with optional warnings.

use super::encode;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A success body whose `data` is already encoded JSON.
#[derive(Debug)]
pub(crate) struct Success {
    data: String,
    warnings: Vec<String>,
}

impl Success {
    pub(crate) fn new(data: String) -> Self {
        Self {
            data,
            warnings: Vec::new(),
        }
    }

    pub(crate) fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }
}

impl IntoResponse for Success {
    fn into_response(self) -> Response {
        json_response(StatusCode::OK, encode::success(&self.data, &self.warnings))
    }
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

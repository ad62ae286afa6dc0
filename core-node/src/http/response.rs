//! Successful API responses: `{"status":"success","data":...}` with optional warnings.

use super::encode;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A success body whose `data` is already encoded JSON.
#[derive(Debug)]
pub(crate) struct Success {
    data: String,
    warnings: Vec<String>,
    /// `data` is the whole body already (see [`encode::query_success`]).
    complete: bool,
}

impl Success {
    pub(crate) fn new(data: String) -> Self {
        Self {
            data,
            warnings: Vec::new(),
            complete: false,
        }
    }

    /// A body that is already `{"status":"success","data":...}`: a large answer is not
    /// copied again into its envelope.
    pub(crate) fn complete(body: String) -> Self {
        Self {
            data: body,
            warnings: Vec::new(),
            complete: true,
        }
    }

    pub(crate) fn with_warning(mut self, warning: impl Into<String>) -> Self {
        if self.complete {
            // Only query answers are complete, and they carry no warnings; unwrap the body
            // rather than lose the warning.
            self.data = encode::unwrap_success(&self.data).to_owned();
            self.complete = false;
        }
        self.warnings.push(warning.into());
        self
    }
}

impl IntoResponse for Success {
    fn into_response(self) -> Response {
        let body = if self.complete {
            self.data
        } else {
            encode::success(&self.data, &self.warnings)
        };
        json_response(StatusCode::OK, body)
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

//! Why a query was refused or failed.
//!
//! Messages that have a Prometheus counterpart use Prometheus' wording, because Grafana and
//! other clients show them to users verbatim and people search for them.

use crate::source::DataSourceError;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query text is not valid PromQL; the parser's message.
    #[error("{0}")]
    Parse(String),
    /// Valid PromQL that failed while evaluating, in Prometheus' words (duplicate series when
    /// matching, a `topk` parameter out of range, ...): Prometheus' `execution` error.
    #[error("{0}")]
    Execution(String),
    /// Valid PromQL that this version cannot evaluate; names the construct.
    #[error("{0} is not supported yet")]
    Unsupported(String),
    /// A selector every one of whose matchers accepts the empty string, which would select
    /// every series.
    #[error("vector selector must contain at least one non-empty matcher")]
    EmptySelector,
    /// A range query whose expression is neither an instant vector nor a scalar.
    #[error("invalid expression type {found:?} for range query, must be Scalar or instant Vector")]
    InvalidRangeQueryType { found: &'static str },
    #[error("end timestamp must not be before start time")]
    EndBeforeStart,
    #[error(
        "zero or negative query resolution step widths are not accepted. Try a positive integer"
    )]
    NonPositiveStep,
    /// `(end - start) / step` exceeds [`crate::MAX_POINTS_PER_SERIES`].
    #[error(
        "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
    )]
    TooManyPoints,
    /// The query would hold more samples in memory than [`crate::EngineOptions::max_samples`].
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// The query ran longer than its timeout.
    #[error("query timed out in expression evaluation")]
    Timeout,
    /// The data source failed.
    #[error(transparent)]
    Source(#[from] DataSourceError),
}

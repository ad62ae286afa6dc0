//! Updraft's query engine: PromQL evaluated against a [`DataSource`].
//!
//! This crate parses PromQL with `promql-parser` and evaluates it itself. It knows nothing of
//! how samples are stored: `core-node` implements [`DataSource`] over its storage, and tests can
//! implement it over a `Vec`. It knows nothing of HTTP either: the core's API turns a [`Value`]
//! into Prometheus' JSON and a [`QueryError`] into an error type and status.
//!
//! This version evaluates float PromQL as Prometheus 3 does (left-open windows, stale
//! markers): selectors (`x`, `x{a=~"b"}`, `x[5m]`, `offset`, `@`), subqueries
//! (`expr[1h:1m]`), literals and parentheses, every aggregation but `limitk`/`limit_ratio`,
//! binary operators and unary minus, the range functions (`rate`, `deriv`,
//! `predict_linear`, the `*_over_time` family, ...) and the instant functions (math, dates,
//! `label_replace`, `histogram_quantile` and `histogram_fraction` over classic buckets, ...),
//! dropping `__name__` at the end of evaluation (Prometheus 3's delayed name removal).
//! Native histograms, the experimental features of Prometheus 3 (`sort_by_label`, `info`,
//! `limitk`, fill modifiers, type-and-unit labels, ...) are refused with
//! [`QueryError::Unsupported`] naming the feature. The evaluator is an AST walk
//! with one result type per PromQL type, so operators and functions slot in as new match
//! arms.
//!
//! Modules:
//! - [`engine`]: [`Engine`], the instant and range entry points.
//! - [`options`]: [`EngineOptions`], the limits and constants of evaluation.
//! - [`eval`]: the AST walk, lookback and stale-marker semantics; its private submodules
//!   hold the operators and functions: `aggregate`, `binary`, `functions` (range vectors),
//!   `instant` (instant vectors), `histogram` (`histogram_quantile`, `histogram_fraction`),
//!   `subquery`.
//! - [`reach`]: which times and metrics a query's steps read, for the core's range-result
//!   cache.
//! - [`selector`]: parsed selectors → [`Matcher`]s; parsing of bare series selectors
//!   (the API's `match[]`).
//! - `features`: the Prometheus 3 features refused on purpose (experimental functions, fill
//!   modifiers, type-and-unit labels, native-histogram functions), named before evaluation.
//! - `parse`: PromQL text to the parser's AST, with our error type.
//! - [`value`]: [`Value`] and its parts.
//! - [`error`]: why a query failed, [`QueryError`].
//! - [`matcher`]: label matchers (`=`, `!=`, `=~`, `!~`) with Prometheus' anchoring rules.
//! - [`source`]: the [`DataSource`] trait.
//!
//! Layering, top to bottom: a module uses only modules after it in `engine`, `eval`,
//! `reach`, `selector`, `features`, `parse`, `options`, `value`, `error`, `source`, `matcher`.

pub mod engine;
pub mod error;
pub mod eval;
mod features;
pub mod matcher;
pub mod options;
mod parse;
pub mod reach;
pub mod selector;
pub mod source;
pub mod value;

#[cfg(test)]
mod testing;

pub use engine::{Engine, MAX_POINTS_PER_SERIES, validate_range};
pub use error::QueryError;
pub use eval::{STALE_NAN_BITS, is_stale_marker};
pub use matcher::{MatchOp, Matcher};
pub use options::EngineOptions;
pub use reach::{Reach, reach};
pub use selector::parse_series_selector;
pub use source::{DataSource, DataSourceError, SeriesRef};
pub use value::{InstantSample, LabelSet, Matrix, Scalar, Series, StringValue, Value, Vector};

//! Updraft's query engine: PromQL evaluated against a [`DataSource`].
//!
//! This crate parses PromQL with `promql-parser` and evaluates it itself. It knows nothing of
//! how samples are stored: `core-node` implements [`DataSource`] over its storage, and tests can
//! implement it over a `Vec`.
//!
//! Modules:
//! - [`matcher`]: label matchers (`=`, `!=`, `=~`, `!~`) with Prometheus' anchoring rules.
//! - [`source`]: the [`DataSource`] trait.

pub mod matcher;
pub mod source;

pub use matcher::{MatchOp, Matcher};
pub use source::{DataSource, DataSourceError, SeriesRef};

//! The evaluator: a walk over the parser's AST that evaluates every node at every step of the
//! query at once, as Prometheus' engine does, so that range queries read each series once.
//!
//! Semantics that differ from a naive reading, all as in Prometheus 3:
//! - Windows are left-open: a vector selector at `t` takes the latest sample in
//!   `(t - lookback, t]`, a range selector `x[r]` the samples in `(t - r, t]`.
//! - A stale marker (the NaN with bits [`STALE_NAN_BITS`]) ends a series: if it is the latest
//!   sample in the lookback window the series has no value at `t`, and range selectors drop
//!   it. The lookback never reaches past a stale marker to an older sample.
//! - `offset d` evaluates the selector at `t - d` but reports it at `t`; `@ t0` pins the
//!   evaluation time to `t0` at every step (`@ start()` / `@ end()` to the query's bounds),
//!   and `offset` applies after `@`.
//! - Selectors keep `__name__` in their output labels.
//! - A range selector inside a function is read once per series for the whole query and a
//!   window slides over it step by step (`functions`); a bare range selector exists only in
//!   an instant query.
//!
//! Submodules: `aggregate` (aggregation operators), `binary` (binary operators, unary minus),
//! `functions` (range-vector functions), `instant` (instant-vector functions), `histogram`
//! (`histogram_quantile`), `subquery` (subqueries, each evaluated by an evaluator of its own
//! over its aligned inner steps).

use crate::error::QueryError;
use crate::options::EngineOptions;
use crate::selector;
use crate::source::DataSource;
use crate::value::{Matrix, Series};
use promql_parser::parser::{AtModifier, Expr, MatrixSelector, Offset, VectorSelector};
use protocols::{Sample, Tenant};
use std::time::{Duration, Instant, SystemTime};

/// Bit pattern of Prometheus' stale marker: a NaN that an exporter or the agent writes when a
/// series disappears. Any other NaN is an ordinary value.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `value` is the stale marker (bit-exact: an ordinary NaN is not).
pub fn is_stale_marker(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}

/// The value of one node across every step of the query.
#[derive(Debug)]
pub(crate) enum Stepped {
    /// One value per step.
    Scalar(Vec<f64>),
    /// Strings do not vary with time.
    String(String),
    /// An instant vector at every step: each series holds a point at each step where it has
    /// a value, stamped with the step's time.
    Vector(Matrix),
    /// A bare range selector, evaluated at a single time (the instant query's); functions
    /// consume range selectors at every step without building this.
    Matrix(Matrix),
}

pub(crate) struct Evaluator<'a> {
    pub(crate) source: &'a dyn DataSource,
    pub(crate) tenant: &'a Tenant,
    /// The evaluation times of this evaluator: the query's, or a subquery's inner steps.
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    /// > 0; an instant query has `start_ms == end_ms` and any positive step.
    pub(crate) step_ms: i64,
    /// The query's own bounds, which `@ start()` and `@ end()` name even inside a subquery.
    pub(crate) query_start_ms: i64,
    pub(crate) query_end_ms: i64,
    /// Whether `start_ms == end_ms` is an instant query, where a bare range vector may be the
    /// result; false inside a subquery.
    pub(crate) top_level: bool,
    pub(crate) options: &'a EngineOptions,
    /// `None` when the timeout is too large to represent: no deadline.
    pub(crate) deadline: Option<Instant>,
    /// Samples the query holds now: the points of the results built so far plus the raw
    /// samples of the series being processed. Bounded by `options.max_samples`.
    pub(crate) samples_in_memory: usize,
}

impl Evaluator<'_> {
    /// The evaluation timestamps: `start, start + step, ...` up to `end` inclusive.
    pub(crate) fn steps(&self) -> impl Iterator<Item = i64> + use<> {
        let (end, step) = (self.end_ms, self.step_ms);
        std::iter::successors(Some(self.start_ms), move |t| {
            t.checked_add(step).filter(|next| *next <= end)
        })
    }

    pub(crate) fn eval(&mut self, expr: &Expr) -> Result<Stepped, QueryError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Stepped::Scalar(self.steps().map(|_| n.val).collect())),
            Expr::StringLiteral(s) => Ok(Stepped::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::VectorSelector(vs) => self.vector_selector(vs, false).map(Stepped::Vector),
            Expr::MatrixSelector(ms) if self.top_level && self.start_ms == self.end_ms => {
                self.matrix_selector(ms, self.start_ms).map(Stepped::Matrix)
            }
            Expr::Subquery(sq) if self.top_level && self.start_ms == self.end_ms => {
                let at = self.selector_time(sq.at.as_ref(), sq.offset.as_ref(), self.start_ms);
                self.subquery(sq, at, at).map(Stepped::Matrix)
            }
            // Only functions take a range vector at every step; the engine refuses a bare one
            // in a range query before evaluating.
            Expr::MatrixSelector(_) | Expr::Subquery(_) => {
                Err(unsupported("a range vector in a range query"))
            }
            Expr::Unary(u) => self.unary(u),
            Expr::Binary(b) => self.binary(b),
            Expr::Aggregate(a) => self.aggregate(a),
            Expr::Call(c) => self.call(c),
            Expr::Extension(e) => Err(unsupported(format!("extension `{}`", e.expr.name()))),
        }
    }

    /// Evaluates an operand the parser has typed as an instant vector.
    pub(crate) fn vector_operand(&mut self, expr: &Expr) -> Result<Matrix, QueryError> {
        match self.eval(expr)? {
            Stepped::Vector(m) => Ok(m),
            other => Err(type_mismatch("instant vector", &other)),
        }
    }

    /// Evaluates an operand the parser has typed as a scalar: one value per step.
    pub(crate) fn scalar_operand(&mut self, expr: &Expr) -> Result<Vec<f64>, QueryError> {
        match self.eval(expr)? {
            Stepped::Scalar(values) => Ok(values),
            other => Err(type_mismatch("scalar", &other)),
        }
    }

    /// The latest sample of each matching series in `(t - lookback, t]` at every step; with
    /// `sample_times`, the time of that sample in seconds instead of its value (`timestamp`).
    fn vector_selector(
        &mut self,
        vs: &VectorSelector,
        sample_times: bool,
    ) -> Result<Matrix, QueryError> {
        let matchers = selector::matchers(vs)?;
        let lookback_ms = self.options.lookback_delta_ms;
        let first = self.selector_time(vs.at.as_ref(), vs.offset.as_ref(), self.start_ms);
        let last = self.selector_time(vs.at.as_ref(), vs.offset.as_ref(), self.end_ms);
        // Left-open window: a sample exactly `lookback` old is out, hence the `+ 1`.
        let from = first.saturating_sub(lookback_ms).saturating_add(1);

        self.check_deadline()?;
        let series = self.select(&matchers)?;
        let (source, tenant) = (self.source, self.tenant);
        let times: Vec<(i64, i64)> = self
            .steps()
            .map(|t| (t, self.selector_time(vs.at.as_ref(), vs.offset.as_ref(), t)))
            .collect();
        // One evaluation time: only the latest sample in the window counts, which a source
        // may know without reading the window (a last-value cache).
        let single = times.len() == 1;
        let parts = self.for_series(series, Vec::new, |out, series, budget| {
            let samples = if single {
                source
                    .latest_sample(tenant, series.id, from, last)?
                    .into_iter()
                    .collect()
            } else {
                source.samples_of(tenant, series.id, from, last)?
            };
            budget.hold(samples.len())?;

            let mut points = Vec::new();
            // Index of the first sample after the current evaluation time; evaluation times
            // never decrease from step to step, so one forward pass serves every step.
            let mut next = 0;
            for &(t, at) in &times {
                while samples.get(next).is_some_and(|s| s.timestamp_ms <= at) {
                    next += 1;
                }
                let Some(latest) = next.checked_sub(1).and_then(|i| samples.get(i)) else {
                    continue;
                };
                if latest.timestamp_ms > at.saturating_sub(lookback_ms)
                    && !is_stale_marker(latest.value)
                {
                    let value = if sample_times {
                        latest.timestamp_ms as f64 / 1000.0
                    } else {
                        latest.value
                    };
                    points.push(Sample::new(t, value));
                }
            }

            budget.release(samples.len());
            budget.hold(points.len())?;
            if !points.is_empty() {
                out.push(Series {
                    metric: series.labels.into(),
                    points,
                });
            }
            Ok(())
        })?;
        let out: Matrix = parts.into_iter().flatten().collect();
        Ok(out)
    }

    /// The samples of each matching series in `(t - range, t]`, stale markers dropped.
    fn matrix_selector(&mut self, ms: &MatrixSelector, t: i64) -> Result<Matrix, QueryError> {
        let matchers = selector::matchers(&ms.vs)?;
        let at = self.selector_time(ms.vs.at.as_ref(), ms.vs.offset.as_ref(), t);
        let from = at.saturating_sub(millis(ms.range)).saturating_add(1);

        self.check_deadline()?;
        let mut out = Vec::new();
        for series in self.select(&matchers)? {
            self.check_deadline()?;
            let mut points = self.source.samples_of(self.tenant, series.id, from, at)?;
            self.hold(points.len())?;
            points.retain(|s| !is_stale_marker(s.value));
            if !points.is_empty() {
                out.push(Series {
                    metric: series.labels.into(),
                    points,
                });
            }
        }
        Ok(out)
    }

    /// The time a selector is evaluated at for step `t`: `t`, or the `@` time, minus offset.
    fn selector_time(&self, at: Option<&AtModifier>, offset: Option<&Offset>, t: i64) -> i64 {
        let base = match at {
            None => t,
            Some(AtModifier::Start) => self.query_start_ms,
            Some(AtModifier::End) => self.query_end_ms,
            Some(AtModifier::At(time)) => unix_millis(*time),
        };
        match offset {
            None => base,
            Some(Offset::Pos(d)) => base.saturating_sub(millis(*d)),
            Some(Offset::Neg(d)) => base.saturating_add(millis(*d)),
        }
    }

    /// The series `matchers` select, by id: a source's order is unspecified (storage's comes
    /// from a hash set), and float sums over series must not depend on it, or two
    /// evaluations of one query (a cached extent and a fresh one) could differ in the last
    /// bit. Ids, not labels: sorting 80,000 label sets costs more than the lookups.
    pub(crate) fn select(
        &self,
        matchers: &[crate::matcher::Matcher],
    ) -> Result<Vec<crate::source::SeriesRef>, QueryError> {
        let mut series = self.source.select_series(self.tenant, matchers)?;
        series.sort_unstable_by_key(|s| s.id.0);
        Ok(series)
    }

    pub(crate) fn check_deadline(&self) -> Result<(), QueryError> {
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(QueryError::Timeout),
            _ => Ok(()),
        }
    }

    pub(crate) fn hold(&mut self, samples: usize) -> Result<(), QueryError> {
        self.samples_in_memory = self.samples_in_memory.saturating_add(samples);
        if self.samples_in_memory > self.options.max_samples {
            return Err(QueryError::TooManySamples);
        }
        Ok(())
    }

    pub(crate) fn release(&mut self, samples: usize) {
        self.samples_in_memory = self.samples_in_memory.saturating_sub(samples);
    }
}

/// The labels of a query's result: series whose name was marked to go lose it now (Prometheus
/// 3's delayed name removal, `cleanupMetricLabels`), and series that then share a label set
/// are merged; two points of one label set at one time are Prometheus' "vector cannot
/// contain metrics with the same labelset".
pub(crate) fn finish_labels(matrix: Matrix) -> Result<Matrix, QueryError> {
    if !matrix.iter().any(|s| s.metric.drops_name()) {
        return Ok(matrix);
    }
    binary::collect_series(matrix.into_iter().map(|s| Series {
        metric: s.metric.finished(),
        points: s.points,
    }))
}

fn unsupported(what: impl Into<String>) -> QueryError {
    QueryError::Unsupported(what.into())
}

/// An operand of the wrong type; the parser checks types, so this only guards the walk.
fn type_mismatch(expected: &str, found: &Stepped) -> QueryError {
    let found = match found {
        Stepped::Scalar(_) => "scalar",
        Stepped::String(_) => "string",
        Stepped::Vector(_) => "instant vector",
        Stepped::Matrix(_) => "range vector",
    };
    QueryError::Parse(format!("expected type {expected}, got {found}"))
}

/// Whole milliseconds of `d`, saturating: `offset 1000000000y` must not wrap around.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch, negative before it.
fn unix_millis(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => millis(after),
        Err(before) => millis(before.duration()).saturating_neg(),
    }
}

mod aggregate;
pub(crate) use aggregate::group_labels;
mod binary;
mod functions;
mod histogram;
mod instant;
mod parallel;
mod subquery;

#[cfg(test)]
mod tests;

//! Subqueries, `expr[range:step]`, with `offset` and `@`.
//!
//! As in Prometheus 3: for outer window ends from `first` to `last` (the steps' times after
//! `offset` and `@`), the inner expression is evaluated once, by an evaluator of its own,
//! at every multiple of the step in `(first - range, last]` (the steps are aligned to
//! multiples of the step from the Unix epoch, not to the query's start). A function then
//! slides its `(t - range, t]` window over those points as it does over stored samples. A
//! subquery without a step uses [`crate::EngineOptions::default_subquery_step_ms`]. Inside,
//! `@ start()` and `@ end()` still name the query's bounds.

use super::{Evaluator, Stepped, millis, type_mismatch};
use crate::error::QueryError;
use crate::value::Matrix;
use promql_parser::parser::SubqueryExpr;

impl Evaluator<'_> {
    /// The points of `sq` for window ends `first ..= last` (both already moved by the
    /// subquery's `offset` and `@`): the inner expression at every aligned step in
    /// `(first - range, last]`. Series without points are left out.
    pub(super) fn subquery(
        &mut self,
        sq: &SubqueryExpr,
        first: i64,
        last: i64,
    ) -> Result<Matrix, QueryError> {
        let step = sq
            .step
            .map(millis)
            .filter(|s| *s > 0)
            .unwrap_or(self.options.default_subquery_step_ms)
            .max(1);
        let lowest = first.saturating_sub(millis(sq.range));
        // Go's integer division truncates toward zero, as Rust's does; the first step is the
        // first multiple of `step` strictly after `lowest` (the window is left-open).
        let mut start = step.saturating_mul(lowest / step);
        if start <= lowest {
            start = start.saturating_add(step);
        }
        if start > last {
            return Ok(Vec::new());
        }
        let mut inner = Evaluator {
            source: self.source,
            tenant: self.tenant,
            start_ms: start,
            end_ms: last,
            step_ms: step,
            query_start_ms: self.query_start_ms,
            query_end_ms: self.query_end_ms,
            top_level: false,
            options: self.options,
            deadline: self.deadline,
            samples_in_memory: self.samples_in_memory,
        };
        let result = inner.eval(&sq.expr);
        self.samples_in_memory = inner.samples_in_memory;
        match result? {
            Stepped::Vector(matrix) => Ok(matrix
                .into_iter()
                .filter(|s| !s.points.is_empty())
                .collect()),
            // The parser only accepts an instant vector inside a subquery.
            other => Err(type_mismatch("instant vector", &other)),
        }
    }
}

//! The entry points: instant and range queries, with the limits Prometheus applies to them.
//!
//! An instant query evaluates once, at `time`. A range query evaluates at every step
//! `start + k * step` for `k = 0, 1, ...` while the timestamp is `<= end`; the steps are not
//! aligned to multiples of `step` (Prometheus does not align them either; Grafana aligns
//! `start` itself).

use crate::error::QueryError;
use crate::eval::{Evaluator, Stepped, finish_labels, group_labels};
use crate::features::refuse_unsupported;
pub use crate::options::EngineOptions;
use crate::parse::parse;
use crate::source::DataSource;
use crate::value::{InstantSample, LabelSet, Scalar, Series, StringValue, Value};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{Expr, LabelModifier};
use protocols::{Sample, Tenant};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most points a range query may return per series, as in Prometheus: enough for a week at
/// 60 s resolution or a year at 1 h.
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// Evaluates PromQL. Cheap to create and to clone; holds no state between queries.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    options: EngineOptions,
}

impl Engine {
    pub fn new(options: EngineOptions) -> Self {
        Self { options }
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The same engine with a shorter timeout, for a request that asks for one; a longer one
    /// than configured is ignored, as in Prometheus.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let mut options = self.options.clone();
        options.timeout = options.timeout.min(timeout);
        Self { options }
    }

    /// Evaluates `query` at `time_ms`. A vector selector yields a [`Value::Vector`] whose
    /// samples carry `time_ms`; `x[5m]` yields a [`Value::Matrix`] of the raw samples in
    /// `(time_ms - 5m, time_ms]`.
    pub fn instant(
        &self,
        source: &dyn DataSource,
        tenant: &Tenant,
        query: &str,
        time_ms: i64,
    ) -> Result<Value, QueryError> {
        let expr = parse(query)?;
        refuse_unsupported(&expr)?;
        let mut ev = self.evaluator(source, tenant, time_ms, time_ms, 1);
        Ok(match ev.eval(&expr)? {
            Stepped::Scalar(values) => Value::Scalar(Scalar {
                timestamp_ms: time_ms,
                value: values.first().copied().unwrap_or(f64::NAN),
            }),
            Stepped::String(value) => Value::String(StringValue {
                timestamp_ms: time_ms,
                value,
            }),
            Stepped::Vector(matrix) => {
                // One step: each series holds exactly one point.
                let mut vector: Vec<InstantSample> = finish_labels(matrix)?
                    .into_iter()
                    .filter_map(|s| {
                        let point = s.points.first()?;
                        Some(InstantSample {
                            metric: s.metric,
                            timestamp_ms: point.timestamp_ms,
                            value: point.value,
                        })
                    })
                    .collect();
                vector.sort_unstable_by(|a, b| a.metric.cmp(&b.metric));
                if let Some((descending, grouping)) = value_order(&expr) {
                    order_by_value(&mut vector, descending, grouping);
                }
                Value::Vector(vector)
            }
            Stepped::Matrix(matrix) => {
                let mut matrix = finish_labels(matrix)?;
                matrix.sort_unstable_by(|a, b| a.metric.cmp(&b.metric));
                Value::Matrix(matrix)
            }
        })
    }

    /// Evaluates `query` at `start_ms`, `start_ms + step_ms`, ... up to `end_ms`, and returns
    /// a [`Value::Matrix`] with one series per label set, sorted by labels. A scalar
    /// expression yields one series with no labels.
    pub fn range(
        &self,
        source: &dyn DataSource,
        tenant: &Tenant,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Value, QueryError> {
        validate_range(start_ms, end_ms, step_ms)?;
        let expr = parse(query)?;
        refuse_unsupported(&expr)?;
        match expr.value_type() {
            ValueType::Vector | ValueType::Scalar => {}
            ValueType::Matrix => {
                return Err(QueryError::InvalidRangeQueryType {
                    found: "range vector",
                });
            }
            ValueType::String => return Err(QueryError::InvalidRangeQueryType { found: "string" }),
        }
        let mut ev = self.evaluator(source, tenant, start_ms, end_ms, step_ms);
        let steps = ev.steps();
        let mut matrix = match ev.eval(&expr)? {
            Stepped::Vector(matrix) => finish_labels(matrix)?,
            Stepped::Scalar(values) => vec![Series {
                metric: LabelSet::empty(),
                points: steps.zip(values).map(|(t, v)| Sample::new(t, v)).collect(),
            }],
            Stepped::String(_) | Stepped::Matrix(_) => {
                // Unreachable: the parser's type and the evaluator's agree, checked above.
                return Err(QueryError::InvalidRangeQueryType {
                    found: "range vector",
                });
            }
        };
        matrix.sort_unstable_by(|a, b| a.metric.cmp(&b.metric));
        Ok(Value::Matrix(matrix))
    }

    fn evaluator<'a>(
        &'a self,
        source: &'a dyn DataSource,
        tenant: &'a Tenant,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Evaluator<'a> {
        Evaluator {
            source,
            tenant,
            start_ms,
            end_ms,
            step_ms,
            query_start_ms: start_ms,
            query_end_ms: end_ms,
            top_level: true,
            options: &self.options,
            deadline: Instant::now().checked_add(self.options.timeout),
            samples_in_memory: 0,
        }
    }
}

/// The checks of a range query's bounds, in Prometheus' order so that the same bad request
/// gets the same error: end before start, then the step, then the number of points.
/// [`Engine::range`] applies them; an API may call this first to order its own checks.
pub fn validate_range(start_ms: i64, end_ms: i64, step_ms: i64) -> Result<(), QueryError> {
    if end_ms < start_ms {
        return Err(QueryError::EndBeforeStart);
    }
    if step_ms <= 0 {
        return Err(QueryError::NonPositiveStep);
    }
    // i128: `end - start` overflows i64 for timestamps near its limits.
    if (i128::from(end_ms) - i128::from(start_ms)) / i128::from(step_ms)
        > i128::from(MAX_POINTS_PER_SERIES)
    {
        return Err(QueryError::TooManyPoints);
    }
    Ok(())
}

/// `Some((descending, grouping))` when the instant result of `expr` is ordered by value
/// rather than by labels, as Prometheus orders it: `sort`, `sort_desc`, and `topk`/`bottomk`
/// (by value within each group).
fn value_order(expr: &Expr) -> Option<(bool, Option<&LabelModifier>)> {
    match expr {
        Expr::Paren(p) => value_order(&p.expr),
        Expr::Call(c) if c.func.name == "sort" => Some((false, None)),
        Expr::Call(c) if c.func.name == "sort_desc" => Some((true, None)),
        Expr::Aggregate(a) => match a.op.to_string().as_str() {
            "topk" => Some((true, a.modifier.as_ref())),
            "bottomk" => Some((false, a.modifier.as_ref())),
            _ => None,
        },
        _ => None,
    }
}

/// Reorders a label-sorted vector: groups in order of first appearance, each group by value,
/// NaN last either way (Prometheus 3), equal values in label order (a stable sort).
fn order_by_value(
    vector: &mut [InstantSample],
    descending: bool,
    grouping: Option<&LabelModifier>,
) {
    let mut rank: HashMap<LabelSet, usize> = HashMap::new();
    let mut keyed: Vec<(usize, InstantSample)> = vector
        .iter()
        .map(|s| {
            let next = rank.len();
            let group = *rank
                .entry(group_labels(&s.metric, grouping))
                .or_insert(next);
            (group, s.clone())
        })
        .collect();
    keyed.sort_by(|(ga, a), (gb, b)| {
        ga.cmp(gb)
            .then_with(|| match (a.value.is_nan(), b.value.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                // partial_cmp: -0 equals 0.
                (false, false) if descending => {
                    b.value.partial_cmp(&a.value).unwrap_or(Ordering::Equal)
                }
                (false, false) => a.value.partial_cmp(&b.value).unwrap_or(Ordering::Equal),
            })
    });
    for (slot, (_, sample)) in vector.iter_mut().zip(keyed) {
        *slot = sample;
    }
}

//! Binary operators and unary minus.
//!
//! As in Prometheus 3 (`VectorBinop`, `VectorscalarBinop`, `resultMetric` in `engine.go`):
//! - Arithmetic (`+ - * / % ^ atan2`) and `bool` comparisons drop `__name__`: between two
//!   vectors arithmetic drops it at once, elsewhere it goes when evaluation ends (delayed name
//!   removal, `LabelSet::drop_name_later`); a comparison without `bool` filters and keeps
//!   the left operand's value (the vector's, for a scalar/vector comparison) and its labels,
//!   name included.
//! - Vector/vector operands match on their labels without `__name__`, or on the `on (...)`
//!   labels, or on all but the `ignoring (...)` labels. One-to-one results keep only the
//!   matching labels of the left side; `group_left`/`group_right` keep the "many" side's
//!   labels plus the listed labels of the "one" side.
//! - Matching is done per step: a duplicate on the "one" side at one step is an error even
//!   if it matches nothing, and two "many" series that match one series (one-to-one) or give
//!   one result label set (`group_left`/`group_right`) are an error even where a comparison
//!   would filter them out (Prometheus checks before it filters).
//! - `and`, `or`, `unless` keep their operands' labels unchanged.

use super::{Evaluator, Stepped, type_mismatch, unsupported};
use crate::error::QueryError;
use crate::value::{DROP_NAME_MARK, LabelSet, Matrix, Series};
use promql_parser::parser::{
    BinModifier, BinaryExpr, LabelModifier, UnaryExpr, VectorMatchCardinality,
};
use protocols::Sample;
use protocols::model::METRIC_NAME_LABEL;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl Op {
    fn parse(op: &str) -> Option<Self> {
        Some(match op {
            "+" => Self::Add,
            "-" => Self::Sub,
            "*" => Self::Mul,
            "/" => Self::Div,
            "%" => Self::Mod,
            "^" => Self::Pow,
            "atan2" => Self::Atan2,
            "==" => Self::Eq,
            "!=" => Self::Ne,
            ">" => Self::Gt,
            "<" => Self::Lt,
            ">=" => Self::Ge,
            "<=" => Self::Le,
            "and" => Self::And,
            "or" => Self::Or,
            "unless" => Self::Unless,
            _ => return None,
        })
    }

    fn is_comparison(self) -> bool {
        matches!(
            self,
            Self::Eq | Self::Ne | Self::Gt | Self::Lt | Self::Ge | Self::Le
        )
    }

    /// The result of `l op r` and whether a comparison holds (always true for arithmetic).
    fn apply(self, l: f64, r: f64) -> (f64, bool) {
        match self {
            Self::Add => (l + r, true),
            Self::Sub => (l - r, true),
            Self::Mul => (l * r, true),
            Self::Div => (l / r, true),
            // Go's math.Mod: the sign of the dividend, as Rust's `%` on floats.
            Self::Mod => (l % r, true),
            Self::Pow => (l.powf(r), true),
            Self::Atan2 => (l.atan2(r), true),
            Self::Eq => (l, l == r),
            Self::Ne => (l, l != r),
            Self::Gt => (l, l > r),
            Self::Lt => (l, l < r),
            Self::Ge => (l, l >= r),
            Self::Le => (l, l <= r),
            // Set operators never reach here: the parser refuses them on scalars.
            Self::And | Self::Or | Self::Unless => (f64::NAN, false),
        }
    }
}

/// How vector/vector operands are matched.
struct Matching<'e> {
    card: &'e VectorMatchCardinality,
    /// `Some(Include)` for `on`, `Some(Exclude)` for `ignoring`.
    labels: Option<&'e LabelModifier>,
    return_bool: bool,
}

impl Matching<'_> {
    /// The labels a series is matched on.
    fn signature(&self, metric: &LabelSet) -> LabelSet {
        match self.labels {
            Some(LabelModifier::Include(on)) => {
                metric.filter(|name| on.labels.iter().any(|l| l == name))
            }
            Some(LabelModifier::Exclude(ignoring)) => metric.filter(|name| {
                name != METRIC_NAME_LABEL
                    && name != DROP_NAME_MARK
                    && !ignoring.labels.iter().any(|l| l == name)
            }),
            None => metric.without_metric_name(),
        }
    }

    /// The labels of a result from `many` (the left side in one-to-one matching) and `one`.
    fn result_metric(&self, op: Op, many: &LabelSet, one: &LabelSet) -> LabelSet {
        // Arithmetic drops the name at once even in Prometheus 3 (`resultMetric` deletes it
        // for `changesMetricSchema`); a `bool` comparison marks it to go at the end. A
        // filtering comparison keeps the "many" side's mark (Prometheus 3.14 loses it there,
        // which would bring back a name that `rate` dropped; not followed).
        let drop_later = self.return_bool || many.drops_name();
        let mut metric = if op.is_comparison() {
            many.clone()
        } else {
            many.without_metric_name()
        };
        match self.card {
            // Not the signature: `ignoring` leaves `__name__` to the rule above.
            VectorMatchCardinality::OneToOne => match self.labels {
                Some(LabelModifier::Include(on)) => {
                    metric = metric.filter(|name| on.labels.iter().any(|l| l == name));
                }
                Some(LabelModifier::Exclude(ignoring)) => {
                    metric = metric.filter(|name| !ignoring.labels.iter().any(|l| l == name));
                }
                None => {}
            },
            VectorMatchCardinality::ManyToOne(include)
            | VectorMatchCardinality::OneToMany(include) => {
                for name in &include.labels {
                    metric = metric.with(name, one.get(name).unwrap_or(""));
                }
            }
            VectorMatchCardinality::ManyToMany => {}
        }
        if drop_later && op.is_comparison() {
            metric.drop_name_later()
        } else {
            metric
        }
    }
}

impl Evaluator<'_> {
    pub(super) fn binary(&mut self, b: &BinaryExpr) -> Result<Stepped, QueryError> {
        let name = b.op.to_string();
        let op =
            Op::parse(&name).ok_or_else(|| unsupported(format!("binary operator `{name}`")))?;
        let return_bool = b.return_bool();
        let lhs = self.eval(&b.lhs)?;
        let rhs = self.eval(&b.rhs)?;
        match (lhs, rhs) {
            (Stepped::Scalar(l), Stepped::Scalar(r)) => Ok(Stepped::Scalar(
                l.iter()
                    .zip(&r)
                    .map(|(&l, &r)| match op.apply(l, r) {
                        // The parser requires `bool` for a comparison of scalars.
                        (_, keep) if op.is_comparison() => f64::from(u8::from(keep)),
                        (value, _) => value,
                    })
                    .collect(),
            )),
            (Stepped::Vector(v), Stepped::Scalar(s)) => {
                self.vector_scalar(op, v, &s, false, return_bool)
            }
            (Stepped::Scalar(s), Stepped::Vector(v)) => {
                self.vector_scalar(op, v, &s, true, return_bool)
            }
            (Stepped::Vector(l), Stepped::Vector(r)) => {
                let default = BinModifier::default();
                let modifier = b.modifier.as_ref().unwrap_or(&default);
                if modifier.fill_values.lhs.is_some() || modifier.fill_values.rhs.is_some() {
                    return Err(unsupported("`fill` modifier"));
                }
                let matching = Matching {
                    card: &modifier.card,
                    labels: modifier.matching.as_ref(),
                    return_bool,
                };
                self.vector_vector(op, l, r, &matching)
            }
            (Stepped::Vector(_) | Stepped::Scalar(_), other)
            | (other, Stepped::Vector(_) | Stepped::Scalar(_)) => {
                Err(type_mismatch("scalar or instant vector", &other))
            }
            (other, _) => Err(type_mismatch("scalar or instant vector", &other)),
        }
    }

    pub(super) fn unary(&mut self, u: &UnaryExpr) -> Result<Stepped, QueryError> {
        match self.eval(&u.expr)? {
            Stepped::Scalar(values) => Ok(Stepped::Scalar(values.iter().map(|v| -v).collect())),
            Stepped::Vector(matrix) => {
                let negated = matrix.into_iter().map(|s| Series {
                    metric: s.metric.drop_name_later(),
                    points: s
                        .points
                        .into_iter()
                        .map(|p| Sample::new(p.timestamp_ms, -p.value))
                        .collect(),
                });
                collect_series(negated).map(Stepped::Vector)
            }
            other => Err(type_mismatch("scalar or instant vector", &other)),
        }
    }

    fn vector_scalar(
        &mut self,
        op: Op,
        vector: Matrix,
        scalar: &[f64],
        scalar_on_left: bool,
        return_bool: bool,
    ) -> Result<Stepped, QueryError> {
        let drop_name = return_bool || !op.is_comparison();
        let mut out = Vec::with_capacity(vector.len());
        for series in vector {
            let metric = if drop_name {
                series.metric.drop_name_later()
            } else {
                series.metric
            };
            let mut points = Vec::with_capacity(series.points.len());
            for p in series.points {
                let s = scalar
                    .get(self.step_index(p.timestamp_ms))
                    .copied()
                    .unwrap_or(f64::NAN);
                let (l, r) = if scalar_on_left {
                    (s, p.value)
                } else {
                    (p.value, s)
                };
                let (value, keep) = op.apply(l, r);
                let value = if return_bool {
                    f64::from(u8::from(keep))
                } else if !keep {
                    continue;
                } else if op.is_comparison() {
                    // A filter keeps the vector's value, whichever side it is on.
                    p.value
                } else {
                    value
                };
                points.push(Sample::new(p.timestamp_ms, value));
            }
            out.push(Series { metric, points });
        }
        collect_series(out).map(Stepped::Vector)
    }

    fn vector_vector(
        &mut self,
        op: Op,
        mut lhs: Matrix,
        mut rhs: Matrix,
        matching: &Matching<'_>,
    ) -> Result<Stepped, QueryError> {
        // Storage order in Prometheus is label order; sorting makes errors that name the
        // first of two series say the same as Prometheus.
        lhs.sort_unstable_by(|a, b| a.metric.cmp(&b.metric));
        rhs.sort_unstable_by(|a, b| a.metric.cmp(&b.metric));
        let lsig: Vec<LabelSet> = lhs.iter().map(|s| matching.signature(&s.metric)).collect();
        let rsig: Vec<LabelSet> = rhs.iter().map(|s| matching.signature(&s.metric)).collect();
        let lsteps = self.by_step(&lhs);
        let rsteps = self.by_step(&rhs);

        let mut items = Vec::new();
        if matches!(op, Op::And | Op::Or | Op::Unless) {
            for (i, (ls, rs)) in lsteps.iter().zip(&rsteps).enumerate() {
                let t = self.step_time(i);
                let right: HashSet<&LabelSet> = rs.iter().map(|&(j, _)| &rsig[j]).collect();
                let left: HashSet<&LabelSet> = ls.iter().map(|&(j, _)| &lsig[j]).collect();
                for &(j, v) in ls {
                    let keep = match op {
                        Op::And => right.contains(&lsig[j]),
                        Op::Unless => !right.contains(&lsig[j]),
                        _ => true,
                    };
                    if keep {
                        items.push((lhs[j].metric.clone(), Sample::new(t, v)));
                    }
                }
                if op == Op::Or {
                    for &(j, v) in rs.iter().filter(|(j, _)| !left.contains(&rsig[*j])) {
                        items.push((rhs[j].metric.clone(), Sample::new(t, v)));
                    }
                }
            }
            return collect(items).map(Stepped::Vector);
        }

        // The "one" side must be unique per signature; the other is the "many" side.
        let swapped = matches!(matching.card, VectorMatchCardinality::OneToMany(_));
        let (many, one, msig, osig, msteps, osteps) = if swapped {
            (&rhs, &lhs, &rsig, &lsig, &rsteps, &lsteps)
        } else {
            (&lhs, &rhs, &lsig, &rsig, &lsteps, &rsteps)
        };
        let one_side = if swapped { "left" } else { "right" };
        let mut metrics: HashMap<(usize, usize), LabelSet> = HashMap::new();
        for (i, (ms, os)) in msteps.iter().zip(osteps).enumerate() {
            let t = self.step_time(i);
            let mut by_sig: HashMap<&LabelSet, (usize, f64)> = HashMap::new();
            for &(j, v) in os {
                if let Some(&(first, _)) = by_sig.get(&osig[j]) {
                    return Err(QueryError::Execution(format!(
                        "found duplicate series for the match group {} on the {one_side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                        osig[j], one[j].metric, one[first].metric
                    )));
                }
                by_sig.insert(&osig[j], (j, v));
            }
            let mut matched: HashMap<&LabelSet, HashSet<LabelSet>> = HashMap::new();
            for &(k, mv) in ms {
                let Some(&(j, ov)) = by_sig.get(&msig[k]) else {
                    continue;
                };
                let (l, r) = if swapped { (ov, mv) } else { (mv, ov) };
                let (value, keep) = op.apply(l, r);
                let metric = metrics
                    .entry((k, j))
                    .or_insert_with(|| matching.result_metric(op, &many[k].metric, &one[j].metric))
                    .clone();
                // Checked before a comparison filters, as Prometheus does: a query that
                // matches ambiguously fails whatever the values are at that step.
                let seen = matched.entry(&msig[k]).or_default();
                if matches!(matching.card, VectorMatchCardinality::OneToOne) {
                    if !seen.is_empty() {
                        return Err(QueryError::Execution(
                            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                        ));
                    }
                } else if seen.contains(&metric) {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
                seen.insert(metric.clone());
                let value = if matching.return_bool {
                    f64::from(u8::from(keep))
                } else if keep {
                    value
                } else {
                    continue;
                };
                items.push((metric, Sample::new(t, value)));
            }
        }
        collect(items).map(Stepped::Vector)
    }

    /// The `(series index, value)` of every series with a point at each step.
    pub(super) fn by_step(&self, matrix: &Matrix) -> Vec<Vec<(usize, f64)>> {
        let mut steps = vec![Vec::new(); self.step_count()];
        for (i, series) in matrix.iter().enumerate() {
            for p in &series.points {
                if let Some(members) = steps.get_mut(self.step_index(p.timestamp_ms)) {
                    members.push((i, p.value));
                }
            }
        }
        steps
    }
}

/// Groups result points into series; two points of one label set at one step are
/// Prometheus' "vector cannot contain metrics with the same labelset".
/// Like [`collect`], for results built a whole series at a time (each series' points
/// ascending, one per step): label sets are hashed once per series instead of once per point.
/// Series that end up with one label set are merged; a step they share fails the query, as
/// in [`collect`]. Series without points are dropped.
pub(super) fn collect_series(
    series: impl IntoIterator<Item = Series>,
) -> Result<Matrix, QueryError> {
    let mut out: Vec<Series> = Vec::new();
    let mut index: HashMap<LabelSet, usize> = HashMap::new();
    let mut merged: HashSet<usize> = HashSet::new();
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        match index.get(&s.metric) {
            Some(&i) => {
                out[i].points.extend(s.points);
                merged.insert(i);
            }
            None => {
                index.insert(s.metric.clone(), out.len());
                out.push(s);
            }
        }
    }
    for i in merged {
        let points = &mut out[i].points;
        points.sort_unstable_by_key(|p| p.timestamp_ms);
        if points
            .windows(2)
            .any(|w| w[0].timestamp_ms == w[1].timestamp_ms)
        {
            return Err(QueryError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(out)
}

pub(super) fn collect(
    items: impl IntoIterator<Item = (LabelSet, Sample)>,
) -> Result<Matrix, QueryError> {
    let mut series: HashMap<LabelSet, Vec<Sample>> = HashMap::new();
    for (metric, point) in items {
        series.entry(metric).or_default().push(point);
    }
    let mut out = Vec::with_capacity(series.len());
    for (metric, mut points) in series {
        points.sort_unstable_by_key(|p| p.timestamp_ms);
        if points
            .windows(2)
            .any(|w| w[0].timestamp_ms == w[1].timestamp_ms)
        {
            return Err(QueryError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
        out.push(Series { metric, points });
    }
    Ok(out)
}

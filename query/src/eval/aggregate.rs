//! Aggregation operators: `sum`, `avg`, `min`, `max`, `count`, `group`, `stddev`, `stdvar`,
//! `topk`, `bottomk`, `quantile` and `count_values`, with `by` and `without`.
//!
//! As in Prometheus 3: `by (l...)` keeps only the listed labels, `without (l...)` drops them
//! and `__name__`, no modifier yields `{}`; `topk`/`bottomk` return their input series with
//! all their labels; `count_values` adds its label to the grouping. The numeric rules (Kahan
//! summation, the switch of `avg` to an incremental mean when a sum overflows, NaN never
//! winning `min`/`max` against a number) follow `aggregation` in Prometheus' `engine.go`.

use super::{Evaluator, Stepped, unsupported};
use crate::error::QueryError;
use crate::value::{DROP_NAME_MARK, LabelSet, Matrix, Series};
use promql_parser::parser::{AggregateExpr, LabelModifier};
use protocols::Sample;
use protocols::model::METRIC_NAME_LABEL;
use std::collections::{BTreeMap, HashSet};

const SIMPLE: &[&str] = &[
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
];

/// The values of one group at one step: `(index of the input series, value)`.
type Members = Vec<(usize, f64)>;

impl Evaluator<'_> {
    pub(super) fn aggregate(&mut self, a: &AggregateExpr) -> Result<Stepped, QueryError> {
        let op = a.op.to_string();
        let op = op.as_str();
        let modifier = a.modifier.as_ref();
        // The parameter is evaluated first, as in Prometheus.
        if SIMPLE.contains(&op) {
            let input = self.vector_operand(&a.expr)?;
            let marked = marked_groups(&input, modifier);
            let out = self.simple(op, input, modifier);
            return Ok(Stepped::Vector(mark_groups(out, &marked)));
        }
        match (op, a.param.as_deref()) {
            ("topk" | "bottomk", Some(param)) => {
                let k = self.scalar_operand(param)?;
                let input = self.vector_operand(&a.expr)?;
                self.top_k(op == "topk", &k, input, modifier)
                    .map(Stepped::Vector)
            }
            ("quantile", Some(param)) => {
                let q = self.scalar_operand(param)?;
                let input = self.vector_operand(&a.expr)?;
                let marked = marked_groups(&input, modifier);
                let out = self.quantile(&q, input, modifier);
                Ok(Stepped::Vector(mark_groups(out, &marked)))
            }
            ("count_values", Some(param)) => {
                let Stepped::String(label) = self.eval(param)? else {
                    // The parser only accepts a string here.
                    return Err(unsupported("count_values without a string parameter"));
                };
                let input = self.vector_operand(&a.expr)?;
                self.count_values(&label, input, modifier)
                    .map(Stepped::Vector)
            }
            _ => Err(unsupported(format!("aggregation `{op}`"))),
        }
    }

    /// The members of each group at each step, groups keyed by their output labels.
    fn groups(
        &self,
        input: &Matrix,
        modifier: Option<&LabelModifier>,
    ) -> BTreeMap<LabelSet, Vec<Members>> {
        let steps = self.step_count();
        let mut groups: BTreeMap<LabelSet, Vec<Members>> = BTreeMap::new();
        for (i, series) in input.iter().enumerate() {
            let key = group_labels(&series.metric, modifier);
            let group = groups.entry(key).or_insert_with(|| vec![Vec::new(); steps]);
            for p in &series.points {
                if let Some(members) = group.get_mut(self.step_index(p.timestamp_ms)) {
                    members.push((i, p.value));
                }
            }
        }
        groups
    }

    fn simple(&self, op: &str, input: Matrix, modifier: Option<&LabelModifier>) -> Matrix {
        let mut out = Vec::new();
        for (metric, steps) in self.groups(&input, modifier) {
            let points: Vec<Sample> = steps
                .iter()
                .enumerate()
                .filter(|(_, members)| !members.is_empty())
                .map(|(i, members)| {
                    let values = members.iter().map(|&(_, v)| v);
                    Sample::new(self.step_time(i), reduce(op, values))
                })
                .collect();
            if !points.is_empty() {
                out.push(Series { metric, points });
            }
        }
        out
    }

    fn top_k(
        &self,
        top: bool,
        k: &[f64],
        input: Matrix,
        modifier: Option<&LabelModifier>,
    ) -> Result<Matrix, QueryError> {
        if !check_k(k)? {
            return Ok(Vec::new());
        }
        // Prometheus reads a selector's series in label order; with the same order here,
        // its heap (below) keeps the same series among equal values.
        let mut input = input;
        input.sort_by(|a, b| a.metric.cmp(&b.metric));
        let mut chosen: Vec<Vec<Sample>> = vec![Vec::new(); input.len()];
        for steps in self.groups(&input, modifier).into_values() {
            for (i, members) in steps.into_iter().enumerate() {
                if members.is_empty() {
                    continue;
                }
                // Checked above: a number in int64's range; `as` truncates toward zero.
                let k = usize::try_from(k.get(i).copied().unwrap_or(0.0) as i64).unwrap_or(0);
                for (series, value) in heap_select(&members, k, top) {
                    chosen[series].push(Sample::new(self.step_time(i), value));
                }
            }
        }
        Ok(input
            .into_iter()
            .zip(chosen)
            .filter(|(_, points)| !points.is_empty())
            .map(|(s, mut points)| {
                points.sort_unstable_by_key(|p| p.timestamp_ms);
                Series {
                    metric: s.metric,
                    points,
                }
            })
            .collect())
    }

    fn quantile(&self, q: &[f64], input: Matrix, modifier: Option<&LabelModifier>) -> Matrix {
        let mut out = Vec::new();
        for (metric, steps) in self.groups(&input, modifier) {
            let points: Vec<Sample> = steps
                .iter()
                .enumerate()
                .filter(|(_, members)| !members.is_empty())
                .map(|(i, members)| {
                    let mut values: Vec<f64> = members.iter().map(|&(_, v)| v).collect();
                    let q = q.get(i).copied().unwrap_or(f64::NAN);
                    Sample::new(self.step_time(i), quantile(q, &mut values))
                })
                .collect();
            if !points.is_empty() {
                out.push(Series { metric, points });
            }
        }
        out
    }

    fn count_values(
        &self,
        label: &str,
        input: Matrix,
        modifier: Option<&LabelModifier>,
    ) -> Result<Matrix, QueryError> {
        if !super::instant::is_label_name(label) {
            return Err(QueryError::Execution(format!(
                "invalid label name {label:?}"
            )));
        }
        // The value label joins the grouping: added to `by`, never dropped by `without`.
        let mut out: BTreeMap<LabelSet, BTreeMap<i64, f64>> = BTreeMap::new();
        for series in &input {
            for p in &series.points {
                let labeled = series.metric.with(label, &format_value(p.value));
                let key = match modifier {
                    Some(LabelModifier::Include(by)) => {
                        labeled.filter(|name| name == label || by.labels.iter().any(|l| l == name))
                    }
                    Some(LabelModifier::Exclude(without)) => labeled.filter(|name| {
                        name == label
                            || (name != METRIC_NAME_LABEL
                                && !without.labels.iter().any(|l| l == name))
                    }),
                    None => labeled.filter(|name| name == label),
                };
                *out.entry(key)
                    .or_default()
                    .entry(p.timestamp_ms)
                    .or_default() += 1.0;
            }
        }
        Ok(out
            .into_iter()
            .map(|(metric, counts)| Series {
                metric,
                points: counts.into_iter().map(|(t, n)| Sample::new(t, n)).collect(),
            })
            .collect())
    }

    /// Number of evaluation steps of the query.
    pub(super) fn step_count(&self) -> usize {
        self.steps().count()
    }

    /// Index of the step at `t`, which must be one of the query's evaluation times.
    pub(super) fn step_index(&self, t: i64) -> usize {
        usize::try_from((t - self.start_ms) / self.step_ms).unwrap_or(usize::MAX)
    }

    pub(super) fn step_time(&self, index: usize) -> i64 {
        let index = i64::try_from(index).unwrap_or(i64::MAX);
        self.start_ms
            .saturating_add(index.saturating_mul(self.step_ms))
    }
}

/// The groups that keep `__name__` (`by (__name__)`) and have a member whose name is marked
/// to go: Prometheus 3 drops the group's name at the end if any member's goes.
fn marked_groups(input: &Matrix, modifier: Option<&LabelModifier>) -> HashSet<LabelSet> {
    input
        .iter()
        .filter(|s| s.metric.drops_name())
        .map(|s| group_labels(&s.metric, modifier))
        .filter(|key| key.get(METRIC_NAME_LABEL).is_some())
        .collect()
}

fn mark_groups(out: Matrix, marked: &HashSet<LabelSet>) -> Matrix {
    if marked.is_empty() {
        return out;
    }
    out.into_iter()
        .map(|mut s| {
            if marked.contains(&s.metric) {
                s.metric = s.metric.drop_name_later();
            }
            s
        })
        .collect()
}

/// The labels of the group a series belongs to.
pub(crate) fn group_labels(metric: &LabelSet, modifier: Option<&LabelModifier>) -> LabelSet {
    match modifier {
        Some(LabelModifier::Include(by)) => {
            metric.filter(|name| by.labels.iter().any(|l| l == name))
        }
        Some(LabelModifier::Exclude(without)) => metric.filter(|name| {
            name != METRIC_NAME_LABEL
                && name != DROP_NAME_MARK
                && !without.labels.iter().any(|l| l == name)
        }),
        None => LabelSet::empty(),
    }
}

/// The members `topk` (`top`) or `bottomk` keeps, chosen as Prometheus does, so that ties
/// go the same way: the members in input order through a heap of at most `k` (Go's
/// `container/heap` on `vectorByValueHeap`, or `vectorByReverseValueHeap` for `bottomk`,
/// whose `Less` puts NaN first), a member replacing the heap's root only when strictly
/// better. Which of equal values survives depends on the heap's shape, not on a sort.
fn heap_select(members: &[(usize, f64)], k: usize, top: bool) -> Vec<(usize, f64)> {
    let less = |heap: &[(usize, f64)], i: usize, j: usize| {
        let (a, b) = (heap[i].1, heap[j].1);
        a.is_nan() || if top { a < b } else { a > b }
    };
    let up = |heap: &mut Vec<(usize, f64)>, mut j: usize| {
        while j > 0 {
            let parent = (j - 1) / 2;
            if !less(heap, j, parent) {
                break;
            }
            heap.swap(parent, j);
            j = parent;
        }
    };
    let down = |heap: &mut Vec<(usize, f64)>, mut i: usize| {
        loop {
            let left = 2 * i + 1;
            if left >= heap.len() {
                break;
            }
            let mut j = left;
            if left + 1 < heap.len() && less(heap, left + 1, left) {
                j = left + 1;
            }
            if !less(heap, j, i) {
                break;
            }
            heap.swap(i, j);
            i = j;
        }
    };
    let mut heap: Vec<(usize, f64)> = Vec::with_capacity(k.min(members.len()));
    if k == 0 {
        return heap;
    }
    for &(series, value) in members {
        if heap.len() < k {
            heap.push((series, value));
            let last = heap.len() - 1;
            up(&mut heap, last);
            continue;
        }
        let root = heap[0].1;
        let better = if top { root < value } else { root > value };
        if better || (root.is_nan() && !value.is_nan()) {
            heap[0] = (series, value);
            // Go's `heap.Fix(h, 0)`: the root can only move down.
            down(&mut heap, 0);
        }
    }
    heap
}

/// Checks `k` of `topk`/`bottomk` at every step of the query, before and whatever the input
/// (an empty input fails too), as Prometheus 3's `rangeEvalAgg`: `false` when `k < 1` at
/// every step (the result is empty), an error when `k` is NaN at any step or out of int64's
/// range.
fn check_k(k: &[f64]) -> Result<bool, QueryError> {
    // Go's `math.Max`/`math.Min`: NaN wins.
    let max = k.iter().fold(f64::NEG_INFINITY, |m, &v| {
        if v.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(v)
        }
    });
    let min = k.iter().fold(f64::INFINITY, |m, &v| {
        if v.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.min(v)
        }
    });
    if max < 1.0 {
        return Ok(false);
    }
    if k.iter().any(|v| v.is_nan()) {
        return Err(QueryError::Execution("Parameter value is NaN".into()));
    }
    // Prometheus' bounds: the extreme floats that convert to an int64.
    if min <= -9_223_372_036_854_775_808.0 {
        return Err(QueryError::Execution(format!(
            "Scalar value {} underflows int64",
            format_value(min)
        )));
    }
    if max >= 9_223_372_036_854_774_784.0 {
        return Err(QueryError::Execution(format!(
            "Scalar value {} overflows int64",
            format_value(max)
        )));
    }
    Ok(true)
}

/// One simple aggregation over the values of a group at one step (at least one value).
fn reduce(op: &str, values: impl Iterator<Item = f64>) -> f64 {
    match op {
        "sum" => {
            let mut sum = KahanSum::default();
            values.for_each(|v| sum.add(v));
            sum.value()
        }
        "avg" => average(values),
        "count" => values.count() as f64,
        "group" => 1.0,
        // A number always replaces NaN; NaN only when every value is NaN.
        "min" => values.fold(f64::NAN, |m, v| if m > v || m.is_nan() { v } else { m }),
        "max" => values.fold(f64::NAN, |m, v| if m < v || m.is_nan() { v } else { m }),
        "stdvar" => variance(values),
        "stddev" => variance(values).sqrt(),
        _ => f64::NAN,
    }
}

/// Population variance with Welford's running mean, as Prometheus computes it.
fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut m2) = (0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        m2 += delta * (v - mean);
    }
    m2 / count
}

/// The mean: a compensated sum divided by the count, switching to an incremental mean once
/// the sum overflows, so that `avg` of large finite values stays finite.
pub(super) fn average(values: impl Iterator<Item = f64>) -> f64 {
    let mut sum = KahanSum::default();
    let mut incremental: Option<KahanSum> = None;
    let mut count = 0.0;
    for v in values {
        count += 1.0;
        if let Some(mean) = incremental.as_mut() {
            let q = (count - 1.0) / count;
            mean.scale(q);
            mean.add(v / count);
            continue;
        }
        let mut next = sum;
        next.add(v);
        if next.sum.is_finite() || count == 1.0 {
            sum = next;
            continue;
        }
        let previous = count - 1.0;
        let mut mean = KahanSum {
            sum: sum.sum / previous,
            c: sum.c / previous,
        };
        mean.scale((count - 1.0) / count);
        mean.add(v / count);
        incremental = Some(mean);
    }
    match incremental {
        Some(mean) => mean.value(),
        None if sum.sum.is_infinite() => sum.sum / count,
        None => sum.sum / count + sum.c / count,
    }
}

/// Neumaier's compensated sum, Prometheus' `kahanSumInc`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct KahanSum {
    sum: f64,
    c: f64,
}

impl KahanSum {
    pub(super) fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if t.is_infinite() {
            self.c = 0.0;
        } else if self.sum.abs() >= v.abs() {
            self.c += (self.sum - t) + v;
        } else {
            self.c += (v - t) + self.sum;
        }
        self.sum = t;
    }

    fn scale(&mut self, by: f64) {
        self.sum *= by;
        self.c *= by;
    }

    pub(super) fn value(&self) -> f64 {
        if self.sum.is_infinite() {
            self.sum
        } else {
            self.sum + self.c
        }
    }
}

/// The `q`-quantile of `values` by linear interpolation between closest ranks, as
/// Prometheus' `quantile`: `q < 0` is -Inf, `q > 1` is +Inf, NaN sorts first.
pub(super) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    // Both indexes are within 0..n by construction.
    let at = |i: f64| values.get(i as usize).copied().unwrap_or(f64::NAN);
    at(lower) * (1.0 - weight) + at(upper) * weight
}

/// A value as Go's `strconv.FormatFloat(v, 'f', -1, 64)`: shortest digits, no exponent.
pub(super) fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// A value as Go's `fmt` verb `%f`: six decimals, `NaN`, `+Inf`, `-Inf`.
pub(super) fn format_go_f(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v:.6}")
    }
}

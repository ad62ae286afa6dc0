//! Functions over range vectors: `rate`, `irate`, `increase`, `delta`, `idelta`, `resets`,
//! `changes`, `deriv`, `predict_linear`, `double_exponential_smoothing` (and its Prometheus
//! 2 name `holt_winters`) and the `*_over_time` family, at every step of instant and range
//! queries.
//!
//! The range vector is a selector or a subquery. A selector is read once per series for the
//! whole query span, `(first window start, last window end]`; a subquery is evaluated once
//! for that span (`subquery`). Either way a window slides over the samples from step to
//! step. Windows are left-open, `(t - range, t]`, stale markers are dropped, and a window
//! without samples (fewer than two for the rate family, `deriv`, `predict_linear` and the
//! smoothing) yields no point, as in Prometheus 3. Every function but `last_over_time` drops
//! `__name__`.

use super::aggregate::{KahanSum, average, format_go_f, quantile};
use super::binary::collect_series;
use super::instant::absent_labels;
use super::{Evaluator, Stepped, is_stale_marker, millis, unsupported};
use crate::error::QueryError;
use crate::selector;
use crate::value::{LabelSet, Matrix, Series};
use promql_parser::parser::{AtModifier, Call, Expr, MatrixSelector, Offset, SubqueryExpr};
use protocols::Sample;

/// The range functions this module evaluates.
const RANGE_FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "resets",
    "changes",
    "deriv",
    "predict_linear",
    "double_exponential_smoothing",
    "holt_winters",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "absent_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "quantile_over_time",
    "mad_over_time",
];

/// The range-vector argument of a function.
#[derive(Clone, Copy)]
pub(super) enum RangeArg<'e> {
    Selector(&'e MatrixSelector),
    Subquery(&'e SubqueryExpr),
}

impl<'e> RangeArg<'e> {
    /// `expr` as a range vector, looking through parentheses.
    pub(super) fn of(expr: &'e Expr) -> Option<Self> {
        match expr {
            Expr::Paren(p) => Self::of(&p.expr),
            Expr::MatrixSelector(ms) => Some(Self::Selector(ms)),
            Expr::Subquery(sq) => Some(Self::Subquery(sq)),
            _ => None,
        }
    }

    fn range_ms(self) -> i64 {
        match self {
            Self::Selector(ms) => millis(ms.range),
            Self::Subquery(sq) => millis(sq.range),
        }
    }

    fn modifiers(self) -> (Option<&'e AtModifier>, Option<&'e Offset>) {
        match self {
            Self::Selector(ms) => (ms.vs.at.as_ref(), ms.vs.offset.as_ref()),
            Self::Subquery(sq) => (sq.at.as_ref(), sq.offset.as_ref()),
        }
    }
}

/// One window of one series at one step.
struct Window<'s> {
    samples: &'s [Sample],
    /// The window is `(end_ms - range_ms, end_ms]`.
    end_ms: i64,
    range_ms: i64,
    /// The step's evaluation time, before `offset` and `@`: `predict_linear` predicts from it.
    eval_ms: i64,
    /// The scalar arguments at this step, in the order of the function's signature.
    params: [f64; 2],
}

/// What every series' windows add to the result.
struct Output {
    items: Vec<Series>,
    /// Whether any series has a sample in its window, per step (`absent_over_time`).
    present: Vec<bool>,
}

impl Evaluator<'_> {
    pub(super) fn call(&mut self, c: &Call) -> Result<Stepped, QueryError> {
        let name = c.func.name;
        if !RANGE_FUNCTIONS.contains(&name) {
            return self.instant_function(c);
        }
        // The range vector and the scalars, in the signature's order.
        let mut range = None;
        let mut params = Vec::new();
        for arg in &c.args.args {
            match RangeArg::of(arg) {
                Some(r) if range.is_none() => range = Some(r),
                _ => params.push(self.scalar_operand(arg)?),
            }
        }
        let Some(range) = range else {
            return Err(unsupported(format!("function `{name}` of this argument")));
        };
        self.over_windows(name, range, &params).map(Stepped::Vector)
    }

    /// Applies range function `name` to the windows of `arg` at every step.
    fn over_windows(
        &mut self,
        name: &str,
        arg: RangeArg<'_>,
        params: &[Vec<f64>],
    ) -> Result<Matrix, QueryError> {
        let range_ms = arg.range_ms();
        let (at, offset) = arg.modifiers();
        let times: Vec<i64> = self.steps().collect();
        let ends: Vec<i64> = times
            .iter()
            .map(|&t| self.selector_time(at, offset, t))
            .collect();
        // Window ends never decrease from step to step (`offset` is fixed, `@` pins them).
        let (Some(&first), Some(&last)) = (ends.first(), ends.last()) else {
            return Ok(Vec::new());
        };
        let slider = Slider {
            name,
            keep_name: name == "last_over_time",
            times: &times,
            ends: &ends,
            range_ms,
            params,
        };
        let mut out = Output {
            items: Vec::new(),
            present: vec![false; times.len()],
        };

        self.check_deadline()?;
        match arg {
            RangeArg::Selector(ms) => {
                let matchers = selector::matchers(&ms.vs)?;
                let from = first.saturating_sub(range_ms).saturating_add(1);
                let series = self.select(&matchers)?;
                let (source, tenant, steps) = (self.source, self.tenant, times.len());
                let init = || Output {
                    items: Vec::new(),
                    present: vec![false; steps],
                };
                // `last_over_time` at one evaluation time needs only the latest sample of the
                // window, unless that is a stale marker (then the one before it counts).
                let latest_only = name == "last_over_time" && times.len() == 1;
                let parts = self.for_series(series, init, |part, series, budget| {
                    let latest = if latest_only {
                        source.latest_sample(tenant, series.id, from, last)?
                    } else {
                        None
                    };
                    let mut samples = match latest {
                        Some(s) if !is_stale_marker(s.value) => vec![s],
                        _ if latest_only && latest.is_none() => Vec::new(),
                        _ => source.samples_of(tenant, series.id, from, last)?,
                    };
                    let read = samples.len();
                    budget.hold(read)?;
                    samples.retain(|s| !is_stale_marker(s.value));
                    let points = slider.slide(series.labels.into(), &samples, part)?;
                    budget.release(read);
                    budget.hold(points)
                })?;
                for part in parts {
                    out.items.extend(part.items);
                    for (all, p) in out.present.iter_mut().zip(part.present) {
                        *all |= p;
                    }
                }
            }
            RangeArg::Subquery(sq) => {
                // The subquery's points are already held by the inner evaluation.
                let matrix = self.subquery(sq, first, last)?;
                let held: usize = matrix.iter().map(|s| s.points.len()).sum();
                for Series { metric, points } in matrix {
                    self.check_deadline()?;
                    let produced = slider.slide(metric, &points, &mut out)?;
                    self.hold(produced)?;
                }
                self.release(held);
            }
        }

        if name == "absent_over_time" {
            let labels = match arg {
                RangeArg::Selector(ms) => absent_labels(Some(&ms.vs)),
                // Prometheus gives a subquery's absence no labels.
                RangeArg::Subquery(_) => LabelSet::empty(),
            };
            let points: Vec<Sample> = times
                .iter()
                .zip(&out.present)
                .filter(|(_, present)| !**present)
                .map(|(&t, _)| Sample::new(t, 1.0))
                .collect();
            return Ok(if points.is_empty() {
                Vec::new()
            } else {
                vec![Series {
                    metric: labels,
                    points,
                }]
            });
        }
        collect_series(out.items)
    }
}

/// What sliding a window over one series needs.
struct Slider<'a> {
    name: &'a str,
    keep_name: bool,
    /// The evaluation times, and the window end at each (after `offset` and `@`).
    times: &'a [i64],
    ends: &'a [i64],
    range_ms: i64,
    /// Per scalar argument, its value at each step.
    params: &'a [Vec<f64>],
}

impl Slider<'_> {
    /// Adds the points of one series (samples ascending, no stale markers) to `out`;
    /// returns how many.
    fn slide(
        &self,
        metric: LabelSet,
        samples: &[Sample],
        out: &mut Output,
    ) -> Result<usize, QueryError> {
        let metric = if self.keep_name {
            metric
        } else {
            metric.drop_name_later()
        };
        let (mut lo, mut hi) = (0, 0);
        let mut points = Vec::new();
        for (i, (&eval_ms, &end_ms)) in self.times.iter().zip(self.ends).enumerate() {
            while samples.get(hi).is_some_and(|s| s.timestamp_ms <= end_ms) {
                hi += 1;
            }
            let start_ms = end_ms.saturating_sub(self.range_ms);
            while lo < hi && samples.get(lo).is_some_and(|s| s.timestamp_ms <= start_ms) {
                lo += 1;
            }
            let window = samples.get(lo..hi).unwrap_or_default();
            if window.is_empty() {
                continue;
            }
            if let Some(present) = out.present.get_mut(i) {
                *present = true;
            }
            let param = |k: usize| {
                self.params
                    .get(k)
                    .and_then(|p| p.get(i))
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            let window = Window {
                samples: window,
                end_ms,
                range_ms: self.range_ms,
                eval_ms,
                params: [param(0), param(1)],
            };
            if let Some(value) = apply(self.name, &window)? {
                points.push(Sample::new(eval_ms, value));
            }
        }
        let produced = points.len();
        if produced > 0 {
            out.items.push(Series { metric, points });
        }
        Ok(produced)
    }
}

/// The value of range function `name` over one non-empty window, `None` for no point.
fn apply(name: &str, w: &Window<'_>) -> Result<Option<f64>, QueryError> {
    let samples = w.samples;
    let Some(last) = samples.last() else {
        return Ok(None);
    };
    let values = || samples.iter().map(|s| s.value);
    Ok(Some(match name {
        "rate" => return Ok(extrapolated_rate(w, true, true)),
        "increase" => return Ok(extrapolated_rate(w, true, false)),
        "delta" => return Ok(extrapolated_rate(w, false, false)),
        "irate" => return Ok(instant_rate(samples, true)),
        "idelta" => return Ok(instant_rate(samples, false)),
        "resets" => samples
            .windows(2)
            .filter(|p| p[1].value < p[0].value)
            .count() as f64,
        "changes" => samples
            .windows(2)
            .filter(|p| !(p[1].value == p[0].value || (p[1].value.is_nan() && p[0].value.is_nan())))
            .count() as f64,
        "deriv" if samples.len() < 2 => return Ok(None),
        // The first sample's time as the origin keeps the sums small.
        "deriv" => linear_regression(samples, samples[0].timestamp_ms).0,
        "predict_linear" if samples.len() < 2 => return Ok(None),
        "predict_linear" => {
            let (slope, intercept) = linear_regression(samples, w.eval_ms);
            slope * w.params[0] + intercept
        }
        "double_exponential_smoothing" | "holt_winters" => {
            return smoothed(samples, w.params[0], w.params[1]);
        }
        "avg_over_time" => average(values()),
        "min_over_time" => values().fold(f64::NAN, |m, v| if m > v || m.is_nan() { v } else { m }),
        "max_over_time" => values().fold(f64::NAN, |m, v| if m < v || m.is_nan() { v } else { m }),
        "sum_over_time" => {
            let mut sum = KahanSum::default();
            values().for_each(|v| sum.add(v));
            sum.value()
        }
        "count_over_time" => samples.len() as f64,
        "last_over_time" => last.value,
        "present_over_time" => 1.0,
        "stdvar_over_time" => variance(values()),
        "stddev_over_time" => variance(values()).sqrt(),
        "quantile_over_time" => quantile(w.params[0], &mut values().collect::<Vec<_>>()),
        "mad_over_time" => {
            let median = quantile(0.5, &mut values().collect::<Vec<_>>());
            let mut deviations: Vec<f64> = values().map(|v| (v - median).abs()).collect();
            quantile(0.5, &mut deviations)
        }
        _ => return Ok(None),
    }))
}

/// Least-squares fit of the samples against time in seconds from `origin_ms`:
/// `(slope, intercept)`, as Prometheus 3's `linearRegression` (compensated sums; a constant
/// series has slope 0 exactly, or NaN if the constant is infinite).
fn linear_regression(samples: &[Sample], origin_ms: i64) -> (f64, f64) {
    let Some(first) = samples.first() else {
        return (f64::NAN, f64::NAN);
    };
    let constant = samples.iter().all(|s| s.value == first.value);
    if constant {
        return if first.value.is_infinite() {
            (f64::NAN, f64::NAN)
        } else {
            (0.0, first.value)
        };
    }
    let (mut x_sum, mut y_sum, mut xy_sum, mut x2_sum) = (
        KahanSum::default(),
        KahanSum::default(),
        KahanSum::default(),
        KahanSum::default(),
    );
    let mut n = 0.0;
    for s in samples {
        n += 1.0;
        let x = (s.timestamp_ms - origin_ms) as f64 / 1e3;
        x_sum.add(x);
        y_sum.add(s.value);
        xy_sum.add(x * s.value);
        x2_sum.add(x * x);
    }
    let (x, y, xy, x2) = (x_sum.value(), y_sum.value(), xy_sum.value(), x2_sum.value());
    let cov_xy = xy - x * y / n;
    let var_x = x2 - x * x / n;
    let slope = cov_xy / var_x;
    (slope, y / n - slope * x / n)
}

/// `double_exponential_smoothing(v, sf, tf)` (Prometheus 2's `holt_winters`): Holt's linear
/// smoothing, the level's last value. Factors outside `(0, 1)` fail the query, as in
/// Prometheus, once a window has a sample.
fn smoothed(samples: &[Sample], sf: f64, tf: f64) -> Result<Option<f64>, QueryError> {
    if sf <= 0.0 || sf >= 1.0 {
        return Err(QueryError::Execution(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {}",
            format_go_f(sf)
        )));
    }
    if tf <= 0.0 || tf >= 1.0 {
        return Err(QueryError::Execution(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {}",
            format_go_f(tf)
        )));
    }
    let [first, second, ..] = samples else {
        return Ok(None);
    };
    let (mut s0, mut s1) = (0.0, first.value);
    let mut trend = second.value - first.value;
    for (i, s) in samples.iter().enumerate().skip(1) {
        let x = sf * s.value;
        if i > 1 {
            trend = tf * (s1 - s0) + (1.0 - tf) * trend;
        }
        let y = (1.0 - sf) * (s1 + trend);
        s0 = s1;
        s1 = x + y;
    }
    Ok(Some(s1))
}

/// `rate`, `increase` and `delta`: the change over the window, extrapolated towards the
/// window's bounds, as Prometheus' `extrapolatedRate`.
///
/// Extrapolation reaches a bound only when the first (last) sample lies within 1.1 average
/// intervals of it; otherwise it stops half an interval out, guessing that the series starts
/// (ends) inside the window. A counter is never extrapolated below zero.
fn extrapolated_rate(w: &Window<'_>, counter: bool, per_second: bool) -> Option<f64> {
    let samples = w.samples;
    if samples.len() < 2 {
        return None;
    }
    let (first, last) = (samples.first()?, samples.last()?);
    let mut result = last.value - first.value;
    if counter {
        // A drop is a reset: the counter restarted from zero, so add back what it had.
        for p in samples.windows(2) {
            if p[1].value < p[0].value {
                result += p[0].value;
            }
        }
    }
    let range_start = w.end_ms.saturating_sub(w.range_ms);
    let mut to_start = (first.timestamp_ms - range_start) as f64 / 1000.0;
    let mut to_end = (w.end_ms - last.timestamp_ms) as f64 / 1000.0;
    let sampled = (last.timestamp_ms - first.timestamp_ms) as f64 / 1000.0;
    let average_interval = sampled / (samples.len() - 1) as f64;
    let threshold = average_interval * 1.1;
    if to_start >= threshold {
        to_start = average_interval / 2.0;
    }
    if counter && result > 0.0 && first.value >= 0.0 {
        // Where a straight line through the samples reaches zero.
        let to_zero = sampled * (first.value / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = average_interval / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if per_second {
        factor /= w.range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate` and `idelta`: from the last two samples of the window.
fn instant_rate(samples: &[Sample], rate: bool) -> Option<f64> {
    let [.., previous, last] = samples else {
        return None;
    };
    let interval_ms = last.timestamp_ms - previous.timestamp_ms;
    if interval_ms == 0 {
        return None;
    }
    let change = if rate && last.value < previous.value {
        // A counter reset: the counter counted `last` since restarting.
        last.value
    } else {
        last.value - previous.value
    };
    Some(if rate {
        change / (interval_ms as f64 / 1000.0)
    } else {
        change
    })
}

/// Population variance by Welford's method with compensated sums, as Prometheus'
/// `stdvar_over_time`.
fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut aux) = (0.0, KahanSum::default(), KahanSum::default());
    for v in values {
        count += 1.0;
        let delta = v - mean.value();
        mean.add(delta / count);
        aux.add(delta * (v - mean.value()));
    }
    aux.value() / count
}

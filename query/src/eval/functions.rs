//! Functions over range vectors: `rate`, `irate`, `increase`, `delta`, `idelta`, `resets`,
//! `changes` and the `*_over_time` family, at every step of instant and range queries.
//!
//! A range selector inside a function is read once per series for the whole query span,
//! `(first window start, last window end]`, and a window slides over the samples from step
//! to step. Windows are left-open, `(t - range, t]`, stale markers are dropped, and a window
//! without samples (fewer than two for the rate family) yields no point, as in Prometheus 3.
//! Every function but `last_over_time` drops `__name__`.

use super::aggregate::{KahanSum, average, quantile};
use super::binary::collect;
use super::{Evaluator, Stepped, is_stale_marker, millis, unsupported};
use crate::error::QueryError;
use crate::selector;
use crate::value::Matrix;
use promql_parser::parser::{Call, Expr, MatrixSelector};
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
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "quantile_over_time",
];

/// One window of one series at one step.
struct Window<'s> {
    samples: &'s [Sample],
    /// The window is `(end_ms - range_ms, end_ms]`.
    end_ms: i64,
    range_ms: i64,
    /// The `quantile_over_time` parameter at this step.
    param: f64,
}

impl Evaluator<'_> {
    pub(super) fn call(&mut self, c: &Call) -> Result<Stepped, QueryError> {
        let name = c.func.name;
        let args = &c.args.args;
        if RANGE_FUNCTIONS.contains(&name) {
            let (param, range_arg) = match (name, args.as_slice()) {
                ("quantile_over_time", [q, range]) => (Some(self.scalar_operand(q)?), range),
                (_, [range]) => (None, range),
                _ => {
                    return Err(unsupported(format!(
                        "function `{name}` with these arguments"
                    )));
                }
            };
            let mut range_arg = range_arg.as_ref();
            while let Expr::Paren(p) = range_arg {
                range_arg = &p.expr;
            }
            let ms = match range_arg {
                Expr::MatrixSelector(ms) => ms,
                Expr::Subquery(_) => return Err(unsupported("subquery")),
                _ => return Err(unsupported(format!("function `{name}` of this argument"))),
            };
            return self
                .over_windows(name, ms, param.as_deref())
                .map(Stepped::Vector);
        }
        self.instant_function(c)
    }

    /// Applies range function `name` to the windows of `ms` at every step.
    fn over_windows(
        &mut self,
        name: &str,
        ms: &MatrixSelector,
        param: Option<&[f64]>,
    ) -> Result<Matrix, QueryError> {
        let matchers = selector::matchers(&ms.vs)?;
        let range_ms = millis(ms.range);
        let (at, offset) = (ms.vs.at.as_ref(), ms.vs.offset.as_ref());
        let ends: Vec<i64> = self
            .steps()
            .map(|t| self.selector_time(at, offset, t))
            .collect();
        // Window ends never decrease from step to step (`offset` is fixed, `@` pins them).
        let (Some(&first), Some(&last)) = (ends.first(), ends.last()) else {
            return Ok(Vec::new());
        };
        let from = first.saturating_sub(range_ms).saturating_add(1);
        let keep_name = name == "last_over_time";

        self.check_deadline()?;
        let mut items = Vec::new();
        for series in self.source.select_series(self.tenant, &matchers)? {
            self.check_deadline()?;
            let mut samples = self.source.samples(series.id, from, last)?;
            let read = samples.len();
            self.hold(read)?;
            samples.retain(|s| !is_stale_marker(s.value));
            let metric = if keep_name {
                series.labels.into()
            } else {
                crate::value::LabelSet::from(series.labels).without_metric_name()
            };
            let (mut lo, mut hi) = (0, 0);
            let mut points = 0;
            for (i, &end_ms) in ends.iter().enumerate() {
                while samples.get(hi).is_some_and(|s| s.timestamp_ms <= end_ms) {
                    hi += 1;
                }
                let start_ms = end_ms.saturating_sub(range_ms);
                while lo < hi && samples.get(lo).is_some_and(|s| s.timestamp_ms <= start_ms) {
                    lo += 1;
                }
                let window = Window {
                    samples: samples.get(lo..hi).unwrap_or_default(),
                    end_ms,
                    range_ms,
                    param: param.and_then(|p| p.get(i).copied()).unwrap_or(f64::NAN),
                };
                if let Some(value) = apply(name, &window) {
                    items.push((metric.clone(), Sample::new(self.step_time(i), value)));
                    points += 1;
                }
            }
            self.release(read);
            self.hold(points)?;
        }
        collect(items)
    }
}

/// The value of range function `name` over one window, `None` for no point.
fn apply(name: &str, w: &Window<'_>) -> Option<f64> {
    let samples = w.samples;
    let last = samples.last()?;
    let values = || samples.iter().map(|s| s.value);
    Some(match name {
        "rate" => extrapolated_rate(w, true, true)?,
        "increase" => extrapolated_rate(w, true, false)?,
        "delta" => extrapolated_rate(w, false, false)?,
        "irate" => instant_rate(samples, true)?,
        "idelta" => instant_rate(samples, false)?,
        "resets" => samples
            .windows(2)
            .filter(|p| p[1].value < p[0].value)
            .count() as f64,
        "changes" => samples
            .windows(2)
            .filter(|p| !(p[1].value == p[0].value || (p[1].value.is_nan() && p[0].value.is_nan())))
            .count() as f64,
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
        "quantile_over_time" => quantile(w.param, &mut values().collect::<Vec<_>>()),
        _ => return None,
    })
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

impl Evaluator<'_> {
    /// Functions of instant vectors and scalars.
    fn instant_function(&mut self, c: &Call) -> Result<Stepped, QueryError> {
        let name = c.func.name;
        let args = c.args.args.as_slice();
        let simple: Option<fn(f64) -> f64> = match name {
            "abs" => Some(f64::abs),
            "ceil" => Some(f64::ceil),
            "floor" => Some(f64::floor),
            "sqrt" => Some(f64::sqrt),
            "exp" => Some(f64::exp),
            "ln" => Some(f64::ln),
            "log2" => Some(f64::log2),
            "log10" => Some(f64::log10),
            _ => None,
        };
        if let (Some(f), [v]) = (simple, args) {
            let v = self.vector_operand(v)?;
            return map_values(v, |_, x| f(x));
        }
        match (name, args) {
            ("round", [v, rest @ ..]) => {
                let to_nearest = match rest {
                    [n] => self.scalar_operand(n)?,
                    _ => vec![1.0; self.step_count()],
                };
                let v = self.vector_operand(v)?;
                let steps = self.step_indexer();
                map_values(v, |t, x| {
                    // Half rounds up, as Prometheus' `math.Floor(x*inv + 0.5) / inv`.
                    let inverse = 1.0 / to_nearest.get(steps(t)).copied().unwrap_or(f64::NAN);
                    (x * inverse + 0.5).floor() / inverse
                })
            }
            ("clamp", [v, min, max]) => {
                let (v, min, max) = (
                    self.vector_operand(v)?,
                    self.scalar_operand(min)?,
                    self.scalar_operand(max)?,
                );
                let steps = self.step_indexer();
                let bounds = |t: i64| {
                    let i = steps(t);
                    (
                        min.get(i).copied().unwrap_or(f64::NAN),
                        max.get(i).copied().unwrap_or(f64::NAN),
                    )
                };
                // `max < min` yields nothing at that step.
                let v = v
                    .into_iter()
                    .map(|mut s| {
                        s.points.retain(|p| {
                            let (lo, hi) = bounds(p.timestamp_ms);
                            hi >= lo || hi.is_nan() || lo.is_nan()
                        });
                        s
                    })
                    .collect();
                map_values(v, |t, x| {
                    let (lo, hi) = bounds(t);
                    go_max(lo, go_min(hi, x))
                })
            }
            ("clamp_min" | "clamp_max", [v, bound]) => {
                let (v, bound) = (self.vector_operand(v)?, self.scalar_operand(bound)?);
                let steps = self.step_indexer();
                let is_min = name == "clamp_min";
                map_values(v, |t, x| {
                    let b = bound.get(steps(t)).copied().unwrap_or(f64::NAN);
                    if is_min { go_max(x, b) } else { go_min(x, b) }
                })
            }
            ("scalar", [v]) => {
                let v = self.vector_operand(v)?;
                let mut out = vec![(0usize, f64::NAN); self.step_count()];
                for p in v.iter().flat_map(|s| &s.points) {
                    if let Some(slot) = out.get_mut(self.step_index(p.timestamp_ms)) {
                        *slot = (slot.0 + 1, p.value);
                    }
                }
                Ok(Stepped::Scalar(
                    out.into_iter()
                        .map(|(n, v)| if n == 1 { v } else { f64::NAN })
                        .collect(),
                ))
            }
            ("vector", [s]) => {
                let values = self.scalar_operand(s)?;
                let points = self
                    .steps()
                    .zip(values)
                    .map(|(t, v)| Sample::new(t, v))
                    .collect();
                Ok(Stepped::Vector(vec![crate::value::Series {
                    metric: crate::value::LabelSet::empty(),
                    points,
                }]))
            }
            ("time", []) => Ok(Stepped::Scalar(
                self.steps().map(|t| t as f64 / 1000.0).collect(),
            )),
            ("timestamp", [v]) => {
                let mut arg = v.as_ref();
                while let Expr::Paren(p) = arg {
                    arg = &p.expr;
                }
                let v = match arg {
                    // The time of the sample itself, not of the step.
                    Expr::VectorSelector(vs) => self.vector_selector(vs, true)?,
                    _ => {
                        let v = self.vector_operand(arg)?;
                        return map_values(v, |t, _| t as f64 / 1000.0);
                    }
                };
                map_values(v, |_, x| x)
            }
            ("sort" | "sort_desc", [v]) => {
                // Order only shows in an instant query's result, where the engine applies it.
                self.vector_operand(v).map(Stepped::Vector)
            }
            ("absent", [v]) => {
                let labels = absent_labels(v);
                let v = self.vector_operand(v)?;
                let present = self.by_step(&v);
                let points: Vec<Sample> = present
                    .iter()
                    .enumerate()
                    .filter(|(_, members)| members.is_empty())
                    .map(|(i, _)| Sample::new(self.step_time(i), 1.0))
                    .collect();
                Ok(Stepped::Vector(if points.is_empty() {
                    Vec::new()
                } else {
                    vec![crate::value::Series {
                        metric: labels,
                        points,
                    }]
                }))
            }
            _ => Err(unsupported(format!("function `{name}`"))),
        }
    }

    /// Maps a step's time to its index, for closures that cannot borrow `self`.
    fn step_indexer(&self) -> impl Fn(i64) -> usize + use<> {
        let (start, step) = (self.start_ms, self.step_ms);
        move |t| usize::try_from((t - start) / step).unwrap_or(usize::MAX)
    }
}

/// Applies `f(step time, value)` to every point, dropping `__name__` as every math function
/// does in Prometheus.
fn map_values(v: Matrix, f: impl Fn(i64, f64) -> f64) -> Result<Stepped, QueryError> {
    let items = v.into_iter().flat_map(|s| {
        let metric = s.metric.without_metric_name();
        let f = &f;
        s.points.into_iter().map(move |p| {
            (
                metric.clone(),
                Sample::new(p.timestamp_ms, f(p.timestamp_ms, p.value)),
            )
        })
    });
    collect(items).map(Stepped::Vector)
}

/// Go's `math.Max`: NaN if either is NaN.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN if either is NaN.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// The labels of `absent(x{...})`: each label set with `=` in the selector, unless the
/// selector names it more than once (Prometheus' historic rule); `{}` for any other argument.
fn absent_labels(arg: &Expr) -> crate::value::LabelSet {
    let Expr::VectorSelector(vs) = arg else {
        return crate::value::LabelSet::empty();
    };
    let mut labels = crate::value::LabelSet::empty();
    let mut seen = std::collections::HashSet::new();
    for m in &vs.matchers.matchers {
        if m.name == protocols::model::METRIC_NAME_LABEL {
            continue;
        }
        let first = seen.insert(m.name.clone());
        labels = match m.op {
            promql_parser::label::MatchOp::Equal if first => labels.with(&m.name, &m.value),
            _ => labels.with(&m.name, ""),
        };
    }
    labels
}

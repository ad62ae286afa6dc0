//! Functions of instant vectors and scalars: math (`abs`, `round`, `clamp`, `ln`, the
//! trigonometric functions, `sgn`, ...), `scalar`, `vector`, `time`, `timestamp`, `pi`, the
//! date functions (`hour`, `day_of_week`, ..., of the step's time or of each value),
//! `label_replace`, `label_join`, `sort`, `sort_desc`, `absent` and `histogram_quantile`.
//!
//! Math and date functions drop `__name__` when the query's evaluation ends, as Prometheus 3
//! with delayed name removal does (`LabelSet::drop_name_later`); `label_replace`,
//! `label_join` and `sort*` keep it, and can read or keep a name marked to go.

use super::binary::collect_series;
use super::{Evaluator, Stepped, unsupported};
use crate::error::QueryError;
use crate::value::{LabelSet, Matrix, Series};
use promql_parser::parser::{Call, Expr, VectorSelector};
use protocols::Sample;
use regex::Regex;

impl Evaluator<'_> {
    /// Functions of instant vectors and scalars.
    pub(super) fn instant_function(&mut self, c: &Call) -> Result<Stepped, QueryError> {
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
            "sin" => Some(f64::sin),
            "cos" => Some(f64::cos),
            "tan" => Some(f64::tan),
            "asin" => Some(f64::asin),
            "acos" => Some(f64::acos),
            "atan" => Some(f64::atan),
            "sinh" => Some(f64::sinh),
            "cosh" => Some(f64::cosh),
            "tanh" => Some(f64::tanh),
            "asinh" => Some(f64::asinh),
            "acosh" => Some(f64::acosh),
            "atanh" => Some(f64::atanh),
            // In Prometheus' order of operations, for the same rounding.
            "deg" => Some(|x| x * 180.0 / std::f64::consts::PI),
            "rad" => Some(|x| x * std::f64::consts::PI / 180.0),
            // NaN and ±0 stay as they are.
            "sgn" => Some(|x| {
                if x < 0.0 {
                    -1.0
                } else if x > 0.0 {
                    1.0
                } else {
                    x
                }
            }),
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
                Ok(Stepped::Vector(vec![Series {
                    metric: LabelSet::empty(),
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
                let mut arg = v.as_ref();
                while let Expr::Paren(p) = arg {
                    arg = &p.expr;
                }
                let labels = match arg {
                    Expr::VectorSelector(vs) => absent_labels(Some(vs)),
                    _ => absent_labels(None),
                };
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
                    vec![Series {
                        metric: labels,
                        points,
                    }]
                }))
            }
            ("pi", []) => Ok(Stepped::Scalar(vec![
                std::f64::consts::PI;
                self.step_count()
            ])),
            (
                "minute" | "hour" | "day_of_month" | "day_of_week" | "day_of_year"
                | "days_in_month" | "month" | "year",
                [],
            ) => {
                // The step's time in whole seconds, truncated as Go's `ts / 1000`.
                let points = self
                    .steps()
                    .map(|t| Sample::new(t, date_part(name, t / 1000)))
                    .collect();
                Ok(Stepped::Vector(vec![Series {
                    metric: LabelSet::empty(),
                    points,
                }]))
            }
            (
                "minute" | "hour" | "day_of_month" | "day_of_week" | "day_of_year"
                | "days_in_month" | "month" | "year",
                [v],
            ) => {
                let v = self.vector_operand(v)?;
                // `as` truncates toward zero like Go's `int64(f)`, but saturates where Go's
                // result is unspecified (NaN, infinities, beyond ±2^63).
                map_values(v, |_, x| date_part(name, x as i64))
            }
            ("label_replace", [v, dst, replacement, src, regex]) => {
                let v = self.vector_operand(v)?;
                let dst = self.string_operand(dst)?;
                let replacement = self.string_operand(replacement)?;
                let src = self.string_operand(src)?;
                let regex = self.string_operand(regex)?;
                let re = Regex::new(&format!("^(?s:{regex})$")).map_err(|_| {
                    QueryError::Execution(format!(
                        "invalid regular expression in label_replace(): {regex}"
                    ))
                })?;
                if !is_label_name(&dst) {
                    return Err(QueryError::Execution(format!(
                        "invalid destination label name in label_replace(): {dst}"
                    )));
                }
                relabel(v, |metric| {
                    let value = metric.get(&src).unwrap_or("");
                    let Some(captures) = re.captures(value) else {
                        return metric.clone();
                    };
                    let mut replaced = String::new();
                    captures.expand(&replacement, &mut replaced);
                    set_label(metric, &dst, &replaced)
                })
            }
            ("label_join", [v, dst, sep, sources @ ..]) => {
                let v = self.vector_operand(v)?;
                let dst = self.string_operand(dst)?;
                let sep = self.string_operand(sep)?;
                let mut names = Vec::with_capacity(sources.len());
                for s in sources {
                    let name = self.string_operand(s)?;
                    if !is_label_name(&name) {
                        return Err(QueryError::Execution(format!(
                            "invalid source label name in label_join(): {name}"
                        )));
                    }
                    names.push(name);
                }
                if !is_label_name(&dst) {
                    return Err(QueryError::Execution(format!(
                        "invalid destination label name in label_join(): {dst}"
                    )));
                }
                relabel(v, |metric| {
                    let joined = names
                        .iter()
                        .map(|n| metric.get(n).unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join(&sep);
                    set_label(metric, &dst, &joined)
                })
            }
            ("histogram_quantile", [q, v]) => {
                let q = self.scalar_operand(q)?;
                let v = self.vector_operand(v)?;
                self.histogram_quantile(&q, v).map(Stepped::Vector)
            }
            ("histogram_fraction", [lower, upper, v]) => {
                let lower = self.scalar_operand(lower)?;
                let upper = self.scalar_operand(upper)?;
                let v = self.vector_operand(v)?;
                Ok(Stepped::Vector(self.histogram_fraction(&lower, &upper, v)))
            }
            _ => Err(unsupported(format!("function `{name}`"))),
        }
    }

    /// Evaluates an operand the parser has typed as a string.
    fn string_operand(&mut self, expr: &Expr) -> Result<String, QueryError> {
        match self.eval(expr)? {
            Stepped::String(s) => Ok(s),
            other => Err(super::type_mismatch("string", &other)),
        }
    }

    /// Maps a step's time to its index, for closures that cannot borrow `self`.
    fn step_indexer(&self) -> impl Fn(i64) -> usize + use<> {
        let (start, step) = (self.start_ms, self.step_ms);
        move |t| usize::try_from((t - start) / step).unwrap_or(usize::MAX)
    }
}

/// Applies `f(step time, value)` to every point, dropping `__name__` as every math function
/// does in Prometheus (at the end of evaluation, as Prometheus 3 does).
fn map_values(v: Matrix, f: impl Fn(i64, f64) -> f64) -> Result<Stepped, QueryError> {
    let mapped = v.into_iter().map(|s| Series {
        metric: s.metric.drop_name_later(),
        points: s
            .points
            .into_iter()
            .map(|p| Sample::new(p.timestamp_ms, f(p.timestamp_ms, p.value)))
            .collect(),
    });
    collect_series(mapped).map(Stepped::Vector)
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

/// The labels of `absent(x{...})` and `absent_over_time(x{...}[r])`: each label set with
/// `=` in the selector, unless the selector names it more than once (Prometheus' historic
/// rule: a later matcher of the same name removes it, a later `=` after another operator sets
/// it); `{}` for any other argument.
pub(super) fn absent_labels(selector: Option<&VectorSelector>) -> LabelSet {
    let mut labels = LabelSet::empty();
    let Some(vs) = selector else {
        return labels;
    };
    let mut set = std::collections::HashSet::new();
    for m in &vs.matchers.matchers {
        if m.name == protocols::model::METRIC_NAME_LABEL {
            continue;
        }
        labels = match m.op {
            promql_parser::label::MatchOp::Equal if !set.contains(&m.name) => {
                set.insert(m.name.clone());
                labels.with(&m.name, &m.value)
            }
            _ => labels.with(&m.name, ""),
        };
    }
    labels
}

/// Applies `f` to the labels of every series, keeping the values (and `__name__` unless `f`
/// changes it); two series that end up with one label set at one step fail the query.
fn relabel(v: Matrix, f: impl Fn(&LabelSet) -> LabelSet) -> Result<Stepped, QueryError> {
    let relabelled = v.into_iter().map(|s| Series {
        metric: f(&s.metric),
        points: s.points,
    });
    collect_series(relabelled).map(Stepped::Vector)
}

/// `metric` with label `dst` set to `value`; writing `__name__` keeps it past the end of
/// evaluation even where a function marked it to go (Prometheus 3's `label_replace` and
/// `label_join` clear `DropName` then).
fn set_label(metric: &LabelSet, dst: &str, value: &str) -> LabelSet {
    let out = metric.with(dst, value);
    if dst == protocols::model::METRIC_NAME_LABEL {
        out.keeping_name()
    } else {
        out
    }
}

/// Whether `name` is a label name in the classic charset, `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(super) fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One date function of a time in seconds since the epoch, in UTC, as Go's `time` package
/// computes it (proleptic Gregorian calendar; weeks start on Sunday, 0).
fn date_part(name: &str, secs: i64) -> f64 {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = |m: i64| match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let value = match name {
        "minute" => of_day % 3600 / 60,
        "hour" => of_day / 3600,
        "day_of_month" => day,
        // 1970-01-01 was a Thursday.
        "day_of_week" => (days + 4).rem_euclid(7),
        "day_of_year" => (1..month).map(month_days).sum::<i64>() + day,
        "days_in_month" => month_days(month),
        "month" => month,
        "year" => year,
        _ => return f64::NAN,
    };
    value as f64
}

/// `(year, month 1-12, day 1-31)` of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

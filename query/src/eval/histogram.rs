//! `histogram_quantile` and `histogram_fraction` over classic histograms: series with an
//! `le` label, one per bucket, each counting the observations up to its upper bound.
//!
//! As Prometheus 3's `BucketQuantile`, at each step and for each group (the labels without
//! `le` and `__name__`): buckets are sorted by bound, equal bounds merged; without a `+Inf`
//! bucket, or with fewer than two buckets, the result is NaN. Counts that decrease are
//! raised to the count before them (a scrape can catch buckets at different moments), and
//! differences below a relative 1e-12 are ignored. The quantile interpolates linearly within
//! its bucket, from 0 for the first bucket if its bound is positive; a rank in the `+Inf`
//! bucket gives the highest finite bound. `q < 0` gives -Inf, `q > 1` +Inf, NaN gives NaN.
//! A series whose `le` does not parse as a float is ignored.

use super::Evaluator;
use crate::error::QueryError;
use crate::value::{DROP_NAME_MARK, LabelSet, Matrix, Series};
use protocols::Sample;
use std::collections::BTreeMap;

/// Relative difference of adjacent bucket counts taken as floating-point noise.
const SMALL_DELTA_TOLERANCE: f64 = 1e-12;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    upper_bound: f64,
    count: f64,
}

impl Evaluator<'_> {
    pub(super) fn histogram_quantile(&self, q: &[f64], v: Matrix) -> Result<Matrix, QueryError> {
        Ok(self.per_histogram(v, |i, buckets| {
            bucket_quantile(q.get(i).copied().unwrap_or(f64::NAN), buckets)
        }))
    }

    /// `histogram_fraction(lower, upper, v)` over classic buckets (Prometheus 3.5+,
    /// `BucketFraction`): the estimated share of observations between `lower` and `upper`.
    pub(super) fn histogram_fraction(&self, lower: &[f64], upper: &[f64], v: Matrix) -> Matrix {
        self.per_histogram(v, |i, buckets| {
            let lower = lower.get(i).copied().unwrap_or(f64::NAN);
            let upper = upper.get(i).copied().unwrap_or(f64::NAN);
            bucket_fraction(lower, upper, buckets)
        })
    }

    /// Groups the bucket series of `v` into histograms (every label but `le`; the name goes
    /// at the end of evaluation) and applies `f(step index, buckets)` at each step.
    fn per_histogram(&self, v: Matrix, f: impl Fn(usize, &mut Vec<Bucket>) -> f64) -> Matrix {
        // Group → step → buckets.
        let steps = self.step_count();
        let mut groups: BTreeMap<LabelSet, Vec<Vec<Bucket>>> = BTreeMap::new();
        for series in v {
            let Some(upper_bound) = series.metric.get("le").and_then(parse_go_float) else {
                continue;
            };
            // Keyed with the name, which goes at the end of evaluation (Prometheus keys by
            // every label but `le`).
            let key = series
                .metric
                .filter(|name| name != "le" && name != DROP_NAME_MARK)
                .drop_name_later();
            let group = groups.entry(key).or_insert_with(|| vec![Vec::new(); steps]);
            for p in series.points {
                if let Some(buckets) = group.get_mut(self.step_index(p.timestamp_ms)) {
                    buckets.push(Bucket {
                        upper_bound,
                        count: p.value,
                    });
                }
            }
        }
        groups
            .into_iter()
            .filter_map(|(metric, steps)| {
                let points: Vec<Sample> = steps
                    .into_iter()
                    .enumerate()
                    .filter(|(_, buckets)| !buckets.is_empty())
                    .map(|(i, mut buckets)| Sample::new(self.step_time(i), f(i, &mut buckets)))
                    .collect();
                (!points.is_empty()).then_some(Series { metric, points })
            })
            .collect()
    }
}

/// Go's `strconv.ParseFloat` for the values an `le` label takes: decimal and exponent
/// forms, `+Inf`/`-Inf`/`Inf`/`NaN` in any case (hexadecimal floats are not accepted).
fn parse_go_float(s: &str) -> Option<f64> {
    let lower = s.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if matches!(unsigned, "inf" | "infinity" | "nan")
        || unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.')
    {
        lower.parse().ok()
    } else {
        None
    }
}

fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // A total order, so that a NaN bound cannot upset the sort: it sorts after +Inf, which
    // then is not last, and the result is NaN.
    buckets.sort_by(|a, b| a.upper_bound.total_cmp(&b.upper_bound));
    if buckets
        .last()
        .is_none_or(|b| b.upper_bound != f64::INFINITY)
    {
        return f64::NAN;
    }
    coalesce(buckets);
    ensure_monotonic(buckets);
    let n = buckets.len();
    if n < 2 {
        return f64::NAN;
    }
    let observations = buckets[n - 1].count;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    // The first bucket (but the last) whose count reaches the rank, as Go's `sort.Search`.
    let b = buckets[..n - 1].partition_point(|b| b.count < rank);
    if b == n - 1 {
        return buckets[n - 2].upper_bound;
    }
    if b == 0 && buckets[0].upper_bound <= 0.0 {
        return buckets[0].upper_bound;
    }
    let bucket_end = buckets[b].upper_bound;
    let mut count = buckets[b].count;
    let mut bucket_start = 0.0;
    if b > 0 {
        bucket_start = buckets[b - 1].upper_bound;
        count -= buckets[b - 1].count;
        rank -= buckets[b - 1].count;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// The share of observations in `(lower, upper]`, as Prometheus' `BucketFraction`: buckets
/// sorted and merged as for the quantile but not made monotonic; NaN without a `+Inf`
/// bucket, with no observations or a NaN bound; 0 when `lower >= upper`. Within a bucket the
/// count is interpolated linearly; the first bucket starts at 0 if its bound is positive,
/// else at -Inf, and neither it nor the `+Inf` bucket is interpolated into (a bound inside
/// either counts all of the first bucket and none of the `+Inf` one).
fn bucket_fraction(lower: f64, upper: f64, buckets: &mut Vec<Bucket>) -> f64 {
    buckets.sort_by(|a, b| a.upper_bound.total_cmp(&b.upper_bound));
    if buckets
        .last()
        .is_none_or(|b| b.upper_bound != f64::INFINITY)
    {
        return f64::NAN;
    }
    coalesce(buckets);
    let count = buckets.last().map_or(0.0, |b| b.count);
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let first_bound = buckets.first().map_or(0.0, |b| b.upper_bound);
    let mut bucket_start = if first_bound <= 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    let (mut lower_rank, mut upper_rank) = (None, None);
    let mut rank = 0.0;
    for (i, b) in buckets.iter().enumerate() {
        if i > 0 {
            bucket_start = buckets[i - 1].upper_bound;
        }
        let bucket_end = b.upper_bound;
        // The rank at `v` inside this bucket; an infinite bucket is not interpolated into.
        let at = |v: f64| {
            if bucket_start == f64::NEG_INFINITY {
                b.count
            } else {
                rank + (b.count - rank) * (v - bucket_start) / (bucket_end - bucket_start)
            }
        };
        if lower_rank.is_none() && bucket_start >= lower {
            lower_rank = Some(rank);
        }
        if upper_rank.is_none() && bucket_start >= upper {
            upper_rank = Some(rank);
        }
        if lower_rank.is_some() && upper_rank.is_some() {
            break;
        }
        if lower_rank.is_none() && bucket_start < lower && bucket_end > lower {
            lower_rank = Some(at(lower));
        }
        if upper_rank.is_none() && bucket_start < upper && bucket_end > upper {
            upper_rank = Some(at(upper));
        }
        if lower_rank.is_some() && upper_rank.is_some() {
            break;
        }
        rank = b.count;
    }
    // A rank past the total (or none) is the total; a NaN rank stays NaN, as in Go.
    let clamp = |r: Option<f64>| match r {
        Some(r) if r.partial_cmp(&count) != Some(std::cmp::Ordering::Greater) => r,
        _ => count,
    };
    (clamp(upper_rank) - clamp(lower_rank)) / count
}

/// Merges buckets with equal bounds (sorted input), adding their counts.
fn coalesce(buckets: &mut Vec<Bucket>) {
    let mut out: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for b in buckets.drain(..) {
        match out.last_mut() {
            Some(last) if last.upper_bound == b.upper_bound => last.count += b.count,
            _ => out.push(b),
        }
    }
    *buckets = out;
}

/// Prometheus 3's `ensureMonotonicAndIgnoreSmallDeltas`: a count that is almost equal to the
/// previous one, or lower, becomes the previous one.
fn ensure_monotonic(buckets: &mut [Bucket]) {
    let Some(first) = buckets.first() else {
        return;
    };
    let mut prev = first.count;
    for b in buckets.iter_mut().skip(1) {
        let curr = b.count;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, SMALL_DELTA_TOLERANCE) || curr < prev {
            b.count = prev;
            continue;
        }
        prev = curr;
    }
}

/// Prometheus' `almostEqual`: relative difference below `epsilon`.
fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = 2.2250738585072014e-308;
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

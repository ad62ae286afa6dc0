//! Proof against the real thing: a real Prometheus 2.42 and a real core node take the same
//! generated data over remote_write, and every query of the committed corpus
//! (`tests/corpus/promql.txt`) must give the same answer on both: the same result type, the
//! same label sets, values within 1e-6 relative (NaN equals NaN, infinities exactly), the same
//! order for `sort`/`sort_desc` and a top-level `topk`/`bottomk`, and an error of the same
//! `errorType` where Prometheus errs.
//!
//! The data avoids the places where Prometheus 2 and 3 differ by design rather than by bug:
//! sample timestamps are odd milliseconds and query times round seconds (≡ 3 mod 5), so no
//! sample ever sits on a window's boundary (closed `[t - r, t]` in 2.x, left-open in 3.x) and
//! no subquery step on a subquery window's start. The differences that remain are ledgered in
//! `docs/promql-ledger.md`; a corpus line marked `ledger(<id>)` must name an entry there, and
//! must still differ (a mark that no longer differs is stale and fails the test too).
//!
//! Corpus syntax, one query per line:
//!
//! ```text
//! # a comment                       ## Section title
//! instant: <promql>                 evaluated at every time in INSTANT_TIMES
//! range: <promql>                   from +0m13s to +56m13s, step 60s
//! range 15s: <promql>               with another step
//! range 30s +10m13s +30m13s: <promql>   step, start and end
//! ledger(<id>) instant: <promql>    a ledgered difference
//! instant empty: <promql>           empty at every evaluation on purpose (any other line must
//!                                   answer something somewhere)
//! ```
//!
//! Times are relative to the data's start (`base`); `${25m13s}` inside a query becomes the
//! absolute Unix time of `base + 25m13s`, for `@`.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use updraft_tests::*;

const CORPUS: &str = include_str!("../corpus/promql.txt");
const LEDGER: &str = include_str!("../../docs/promql-ledger.md");

/// Samples are 15 s apart (with jitter), 200 of them per series: 50 minutes of data.
const INTERVAL_MS: i64 = 15_000;
const SAMPLES: i64 = 200;
/// Instant queries run at each of these offsets from `base`: during the data, in the middle
/// of gaps and after series ended, after the data within the 5 m lookback, and past it.
const INSTANT_TIMES: &[&str] = &["12m13s", "31m13s", "43m13s", "52m13s", "56m13s"];
const DEFAULT_RANGE: (&str, &str, &str) = ("60s", "0m13s", "56m13s");

const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

type Labels = Vec<(String, String)>;

struct GenSeries {
    labels: Labels,
    samples: Vec<(i64, f64)>,
}

/// splitmix64: deterministic noise without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn labels(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut out = vec![("__name__".to_owned(), name.to_owned())];
    out.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    out
}

/// The generated data set. Every timestamp is `base + k * 15 s + an odd number of ms` (so
/// never a round second), each series' samples strictly increasing, intervals 14-16 s.
fn generate(base_ms: i64) -> Vec<GenSeries> {
    let mut out = Vec::new();
    let mut seed = 1u64;
    let mut series = |labels: Labels, offset_ms: i64, value: &mut dyn FnMut(i64) -> Option<f64>| {
        seed += 1;
        let mut rng = Rng(seed);
        let samples = (0..=SAMPLES)
            .filter_map(|k| {
                // Odd jitter in [1, 999] ms keeps every timestamp off a round second.
                let t = base_ms + k * INTERVAL_MS + offset_ms + 2 * (rng.below(500) as i64) + 1;
                value(k).map(|v| (t, v))
            })
            .collect();
        GenSeries { labels, samples }
    };
    let stale = f64::from_bits(STALE_NAN);

    // Gauges with negative values, a gap longer than the lookback (i3), a series that ends
    // with a stale marker (i4) and one that just stops (i2).
    for (i, (instance, region, phase, shift)) in [
        ("i1", "eu", 0.0, 0.0),
        ("i2", "eu", 1.0, 3.5),
        ("i3", "us", 2.0, -4.25),
        ("i4", "us", 3.0, -25.0),
    ]
    .into_iter()
    .enumerate()
    {
        let l = labels(
            "temp_celsius",
            &[
                ("job", "sensors"),
                ("instance", instance),
                ("region", region),
            ],
        );
        out.push(series(l, 3000 * i as i64, &mut |k| {
            let v =
                ((20.0 + 10.0 * (k as f64 / 20.0 + phase).sin() + shift) * 100.0).round() / 100.0;
            match (instance, k) {
                ("i2", k) if k >= 170 => None,
                ("i3", 80..=115) => None,
                ("i4", 150) => Some(stale),
                ("i4", k) if k > 150 => None,
                (_, k) if k == SAMPLES => None,
                _ => Some(v),
            }
        }));
    }
    // A ratio gauge; i3 goes stale at k=120 and comes back at k=160.
    for (i, (instance, region)) in [("i1", "eu"), ("i2", "eu"), ("i3", "us")]
        .into_iter()
        .enumerate()
    {
        let l = labels(
            "humidity_ratio",
            &[
                ("job", "sensors"),
                ("instance", instance),
                ("region", region),
            ],
        );
        let mut h = Rng(100 + i as u64);
        out.push(series(l, 1000 + 4000 * i as i64, &mut |k| {
            let v = (h.below(1000) as f64) / 1000.0;
            match (instance, k) {
                ("i3", 120) => Some(stale),
                ("i3", 121..=159) => None,
                (_, k) if k == SAMPLES => None,
                _ => Some(v),
            }
        }));
    }
    // Counters: large starting values, resets, a series that starts at 0 midway.
    let mut n = 0;
    for instance in ["a1", "a2"] {
        for method in ["GET", "POST"] {
            for code in ["200", "500"] {
                n += 1;
                let l = labels(
                    "http_requests_total",
                    &[
                        ("job", "api"),
                        ("instance", instance),
                        ("method", method),
                        ("code", code),
                    ],
                );
                let mut c = Rng(200 + n);
                let mut total = 10_000.0 * n as f64;
                let key = (instance, method, code);
                out.push(series(l, 500 + 1000 * n as i64, &mut |k| {
                    let step = c.below(if code == "200" { 40 } else { 5 }) as f64;
                    match (key, k) {
                        (("a2", "GET", "500"), k) if k < 90 => return None,
                        (("a2", "GET", "500"), 90) => total = 0.0,
                        (("a1", "GET", "200"), 100) => total = 7.0,
                        (("a2", "POST", "500"), 60 | 140) => total = 2.0,
                        _ => total += step,
                    }
                    (k < SAMPLES).then_some(total)
                }));
            }
        }
    }
    // Counters with a gap (a2) and a reset, then a stale marker at the end (a1).
    for (i, instance) in ["a1", "a2"].into_iter().enumerate() {
        let l = labels("errors_total", &[("job", "api"), ("instance", instance)]);
        let mut c = Rng(300 + i as u64);
        let mut total = 50_000.0 + 1000.0 * i as f64;
        out.push(series(l, 2500 + 5000 * i as i64, &mut |k| {
            total += c.below(4) as f64;
            match (instance, k) {
                ("a1", 130) => {
                    total = 1.0;
                    Some(total)
                }
                ("a1", k) if k == SAMPLES => Some(stale),
                ("a2", 50..=75) => None,
                (_, k) if k == SAMPLES => None,
                _ => Some(total),
            }
        }));
    }
    // A classic histogram per instance: cumulative `le` buckets, `_sum`, `_count`; a2 resets
    // (every bucket together) at k=110.
    let bounds = ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"];
    for (i, instance) in ["a1", "a2"].into_iter().enumerate() {
        let mut per_bucket = vec![vec![0.0f64; bounds.len()]; (SAMPLES + 1) as usize];
        let mut sums = vec![0.0f64; (SAMPLES + 1) as usize];
        // A histogram that has counted for a while: rate extrapolation never meets a count
        // near zero where the data starts (Prometheus 2 and 3 extrapolate there differently).
        let baseline = [500.0, 900.0, 1500.0, 2000.0, 2300.0, 2400.0, 2450.0];
        let mut counts = baseline.to_vec();
        let mut sum = 1234.5;
        let mut h = Rng(400 + i as u64);
        for k in 0..=SAMPLES as usize {
            if instance == "a2" && k == 110 {
                counts = vec![0.0; bounds.len()];
                sum = 0.0;
            }
            let mut cumulative = 0.0;
            for (b, count) in counts.iter_mut().enumerate() {
                // Fewer observations in the outer buckets; a2 is slower.
                let new = h.below(if b < 3 { 12 } else { 6 }) as f64
                    + if i == 1 { b as f64 } else { 0.0 };
                cumulative += new;
                *count += cumulative;
                sum += new * 0.1 * (b as f64 + 1.0);
            }
            per_bucket[k].clone_from(&counts);
            sums[k] = (sum * 1000.0f64).round() / 1000.0;
        }
        let offset = 6000 + 2000 * i as i64;
        for (b, le) in bounds.iter().enumerate() {
            let l = labels(
                "request_duration_seconds_bucket",
                &[("job", "api"), ("instance", instance), ("le", le)],
            );
            let column: Vec<f64> = per_bucket.iter().map(|c| c[b]).collect();
            // One jitter for the whole family: a scrape stamps every bucket alike.
            let mut j = Rng(500 + i as u64);
            let samples = (0..SAMPLES)
                .map(|k| {
                    let t = base_ms + k * INTERVAL_MS + offset + 2 * (j.below(500) as i64) + 1;
                    (t, column[k as usize])
                })
                .collect();
            out.push(GenSeries { labels: l, samples });
        }
        for (name, column) in [
            (
                "request_duration_seconds_count",
                per_bucket
                    .iter()
                    .map(|c| c[bounds.len() - 1])
                    .collect::<Vec<_>>(),
            ),
            ("request_duration_seconds_sum", sums.clone()),
        ] {
            let l = labels(name, &[("job", "api"), ("instance", instance)]);
            let mut j = Rng(500 + i as u64);
            let samples = (0..SAMPLES)
                .map(|k| {
                    let t = base_ms + k * INTERVAL_MS + offset + 2 * (j.below(500) as i64) + 1;
                    (t, column[k as usize])
                })
                .collect();
            out.push(GenSeries { labels: l, samples });
        }
    }
    // Integer gauges that repeat values and go negative.
    for (i, instance) in ["w1", "w2", "w3"].into_iter().enumerate() {
        let l = labels("queue_depth", &[("job", "worker"), ("instance", instance)]);
        let mut q = Rng(600 + i as u64);
        let mut depth = 5.0 * i as f64;
        out.push(series(l, 9000 + 1000 * i as i64, &mut |k| {
            if q.below(3) == 0 {
                depth += q.below(7) as f64 - 3.0;
            }
            (k < SAMPLES).then_some(depth - 4.0)
        }));
    }
    // Big, steadily growing gauges: deriv and predict_linear.
    for (i, instance) in ["w1", "w2", "w3"].into_iter().enumerate() {
        for (d, device) in ["sda", "sdb"].into_iter().enumerate() {
            let l = labels(
                "disk_used_bytes",
                &[
                    ("job", "worker"),
                    ("instance", instance),
                    ("device", device),
                ],
            );
            let start = 1e9 * (i as f64 + 1.0) + 3e8 * d as f64;
            let slope = 1e5 * (1.0 + i as f64) * if d == 1 { -0.5 } else { 1.0 };
            let mut g = Rng(700 + 10 * i as u64 + d as u64);
            out.push(series(l, 10_000 + 500 * d as i64, &mut |k| {
                let noise = g.below(20_000) as f64;
                (k < SAMPLES).then_some(start + slope * k as f64 + noise)
            }));
        }
    }
    // `up` for every target (i4 down once its temperature ended), `build_info` for joins.
    for (job, instance) in [
        ("sensors", "i1"),
        ("sensors", "i2"),
        ("sensors", "i3"),
        ("sensors", "i4"),
        ("api", "a1"),
        ("api", "a2"),
        ("worker", "w1"),
        ("worker", "w2"),
        ("worker", "w3"),
    ] {
        let l = labels("up", &[("job", job), ("instance", instance)]);
        out.push(series(l, 13_000, &mut |k| {
            let v = match (instance, k) {
                ("i4", k) if k >= 150 => 0.0,
                ("i3", 80..=115) => 0.0,
                _ => 1.0,
            };
            (k < SAMPLES).then_some(v)
        }));
    }
    for (job, instance, version) in [
        ("api", "a1", "1.2.0"),
        ("api", "a2", "1.3.0"),
        ("worker", "w1", "1.2.0"),
        ("worker", "w2", "1.2.0"),
        ("worker", "w3", "2.0.0"),
    ] {
        let l = labels(
            "build_info",
            &[("job", job), ("instance", instance), ("version", version)],
        );
        out.push(series(l, 14_000, &mut |k| (k < SAMPLES).then_some(1.0)));
    }
    // Ordinary NaN (not the stale marker) and infinities among numbers: n1 is NaN every 7th
    // sample, n2 +Inf every 11th and -Inf every 13th, n3 plain.
    for (i, instance) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let l = labels("odd_value", &[("job", "odd"), ("instance", instance)]);
        out.push(series(l, 11_000 + 1000 * i as i64, &mut |k| {
            let v = match (instance, k % 7, k % 11, k % 13) {
                ("n1", 3, _, _) => f64::NAN,
                ("n2", _, 5, _) => f64::INFINITY,
                ("n2", _, _, 6) => f64::NEG_INFINITY,
                _ => (k % 9) as f64 - 2.5,
            };
            (k < SAMPLES).then_some(v)
        }));
    }
    out
}

/// One query of the corpus.
#[derive(Debug, Clone)]
struct Case {
    line: usize,
    section: String,
    ledger: Option<String>,
    /// Marked `empty`: the answer is empty at every evaluation, on purpose (a selector that
    /// matches nothing, `topk(0, ...)`). Any other line must answer something somewhere, so
    /// that no line passes by comparing nothing with nothing.
    empty: bool,
    kind: Kind,
    query: String,
}

#[derive(Debug, Clone)]
enum Kind {
    Instant,
    /// Step, start and end, as offsets from `base`.
    Range {
        step: String,
        start: String,
        end: String,
    },
}

/// `1h2m3s`-style durations (units h, m, s, ms) → milliseconds.
fn duration_ms(s: &str) -> anyhow::Result<i64> {
    let mut total = 0i64;
    let mut number = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: i64 = number
            .parse()
            .map_err(|_| anyhow::anyhow!("bad duration {s:?}"))?;
        number.clear();
        total += match c {
            'h' => n * 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                n
            }
            'm' => n * 60_000,
            's' => n * 1000,
            _ => anyhow::bail!("bad duration {s:?}"),
        };
    }
    if !number.is_empty() {
        anyhow::bail!("duration {s:?} lacks a unit");
    }
    Ok(total)
}

fn parse_corpus(text: &str) -> anyhow::Result<Vec<Case>> {
    let mut cases = Vec::new();
    let mut section = String::from("(none)");
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(title) = line.strip_prefix("## ") {
            section = title.trim().to_owned();
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, query) = line
            .split_once(": ")
            .ok_or_else(|| anyhow::anyhow!("line {}: no `kind: query` in {line:?}", i + 1))?;
        let mut words: Vec<&str> = head.split_whitespace().collect();
        let mut ledger = None;
        if let Some(first) = words.first()
            && let Some(id) = first
                .strip_prefix("ledger(")
                .and_then(|r| r.strip_suffix(')'))
        {
            ledger = Some(id.to_owned());
            words.remove(0);
        }
        let empty = words.last() == Some(&"empty");
        if empty {
            words.pop();
        }
        let kind = match words.as_slice() {
            ["instant"] => Kind::Instant,
            ["range", rest @ ..] => {
                let (d_step, d_start, d_end) = DEFAULT_RANGE;
                let (step, start, end) = match rest {
                    [] => (d_step, d_start, d_end),
                    [step] => (*step, d_start, d_end),
                    [step, start, end] => (
                        *step,
                        start.trim_start_matches('+'),
                        end.trim_start_matches('+'),
                    ),
                    _ => anyhow::bail!("line {}: bad range header {head:?}", i + 1),
                };
                for d in [step, start, end] {
                    duration_ms(d)?;
                }
                Kind::Range {
                    step: step.to_owned(),
                    start: start.to_owned(),
                    end: end.to_owned(),
                }
            }
            _ => anyhow::bail!("line {}: unknown kind {head:?}", i + 1),
        };
        cases.push(Case {
            line: i + 1,
            section: section.clone(),
            ledger,
            empty,
            kind,
            query: query.trim().to_owned(),
        });
    }
    Ok(cases)
}

/// The ids of the ledger's entries: headings `### <id>: ...`.
fn ledger_ids(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("### "))
        .filter_map(|l| l.split(':').next())
        .map(|id| id.trim().trim_matches('`').to_owned())
        .collect()
}

/// Replaces `${12m13s}` with the Unix seconds of `base + 12m13s`.
fn substitute(query: &str, base_ms: i64) -> anyhow::Result<String> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| anyhow::anyhow!("unclosed ${{ in {query:?}"))?;
        let t = base_ms + duration_ms(&after[..end])?;
        write!(out, "{}", t / 1000)?;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A query's answer, reduced to what the comparison looks at.
#[derive(Debug)]
enum Answer {
    Error {
        error_type: String,
        message: String,
    },
    Scalar(i64, f64),
    String(i64, String),
    /// In the order the server returned.
    Vector(Vec<(BTreeMap<String, String>, i64, f64)>),
    Matrix(BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>>),
}

fn parse_value(v: &Value) -> anyhow::Result<f64> {
    let s = v
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("value {v} is not a string"))?;
    Ok(match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse()?,
    })
}

fn parse_time(v: &Value) -> anyhow::Result<i64> {
    let t = v
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("time {v} is not a number"))?;
    Ok((t * 1000.0).round() as i64)
}

fn parse_labels(v: &Value) -> anyhow::Result<BTreeMap<String, String>> {
    v.as_object()
        .ok_or_else(|| anyhow::anyhow!("metric {v} is not an object"))?
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("label value {v} is not a string"))?;
            Ok((k.clone(), v.to_owned()))
        })
        .collect()
}

fn parse_answer(body: &str) -> anyhow::Result<Answer> {
    let json: Value = serde_json::from_str(body)
        .map_err(|e| anyhow::anyhow!("not JSON ({e}): {}", shorten(body, 300)))?;
    if json["status"] == "error" {
        return Ok(Answer::Error {
            error_type: json["errorType"].as_str().unwrap_or_default().to_owned(),
            message: json["error"].as_str().unwrap_or_default().to_owned(),
        });
    }
    let data = &json["data"];
    let result = &data["result"];
    Ok(match data["resultType"].as_str().unwrap_or_default() {
        "scalar" => Answer::Scalar(parse_time(&result[0])?, parse_value(&result[1])?),
        "string" => Answer::String(
            parse_time(&result[0])?,
            result[1].as_str().unwrap_or_default().to_owned(),
        ),
        "vector" => Answer::Vector(
            result
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("no result array: {body}"))?
                .iter()
                .map(|s| {
                    Ok((
                        parse_labels(&s["metric"])?,
                        parse_time(&s["value"][0])?,
                        parse_value(&s["value"][1])?,
                    ))
                })
                .collect::<anyhow::Result<_>>()?,
        ),
        "matrix" => {
            let mut out = BTreeMap::new();
            for s in result
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("no result array: {body}"))?
            {
                let points = s["values"]
                    .as_array()
                    .ok_or_else(|| anyhow::anyhow!("no values: {s}"))?
                    .iter()
                    .map(|p| Ok((parse_time(&p[0])?, parse_value(&p[1])?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                if out.insert(parse_labels(&s["metric"])?, points).is_some() {
                    anyhow::bail!("two series with one label set: {body}");
                }
            }
            Answer::Matrix(out)
        }
        other => anyhow::bail!("unknown resultType {other:?}: {}", shorten(body, 300)),
    })
}

/// Whether an answer holds nothing: an empty vector or matrix (an error, a scalar or a
/// string is an answer).
fn is_empty(a: &Answer) -> bool {
    match a {
        Answer::Vector(v) => v.is_empty(),
        Answer::Matrix(m) => m.is_empty(),
        _ => false,
    }
}

/// Within 1e-6 relative; NaN equals NaN, infinities only themselves.
fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

fn show_labels(l: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Whether the instant result's order is part of the answer: `sort`, `sort_desc`, and a
/// `topk`/`bottomk` without grouping, at the top of the query.
fn ordered(query: &str) -> bool {
    let q = query.trim();
    q.starts_with("sort(")
        || q.starts_with("sort_desc(")
        || ((q.starts_with("topk(") || q.starts_with("bottomk("))
            && !q.contains(" by ")
            && !q.contains(" without ")
            && !q.contains(") by")
            && !q.contains(") without"))
}

/// `None` when the answers agree, else what differs first.
fn compare(query: &str, ours: &Answer, theirs: &Answer) -> Option<String> {
    match (ours, theirs) {
        (Answer::Error { error_type: a, .. }, Answer::Error { error_type: b, .. }) => {
            (a != b).then(|| format!("error types differ: ours {a}, theirs {b}"))
        }
        (
            Answer::Error {
                error_type,
                message,
            },
            _,
        ) => Some(format!(
            "we failed ({error_type}: {message}), Prometheus answered"
        )),
        (
            _,
            Answer::Error {
                error_type,
                message,
            },
        ) => Some(format!(
            "Prometheus failed ({error_type}: {message}), we answered"
        )),
        (Answer::Scalar(ta, a), Answer::Scalar(tb, b)) => (ta != tb || !close(*a, *b))
            .then(|| format!("scalar: ours {a} at {ta}, theirs {b} at {tb}")),
        (Answer::String(ta, a), Answer::String(tb, b)) => (ta != tb || a != b)
            .then(|| format!("string: ours {a:?} at {ta}, theirs {b:?} at {tb}")),
        (Answer::Vector(a), Answer::Vector(b)) => compare_vectors(ordered(query), a, b),
        (Answer::Matrix(a), Answer::Matrix(b)) => compare_matrices(a, b),
        _ => Some(format!(
            "result types differ: ours {}, theirs {}",
            type_name(ours),
            type_name(theirs)
        )),
    }
}

fn type_name(a: &Answer) -> &'static str {
    match a {
        Answer::Error { .. } => "error",
        Answer::Scalar(..) => "scalar",
        Answer::String(..) => "string",
        Answer::Vector(_) => "vector",
        Answer::Matrix(_) => "matrix",
    }
}

type Vector = [(BTreeMap<String, String>, i64, f64)];

fn compare_vectors(ordered: bool, a: &Vector, b: &Vector) -> Option<String> {
    let am: BTreeMap<_, _> = a.iter().map(|(l, t, v)| (l, (t, v))).collect();
    let bm: BTreeMap<_, _> = b.iter().map(|(l, t, v)| (l, (t, v))).collect();
    if am.len() != a.len() || bm.len() != b.len() {
        return Some("a vector holds one label set twice".into());
    }
    for (l, (t, v)) in &am {
        match bm.get(l) {
            None => return Some(format!("only ours has {} = {v}", show_labels(l))),
            Some((tb, vb)) if t != tb || !close(**v, **vb) => {
                return Some(format!(
                    "{}: ours {v} at {t}, theirs {vb} at {tb}",
                    show_labels(l)
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(l) = bm.keys().find(|l| !am.contains_key(*l)) {
        return Some(format!("only Prometheus has {}", show_labels(l)));
    }
    if ordered {
        // The same values in the same order; among equal values any order (Prometheus' sort
        // is not stable), so compare runs of equal values as sets.
        let runs = |v: &Vector| -> Vec<(f64, BTreeSet<BTreeMap<String, String>>)> {
            let mut out: Vec<(f64, BTreeSet<_>)> = Vec::new();
            for (l, _, x) in v {
                match out.last_mut() {
                    Some((y, set)) if close(*x, *y) => {
                        set.insert(l.clone());
                    }
                    _ => out.push((*x, BTreeSet::from([l.clone()]))),
                }
            }
            out
        };
        let (ra, rb) = (runs(a), runs(b));
        if ra.len() != rb.len() || ra.iter().zip(&rb).any(|(x, y)| x.1 != y.1) {
            let show = |v: &Vector| {
                v.iter()
                    .map(|(l, _, x)| format!("{} {x}", show_labels(l)))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Some(format!(
                "order differs:\n  ours:   {}\n  theirs: {}",
                show(a),
                show(b)
            ));
        }
    }
    None
}

fn compare_matrices(
    a: &BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>>,
    b: &BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>>,
) -> Option<String> {
    for (l, pa) in a {
        let Some(pb) = b.get(l) else {
            return Some(format!(
                "only ours has {} ({} points)",
                show_labels(l),
                pa.len()
            ));
        };
        let times_a: Vec<i64> = pa.iter().map(|p| p.0).collect();
        let times_b: Vec<i64> = pb.iter().map(|p| p.0).collect();
        if times_a != times_b {
            let only_a: Vec<_> = times_a
                .iter()
                .filter(|t| !times_b.contains(t))
                .take(3)
                .collect();
            let only_b: Vec<_> = times_b
                .iter()
                .filter(|t| !times_a.contains(t))
                .take(3)
                .collect();
            return Some(format!(
                "{}: {} points ours, {} theirs; first times only ours {only_a:?}, only theirs {only_b:?}",
                show_labels(l),
                pa.len(),
                pb.len()
            ));
        }
        if let Some(((t, x), (_, y))) = pa.iter().zip(pb).find(|((_, x), (_, y))| !close(*x, *y)) {
            return Some(format!("{} at {t}: ours {x}, theirs {y}", show_labels(l)));
        }
    }
    if let Some(l) = b.keys().find(|l| !a.contains_key(*l)) {
        return Some(format!("only Prometheus has {}", show_labels(l)));
    }
    None
}

fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// GET a query endpoint; the body whatever the status (errors come as JSON with 4xx/5xx).
fn ask(server: &str, path_and_query: &str) -> anyhow::Result<String> {
    let (_, body) = http_get(&format!("http://{server}{path_and_query}"))?;
    Ok(body)
}

/// A mismatch, printed in full.
struct Mismatch {
    case: Case,
    at: String,
    reason: String,
    ours: String,
    theirs: String,
}

#[test]
fn corpus_answers_like_prometheus_2_42() -> anyhow::Result<()> {
    let started = Instant::now();
    let cases = parse_corpus(CORPUS)?;
    let documented = ledger_ids(LEDGER);
    for c in &cases {
        if let Some(id) = &c.ledger {
            assert!(
                documented.contains(id),
                "corpus line {} names ledger entry {id:?}, which docs/promql-ledger.md does not have (has: {documented:?})",
                c.line
            );
        }
    }

    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let prometheus = Prometheus::start_with_args(
        work.path(),
        "global:\n  evaluation_interval: 1m\n",
        &[
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=30d",
        ],
    )?;

    // The data: the last full minute, back an hour; 50 minutes of samples from there.
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let base_ms = now_ms / 60_000 * 60_000 - 60 * 60_000;
    let data = generate(base_ms);
    let total: usize = data.iter().map(|s| s.samples.len()).sum();
    // In time order, 5 minutes per request, every series in each: Prometheus' head takes
    // samples of a series only in order, and only within an hour of its newest.
    let batch_ms = 5 * 60_000;
    let mut from = base_ms;
    while from < base_ms + (SAMPLES + 1) * INTERVAL_MS {
        let batch: Vec<(Labels, Vec<(i64, f64)>)> = data
            .iter()
            .map(|s| {
                let samples = s
                    .samples
                    .iter()
                    .copied()
                    .filter(|(t, _)| *t >= from && *t < from + batch_ms)
                    .collect();
                (s.labels.clone(), samples)
            })
            .filter(|(_, samples): &(Labels, Vec<_>)| !samples.is_empty())
            .collect();
        let body = remote_write_body(&batch);
        for (who, url) in [
            ("core", core.url("/api/v1/write")),
            ("prometheus", prometheus.url("/api/v1/write")),
        ] {
            let (status, text) = http_post(
                &url,
                "application/x-protobuf",
                &[
                    ("Content-Encoding", "snappy"),
                    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
                ],
                &body,
            )?;
            assert_eq!(status, 204, "{who} refused a remote write: {text}");
        }
        from += batch_ms;
    }

    // Both hold every sample: the raw samples of every series, stale markers aside (a range
    // selector drops them on both).
    let stale_markers = data
        .iter()
        .flat_map(|s| &s.samples)
        .filter(|(_, v)| v.to_bits() == STALE_NAN)
        .count();
    let everything = encode(r#"{__name__=~".+"}[2h]"#);
    let at = (base_ms + 3_600_000) / 1000;
    let mut raw = Vec::new();
    for (who, server) in [("core", core.http), ("prometheus", prometheus.http)] {
        let body = ask(
            &server.to_string(),
            &format!("/api/v1/query?query={everything}&time={at}"),
        )?;
        let Answer::Matrix(m) = parse_answer(&body)? else {
            panic!(
                "{who}: the raw samples are not a matrix: {}",
                shorten(&body, 500)
            );
        };
        let held: usize = m.values().map(Vec::len).sum();
        assert_eq!(
            held,
            total - stale_markers,
            "{who} does not hold every sample written"
        );
        raw.push(m);
    }
    // Bit for bit, NaN included; named by the series that differ.
    let same = |a: &[(i64, f64)], b: &[(i64, f64)]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
    };
    let differing: Vec<String> = raw[0]
        .keys()
        .chain(raw[1].keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|l| match (raw[0].get(*l), raw[1].get(*l)) {
            (Some(a), Some(b)) => !same(a, b),
            _ => true,
        })
        .map(show_labels)
        .collect();
    assert!(
        differing.is_empty(),
        "the core and Prometheus hold different raw samples for {differing:?}"
    );

    let mut mismatches = Vec::new();
    let mut ledgered = Vec::new();
    let mut stale_marks = Vec::new();
    let mut vacuous = Vec::new();
    let mut evaluations = 0usize;
    let mut passed_cases = 0usize;
    for case in &cases {
        let query = substitute(&case.query, base_ms)?;
        let requests: Vec<(String, String)> = match &case.kind {
            Kind::Instant => INSTANT_TIMES
                .iter()
                .map(|at| {
                    let t = (base_ms + duration_ms(at)?) / 1000;
                    Ok((
                        format!("at +{at}"),
                        format!("/api/v1/query?query={}&time={t}", encode(&query)),
                    ))
                })
                .collect::<anyhow::Result<_>>()?,
            Kind::Range { step, start, end } => {
                let s = (base_ms + duration_ms(start)?) / 1000;
                let e = (base_ms + duration_ms(end)?) / 1000;
                let step_s = duration_ms(step)? as f64 / 1000.0;
                vec![(
                    format!("range +{start}..+{end} step {step}"),
                    format!(
                        "/api/v1/query_range?query={}&start={s}&end={e}&step={step_s}",
                        encode(&query)
                    ),
                )]
            }
        };
        let mut case_ok = true;
        let mut differed = false;
        let mut answered = false;
        for (at, path) in requests {
            evaluations += 1;
            let ours = ask(&core.http.to_string(), &path)?;
            let theirs = ask(&prometheus.http.to_string(), &path)?;
            let reason = match (parse_answer(&ours), parse_answer(&theirs)) {
                (Ok(a), Ok(b)) => {
                    answered |= !is_empty(&b);
                    compare(&query, &a, &b)
                }
                (Err(e), _) => Some(format!("our answer does not parse: {e}")),
                (_, Err(e)) => Some(format!("Prometheus' answer does not parse: {e}")),
            };
            if let Some(reason) = reason {
                differed = true;
                let m = Mismatch {
                    case: case.clone(),
                    at,
                    reason,
                    ours: shorten(&ours, 1500),
                    theirs: shorten(&theirs, 1500),
                };
                if case.ledger.is_some() {
                    ledgered.push(m);
                } else {
                    case_ok = false;
                    mismatches.push(m);
                }
            }
        }
        if let Some(id) = &case.ledger
            && !differed
        {
            stale_marks.push(format!(
                "line {} ledger({id}) `{}` now agrees with Prometheus: remove the mark",
                case.line, case.query
            ));
        }
        if case.ledger.is_none() && answered == case.empty {
            vacuous.push(if case.empty {
                format!("line {} `{}` is marked empty but answers", case.line, case.query)
            } else {
                format!(
                    "line {} `{}` answers nothing at any time: it tests nothing (mark it `empty` if that is the point)",
                    case.line, case.query
                )
            });
        }
        if case_ok && case.ledger.is_none() {
            passed_cases += 1;
        }
    }

    let print = |title: &str, list: &[Mismatch]| {
        for m in list {
            eprintln!(
                "{title} [{}] line {}: {}\n  query:  {}\n  when:   {}\n  diff:   {}\n  ours:   {}\n  theirs: {}\n",
                m.case.section,
                m.case.line,
                m.case.ledger.as_deref().unwrap_or(""),
                m.case.query,
                m.at,
                m.reason,
                m.ours,
                m.theirs
            );
        }
    };
    print("LEDGERED", &ledgered);
    print("MISMATCH", &mismatches);
    for s in &stale_marks {
        eprintln!("STALE LEDGER MARK {s}");
    }
    for v in &vacuous {
        eprintln!("EMPTINESS {v}");
    }
    let ledgered_cases = cases.iter().filter(|c| c.ledger.is_some()).count();
    let failing_cases: BTreeSet<usize> = mismatches.iter().map(|m| m.case.line).collect();
    eprintln!(
        "corpus: {} queries ({} evaluations); {} agree, {} ledgered, {} disagree; {} samples; {:.1?}",
        cases.len(),
        evaluations,
        passed_cases,
        ledgered_cases,
        failing_cases.len(),
        total,
        started.elapsed()
    );
    assert!(
        cases.len() >= 300,
        "the corpus should hold at least 300 queries"
    );
    assert!(
        mismatches.is_empty() && stale_marks.is_empty() && vacuous.is_empty(),
        "{} corpus queries disagree with Prometheus (lines {failing_cases:?}), {} stale ledger marks, {} lines wrongly empty or not; details above",
        failing_cases.len(),
        stale_marks.len(),
        vacuous.len()
    );
    Ok(())
}

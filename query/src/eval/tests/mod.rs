//! Evaluation semantics, through the public [`Engine`] API over an in-memory source.

use crate::testing::MemorySource;
use crate::{Engine, EngineOptions, QueryError, STALE_NAN_BITS, Value};
use protocols::Tenant;
use std::sync::atomic::Ordering;
use std::time::Duration;

const MIN: i64 = 60_000;
const T: i64 = 1_700_000_000_000;

fn stale() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

fn instant(src: &MemorySource, q: &str, t: i64) -> Result<Value, QueryError> {
    Engine::default().instant(src, &Tenant::default(), q, t)
}

fn range(
    src: &MemorySource,
    q: &str,
    start: i64,
    end: i64,
    step: i64,
) -> Result<Value, QueryError> {
    Engine::default().range(src, &Tenant::default(), q, start, end, step)
}

/// `(labels as shown, value)` per sample of an instant vector.
fn vector(v: Value) -> Vec<(String, f64)> {
    match v {
        Value::Vector(samples) => samples
            .into_iter()
            .map(|s| (s.metric.to_string(), s.value))
            .collect(),
        other => panic!("expected a vector, got {other:?}"),
    }
}

/// `(labels as shown, [(t, v)])` per series of a matrix.
fn matrix(v: Value) -> Vec<(String, Vec<(i64, f64)>)> {
    match v {
        Value::Matrix(series) => series
            .into_iter()
            .map(|s| {
                let points = s.points.iter().map(|p| (p.timestamp_ms, p.value)).collect();
                (s.metric.to_string(), points)
            })
            .collect(),
        other => panic!("expected a matrix, got {other:?}"),
    }
}

/// Runs each instant query at `t` and compares its answer with the expected (labels as
/// text, value) pairs: values equal within `rel_tol` of `max(|expected|, floor)`, NaN equal
/// to NaN. With `sorted`, both sides are sorted by labels first (order-free comparison).
fn check_vectors(
    src: &MemorySource,
    t: i64,
    cases: &[(&str, &[(&str, f64)])],
    (rel_tol, floor, sorted): (f64, f64, bool),
) {
    for (q, expected) in cases {
        let mut got = vector(instant(src, q, t).unwrap_or_else(|e| panic!("{q}: {e}")));
        let mut expected: Vec<(String, f64)> = expected
            .iter()
            .map(|(l, v)| ((*l).to_owned(), *v))
            .collect();
        if sorted {
            got.sort_by(|a, b| a.0.cmp(&b.0));
            expected.sort_by(|a, b| a.0.cmp(&b.0));
        }
        assert_eq!(got.len(), expected.len(), "{q}: {got:?}");
        for ((gl, gv), (el, ev)) in got.iter().zip(&expected) {
            assert_eq!(gl, el, "{q}");
            let close = gv == ev || (gv - ev).abs() <= rel_tol * ev.abs().max(floor);
            assert!(close || (gv.is_nan() && ev.is_nan()), "{q}: {gv} != {ev}");
        }
    }
}

fn one_value(src: &MemorySource, q: &str, t: i64) -> Option<f64> {
    let v = vector(instant(src, q, t).expect("query runs"));
    assert!(v.len() <= 1, "{v:?}");
    v.first().map(|(_, value)| *value)
}

#[test]
fn lookback_window_is_left_open_and_takes_the_latest_sample() {
    let mut src = MemorySource::default();
    src.add(
        "temp",
        &[],
        &[(T - 5 * MIN, 1.0), (T - 4 * MIN, 2.0), (T - MIN, 3.0)],
    );

    assert_eq!(one_value(&src, "temp", T), Some(3.0));
    assert_eq!(one_value(&src, "temp", T - 2 * MIN), Some(2.0));
    // Exactly five minutes old is outside (t - 5m, t]; one millisecond younger is inside.
    assert_eq!(one_value(&src, "temp", T + 4 * MIN), None);
    assert_eq!(one_value(&src, "temp", T + 4 * MIN - 1), Some(3.0));
    assert_eq!(one_value(&src, "temp", T - 4 * MIN - 1), Some(1.0));
    assert_eq!(one_value(&src, "temp", T - 5 * MIN - 1), None);

    // The sample carries the evaluation time, not the stored sample's time.
    let Value::Vector(samples) = instant(&src, "temp", T).expect("query runs") else {
        panic!("expected a vector");
    };
    assert_eq!(samples[0].timestamp_ms, T);
    assert_eq!(samples[0].metric.get("__name__"), Some("temp"));
}

#[test]
fn stale_marker_ends_the_series_until_the_next_sample() {
    let mut src = MemorySource::default();
    src.add(
        "temp",
        &[],
        &[(T - 3 * MIN, 1.0), (T - 2 * MIN, stale()), (T, 4.0)],
    );
    src.add("reading", &[], &[(T - MIN, f64::NAN)]);

    assert_eq!(one_value(&src, "temp", T - 150_000), Some(1.0));
    // The marker is the latest sample: no value, and no reaching back past it to 1.0.
    assert_eq!(one_value(&src, "temp", T - 2 * MIN), None);
    assert_eq!(one_value(&src, "temp", T - 1), None);
    assert_eq!(one_value(&src, "temp", T), Some(4.0));
    // An ordinary NaN is a value.
    assert!(one_value(&src, "reading", T).is_some_and(f64::is_nan));

    // Range selectors drop the marker.
    let m = matrix(instant(&src, "temp[5m]", T).expect("query runs"));
    assert_eq!(
        m,
        [(
            r#"{__name__="temp"}"#.into(),
            vec![(T - 3 * MIN, 1.0), (T, 4.0)]
        )]
    );
}

#[test]
fn offset_and_at_move_the_evaluation_time_but_not_the_reported_time() {
    let mut src = MemorySource::default();
    src.add(
        "temp",
        &[],
        &[(T - 10 * MIN, 1.0), (T - MIN, 2.0), (T + MIN, 3.0)],
    );

    assert_eq!(one_value(&src, "temp offset 6m", T), Some(1.0));
    // The window moves with the offset and stays left-open.
    assert_eq!(one_value(&src, "temp offset 5m", T), None);
    assert_eq!(one_value(&src, "temp offset -2m", T), Some(3.0));
    assert_eq!(one_value(&src, "temp offset 20m", T), None);
    let Value::Vector(samples) = instant(&src, "temp offset 6m", T).expect("query runs") else {
        panic!("expected a vector");
    };
    assert_eq!(samples[0].timestamp_ms, T);

    let at = format!("temp @ {}", (T - 9 * MIN) / 1000);
    assert_eq!(one_value(&src, &at, T + 3 * MIN), Some(1.0));
    assert_eq!(one_value(&src, &format!("{at} offset -9m"), T), Some(2.0));

    // `@ end()` pins every step of a range query to the last one.
    let m = matrix(range(&src, "temp @ end()", T - 2 * MIN, T, MIN).expect("query runs"));
    assert_eq!(m[0].1, [(T - 2 * MIN, 2.0), (T - MIN, 2.0), (T, 2.0)]);

    let m = matrix(instant(&src, "temp[5m] offset 8m", T).expect("query runs"));
    assert_eq!(m[0].1, [(T - 10 * MIN, 1.0)]);
}

#[test]
fn every_matcher_type_selects_like_prometheus() {
    let mut src = MemorySource::default();
    src.add("temp", &[("site", "s1"), ("room", "a")], &[(T, 1.0)]);
    src.add("temp", &[("site", "s2")], &[(T, 2.0)]);
    src.add("humidity", &[("site", "s1")], &[(T, 3.0)]);
    src.add("pressure", &[("site", "s10")], &[(T, 4.0)]);
    let values = |q: &str| -> Vec<f64> {
        vector(instant(&src, q, T).expect("query runs"))
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    };

    assert_eq!(values(r#"temp{site="s1"}"#), [1.0]);
    assert_eq!(values(r#"temp{site!="s1"}"#), [2.0]);
    // An absent label compares as "": `room!="a"` keeps the series without `room`.
    assert_eq!(values(r#"temp{room!="a"}"#), [2.0]);
    assert_eq!(values(r#"temp{room=""}"#), [2.0]);
    // Regexes are fully anchored: "s1" does not match "s10".
    assert_eq!(values(r#"{site=~"s1"}"#), [3.0, 1.0]);
    assert_eq!(values(r#"{site=~"s1.*"}"#), [3.0, 4.0, 1.0]);
    assert_eq!(
        values(r#"{__name__=~"temp|humidity", site!~"s2|s3"}"#),
        [3.0, 1.0]
    );
    assert_eq!(values(r#"{__name__!~"temp|humidity", site=~".+"}"#), [4.0]);
    assert!(values(r#"temp{site="nope"}"#).is_empty());
}

#[test]
fn selector_that_matches_everything_is_refused() {
    let src = MemorySource::default();
    for q in [r#"{a=~".*"}"#, r#"{a!="x"}"#, r#"{__name__=~".*"}[5m]"#] {
        let err = instant(&src, q, T).expect_err(q);
        assert_eq!(
            err.to_string(),
            "vector selector must contain at least one non-empty matcher",
            "{q}"
        );
    }
}

#[test]
fn results_are_sorted_by_labels_and_keep_the_metric_name() {
    let mut src = MemorySource::default();
    src.add("temp", &[("site", "b")], &[(T, 2.0)]);
    src.add("temp", &[("site", "a")], &[(T, 1.0)]);
    src.add("humidity", &[("site", "c")], &[(T, 3.0)]);
    let v = vector(instant(&src, r#"{site=~".+"}"#, T).expect("query runs"));
    let names: Vec<&str> = v.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        names,
        [
            r#"{__name__="humidity", site="c"}"#,
            r#"{__name__="temp", site="a"}"#,
            r#"{__name__="temp", site="b"}"#,
        ]
    );
}

#[test]
fn range_query_evaluates_at_start_plus_multiples_of_step() {
    let mut src = MemorySource::default();
    // A sample every 20 s from T to T + 100 s, then a marker.
    let samples: Vec<(i64, f64)> = (0..=5)
        .map(|i| (T + i * 20_000, i as f64))
        .chain([(T + 110_000, stale())])
        .collect();
    src.add("temp", &[("site", "b")], &samples);
    src.add("temp", &[("site", "a")], &[(T - 10 * MIN, 9.0)]);
    src.add("temp", &[("site", "c")], &[(T + 45_000, 7.0)]);

    // Start is not a multiple of the step, nor is end - start: steps are start + k * step.
    let start = T + 7_000;
    let m = matrix(range(&src, "temp", start, T + 130_000, 30_000).expect("query runs"));
    assert_eq!(
        m,
        [
            // site="a" has no sample in any step's window: no series at all.
            (
                r#"{__name__="temp", site="b"}"#.into(),
                vec![
                    (start, 0.0),
                    (start + 30_000, 1.0),
                    (start + 60_000, 3.0),
                    (start + 90_000, 4.0),
                ],
            ),
            (
                r#"{__name__="temp", site="c"}"#.into(),
                vec![
                    (start + 60_000, 7.0),
                    (start + 90_000, 7.0),
                    (start + 120_000, 7.0)
                ],
            ),
        ]
    );
    // One read per series however many steps.
    assert_eq!(src.sample_reads.load(Ordering::Relaxed), 3);
}

#[test]
fn range_query_limits_follow_prometheus() {
    let src = MemorySource::default();
    // 11,000 intervals (11,001 points) pass; one more step fails.
    assert!(range(&src, "temp", 0, 11_000_000, 1_000).is_ok());
    assert!(matches!(
        range(&src, "temp", 0, 11_001_000, 1_000),
        Err(QueryError::TooManyPoints)
    ));
    assert!(matches!(
        range(&src, "temp", i64::MIN, i64::MAX, 1),
        Err(QueryError::TooManyPoints)
    ));
    assert!(matches!(
        range(&src, "temp", 0, 10, 0),
        Err(QueryError::NonPositiveStep)
    ));
    assert!(matches!(
        range(&src, "temp", 0, 10, -1),
        Err(QueryError::NonPositiveStep)
    ));
    assert!(matches!(
        range(&src, "temp", 10, 0, 1),
        Err(QueryError::EndBeforeStart)
    ));
    // start == end is one step.
    let m = matrix(range(&src, "1", 5, 5, 1).expect("query runs"));
    assert_eq!(m[0].1, [(5, 1.0)]);
}

#[test]
fn range_query_refuses_range_vectors_and_strings() {
    let src = MemorySource::default();
    let err = range(&src, "temp[5m]", 0, 10, 1).expect_err("range vector");
    assert_eq!(
        err.to_string(),
        r#"invalid expression type "range vector" for range query, must be Scalar or instant Vector"#
    );
    let err = range(&src, r#"("hi")"#, 0, 10, 1).expect_err("string");
    assert_eq!(
        err.to_string(),
        r#"invalid expression type "string" for range query, must be Scalar or instant Vector"#
    );
}

#[test]
fn literals_evaluate_to_scalars_and_strings() {
    let src = MemorySource::default();
    match instant(&src, "(2.5)", T).expect("query runs") {
        Value::Scalar(s) => assert_eq!((s.timestamp_ms, s.value), (T, 2.5)),
        other => panic!("expected a scalar, got {other:?}"),
    }
    match instant(&src, "-Inf", T).expect("query runs") {
        Value::Scalar(s) => assert_eq!(s.value, f64::NEG_INFINITY),
        other => panic!("expected a scalar, got {other:?}"),
    }
    match instant(&src, r#""hello""#, T).expect("query runs") {
        Value::String(s) => assert_eq!((s.timestamp_ms, s.value.as_str()), (T, "hello")),
        other => panic!("expected a string, got {other:?}"),
    }
    // A scalar in a range query is one series without labels, a point at every step.
    let m = matrix(range(&src, "3", 0, 20, 10).expect("query runs"));
    assert_eq!(m, [("{}".into(), vec![(0, 3.0), (10, 3.0), (20, 3.0)])]);
}

#[test]
fn unsupported_constructs_are_named() {
    let src = MemorySource::default();
    for (q, what) in [
        (
            "limitk(1, temp)",
            "aggregation `limitk` (experimental in Prometheus 3, --enable-feature=promql-experimental-functions)",
        ),
        (
            "sort_by_label(temp, \"a\")",
            "function `sort_by_label` (experimental in Prometheus 3, --enable-feature=promql-experimental-functions)",
        ),
    ] {
        match instant(&src, q, T) {
            Err(QueryError::Unsupported(w)) => assert_eq!(w, what, "{q}"),
            other => panic!("{q}: expected unsupported, got {other:?}"),
        }
    }
    let err = instant(&src, "limitk(1, temp)", T).expect_err("unsupported");
    assert_eq!(
        err.to_string(),
        "aggregation `limitk` (experimental in Prometheus 3, --enable-feature=promql-experimental-functions) is not supported yet"
    );
}

#[test]
fn parse_errors_carry_the_parser_message() {
    let src = MemorySource::default();
    for q in ["temp{", "", "  ", "temp[5x]"] {
        match instant(&src, q, T) {
            Err(QueryError::Parse(msg)) => assert!(!msg.is_empty(), "{q}"),
            other => panic!("{q}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn tenants_do_not_see_each_other() {
    let mut src = MemorySource::default();
    let other = Tenant::new("other").expect("valid tenant");
    src.add_for(other.clone(), "temp", &[], &[(T, 1.0)]);
    assert_eq!(one_value(&src, "temp", T), None);
    let v = Engine::default()
        .instant(&src, &other, "temp", T)
        .expect("query runs");
    assert_eq!(vector(v).len(), 1);
}

#[test]
fn sample_limit_and_timeout_stop_a_query() {
    let mut src = MemorySource::default();
    src.add("temp", &[("a", "1")], &[(T - 2000, 1.0), (T - 1000, 2.0)]);
    src.add("temp", &[("a", "2")], &[(T - 2000, 1.0), (T - 1000, 2.0)]);

    let small = Engine::new(EngineOptions {
        max_samples: 3,
        ..EngineOptions::default()
    });
    let err = small
        .instant(&src, &Tenant::default(), "temp[1m]", T)
        .expect_err("4 samples > 3");
    assert!(matches!(err, QueryError::TooManySamples));
    // Raw samples are released once a series is reduced to its points: 2 points fit.
    assert!(small.instant(&src, &Tenant::default(), "temp", T).is_ok());

    let hurried = Engine::default().with_timeout(Duration::ZERO);
    let err = hurried
        .instant(&src, &Tenant::default(), "temp", T)
        .expect_err("no time at all");
    assert!(matches!(err, QueryError::Timeout));
    // A longer timeout than configured is ignored.
    let relaxed = Engine::default().with_timeout(Duration::from_secs(3600));
    assert_eq!(relaxed.options().timeout, EngineOptions::default().timeout);
}

mod aggregate;
mod binary;
mod functions;
mod instant_functions;
mod more_functions;
mod prometheus3;
mod subquery;

/// Hundreds of series go to several workers; the answers must be exactly those of one
/// worker (same series order, so the same float sums), and the limits still hold.
#[test]
fn series_evaluated_in_parallel_answer_exactly_as_in_sequence() {
    let mut src = MemorySource::default();
    for i in 0..700 {
        let host = format!("h{i}");
        let mode = ["user", "system", "idle"][i % 3];
        let points: Vec<(i64, f64)> = (0..40)
            .map(|k| {
                let t = T - 40 * 15_000 + k * 15_000 + (i as i64 % 7) * 100;
                // A counter with a reset half way for every fifth series, fractional steps.
                let v = if i % 5 == 0 && k >= 20 { k - 20 } else { k } as f64;
                (t, v * (1.0 + i as f64 / 997.0) + 0.1)
            })
            .collect();
        src.add("cpu", &[("host", &host), ("mode", mode)], &points);
    }
    let engine = |parallelism| {
        Engine::new(EngineOptions {
            parallelism,
            ..EngineOptions::default()
        })
    };
    let queries = [
        "sum by (mode) (rate(cpu[2m]))",
        "topk(3, rate(cpu[2m]))",
        r#"cpu{host=~"h1.*", mode=~"user|idle"}"#,
        "quantile_over_time(0.9, cpu[3m])",
        "absent_over_time(cpu[1m])",
        "timestamp(cpu)",
    ];
    for q in queries {
        let run = |p| {
            engine(p)
                .range(&src, &Tenant::default(), q, T - 5 * MIN, T, 15_000)
                .map(matrix)
                .unwrap_or_else(|e| panic!("{q}: {e}"))
        };
        let (one, four) = (run(1), run(4));
        assert!(!one.is_empty() || q.starts_with("absent"), "{q}: no answer");
        let bits = |m: &Vec<(String, Vec<(i64, f64)>)>| -> Vec<(String, Vec<(i64, u64)>)> {
            m.iter()
                .map(|(l, p)| {
                    (
                        l.clone(),
                        p.iter().map(|(t, v)| (*t, v.to_bits())).collect(),
                    )
                })
                .collect()
        };
        assert_eq!(bits(&one), bits(&four), "{q}");
    }
    let small = Engine::new(EngineOptions {
        parallelism: 4,
        max_samples: 1_000,
        ..EngineOptions::default()
    });
    let err = small
        .range(
            &src,
            &Tenant::default(),
            "rate(cpu[2m])",
            T - 5 * MIN,
            T,
            15_000,
        )
        .expect_err("700 series of points exceed 1,000 samples");
    assert!(matches!(err, QueryError::TooManySamples));
}

//! Functions of instant vectors and scalars. Cases from Prometheus'
//! `promql/promqltest/testdata/functions.test` where named, else worked out by hand.

use super::*;

fn check_at(src: &MemorySource, t: i64, cases: &[(&str, &[(&str, f64)])]) {
    check_vectors(src, t, cases, (1e-12, 1.0, false));
}

fn scalar_at(src: &MemorySource, q: &str, t: i64) -> f64 {
    match instant(src, q, t).unwrap_or_else(|e| panic!("{q}: {e}")) {
        Value::Scalar(s) => s.value,
        other => panic!("{q}: expected a scalar, got {other:?}"),
    }
}

/// "Test for abs, ceil(), floor(), round()": `data` at 0m.
fn data() -> MemorySource {
    let mut src = MemorySource::default();
    for (t, v) in [
        ("positive", 2.5),
        ("whole", 2.),
        ("negative", -2.5),
        ("nwhole", -2.),
        ("zero", 0.),
        ("nzero", -0.),
        ("inf", f64::INFINITY),
        ("ninf", f64::NEG_INFINITY),
        ("nan", f64::NAN),
    ] {
        src.add("data", &[("type", t)], &[(0, v)]);
    }
    src
}

/// Expected values in label order of `data`'s types.
fn by_type(values: [f64; 9]) -> Vec<(&'static str, f64)> {
    let types = [
        r#"{type="inf"}"#,
        r#"{type="nan"}"#,
        r#"{type="negative"}"#,
        r#"{type="ninf"}"#,
        r#"{type="nwhole"}"#,
        r#"{type="nzero"}"#,
        r#"{type="positive"}"#,
        r#"{type="whole"}"#,
        r#"{type="zero"}"#,
    ];
    types.into_iter().zip(values).collect()
}

#[test]
fn rounding_and_math_functions_drop_the_name() {
    let src = data();
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    // Order: inf, nan, negative, ninf, nwhole, nzero, positive, whole, zero.
    check_at(
        &src,
        0,
        &[
            (
                "abs(data)",
                &by_type([inf, nan, 2.5, inf, 2., 0., 2.5, 2., 0.]),
            ),
            (
                "ceil(data)",
                &by_type([inf, nan, -2., -inf, -2., 0., 3., 2., 0.]),
            ),
            (
                "floor(data)",
                &by_type([inf, nan, -3., -inf, -2., 0., 2., 2., 0.]),
            ),
            (
                "round(data)",
                &by_type([inf, nan, -2., -inf, -2., 0., 3., 2., 0.]),
            ),
            // By hand: to the nearest 2, halves up.
            (
                "round(data, 2)",
                &by_type([inf, nan, -2., -inf, -2., 0., 2., 2., 0.]),
            ),
            (
                "round(data, 0.2)",
                &by_type([inf, nan, -2.4, -inf, -2., 0., 2.6, 2., 0.]),
            ),
        ],
    );
    let mut src = MemorySource::default();
    src.add("m", &[], &[(0, 100.)]);
    check_at(
        &src,
        0,
        &[
            ("sqrt(m)", &[("{}", 10.)]),
            ("log10(m)", &[("{}", 2.)]),
            ("log2(m / 25)", &[("{}", 2.)]),
            ("ln(exp(m / 50))", &[("{}", 2.)]),
            ("sqrt(-m)", &[("{}", f64::NAN)]),
            ("ln(m - 100)", &[("{}", f64::NEG_INFINITY)]),
        ],
    );
}

#[test]
fn clamp_keeps_nan_and_refuses_inverted_bounds() {
    let src = data();
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    check_at(
        &src,
        0,
        &[
            (
                "clamp(data, -1, 1)",
                &by_type([1., nan, -1., -1., -1., 0., 1., 1., 0.]),
            ),
            (
                "clamp_min(data, 0)",
                &by_type([inf, nan, 0., 0., 0., 0., 2.5, 2., 0.]),
            ),
            (
                "clamp_max(data, 0)",
                &by_type([0., nan, -2.5, -inf, -2., 0., 0., 0., 0.]),
            ),
            // max < min: no result at all.
            ("clamp(data, 1, -1)", &[]),
            ("clamp(data, NaN, 1)", &by_type([nan; 9])),
        ],
    );
}

#[test]
fn scalar_vector_and_time() {
    let mut src = MemorySource::default();
    src.add("one", &[], &[(0, 5.)]);
    src.add("two", &[("a", "1")], &[(0, 1.)]);
    src.add("two", &[("a", "2")], &[(0, 2.)]);
    // functions.test: "eval instant at 50m time()" and "at 1ms".
    assert_eq!(scalar_at(&src, "time()", 50 * MIN), 3000.);
    assert_eq!(scalar_at(&src, "time()", 1), 0.001);
    assert_eq!(scalar_at(&src, "scalar(one)", 0), 5.);
    assert!(scalar_at(&src, "scalar(two)", 0).is_nan());
    assert!(scalar_at(&src, "scalar(nothing)", 0).is_nan());
    check_at(
        &src,
        0,
        &[
            ("vector(time() + 1)", &[("{}", 1.)]),
            ("vector(scalar(one))", &[("{}", 5.)]),
        ],
    );
    let m = matrix(range(&src, "time()", 0, 2000, 1000).expect("query runs"));
    assert_eq!(m, [("{}".into(), vec![(0, 0.), (1000, 1.), (2000, 2.)])]);
}

#[test]
fn timestamp_is_the_sample_time_of_a_selector() {
    let mut src = MemorySource::default();
    src.add("m", &[("a", "1")], &[(T - 42_500, 7.)]);
    check_at(
        &src,
        T,
        &[
            (
                "timestamp(m)",
                &[(r#"{a="1"}"#, (T - 42_500) as f64 / 1000.)],
            ),
            (
                "timestamp(m offset 10s)",
                &[(r#"{a="1"}"#, (T - 42_500) as f64 / 1000.)],
            ),
            // Of anything but a selector: the evaluation time.
            ("timestamp(m + 1)", &[(r#"{a="1"}"#, T as f64 / 1000.)]),
        ],
    );
}

#[test]
fn sort_orders_an_instant_result_by_value_nan_last() {
    let src = data();
    let sorted = |q: &str| -> Vec<String> {
        vector(instant(&src, q, 0).expect("query runs"))
            .into_iter()
            .map(|(l, _)| l)
            .collect()
    };
    let names = |types: &[&str]| -> Vec<String> {
        types
            .iter()
            .map(|t| format!(r#"{{__name__="data", type="{t}"}}"#))
            .collect()
    };
    // -0 and 0 are equal: label order breaks the tie.
    assert_eq!(
        sorted("sort(data)"),
        names(&[
            "ninf", "negative", "nwhole", "nzero", "zero", "whole", "positive", "inf", "nan"
        ])
    );
    assert_eq!(
        sorted("(sort_desc(data))"),
        names(&[
            "inf", "positive", "whole", "nzero", "zero", "nwhole", "negative", "ninf", "nan"
        ])
    );
}

#[test]
fn absent_labels_follow_prometheus() {
    let mut src = MemorySource::default();
    src.add("http_requests", &[("job", "api-server")], &[(0, 1.)]);
    // functions.test "Test for absent()" at 50m (`http_requests` is not loaded there).
    check_at(
        &src,
        50 * MIN,
        &[
            ("absent(nonexistent)", &[("{}", 1.)]),
            (
                r#"absent(nonexistent{job="testjob", instance="testinstance", method=~".x"})"#,
                &[(r#"{instance="testinstance", job="testjob"}"#, 1.)],
            ),
            (
                r#"absent(nonexistent{job="testjob",job="testjob2",foo="bar"})"#,
                &[(r#"{foo="bar"}"#, 1.)],
            ),
            (
                r#"absent(nonexistent{job="testjob",job=~"testjob2",foo="bar"})"#,
                &[(r#"{foo="bar"}"#, 1.)],
            ),
            (
                r#"absent(sum(nonexistent{job="testjob", instance="testinstance"}))"#,
                &[("{}", 1.)],
            ),
            ("absent(nonexistent > 1)", &[("{}", 1.)]),
            ("absent(rate(nonexistent[5m]))", &[("{}", 1.)]),
        ],
    );
    // "Don't return anything when there's something there."
    check_at(
        &src,
        0,
        &[
            ("absent(http_requests)", &[]),
            ("absent(sum(http_requests))", &[]),
        ],
    );
    // Per step in a range query: absent once the sample leaves the lookback window.
    let m = matrix(range(&src, "absent(http_requests)", 0, 10 * MIN, 5 * MIN).expect("query runs"));
    assert_eq!(m, [("{}".to_owned(), vec![(5 * MIN, 1.), (10 * MIN, 1.)])]);
}

#[test]
fn functions_not_yet_supported_are_named() {
    let src = data();
    for f in [
        "sort_by_label(data, \"a\")",
        "histogram_count(data)",
        "first_over_time(data[5m])",
    ] {
        assert!(
            matches!(instant(&src, f, 0), Err(QueryError::Unsupported(_))),
            "{f}"
        );
    }
}

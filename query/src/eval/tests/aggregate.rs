//! Aggregation operators. Data and expected values follow Prometheus'
//! `promql/promqltest/testdata/aggregators.test` (`http_requests` at 50m) unless noted.

use super::*;

/// `http_requests` of aggregators.test at 50m: `0+10x10` ... `0+80x10` → 100 ... 800.
fn http_requests() -> MemorySource {
    let mut src = MemorySource::default();
    for (i, (job, instance, group)) in [
        ("api-server", "0", "production"),
        ("api-server", "1", "production"),
        ("api-server", "0", "canary"),
        ("api-server", "1", "canary"),
        ("app-server", "0", "production"),
        ("app-server", "1", "production"),
        ("app-server", "0", "canary"),
        ("app-server", "1", "canary"),
    ]
    .into_iter()
    .enumerate()
    {
        let value = 100.0 * (i as f64 + 1.0);
        src.add(
            "http_requests",
            &[("job", job), ("instance", instance), ("group", group)],
            &[(T, value)],
        );
    }
    src
}

fn check(src: &MemorySource, cases: &[(&str, &[(&str, f64)])]) {
    check_vectors(src, T, cases, (1e-9, 1.0, false));
}

#[test]
fn simple_aggregations_group_like_prometheus() {
    let src = http_requests();
    check(
        &src,
        &[
            (
                "sum by (job) (http_requests)",
                &[
                    (r#"{job="api-server"}"#, 1000.0),
                    (r#"{job="app-server"}"#, 2600.0),
                ],
            ),
            // `without` drops the listed labels and the metric name.
            (
                "sum without (instance) (http_requests)",
                &[
                    (r#"{group="canary", job="api-server"}"#, 700.0),
                    (r#"{group="canary", job="app-server"}"#, 1500.0),
                    (r#"{group="production", job="api-server"}"#, 300.0),
                    (r#"{group="production", job="app-server"}"#, 1100.0),
                ],
            ),
            ("sum(http_requests)", &[("{}", 3600.0)]),
            // A `by` label no series has groups everything under `{}`.
            ("count by (nope) (http_requests)", &[("{}", 8.0)]),
            // `by (__name__)` keeps the name: Prometheus keeps whatever `by` lists.
            (
                "max by (__name__) (http_requests)",
                &[(r#"{__name__="http_requests"}"#, 800.0)],
            ),
            (
                "avg by (group) (http_requests)",
                &[
                    (r#"{group="canary"}"#, 550.0),
                    (r#"{group="production"}"#, 350.0),
                ],
            ),
            (
                "min by (job) (http_requests)",
                &[
                    (r#"{job="api-server"}"#, 100.0),
                    (r#"{job="app-server"}"#, 500.0),
                ],
            ),
            (
                "group by (job) (http_requests)",
                &[
                    (r#"{job="api-server"}"#, 1.0),
                    (r#"{job="app-server"}"#, 1.0),
                ],
            ),
            // aggregators.test: "stddev(http_requests)" and "stdvar(http_requests)".
            ("stddev(http_requests)", &[("{}", 229.128_784_747_792)]),
            ("stdvar(http_requests)", &[("{}", 52_500.0)]),
            // By hand: 100, 300, 500, 700 → mean 400, variance 50,000.
            (
                "stdvar by (instance) (http_requests)",
                &[
                    (r#"{instance="0"}"#, 50_000.0),
                    (r#"{instance="1"}"#, 50_000.0),
                ],
            ),
            ("sum(nothing)", &[]),
        ],
    );
}

#[test]
fn parametrised_aggregations() {
    let src = http_requests();
    check(
        &src,
        &[
            // topk keeps the input series' labels, name included.
            (
                "topk by (group) (1, http_requests)",
                &[
                    (
                        r#"{__name__="http_requests", group="canary", instance="1", job="app-server"}"#,
                        800.0,
                    ),
                    (
                        r#"{__name__="http_requests", group="production", instance="1", job="app-server"}"#,
                        600.0,
                    ),
                ],
            ),
            (
                "bottomk(2, http_requests)",
                &[
                    (
                        r#"{__name__="http_requests", group="production", instance="0", job="api-server"}"#,
                        100.0,
                    ),
                    (
                        r#"{__name__="http_requests", group="production", instance="1", job="api-server"}"#,
                        200.0,
                    ),
                ],
            ),
            // k below 1 selects nothing; k above the group size selects the whole group.
            ("topk(0, http_requests)", &[]),
            ("count(topk(100, http_requests))", &[("{}", 8.0)]),
            ("count(bottomk(2.9, http_requests))", &[("{}", 2.0)]),
            // By hand: 8 values 100..800, rank 0.5 * 7 = 3.5 → 400 + 0.5 * 100.
            ("quantile(0.5, http_requests)", &[("{}", 450.0)]),
            ("quantile(0.9, http_requests)", &[("{}", 730.0)]),
            (
                "quantile by (job) (0, http_requests)",
                &[
                    (r#"{job="api-server"}"#, 100.0),
                    (r#"{job="app-server"}"#, 500.0),
                ],
            ),
            ("quantile(-1, http_requests)", &[("{}", f64::NEG_INFINITY)]),
            ("quantile(2, http_requests)", &[("{}", f64::INFINITY)]),
            ("quantile(NaN, http_requests)", &[("{}", f64::NAN)]),
        ],
    );
}

#[test]
fn count_values_formats_values_like_go() {
    let mut src = MemorySource::default();
    src.add("m", &[("a", "1")], &[(T, 1.0)]);
    src.add("m", &[("a", "2")], &[(T, 1.0)]);
    src.add("m", &[("a", "3")], &[(T, 0.25)]);
    src.add("m", &[("a", "4")], &[(T, 1e21)]);
    src.add("m", &[("a", "5")], &[(T, f64::INFINITY)]);
    src.add("m", &[("a", "6"), ("b", "x")], &[(T, f64::NAN)]);
    check(
        &src,
        &[
            (
                r#"count_values("value", m)"#,
                &[
                    (r#"{value="+Inf"}"#, 1.0),
                    (r#"{value="0.25"}"#, 1.0),
                    (r#"{value="1"}"#, 2.0),
                    (r#"{value="1000000000000000000000"}"#, 1.0),
                    (r#"{value="NaN"}"#, 1.0),
                ],
            ),
            (
                r#"count_values by (b) ("a", m)"#,
                &[
                    (r#"{a="+Inf"}"#, 1.0),
                    (r#"{a="0.25"}"#, 1.0),
                    (r#"{a="1"}"#, 2.0),
                    (r#"{a="1000000000000000000000"}"#, 1.0),
                    (r#"{a="NaN", b="x"}"#, 1.0),
                ],
            ),
            // `without` cannot drop the value label.
            (
                r#"count_values without (a, b) ("a", m)"#,
                &[
                    (r#"{a="+Inf"}"#, 1.0),
                    (r#"{a="0.25"}"#, 1.0),
                    (r#"{a="1"}"#, 2.0),
                    (r#"{a="1000000000000000000000"}"#, 1.0),
                    (r#"{a="NaN"}"#, 1.0),
                ],
            ),
        ],
    );
    let err = instant(&src, r#"count_values("", m)"#, T).expect_err("empty label");
    assert_eq!(err.to_string(), r#"invalid label name """#);
    // The classic label-name charset, as Prometheus 2.
    let err = instant(&src, r#"count_values("a-b", m)"#, T).expect_err("bad label");
    assert_eq!(err.to_string(), r#"invalid label name "a-b""#);
}

#[test]
fn nan_and_infinity_in_aggregations() {
    let mut src = MemorySource::default();
    src.add("m", &[("a", "1")], &[(T, f64::NAN)]);
    src.add("m", &[("a", "2")], &[(T, 3.0)]);
    src.add("m", &[("a", "3")], &[(T, 1.0)]);
    src.add("big", &[("a", "1")], &[(T, f64::MAX)]);
    src.add("big", &[("a", "2")], &[(T, f64::MAX)]);
    src.add("infs", &[("a", "1")], &[(T, f64::INFINITY)]);
    src.add("infs", &[("a", "2")], &[(T, 1.0)]);
    check(
        &src,
        &[
            // A number always beats NaN in min/max (aggregators.test "min/max of NaN").
            ("min(m)", &[("{}", 1.0)]),
            ("max(m)", &[("{}", 3.0)]),
            ("max(m{a=\"1\"})", &[("{}", f64::NAN)]),
            ("sum(m)", &[("{}", f64::NAN)]),
            // NaN ranks last in both directions.
            ("topk(1, m)", &[(r#"{__name__="m", a="2"}"#, 3.0)]),
            ("bottomk(1, m)", &[(r#"{__name__="m", a="3"}"#, 1.0)]),
            // Overflowing sums switch avg to an incremental mean (aggregators.test
            // "avg(data{test="big"})").
            ("avg(big)", &[("{}", f64::MAX)]),
            ("sum(big)", &[("{}", f64::INFINITY)]),
            ("avg(infs)", &[("{}", f64::INFINITY)]),
        ],
    );
    // Compensated summation: a naive sum gives 0 here.
    let mut src = MemorySource::default();
    for (i, v) in [1.0, 1e100, 1.0, -1e100].into_iter().enumerate() {
        src.add("ten", &[("i", &i.to_string())], &[(T, v)]);
    }
    check(
        &src,
        &[("sum(ten)", &[("{}", 2.0)]), ("avg(ten)", &[("{}", 0.5)])],
    );
}

#[test]
fn aggregations_in_range_queries_group_per_step() {
    let mut src = MemorySource::default();
    src.add("m", &[("a", "1")], &[(T, 1.0), (T + MIN, 2.0)]);
    // Appears at the second step, goes stale before the third.
    src.add(
        "m",
        &[("a", "2")],
        &[(T + MIN, 10.0), (T + 90_000, stale())],
    );
    let m = matrix(range(&src, "sum(m)", T, T + 2 * MIN, MIN).expect("query runs"));
    assert_eq!(
        m,
        [(
            "{}".into(),
            vec![(T, 1.0), (T + MIN, 12.0), (T + 2 * MIN, 2.0)]
        )]
    );
    let m = matrix(range(&src, "topk(1, m)", T, T + 2 * MIN, MIN).expect("query runs"));
    assert_eq!(
        m,
        [
            (
                r#"{__name__="m", a="1"}"#.into(),
                vec![(T, 1.0), (T + 2 * MIN, 2.0)]
            ),
            (r#"{__name__="m", a="2"}"#.into(), vec![(T + MIN, 10.0)]),
        ]
    );
}

#[test]
fn topk_parameter_errors_use_prometheus_words() {
    let src = http_requests();
    let err = instant(&src, "topk(NaN, http_requests)", T).expect_err("NaN k");
    assert_eq!(err.to_string(), "Parameter value is NaN");
    let err = instant(&src, "topk(1e20, http_requests)", T).expect_err("huge k");
    assert_eq!(
        err.to_string(),
        "Scalar value 100000000000000000000 overflows int64"
    );
}

#[test]
fn topk_parameter_is_checked_even_without_input() {
    // Found against Prometheus 2.42: the parameter fails the query at every step, also
    // where the input vector is empty.
    let src = http_requests();
    for q in ["topk(NaN, nonexistent)", "bottomk(1e20, nonexistent)"] {
        assert!(
            matches!(instant(&src, q, T), Err(QueryError::Execution(_))),
            "{q}"
        );
    }
    let err = range(
        &src,
        "topk(scalar(nonexistent), http_requests)",
        T,
        T + MIN,
        MIN,
    )
    .expect_err("NaN k at every step");
    assert_eq!(err.to_string(), "Parameter value is NaN");
    // Below 1 at every step: nothing, and no error even far below int64's range.
    let m = matrix(range(&src, "topk(-1e30, http_requests)", T, T + MIN, MIN).expect("empty"));
    assert!(m.is_empty(), "{m:?}");
}

#[test]
fn topk_breaks_ties_like_prometheus_heap() {
    // Found against Prometheus 2.42: among equal values Prometheus keeps what its heap keeps,
    // reading the input in label order, not the first k of a stable sort.
    let mut src = MemorySource::default();
    for (name, v) in [("a", 5.0), ("b", 5.0), ("c", 7.0), ("d", 1.0)] {
        src.add("m", &[("x", name)], &[(T, v)]);
    }
    let picked = |q: &str| -> Vec<String> {
        let mut labels: Vec<String> = vector(instant(&src, q, T).expect("runs"))
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        labels.sort();
        labels
    };
    // k=1: the first of equal values stays.
    assert_eq!(
        picked(r#"bottomk(1, m{x!="d"})"#),
        [r#"{__name__="m", x="a"}"#]
    );
    assert_eq!(
        picked(r#"topk(1, m{x!="c"})"#),
        [r#"{__name__="m", x="a"}"#]
    );
    // k=2 over a, b, c: the heap's root is a, which c replaces; b stays.
    assert_eq!(
        picked("topk(2, m)"),
        [r#"{__name__="m", x="b"}"#, r#"{__name__="m", x="c"}"#]
    );
    // bottomk(2) over a, b, c, d: the root (largest kept) is a, which d replaces.
    assert_eq!(
        picked("bottomk(2, m)"),
        [r#"{__name__="m", x="b"}"#, r#"{__name__="m", x="d"}"#]
    );
}

#[test]
fn topk_and_bottomk_order_an_instant_result_by_value_per_group() {
    let src = http_requests();
    let order = |q: &str| -> Vec<f64> {
        vector(instant(&src, q, T).expect("query runs"))
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    };
    // aggregators.test's `eval_ordered` cases: descending for topk, ascending for bottomk.
    assert_eq!(order("topk(3, http_requests)"), [800.0, 700.0, 600.0]);
    assert_eq!(order("(bottomk(3, http_requests))"), [100.0, 200.0, 300.0]);
    // Groups in label order of their first series, each ordered by value.
    assert_eq!(
        order("topk by (group) (2, http_requests)"),
        [800.0, 700.0, 600.0, 500.0]
    );
    // Nested, the order is the outer expression's: labels.
    assert_eq!(order("topk(2, http_requests) + 0"), [700.0, 800.0]);
}

#[test]
fn count_values_of_aggregators_test() {
    // aggregators.test "Tests for count_values" at 5m.
    let mut src = MemorySource::default();
    for (job, instance, group, v) in [
        ("api-server", "0", "production", 6.0),
        ("api-server", "1", "production", 6.0),
        ("api-server", "2", "production", 6.0),
        ("api-server", "0", "canary", 8.0),
        ("api-server", "1", "canary", 8.0),
        ("app-server", "0", "production", 6.0),
        ("app-server", "1", "production", 6.0),
        ("app-server", "0", "canary", 7.0),
        ("app-server", "1", "canary", 7.0),
    ] {
        src.add(
            "version",
            &[("job", job), ("instance", instance), ("group", group)],
            &[(T, v)],
        );
    }
    check(
        &src,
        &[
            (
                r#"count_values("version", version)"#,
                &[
                    (r#"{version="6"}"#, 5.0),
                    (r#"{version="7"}"#, 2.0),
                    (r#"{version="8"}"#, 2.0),
                ],
            ),
            (
                r#"count_values without (instance) ("version", version)"#,
                &[
                    (r#"{group="canary", job="api-server", version="8"}"#, 2.0),
                    (r#"{group="canary", job="app-server", version="7"}"#, 2.0),
                    (
                        r#"{group="production", job="api-server", version="6"}"#,
                        3.0,
                    ),
                    (
                        r#"{group="production", job="app-server", version="6"}"#,
                        2.0,
                    ),
                ],
            ),
            // "Overwrite label with output. Don't do this."
            (
                r#"count_values without (instance) ("job", version)"#,
                &[
                    (r#"{group="canary", job="7"}"#, 2.0),
                    (r#"{group="canary", job="8"}"#, 2.0),
                    (r#"{group="production", job="6"}"#, 5.0),
                ],
            ),
            (
                r#"count_values by (job, group) ("job", version)"#,
                &[
                    (r#"{group="canary", job="7"}"#, 2.0),
                    (r#"{group="canary", job="8"}"#, 2.0),
                    (r#"{group="production", job="6"}"#, 5.0),
                ],
            ),
        ],
    );
}

#[test]
fn topk_sorts_nan_away_from_the_top_and_bottom() {
    // aggregators.test "Test NaN is sorted away from the top/bottom" (eval_ordered).
    let mut src = MemorySource::default();
    src.add("http_requests", &[("instance", "0")], &[(T, 100.0)]);
    src.add("http_requests", &[("instance", "1")], &[(T, 200.0)]);
    src.add("http_requests", &[("instance", "2")], &[(T, f64::NAN)]);
    let name = |i: &str| format!(r#"{{__name__="http_requests", instance="{i}"}}"#);
    let (i0, i1, i2) = (name("0"), name("1"), name("2"));
    check(
        &src,
        &[
            (
                "topk(3, http_requests)",
                &[(&i1, 200.0), (&i0, 100.0), (&i2, f64::NAN)],
            ),
            (
                "bottomk(3, http_requests)",
                &[(&i0, 100.0), (&i1, 200.0), (&i2, f64::NAN)],
            ),
            ("topk(1, http_requests)", &[(&i1, 200.0)]),
        ],
    );
}

/// Float sums depend on the order of their terms; the source's order of series is
/// unspecified, so the evaluator fixes one: two sources that hold the same series in
/// different orders give the same answer, bit for bit.
#[test]
fn sums_do_not_depend_on_the_order_the_source_lists_series_in() {
    let values: Vec<f64> = (0..40)
        .map(|i| (f64::from(i) * 1.37).sin() * 100.0)
        .collect();
    let (mut forward, mut backward) = (MemorySource::default(), MemorySource::default());
    for (i, v) in values.iter().enumerate() {
        forward.add("x", &[("i", &i.to_string())], &[(T, *v)]);
    }
    for (i, v) in values.iter().enumerate().rev() {
        backward.add("x", &[("i", &i.to_string())], &[(T, *v)]);
    }
    for q in ["sum(x)", "avg(x)", "stddev(x)"] {
        let (a, b) = (
            vector(instant(&forward, q, T).expect("ok")),
            vector(instant(&backward, q, T).expect("ok")),
        );
        assert_eq!(a[0].1.to_bits(), b[0].1.to_bits(), "{q}: {a:?} {b:?}");
    }
}

//! `deriv`, `predict_linear`, the smoothing, `mad_over_time`, `absent_over_time`, the label,
//! date and trigonometric functions and `histogram_quantile`. Cases are Prometheus 3's
//! `functions.test`, `trig_functions.test` and `histograms.test` where named, else worked out
//! by hand.

use super::functions::{check_at, load, runs, vals};
use super::*;

const S: i64 = 1000;

fn expect_execution(src: &MemorySource, q: &str, t: i64) -> String {
    match instant(src, q, t) {
        Err(QueryError::Execution(msg)) => msg,
        other => panic!("{q}: expected an execution error, got {other:?}"),
    }
}

/// "Tests for deriv() and predict_linear()", load 5m.
fn deriv_data() -> MemorySource {
    let mut src = MemorySource::default();
    let reset_middle = runs(&[(0., 10., 4), (0., 10., 5)]);
    load(
        &mut src,
        5 * MIN,
        "testcounter_reset_middle_total",
        &[],
        &reset_middle,
    );
    let labels = [
        ("job", "app-server"),
        ("instance", "1"),
        ("group", "canary"),
    ];
    load(
        &mut src,
        5 * MIN,
        "http_requests_total",
        &labels,
        &runs(&[(0., 80., 10)]),
    );
    let mut inf = vec![Some(f64::NEG_INFINITY)];
    inf.extend(runs(&[(0., 80., 10)]));
    inf.push(Some(f64::INFINITY));
    load(&mut src, 5 * MIN, "http_requests_inf", &labels, &inf);
    src
}

const CANARY: &str = r#"{group="canary", instance="1", job="app-server"}"#;

#[test]
fn deriv_is_the_least_squares_slope() {
    let src = deriv_data();
    check_at(
        &src,
        50 * MIN,
        &[
            (
                "deriv(http_requests_total[50m])",
                &[(CANARY, 0.26666666666666666)],
            ),
            (
                "deriv(testcounter_reset_middle_total[100m])",
                &[("{}", 0.010606060606060607)],
            ),
            // One sample: no slope.
            ("deriv(http_requests_total[5m])", &[]),
        ],
    );
    // An infinite value makes the slope NaN.
    check_at(
        &src,
        100 * MIN,
        &[("deriv(http_requests_inf[100m])", &[(CANARY, f64::NAN)])],
    );
    // A constant series has slope 0 exactly (worked out by hand).
    let mut constant = MemorySource::default();
    load(&mut constant, 10 * S, "c", &[], &vals(&[0.1; 7]));
    check_at(&constant, 60 * S, &[("deriv(c[1m])", &[("{}", 0.)])]);
}

#[test]
fn predict_linear_extrapolates_from_the_evaluation_time() {
    let src = deriv_data();
    check_at(
        &src,
        50 * MIN,
        &[
            (
                "predict_linear(testcounter_reset_middle_total[50m], 3600)",
                &[("{}", 70.)],
            ),
            (
                "predict_linear(testcounter_reset_middle_total[50m], 1h)",
                &[("{}", 70.)],
            ),
            // `@` pins the window, not the time predicted from.
            (
                "predict_linear(testcounter_reset_middle_total[55m] @ 3000, 3600)",
                &[("{}", 76.81818181818181)],
            ),
        ],
    );
    check_at(
        &src,
        10 * MIN,
        &[(
            "predict_linear(testcounter_reset_middle_total[55m] @ 3000, 3600)",
            &[("{}", 51.36363636363637)],
        )],
    );
    check_at(
        &src,
        70 * MIN,
        &[(
            "predict_linear(testcounter_reset_middle_total[55m] @ 3000, 3600)",
            &[("{}", 89.54545454545455)],
        )],
    );
    check_at(
        &src,
        100 * MIN,
        &[(
            "predict_linear(http_requests_inf[100m], 6000)",
            &[(CANARY, f64::NAN)],
        )],
    );
    // A sample exactly at the window's end with the predicted value.
    check_at(
        &src,
        50 * MIN,
        &[(
            "predict_linear(http_requests_total[50m], 3600) - (http_requests_total + deriv(http_requests_total[50m]) * 3600)",
            &[(CANARY, 0.)],
        )],
    );
}

#[test]
fn double_exponential_smoothing_and_its_old_name() {
    // "negative trends", load 10s.
    let mut src = MemorySource::default();
    for (instance, group, values) in [
        ("0", "production", runs(&[(8000., -10., 1000)])),
        ("1", "production", runs(&[(0., -20., 1000)])),
        ("0", "canary", runs(&[(0., 30., 1000), (300., -80., 1000)])),
        ("1", "canary", runs(&[(0., -40., 1000), (0., 40., 1000)])),
    ] {
        let labels = [
            ("job", "api-server"),
            ("instance", instance),
            ("group", group),
        ];
        load(&mut src, 10 * S, "http_requests", &labels, &values);
    }
    let expected: &[(&str, f64)] = &[
        (
            r#"{group="canary", instance="0", job="api-server"}"#,
            24000.,
        ),
        (
            r#"{group="canary", instance="1", job="api-server"}"#,
            -32000.,
        ),
        (
            r#"{group="production", instance="0", job="api-server"}"#,
            0.,
        ),
        (
            r#"{group="production", instance="1", job="api-server"}"#,
            -16000.,
        ),
    ];
    check_at(
        &src,
        8000 * S,
        &[
            (
                "double_exponential_smoothing(http_requests[1m], 0.01, 0.1)",
                expected,
            ),
            ("holt_winters(http_requests[1m], 0.01, 0.1)", expected),
        ],
    );

    // Worked out by hand, sf = tf = 0.5: 0 10 0 gives 10, 0 10 0 10 gives 12.5.
    let mut src = MemorySource::default();
    load(&mut src, 10 * S, "zigzag", &[], &vals(&[0., 10., 0., 10.]));
    check_at(
        &src,
        30 * S,
        &[
            ("holt_winters(zigzag[35s], 0.5, 0.5)", &[("{}", 12.5)]),
            // One sample: no point.
            ("holt_winters(zigzag[5s], 0.5, 0.5)", &[]),
        ],
    );
    check_at(
        &src,
        20 * S,
        &[(
            "double_exponential_smoothing(zigzag[25s], 0.5, 0.5)",
            &[("{}", 10.)],
        )],
    );
    // Factors outside (0, 1) fail the query, in Prometheus' words, once there is a sample.
    assert_eq!(
        expect_execution(&src, "holt_winters(zigzag[5s], 1, 0.5)", 30 * S),
        "invalid smoothing factor. Expected: 0 < sf < 1, got: 1.000000"
    );
    assert_eq!(
        expect_execution(
            &src,
            "double_exponential_smoothing(zigzag[1m], 0.5, 0)",
            30 * S
        ),
        "invalid trend factor. Expected: 0 < tf < 1, got: 0.000000"
    );
    assert!(instant(&src, "holt_winters(nothing[1m], 5, 5)", 30 * S).is_ok());
}

#[test]
fn mad_over_time_is_the_median_absolute_deviation() {
    let mut src = MemorySource::default();
    load(
        &mut src,
        10 * S,
        "metric",
        &[],
        &vals(&[4., 6., 2., 1., 999., 1., 2.]),
    );
    check_at(
        &src,
        70 * S,
        &[("mad_over_time(metric[70s])", &[("{}", 1.)])],
    );
}

#[test]
fn absent_over_time_labels_and_windows() {
    let mut src = MemorySource::default();
    check_at(
        &src,
        MIN,
        &[
            ("absent_over_time(http_requests_total[5m])", &[("{}", 1.)]),
            (
                r#"absent_over_time(http_requests_total{handler="/foo"}[5m])"#,
                &[(r#"{handler="/foo"}"#, 1.)],
            ),
            (
                r#"absent_over_time(http_requests_total{handler!="/foo"}[5m])"#,
                &[("{}", 1.)],
            ),
            (
                r#"absent_over_time(http_requests_total{handler="/foo", handler="/bar", instance="127.0.0.1"}[5m])"#,
                &[(r#"{instance="127.0.0.1"}"#, 1.)],
            ),
        ],
    );
    load(
        &mut src,
        MIN,
        "httpd_log_lines_total",
        &[("instance", "127.0.0.1"), ("job", "node")],
        &vals(&[1.]),
    );
    load(
        &mut src,
        MIN,
        "ssl_certificate_expiry_seconds",
        &[("job", "ingress")],
        &vals(&[f64::NAN; 5]),
    );
    check_at(
        &src,
        0,
        &[("absent_over_time(httpd_log_lines_total[30s])", &[])],
    );
    check_at(
        &src,
        MIN,
        &[(
            "absent_over_time(httpd_log_lines_total[30s])",
            &[("{}", 1.)],
        )],
    );
    // NaN samples are samples.
    check_at(
        &src,
        5 * MIN,
        &[(r#"absent_over_time({job="ingress"}[4m])"#, &[])],
    );
    check_at(
        &src,
        10 * MIN,
        &[(
            r#"absent_over_time({job="ingress"}[4m])"#,
            &[(r#"{job="ingress"}"#, 1.)],
        )],
    );
    // Per step in a range query (worked out by hand).
    let m = matrix(
        range(
            &src,
            "absent_over_time(httpd_log_lines_total[30s])",
            0,
            90 * S,
            30 * S,
        )
        .expect("query runs"),
    );
    assert_eq!(
        m,
        [(
            "{}".to_owned(),
            vec![(30 * S, 1.), (60 * S, 1.), (90 * S, 1.)]
        )]
    );
}

#[test]
fn absent_takes_the_first_equality_of_each_label() {
    let src = MemorySource::default();
    check_at(
        &src,
        50 * MIN,
        &[
            (
                r#"absent(nonexistent{job="testjob",job=~"testjob2",foo="bar"})"#,
                &[(r#"{foo="bar"}"#, 1.)],
            ),
            (
                r#"absent(nonexistent{job="testjob",job="testjob2",foo="bar"})"#,
                &[(r#"{foo="bar"}"#, 1.)],
            ),
            // An `=` after another operator on the label sets it (Prometheus' `has` map).
            (
                r#"absent(nonexistent{job!="a",job="b"})"#,
                &[(r#"{job="b"}"#, 1.)],
            ),
            (r#"absent((nonexistent{job="a"}))"#, &[(r#"{job="a"}"#, 1.)]),
        ],
    );
}

fn label_data() -> MemorySource {
    let mut src = MemorySource::default();
    for (s, v) in [("source-value-10", 0.), ("source-value-20", 1.)] {
        src.add(
            "testmetric",
            &[("src", s), ("dst", "original-destination-value")],
            &[(0, v)],
        );
    }
    src
}

#[test]
fn label_replace_matches_the_whole_value() {
    let src = label_data();
    let row =
        |src: &str, dst: &str| format!(r#"{{__name__="testmetric", dst="{dst}", src="{src}"}}"#);
    let (ten, twenty) = ("source-value-10", "source-value-20");
    let cases: Vec<(&str, Vec<(String, f64)>)> = vec![
        (
            r#"label_replace(testmetric, "dst", "destination-value-$1", "src", "source-value-(.*)")"#,
            vec![(row(ten, "destination-value-10"), 0.), (row(twenty, "destination-value-20"), 1.)],
        ),
        // No substring match.
        (
            r#"label_replace(testmetric, "dst", "destination-value-$1", "src", "value-(.*)")"#,
            vec![(row(ten, "original-destination-value"), 0.), (row(twenty, "original-destination-value"), 1.)],
        ),
        (
            r#"label_replace(testmetric, "dst", "$1-value-$2", "src", "(.*)-value-(.*)")"#,
            vec![(row(ten, ten), 0.), (row(twenty, twenty), 1.)],
        ),
        // A missing source is the empty string: it matches `(.*)`, not `source-value-(.*)`.
        (
            r#"label_replace(testmetric, "dst", "value-$1", "nonexistent-src", "source-value-(.*)")"#,
            vec![(row(ten, "original-destination-value"), 0.), (row(twenty, "original-destination-value"), 1.)],
        ),
        (
            r#"label_replace(testmetric, "dst", "value-$1", "nonexistent-src", "(.*)")"#,
            vec![(row(ten, "value-"), 0.), (row(twenty, "value-"), 1.)],
        ),
        (
            r#"label_replace((((testmetric))), (("dst")), (("value-$1")), (("src")), (("non-matching-regex")))"#,
            vec![(row(ten, "original-destination-value"), 0.), (row(twenty, "original-destination-value"), 1.)],
        ),
        // `${1}x` and `$$` (worked out by hand, Go's template rules).
        (
            r#"label_replace(testmetric, "dst", "${1}x$$", "src", "source-value-(.*)")"#,
            vec![(row(ten, "10x$"), 0.), (row(twenty, "20x$"), 1.)],
        ),
        // Can rename the metric (worked out by hand).
        (
            r#"label_replace(testmetric, "__name__", "renamed", "", "")"#,
            vec![
                (r#"{__name__="renamed", dst="original-destination-value", src="source-value-10"}"#.to_owned(), 0.),
                (r#"{__name__="renamed", dst="original-destination-value", src="source-value-20"}"#.to_owned(), 1.),
            ],
        ),
    ];
    for (q, expected) in cases {
        assert_eq!(vector(instant(&src, q, 0).expect(q)), expected, "{q}");
    }
    // An empty result removes the label.
    let v = vector(
        instant(
            &src,
            r#"label_replace(testmetric, "dst", "", "dst", ".*")"#,
            0,
        )
        .expect("runs"),
    );
    assert_eq!(v[0].0, r#"{__name__="testmetric", src="source-value-10"}"#);

    assert_eq!(
        expect_execution(
            &src,
            r#"label_replace(testmetric, "dst", "value-$1", "src", "(.*")"#,
            0
        ),
        "invalid regular expression in label_replace(): (.*"
    );
    assert_eq!(
        expect_execution(
            &src,
            r#"label_replace(testmetric, "a-b", "", "src", "(.*)")"#,
            0
        ),
        "invalid destination label name in label_replace(): a-b"
    );
    assert_eq!(
        expect_execution(&src, r#"label_replace(testmetric, "src", "", "", "")"#, 0),
        "vector cannot contain metrics with the same labelset"
    );
}

#[test]
fn label_replace_and_join_merge_series_across_steps() {
    let mut src = MemorySource::default();
    src.add("series", &[("label", "a"), ("idx", "1")], &[(0, 2.)]);
    src.add("series", &[("label", "a"), ("idx", "2")], &[(20 * MIN, 4.)]);
    for (q, labels) in [
        (
            r#"label_replace(series, "idx", "replaced", "idx", ".*")"#,
            r#"{__name__="series", idx="replaced", label="a"}"#,
        ),
        (
            r#"label_join(series, "idx", ",", "label", "label")"#,
            r#"{__name__="series", idx="a,a", label="a"}"#,
        ),
    ] {
        let m = matrix(range(&src, q, 0, 20 * MIN, 20 * MIN).expect(q));
        assert_eq!(
            m,
            [(labels.to_owned(), vec![(0, 2.), (20 * MIN, 4.)])],
            "{q}"
        );
    }
}

#[test]
fn label_join_joins_in_order() {
    let mut src = MemorySource::default();
    let dst = ("dst", "original-destination-value");
    src.add(
        "testmetric",
        &[("src", "a"), ("src1", "b"), ("src2", "c"), dst],
        &[(0, 0.)],
    );
    src.add("dup", &[("label", "a"), ("this", "a")], &[(0, 1.)]);
    src.add("dup", &[("label", "b"), ("this", "a")], &[(0, 1.)]);
    let one = |q: &str| vector(instant(&src, q, 0).expect(q)).remove(0).0;
    assert_eq!(
        one(r#"label_join(testmetric, "dst", "-", "src", "src1", "src2")"#),
        r#"{__name__="testmetric", dst="a-b-c", src="a", src1="b", src2="c"}"#
    );
    assert_eq!(
        one(r#"label_join(testmetric, "dst", "-", "src", "src3", "src1")"#),
        r#"{__name__="testmetric", dst="a--b", src="a", src1="b", src2="c"}"#
    );
    // An empty join removes the destination.
    assert_eq!(
        one(r#"label_join(testmetric, "dst", "", "emptysrc", "emptysrc1")"#),
        r#"{__name__="testmetric", src="a", src1="b", src2="c"}"#
    );
    assert_eq!(
        one(r#"label_join(testmetric, "dst", ", ")"#),
        r#"{__name__="testmetric", src="a", src1="b", src2="c"}"#
    );
    assert_eq!(
        expect_execution(&src, r#"label_join(dup, "label", "", "this")"#, 0),
        "vector cannot contain metrics with the same labelset"
    );
    assert_eq!(
        expect_execution(&src, r#"label_join(testmetric, "dst", "", "a-b")"#, 0),
        "invalid source label name in label_join(): a-b"
    );
}

#[test]
fn date_functions_of_the_step_or_of_values() {
    let src = MemorySource::default();
    check_at(
        &src,
        0,
        &[
            ("year()", &[("{}", 1970.)]),
            ("year(vector(1136239445))", &[("{}", 2006.)]),
            ("month()", &[("{}", 1.)]),
            ("month(vector(1136239445))", &[("{}", 1.)]),
            ("day_of_month()", &[("{}", 1.)]),
            ("day_of_month(vector(1136239445))", &[("{}", 2.)]),
            ("day_of_year()", &[("{}", 1.)]),
            ("day_of_year(vector(1136239445))", &[("{}", 2.)]),
            // Thursday.
            ("day_of_week()", &[("{}", 4.)]),
            ("day_of_week(vector(1136239445))", &[("{}", 1.)]),
            ("hour()", &[("{}", 0.)]),
            ("hour(vector(1136239445))", &[("{}", 22.)]),
            ("minute()", &[("{}", 0.)]),
            ("minute(vector(1136239445))", &[("{}", 4.)]),
            ("year(vector(1230767999))", &[("{}", 2008.)]),
            ("year(vector(1230768000))", &[("{}", 2009.)]),
            (
                "month(vector(1456790399)) + day_of_month(vector(1456790399)) / 100",
                &[("{}", 2.29)],
            ),
            (
                "month(vector(1456790400)) + day_of_month(vector(1456790400)) / 100",
                &[("{}", 3.01)],
            ),
            ("day_of_year(vector(1483191420))", &[("{}", 366.)]),
            ("day_of_year(vector(1672493820))", &[("{}", 365.)]),
            ("days_in_month(vector(1454284800))", &[("{}", 29.)]),
            ("days_in_month(vector(1485907200))", &[("{}", 28.)]),
            // Worked out by hand: before the epoch, and fractions truncated toward zero.
            ("year(vector(-1))", &[("{}", 1969.)]),
            ("day_of_week(vector(-1))", &[("{}", 3.)]),
            ("hour(vector(-1))", &[("{}", 23.)]),
            ("minute(vector(59.9))", &[("{}", 0.)]),
            ("days_in_month(vector(951782400))", &[("{}", 29.)]),
            ("days_in_month(vector(4105123200))", &[("{}", 28.)]),
        ],
    );
    // With an argument, `__name__` goes (worked out by hand).
    let mut src = MemorySource::default();
    src.add("ts", &[("a", "1")], &[(0, 1136239445.)]);
    check_at(&src, 0, &[("hour(ts)", &[(r#"{a="1"}"#, 22.)])]);
    // Without one, a range query gets the hour of each step.
    let m = matrix(range(&src, "hour()", 0, 2 * 3_600_000, 3_600_000).expect("runs"));
    assert_eq!(
        m,
        [(
            "{}".to_owned(),
            vec![(0, 0.), (3_600_000, 1.), (7_200_000, 2.)]
        )]
    );
}

#[test]
fn trigonometric_functions_and_sgn() {
    let mut src = MemorySource::default();
    for (t, v) in [
        ("a", -f64::INFINITY),
        ("b", f64::INFINITY),
        ("c", f64::NAN),
        ("d", -50.),
        ("e", 0.),
        ("f", 100.),
    ] {
        src.add("test_sgn", &[("src", t)], &[(0, v)]);
    }
    check_at(
        &src,
        0,
        &[
            (
                "sgn(test_sgn)",
                &[
                    (r#"{src="a"}"#, -1.),
                    (r#"{src="b"}"#, 1.),
                    (r#"{src="c"}"#, f64::NAN),
                    (r#"{src="d"}"#, -1.),
                    (r#"{src="e"}"#, 0.),
                    (r#"{src="f"}"#, 1.),
                ],
            ),
            ("sin(vector(0))", &[("{}", 0.)]),
            ("cos(vector(0))", &[("{}", 1.)]),
            ("tan(vector(pi() / 4))", &[("{}", 0.9999999999999999)]),
            ("asin(vector(1))", &[("{}", std::f64::consts::FRAC_PI_2)]),
            ("asin(vector(2))", &[("{}", f64::NAN)]),
            ("acos(vector(1))", &[("{}", 0.)]),
            ("atan(vector(1))", &[("{}", std::f64::consts::FRAC_PI_4)]),
            ("sinh(vector(1))", &[("{}", 1.1752011936438014)]),
            ("cosh(vector(1))", &[("{}", 1.5430806348152437)]),
            ("tanh(vector(1))", &[("{}", 0.7615941559557649)]),
            ("asinh(vector(1))", &[("{}", 0.881373587019543)]),
            ("acosh(vector(1))", &[("{}", 0.)]),
            ("atanh(vector(1))", &[("{}", f64::INFINITY)]),
            ("deg(vector(pi()))", &[("{}", 180.)]),
            ("rad(vector(180))", &[("{}", std::f64::consts::PI)]),
        ],
    );
    match instant(&src, "pi()", 0).expect("runs") {
        Value::Scalar(s) => assert_eq!(s.value, std::f64::consts::PI),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A classic histogram: `(le, count)` per bucket, one sample at 0.
fn histogram(
    src: &mut MemorySource,
    metric: &str,
    labels: &[(&str, &str)],
    buckets: &[(&str, f64)],
) {
    for (le, count) in buckets {
        let mut all = labels.to_vec();
        all.push(("le", le));
        src.add(metric, &all, &[(0, *count)]);
    }
}

#[test]
fn histogram_quantile_interpolates_within_the_bucket() {
    // Worked out by hand from the bucket rules in Prometheus' `BucketQuantile`.
    let mut src = MemorySource::default();
    let plain = [("1", 10.), ("2", 20.), ("+Inf", 40.)];
    histogram(&mut src, "h_bucket", &[("job", "a")], &plain);
    let job = r#"{job="a"}"#;
    check_at(
        &src,
        0,
        &[
            ("histogram_quantile(0, h_bucket)", &[(job, 0.)]),
            ("histogram_quantile(0.25, h_bucket)", &[(job, 1.)]),
            ("histogram_quantile(0.375, h_bucket)", &[(job, 1.5)]),
            ("histogram_quantile(0.5, h_bucket)", &[(job, 2.)]),
            // In the +Inf bucket: the highest finite bound.
            ("histogram_quantile(0.75, h_bucket)", &[(job, 2.)]),
            (
                "histogram_quantile(-1, h_bucket)",
                &[(job, f64::NEG_INFINITY)],
            ),
            ("histogram_quantile(2, h_bucket)", &[(job, f64::INFINITY)]),
            ("histogram_quantile(NaN, h_bucket)", &[(job, f64::NAN)]),
            // Grouping: `by (le)` keeps only `le`.
            (
                "histogram_quantile(0.375, sum by (le) (h_bucket))",
                &[("{}", 1.5)],
            ),
        ],
    );
}

#[test]
fn histogram_quantile_edge_cases() {
    // Worked out by hand.
    let mut src = MemorySource::default();
    // Decreasing counts are raised to the count before them: [10, 10, 15, 20].
    histogram(
        &mut src,
        "h_bucket",
        &[("c", "nonmonotonic")],
        &[("1", 10.), ("2", 5.), ("3", 15.), ("+Inf", 20.)],
    );
    histogram(
        &mut src,
        "h_bucket",
        &[("c", "noinf")],
        &[("1", 10.), ("2", 20.)],
    );
    histogram(
        &mut src,
        "h_bucket",
        &[("c", "empty")],
        &[("1", 0.), ("+Inf", 0.)],
    );
    histogram(&mut src, "h_bucket", &[("c", "onlyinf")], &[("+Inf", 10.)]);
    histogram(
        &mut src,
        "h_bucket",
        &[("c", "negative")],
        &[("-1", 5.), ("+Inf", 10.)],
    );
    // Equal bounds spelled differently are one bucket; an `le` that is no number is ignored.
    histogram(
        &mut src,
        "h_bucket",
        &[("c", "spelling")],
        &[("1", 10.), ("1.0", 10.), ("abc", 99.), ("+Inf", 40.)],
    );
    check_at(
        &src,
        0,
        &[(
            "histogram_quantile(0.6, h_bucket)",
            &[
                (r#"{c="empty"}"#, f64::NAN),
                // A first bucket with a bound <= 0 is not interpolated from 0.
                (r#"{c="negative"}"#, -1.),
                (r#"{c="noinf"}"#, f64::NAN),
                (r#"{c="nonmonotonic"}"#, 2.4),
                (r#"{c="onlyinf"}"#, f64::NAN),
                (r#"{c="spelling"}"#, 1.),
            ],
        )],
    );
}

#[test]
fn histogram_quantile_ignores_floating_point_noise_between_buckets() {
    // Worked out by hand: the second bucket's extra 1e-12 is noise (relative difference below
    // 1e-12), so a rank just above 10 falls in the third bucket, not in a tiny second one.
    let mut src = MemorySource::default();
    histogram(
        &mut src,
        "h_bucket",
        &[],
        &[
            ("1", 10.),
            ("2", 10.000000000001),
            ("3", 20.),
            ("+Inf", 20.),
        ],
    );
    check_at(
        &src,
        0,
        &[(
            "histogram_quantile(0.500000000000025, h_bucket)",
            &[("{}", 2.)],
        )],
    );
}

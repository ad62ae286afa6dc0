//! Prometheus 3 behaviours of issue #22: delayed `__name__` removal, classic-histogram
//! functions, experimental features refused by name. Data and expected values are adapted
//! from Prometheus' `promql/promqltest/testdata/*.test` (file named at each test; those
//! tests run with delayed name removal on, as Updraft does).

use super::*;

/// `name_label_dropping.test`: `metric_total{env="1"} 0 60 120` and
/// `another_metric_total{env="1"} 60 120 180`, at 5 m intervals, evaluated at 10 m.
fn name_dropping_data() -> (MemorySource, i64) {
    let mut src = MemorySource::default();
    let at = |k: i64| T + k * 5 * MIN;
    src.add(
        "metric_total",
        &[("env", "1")],
        &[(at(0), 0.0), (at(1), 60.0), (at(2), 120.0)],
    );
    src.add(
        "another_metric_total",
        &[("env", "1")],
        &[(at(0), 60.0), (at(1), 120.0), (at(2), 180.0)],
    );
    (src, at(2))
}

#[test]
fn the_metric_name_goes_at_the_end_of_evaluation() {
    let (src, t) = name_dropping_data();
    check_vectors(
        &src,
        t,
        &[
            (r#"-metric_total"#, &[(r#"{env="1"}"#, -120.0)]),
            (
                "metric_total + another_metric_total",
                &[(r#"{env="1"}"#, 300.0)],
            ),
            (
                "metric_total <= another_metric_total",
                &[(r#"{__name__="metric_total", env="1"}"#, 120.0)],
            ),
            (
                "metric_total <= bool another_metric_total",
                &[(r#"{env="1"}"#, 1.0)],
            ),
            ("metric_total * 2", &[(r#"{env="1"}"#, 240.0)]),
            ("round(metric_total)", &[(r#"{env="1"}"#, 120.0)]),
            (
                r#"rate(metric_total{env="1"}[10m])"#,
                &[(r#"{env="1"}"#, 0.2)],
            ),
            (
                r#"last_over_time(metric_total{env="1"}[10m])"#,
                &[(r#"{__name__="metric_total", env="1"}"#, 120.0)],
            ),
            // A name-dropping function inside a subquery is respected by last_over_time.
            // (60, not upstream's 120: T is not a multiple of the 1 m inner step, so the
            // last inner step falls 20 s before the sample at 10 m.)
            (
                r#"last_over_time(abs(metric_total{env="1"})[10m:])"#,
                &[(r#"{env="1"}"#, 60.0)],
            ),
            // label_replace and label_join read the name that rate is about to drop...
            (
                r#"label_replace(rate({env="1"}[10m]), "my_name", "rate_$1", "__name__", "(.+)")"#,
                &[
                    (r#"{env="1", my_name="rate_another_metric_total"}"#, 0.2),
                    (r#"{env="1", my_name="rate_metric_total"}"#, 0.2),
                ],
            ),
            (
                r#"label_join(rate({env="1"}[10m]), "my_name", "_", "__name__")"#,
                &[
                    (r#"{env="1", my_name="another_metric_total"}"#, 0.2),
                    (r#"{env="1", my_name="metric_total"}"#, 0.2),
                ],
            ),
            // ... and keep it by writing it.
            (
                r#"label_replace(rate({env="1"}[10m]), "__name__", "rate_$1", "__name__", "(.+)")"#,
                &[
                    (r#"{__name__="rate_another_metric_total", env="1"}"#, 0.2),
                    (r#"{__name__="rate_metric_total", env="1"}"#, 0.2),
                ],
            ),
            (
                r#"label_join(rate({env="1"}[10m]), "__name__", "_", "__name__", "env")"#,
                &[
                    (r#"{__name__="another_metric_total_1", env="1"}"#, 0.2),
                    (r#"{__name__="metric_total_1", env="1"}"#, 0.2),
                ],
            ),
            // Two series that differ only by name do not collide before the end.
            (
                r#"sum(rate({env="1"}[10m])) by (env)"#,
                &[(r#"{env="1"}"#, 0.4)],
            ),
            (
                r#"sum by (__name__, env) (metric_total{env="1"})"#,
                &[(r#"{__name__="metric_total", env="1"}"#, 120.0)],
            ),
            (
                r#"topk(10, sum by (__name__, env) (rate(metric_total{env="1"}[10m])))"#,
                &[(r#"{env="1"}"#, 0.2)],
            ),
        ],
        (1e-9, 1.0, true),
    );
    // Partitioned by the name that goes at the end: a collision there.
    let err = instant(&src, r#"sum by (__name__) (rate({env="1"}[10m]))"#, t)
        .expect_err("collides at the end");
    assert_eq!(
        err.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
}

#[test]
fn a_group_drops_its_name_if_any_member_does() {
    // name_label_dropping.test: metric_total{env="1"} 0+1x10, {env="2"} 0+3x10 at 1 m.
    let mut src = MemorySource::default();
    for (env, slope) in [("1", 1.0), ("2", 3.0)] {
        let samples: Vec<(i64, f64)> = (0..=10).map(|k| (T + k * MIN, slope * k as f64)).collect();
        src.add("metric_total", &[("env", env)], &samples);
    }
    let t = T + 10 * MIN;
    check_vectors(
        &src,
        t,
        &[
            (
                r#"sum by (__name__) (metric_total{env="1"})"#,
                &[(r#"{__name__="metric_total"}"#, 10.0)],
            ),
            (
                r#"sum by (__name__) (rate(metric_total{env="2"}[5m]))"#,
                &[("{}", 0.05)],
            ),
            (
                r#"label_replace(sum by (__name__) (rate(metric_total{env="2"}[5m])), "__name__", "$1", "__name__", "(.+)")"#,
                &[(r#"{__name__="metric_total"}"#, 0.05)],
            ),
            (
                r#"sum by (__name__) (metric_total{env="1"} or rate(metric_total{env="2"}[5m]))"#,
                &[("{}", 10.05)],
            ),
            (
                r#"sum by (__name__) (rate(metric_total{env="2"}[5m]) or metric_total{env="1"})"#,
                &[("{}", 10.05)],
            ),
            (
                r#"sum by (__name__) (rate(metric_total{env="3"}[5m]) or metric_total{env="1"})"#,
                &[(r#"{__name__="metric_total"}"#, 10.0)],
            ),
        ],
        (1e-9, 1.0, true),
    );
}

#[test]
fn series_that_meet_once_their_names_go_merge_in_a_range_query() {
    // name_label_dropping.test: `metric_a 1 _`, `metric_b 3 4` at 10 m.
    let mut src = MemorySource::default();
    src.add("metric_a", &[], &[(T, 1.0)]);
    src.add("metric_b", &[], &[(T, 3.0), (T + 10 * MIN, 4.0)]);
    let m = matrix(range(&src, "-metric_a or -metric_b", T, T + 20 * MIN, 10 * MIN).expect("runs"));
    assert_eq!(
        m,
        [("{}".to_owned(), vec![(T, -1.0), (T + 10 * MIN, -4.0)])]
    );
    // Where both have a point at one step, the merge fails as Prometheus' does.
    let err = range(
        &src,
        "-metric_a or on (__name__) -metric_b",
        T,
        T + 20 * MIN,
        10 * MIN,
    )
    .expect_err("both at T");
    assert_eq!(
        err.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
}

/// `histograms.test`'s `histogram_fraction` cases over classic buckets: `(buckets as
/// (le, count), lower, upper, expected)`.
#[test]
fn histogram_fraction_over_classic_buckets_follows_prometheus() {
    let steps: &[(&str, f64)] = &[("1", 1.0), ("2", 3.0), ("3", 6.0), ("+Inf", 100.0)];
    let negative: &[(&str, f64)] = &[("-3", 10.0), ("-2", 12.0), ("-1", 15.0), ("+Inf", 100.0)];
    let nan = f64::NAN;
    type Case<'a> = (&'a [(&'a str, f64)], &'a str, &'a str, f64);
    let cases: &[Case<'_>] = &[
        // testhistogram2 at 50m: 0, 10, 20, 30, 30.
        (
            &[
                ("0", 0.0),
                ("2", 10.0),
                ("4", 20.0),
                ("6", 30.0),
                ("+Inf", 30.0),
            ],
            "0",
            "4",
            2.0 / 3.0,
        ),
        (
            &[
                ("0", 0.0),
                ("2", 10.0),
                ("4", 20.0),
                ("6", 30.0),
                ("+Inf", 30.0),
            ],
            "0",
            "6",
            1.0,
        ),
        (
            &[
                ("0", 0.0),
                ("2", 10.0),
                ("4", 20.0),
                ("6", 30.0),
                ("+Inf", 30.0),
            ],
            "0",
            "3.5",
            0.5833333333333334,
        ),
        (steps, "0", "1.5", 0.02),
        (negative, "-4", "-2", 0.02),
        (negative, "-Inf", "-1.5", 0.135),
        (steps, "-Inf", "+Inf", 1.0),
        (negative, "-Inf", "+Inf", 1.0),
        (steps, "4", "5", 0.0),
        (negative, "0", "1", 0.0),
        (steps, "2", "5", 0.03),
        (steps, "400", "+Inf", 0.94),
        (steps, "2", "2", 0.0),
        (steps, "3", "2", 0.0),
        (&[("+Inf", 100.0)], "0", "1", 0.0),
        (
            &[("1", 0.0), ("2", 0.0), ("3", 0.0), ("+Inf", 0.0)],
            "0",
            "5",
            nan,
        ),
        (steps, "2", "3.5", 0.03),
        // Edge cases of `BucketFraction` itself: no +Inf bucket, a NaN bound.
        (&[("1", 1.0), ("2", 3.0)], "0", "1", nan),
        (steps, "NaN", "1", nan),
        // Buckets out of order and repeated bounds are sorted and merged.
        (
            &[("+Inf", 100.0), ("2", 3.0), ("1", 1.0), ("3", 6.0)],
            "0",
            "1.5",
            0.02,
        ),
    ];
    for (buckets, lower, upper, expected) in cases {
        let mut src = MemorySource::default();
        for (le, count) in *buckets {
            src.add("h_bucket", &[("le", le)], &[(T, *count)]);
        }
        let q = format!("histogram_fraction({lower}, {upper}, h_bucket)");
        let got = vector(instant(&src, &q, T).unwrap_or_else(|e| panic!("{q}: {e}")));
        assert_eq!(got.len(), 1, "{q}: {got:?}");
        let (labels, value) = &got[0];
        assert_eq!(labels, "{}", "{q}: the name goes");
        let close = (value - expected).abs() <= 1e-12 || (value.is_nan() && expected.is_nan());
        assert!(close, "{q}: {value} != {expected}");
    }
}

#[test]
fn histogram_fraction_groups_by_every_label_but_le_and_follows_each_step() {
    // histograms.test's testhistogram3 at 50m (counts 10 × the per-5m increments).
    let mut src = MemorySource::default();
    for (start, buckets) in [
        (
            "positive",
            [
                ("0", 0.0),
                ("0.1", 5.0),
                (".2", 7.0),
                ("1e0", 11.0),
                ("+Inf", 11.0),
            ],
        ),
        (
            "negative",
            [
                ("-.25", 0.0),
                ("-.2", 1.0),
                ("-0.1", 2.0),
                ("0.3", 2.0),
                ("+Inf", 2.0),
            ],
        ),
    ] {
        for (le, per_step) in buckets {
            let samples: Vec<(i64, f64)> = (0..=10)
                .map(|k| (T + k * 5 * MIN, per_step * k as f64))
                .collect();
            src.add(
                "testhistogram3_bucket",
                &[("start", start), ("le", le)],
                &samples,
            );
        }
    }
    let t = T + 50 * MIN;
    check_vectors(
        &src,
        t,
        &[
            (
                "histogram_fraction(0, 0.2, testhistogram3_bucket)",
                &[
                    (r#"{start="negative"}"#, 0.0),
                    (r#"{start="positive"}"#, 0.6363636363636364),
                ],
            ),
            (
                "histogram_fraction(0, 0.2, rate(testhistogram3_bucket[10m]))",
                &[
                    (r#"{start="negative"}"#, 0.0),
                    (r#"{start="positive"}"#, 0.6363636363636364),
                ],
            ),
        ],
        (1e-12, 1.0, true),
    );
    // The bounds are scalars evaluated at each step of a range query.
    let m = matrix(
        range(&src, "histogram_fraction(0, time() - time() + 0.1, testhistogram3_bucket{start=\"positive\"})", t - 5 * MIN, t, 5 * MIN)
            .expect("runs"),
    );
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].1.len(), 2);
    assert!(
        m[0].1.iter().all(|(_, v)| (v - 5.0 / 11.0).abs() < 1e-12),
        "{m:?}"
    );
}

#[test]
fn experimental_features_are_refused_by_name() {
    let mut src = MemorySource::default();
    src.add("temp", &[("a", "1")], &[(T, 1.0)]);
    src.add("info_metric", &[("a", "1")], &[(T, 1.0)]);
    for (q, names) in [
        (
            "info(temp)",
            ["function `info`", "promql-experimental-functions"],
        ),
        (
            "sort_by_label_desc(temp, \"a\")",
            [
                "function `sort_by_label_desc`",
                "promql-experimental-functions",
            ],
        ),
        (
            "ts_of_max_over_time(temp[5m])",
            [
                "function `ts_of_max_over_time`",
                "promql-experimental-functions",
            ],
        ),
        (
            "limit_ratio(0.5, temp)",
            ["aggregation `limit_ratio`", "promql-experimental-functions"],
        ),
        // Nested: found wherever it is.
        (
            "sum(rate(temp[5m])) + on() group_left limitk(1, temp)",
            ["aggregation `limitk`", "experimental"],
        ),
        (
            "temp + fill(0) info_metric",
            ["`fill` modifiers", "promql-binop-fill-modifiers"],
        ),
        (
            "temp + fill_left(0) info_metric",
            ["`fill` modifiers", "promql-binop-fill-modifiers"],
        ),
        (
            r#"temp{__type__="gauge"}"#,
            ["label `__type__`", "type-and-unit-labels"],
        ),
        (
            r#"rate({__name__="temp", __unit__!=""}[5m])"#,
            ["label `__unit__`", "type-and-unit-labels"],
        ),
        (
            "histogram_count(temp)",
            ["function `histogram_count`", "native histograms"],
        ),
        (
            "histogram_sum(temp)",
            ["function `histogram_sum`", "native histograms"],
        ),
        (
            "histogram_avg(temp)",
            ["function `histogram_avg`", "native histograms"],
        ),
        (
            "histogram_stddev(temp)",
            ["function `histogram_stddev`", "native histograms"],
        ),
        (
            "histogram_stdvar(temp)",
            ["function `histogram_stdvar`", "native histograms"],
        ),
    ] {
        for result in [instant(&src, q, T), range(&src, q, T, T + MIN, MIN)] {
            match result {
                Err(e @ QueryError::Unsupported(_)) => {
                    let text = e.to_string();
                    for name in names {
                        assert!(text.contains(name), "{q}: {text}");
                    }
                }
                other => panic!("{q}: expected unsupported, got {other:?}"),
            }
        }
    }
    // The experimental functions Updraft evaluates still run.
    for q in [
        "double_exponential_smoothing(temp[5m], 0.5, 0.5)",
        "mad_over_time(temp[5m])",
    ] {
        instant(&src, q, T).unwrap_or_else(|e| panic!("{q}: {e}"));
    }
}

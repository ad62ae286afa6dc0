//! Range-vector functions. Cases are Prometheus' `promql/promqltest/testdata/functions.test`
//! (as of Prometheus 3), loaded at the same times (`load 5m` = a sample every 5 minutes from
//! the epoch), named by the test they come from.

use super::*;

/// promqltest's `load <interval>` of one series; `None` is `_` (no sample).
pub(super) fn load(
    src: &mut MemorySource,
    interval_ms: i64,
    metric: &str,
    labels: &[(&str, &str)],
    values: &[Option<f64>],
) {
    let samples: Vec<(i64, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i as i64 * interval_ms, v)))
        .collect();
    src.add(metric, labels, &samples);
}

/// promqltest's `a+bxn` (n + 1 values) followed by further such runs.
pub(super) fn runs(runs: &[(f64, f64, usize)]) -> Vec<Option<f64>> {
    runs.iter()
        .flat_map(|&(start, inc, n)| (0..=n).map(move |i| Some(start + inc * i as f64)))
        .collect()
}

pub(super) fn vals(values: &[f64]) -> Vec<Option<f64>> {
    values.iter().copied().map(Some).collect()
}

pub(super) fn check_at(src: &MemorySource, t: i64, cases: &[(&str, &[(&str, f64)])]) {
    // promqltest compares with a relative tolerance of 1e-6 too.
    check_vectors(src, t, cases, (1e-6, 1e-9, true));
}

#[test]
fn resets_and_changes() {
    let mut src = MemorySource::default();
    load(
        &mut src,
        5 * MIN,
        "http_requests",
        &[("path", "/foo")],
        &vals(&[1., 2., 3., 0., 1., 0., 0., 1., 2., 0.]),
    );
    load(
        &mut src,
        5 * MIN,
        "http_requests",
        &[("path", "/bar")],
        &vals(&[1., 2., 3., 4., 5., 1., 2., 3., 4., 5.]),
    );
    load(
        &mut src,
        5 * MIN,
        "http_requests",
        &[("path", "/biz")],
        &vals(&[0., 0., 0., 0., 0., 1., 1., 1., 1., 1.]),
    );
    let three = |foo, bar, biz| -> [(&'static str, f64); 3] {
        [
            (r#"{path="/foo"}"#, foo),
            (r#"{path="/bar"}"#, bar),
            (r#"{path="/biz"}"#, biz),
        ]
    };
    check_at(
        &src,
        50 * MIN,
        &[
            // The last sample is at 45m: a 5m window at 50m is empty (left-open).
            ("resets(http_requests[5m])", &[]),
            ("resets(http_requests[10m])", &three(0., 0., 0.)),
            ("resets(http_requests[600])", &three(0., 0., 0.)),
            ("resets(http_requests[20m])", &three(1., 0., 0.)),
            ("resets(http_requests[30m])", &three(1., 0., 0.)),
            ("resets(http_requests[32m])", &three(2., 1., 0.)),
            ("resets(http_requests[50m])", &three(3., 1., 0.)),
            ("resets(nonexistent_metric[50m])", &[]),
            ("changes(http_requests[5m])", &[]),
            ("changes(http_requests[6m])", &three(0., 0., 0.)),
            ("changes(http_requests[20m])", &three(2., 2., 0.)),
            ("changes(http_requests[30m])", &three(3., 4., 0.)),
            ("changes(http_requests[50m])", &three(7., 8., 1.)),
            ("changes((http_requests[50m]))", &three(7., 8., 1.)),
        ],
    );

    // "changes(x[20m])": NaN to NaN is no change.
    let mut src = MemorySource::default();
    load(&mut src, 5 * MIN, "x", &[("a", "b")], &vals(&[f64::NAN; 3]));
    load(
        &mut src,
        5 * MIN,
        "x",
        &[("a", "c")],
        &vals(&[0., f64::NAN, 0.]),
    );
    check_at(
        &src,
        15 * MIN,
        &[("changes(x[20m])", &[(r#"{a="b"}"#, 0.), (r#"{a="c"}"#, 2.)])],
    );

    // "Test duplicate labelset in promql output".
    let mut src = MemorySource::default();
    src.add("testmetric1", &[("src", "a"), ("dst", "b")], &[(0, 0.)]);
    src.add("testmetric2", &[("src", "a"), ("dst", "b")], &[(0, 1.)]);
    let err = instant(
        &src,
        "changes({__name__=~'testmetric1|testmetric2'}[5m])",
        0,
    )
    .expect_err("duplicate labelset");
    assert_eq!(
        err.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
}

#[test]
fn increase_rate_and_delta_extrapolate_like_prometheus() {
    let mut src = MemorySource::default();
    load(
        &mut src,
        5 * MIN,
        "http_requests_total",
        &[("path", "/foo")],
        &runs(&[(0., 10., 10)]),
    );
    load(
        &mut src,
        5 * MIN,
        "http_requests_total",
        &[("path", "/bar")],
        &runs(&[(0., 18., 5), (0., 18., 5)]),
    );
    load(
        &mut src,
        5 * MIN,
        "http_requests_total",
        &[("path", "/dings")],
        &runs(&[(10., 10., 10)]),
    );
    load(
        &mut src,
        5 * MIN,
        "http_requests_total",
        &[("path", "/bumms")],
        &runs(&[(1., 10., 10)]),
    );
    check_at(
        &src,
        50 * MIN,
        &[
            (
                "increase(http_requests_total[50m])",
                &[
                    (r#"{path="/foo"}"#, 100.),
                    (r#"{path="/bar"}"#, 160.),
                    (r#"{path="/dings"}"#, 100.),
                    (r#"{path="/bumms"}"#, 100.),
                ],
            ),
            // Zero-point clamp: "dings" may extrapolate 2m30s back, "bumms" only 30s.
            (
                "increase(http_requests_total[100m])",
                &[
                    (r#"{path="/foo"}"#, 100.),
                    (r#"{path="/bar"}"#, 162.),
                    (r#"{path="/dings"}"#, 105.),
                    (r#"{path="/bumms"}"#, 101.),
                ],
            ),
        ],
    );

    // "Test for increase() with counter reset": 3 2 counts as 3 0 1 2.
    let mut src = MemorySource::default();
    load(
        &mut src,
        5 * MIN,
        "http_requests_total",
        &[("path", "/foo")],
        &vals(&[0., 1., 2., 3., 2., 3., 4.]),
    );
    check_at(
        &src,
        30 * MIN,
        &[(
            "increase(http_requests_total[30m])",
            &[(r#"{path="/foo"}"#, 7.)],
        )],
    );

    // "Tests for rate()".
    let mut src = MemorySource::default();
    load(
        &mut src,
        5 * MIN,
        "testcounter_reset_middle_total",
        &[],
        &runs(&[(0., 27., 4), (0., 27., 5)]),
    );
    load(
        &mut src,
        5 * MIN,
        "testcounter_reset_end_total",
        &[],
        &[runs(&[(0., 10., 9)]), vals(&[0., 10.])].concat(),
    );
    load(
        &mut src,
        5 * MIN,
        "calculate_rate_offset_total",
        &[("x", "a")],
        &runs(&[(0., 10., 10)]),
    );
    load(
        &mut src,
        5 * MIN,
        "calculate_rate_offset_total",
        &[("x", "b")],
        &runs(&[(0., 20., 10)]),
    );
    load(
        &mut src,
        5 * MIN,
        "calculate_rate_window_total",
        &[],
        &runs(&[(0., 80., 10)]),
    );
    check_at(
        &src,
        50 * MIN,
        &[
            ("rate(testcounter_reset_middle_total[50m])", &[("{}", 0.08)]),
            ("rate(testcounter_reset_end_total[5m])", &[]),
            ("rate(testcounter_reset_end_total[6m])", &[("{}", 0.)]),
            (
                "rate(calculate_rate_window_total[50m])",
                &[("{}", 0.266_666_666_666_666_66)],
            ),
            (
                "rate(calculate_rate_offset_total[10m] offset 5m)",
                &[
                    (r#"{x="a"}"#, 0.033_333_333_333_333_33),
                    (r#"{x="b"}"#, 0.066_666_666_666_666_67),
                ],
            ),
        ],
    );

    // "Zero cutoff for left-side extrapolation", load 4m.
    let mut src = MemorySource::default();
    for (start, first) in [
        ("0m", 0.),
        ("1m", 60.),
        ("2m", 120.),
        ("3m", 180.),
        ("4m", 240.),
        ("5m", 300.),
    ] {
        load(
            &mut src,
            4 * MIN,
            "testcounter_zero_cutoff_total",
            &[("start", start)],
            &runs(&[(first, 240., 10)]),
        );
    }
    let q = "rate(testcounter_zero_cutoff_total[20m])";
    check_at(
        &src,
        10 * MIN,
        &[(
            q,
            &[
                (r#"{start="0m"}"#, 0.5),
                (r#"{start="1m"}"#, 0.55),
                (r#"{start="2m"}"#, 0.6),
                (r#"{start="3m"}"#, 0.6),
                (r#"{start="4m"}"#, 0.6),
                (r#"{start="5m"}"#, 0.6),
            ],
        )],
    );
    check_at(
        &src,
        50 * MIN,
        &[(
            q,
            &[
                (r#"{start="0m"}"#, 0.6),
                (r#"{start="1m"}"#, 0.6),
                (r#"{start="2m"}"#, 0.6),
                (r#"{start="3m"}"#, 0.6),
                (r#"{start="4m"}"#, 0.6),
                (r#"{start="5m"}"#, 0.6),
            ],
        )],
    );

    // "Tests for delta()" and "Tests for idelta()".
    let mut src = MemorySource::default();
    load(
        &mut src,
        5 * MIN,
        "http_requests",
        &[("path", "/foo")],
        &vals(&[0., 50., 100., 150., 200.]),
    );
    load(
        &mut src,
        5 * MIN,
        "http_requests",
        &[("path", "/bar")],
        &vals(&[200., 150., 100., 50., 0.]),
    );
    check_at(
        &src,
        20 * MIN,
        &[(
            "delta(http_requests[20m])",
            &[(r#"{path="/foo"}"#, 200.), (r#"{path="/bar"}"#, -200.)],
        )],
    );
    let mut src = MemorySource::default();
    load(
        &mut src,
        5 * MIN,
        "http_requests",
        &[("path", "/foo")],
        &vals(&[0., 50., 100., 150.]),
    );
    load(
        &mut src,
        5 * MIN,
        "http_requests",
        &[("path", "/bar")],
        &vals(&[0., 50., 100., 50.]),
    );
    check_at(
        &src,
        20 * MIN,
        &[(
            "idelta(http_requests[20m])",
            &[(r#"{path="/foo"}"#, 50.), (r#"{path="/bar"}"#, -50.)],
        )],
    );
}

#[test]
fn irate_and_idelta_in_range_queries() {
    let mut src = MemorySource::default();
    load(
        &mut src,
        5 * MIN,
        "http_requests_total",
        &[("path", "/foo")],
        &runs(&[(0., 10., 10)]),
    );
    load(
        &mut src,
        5 * MIN,
        "http_requests_total",
        &[("path", "/bar")],
        &runs(&[(0., 10., 5), (0., 10., 5)]),
    );
    load(
        &mut src,
        5 * MIN,
        "http_requests_nan",
        &[],
        &vals(&[1., f64::NAN, f64::NAN, 5., 11.]),
    );
    check_at(
        &src,
        50 * MIN,
        &[(
            "irate(http_requests_total[50m])",
            &[
                (r#"{path="/foo"}"#, 0.033_333_333_333_333_33),
                (r#"{path="/bar"}"#, 0.033_333_333_333_333_33),
            ],
        )],
    );
    // Counter reset.
    check_at(
        &src,
        30 * MIN,
        &[(
            "irate(http_requests_total[50m])",
            &[
                (r#"{path="/foo"}"#, 0.033_333_333_333_333_33),
                (r#"{path="/bar"}"#, 0.),
            ],
        )],
    );
    // "eval range from 0 to 20m step 5m irate(http_requests_nan[15m1s])": _ NaN NaN NaN 0.02.
    let points = |q: &str| -> Vec<(i64, f64)> {
        let m = matrix(range(&src, q, 0, 20 * MIN, 5 * MIN).expect("query runs"));
        assert_eq!(m.len(), 1, "{q}");
        assert_eq!(m[0].0, "{}", "{q}");
        m[0].1.clone()
    };
    let p = points("irate(http_requests_nan[15m1s])");
    assert_eq!(
        p.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        [5 * MIN, 10 * MIN, 15 * MIN, 20 * MIN]
    );
    assert!(p[..3].iter().all(|(_, v)| v.is_nan()), "{p:?}");
    assert!((p[3].1 - 0.02).abs() < 1e-12, "{p:?}");
    // "eval range from 0 to 20m step 5m idelta(http_requests_nan[15m1s])": _ NaN NaN NaN 6.
    let p = points("idelta(http_requests_nan[15m1s])");
    assert_eq!(p.len(), 4);
    assert!(p[..3].iter().all(|(_, v)| v.is_nan()), "{p:?}");
    assert_eq!(p[3], (20 * MIN, 6.));
    // One read per series for the whole range query.
    let before = src.sample_reads.load(Ordering::Relaxed);
    let _ = range(&src, "rate(http_requests_total[10m])", 0, 50 * MIN, MIN).expect("query runs");
    assert_eq!(src.sample_reads.load(Ordering::Relaxed) - before, 2);
}

#[test]
fn rate_in_a_range_query_slides_the_window() {
    let mut src = MemorySource::default();
    // A counter every 15 s: 0, 15, 30, ... (1/s), reset to 0 at 3m, a stale marker at 5m.
    let mut samples: Vec<(i64, f64)> = (0..12).map(|i| (i * 15_000, i as f64 * 15.)).collect();
    samples.extend((12..20).map(|i| (i * 15_000, (i - 12) as f64 * 15.)));
    samples.push((300_000, stale()));
    src.add("c_total", &[("job", "x")], &samples);
    let m = matrix(range(&src, "rate(c_total[1m])", MIN, 6 * MIN, MIN).expect("query runs"));
    // Each 1m window holds 4 samples 15 s apart rising 15 per sample: 45 over 45 s,
    // extrapolated by 15 s to the start (within 1.1 × 15 s): 60 over 60 s, 1/s.
    // At 3m the window holds 135, 150, 165, 0: the reset keeps 165, the increase is 30,
    // extrapolated to 40 over 60 s. At 5m the window holds 4m15..4m45 (the marker is
    // dropped): 30 over 30 s, extrapolated 15 s each way: 1/s. At 6m it holds nothing.
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].0, r#"{job="x"}"#);
    let expected = [
        (MIN, 1.0),
        (2 * MIN, 1.0),
        (3 * MIN, 2.0 / 3.0),
        (4 * MIN, 1.0),
        (5 * MIN, 1.0),
    ];
    assert_eq!(m[0].1.len(), expected.len(), "{:?}", m[0].1);
    for ((t, v), (et, ev)) in m[0].1.iter().zip(expected) {
        assert_eq!(*t, et);
        assert!((v - ev).abs() < 1e-12, "at {t}: {v} != {ev}");
    }
}

#[test]
fn over_time_functions() {
    // "Tests for *_over_time", load 10s.
    let mut src = MemorySource::default();
    let nan = f64::NAN;
    load(
        &mut src,
        10_000,
        "data",
        &[("type", "numbers")],
        &vals(&[2., 0., 3.]),
    );
    load(
        &mut src,
        10_000,
        "data",
        &[("type", "some_nan")],
        &vals(&[2., 0., nan]),
    );
    load(
        &mut src,
        10_000,
        "data",
        &[("type", "some_nan2")],
        &vals(&[2., nan, 1.]),
    );
    load(
        &mut src,
        10_000,
        "data",
        &[("type", "some_nan3")],
        &vals(&[nan, 0., 1.]),
    );
    load(
        &mut src,
        10_000,
        "data",
        &[("type", "only_nan")],
        &vals(&[nan, nan, nan]),
    );
    load(
        &mut src,
        10_000,
        "data_sparse",
        &[("type", "sparse_numbers")],
        &[None, Some(5.), Some(2.), None, Some(4.), None],
    );
    let five = |a, b, c, d, e| -> [(&'static str, f64); 5] {
        [
            (r#"{type="numbers"}"#, a),
            (r#"{type="some_nan"}"#, b),
            (r#"{type="some_nan2"}"#, c),
            (r#"{type="some_nan3"}"#, d),
            (r#"{type="only_nan"}"#, e),
        ]
    };
    check_at(
        &src,
        MIN,
        &[
            ("min_over_time(data[2m])", &five(0., 0., 1., 0., nan)),
            (
                "min_over_time(data_sparse[2m])",
                &[(r#"{type="sparse_numbers"}"#, 2.)],
            ),
            ("max_over_time(data[2m])", &five(3., 2., 2., 1., nan)),
            (
                "max_over_time(data_sparse[2m])",
                &[(r#"{type="sparse_numbers"}"#, 5.)],
            ),
            (
                r#"last_over_time({__name__=~"data(_sparse)?"}[2m])"#,
                &[
                    (r#"{__name__="data", type="numbers"}"#, 3.),
                    (r#"{__name__="data", type="some_nan"}"#, nan),
                    (r#"{__name__="data", type="some_nan2"}"#, 1.),
                    (r#"{__name__="data", type="some_nan3"}"#, 1.),
                    (r#"{__name__="data", type="only_nan"}"#, nan),
                    (r#"{__name__="data_sparse", type="sparse_numbers"}"#, 4.),
                ],
            ),
            ("count_over_time(data[2m])", &five(3., 3., 3., 3., 3.)),
            // By hand from the same data.
            ("sum_over_time(data[2m])", &five(5., nan, nan, nan, nan)),
            (
                "avg_over_time(data[2m])",
                &five(5. / 3., nan, nan, nan, nan),
            ),
            (
                "present_over_time(data_sparse[2m])",
                &[(r#"{type="sparse_numbers"}"#, 1.)],
            ),
            ("present_over_time(data_sparse[5s])", &[]),
        ],
    );

    // "Tests for stddev_over_time and stdvar_over_time".
    let mut src = MemorySource::default();
    load(
        &mut src,
        10_000,
        "metric",
        &[],
        &vals(&[0., 8., 8., 2., 3.]),
    );
    check_at(
        &src,
        MIN,
        &[
            ("stdvar_over_time(metric[2m])", &[("{}", 10.56)]),
            ("stddev_over_time(metric[2m])", &[("{}", 3.249_615)]),
            ("stddev_over_time((metric[2m]))", &[("{}", 3.249_615)]),
        ],
    );
    // "#4927": a constant series has exactly zero variance.
    let mut src = MemorySource::default();
    load(
        &mut src,
        10_000,
        "metric",
        &[],
        &vals(&[1.599_050_563_727_786_8; 3]),
    );
    check_at(
        &src,
        55_000,
        &[
            ("stdvar_over_time(metric[1m])", &[("{}", 0.)]),
            ("stddev_over_time(metric[1m])", &[("{}", 0.)]),
        ],
    );

    // "Tests for quantile_over_time".
    let mut src = MemorySource::default();
    load(
        &mut src,
        10_000,
        "data",
        &[("test", "two samples")],
        &vals(&[0., 1.]),
    );
    load(
        &mut src,
        10_000,
        "data",
        &[("test", "three samples")],
        &vals(&[0., 1., 2.]),
    );
    load(
        &mut src,
        10_000,
        "data",
        &[("test", "uneven samples")],
        &vals(&[0., 1., 4.]),
    );
    let three = |a, b, c| -> [(&'static str, f64); 3] {
        [
            (r#"{test="two samples"}"#, a),
            (r#"{test="three samples"}"#, b),
            (r#"{test="uneven samples"}"#, c),
        ]
    };
    check_at(
        &src,
        MIN,
        &[
            ("quantile_over_time(0, data[2m])", &three(0., 0., 0.)),
            ("quantile_over_time(0.5, data[2m])", &three(0.5, 1., 1.)),
            ("quantile_over_time(0.75, data[2m])", &three(0.75, 1.5, 2.5)),
            ("quantile_over_time(0.8, data[2m])", &three(0.8, 1.6, 2.8)),
            ("quantile_over_time(1, data[2m])", &three(1., 2., 4.)),
            (
                "quantile_over_time(-1, data[2m])",
                &three(f64::NEG_INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY),
            ),
            (
                "(quantile_over_time(2, (data[2m])))",
                &three(f64::INFINITY, f64::INFINITY, f64::INFINITY),
            ),
        ],
    );

    // "Test per-series aggregation on dense samples", load 1ms: 4001 ones.
    let mut src = MemorySource::default();
    load(&mut src, 1, "metric", &[], &vals(&[1.; 4001]));
    for r in [1000, 1001, 1002, 1003, 2000, 2001, 3003] {
        check_at(
            &src,
            4000,
            &[(
                &format!("sum_over_time(metric[{r}ms])"),
                &[("{}", r as f64)],
            )],
        );
    }
}

#[test]
fn series_that_meet_at_different_steps_merge_into_one() {
    // Dropping the name makes both series `{src="a"}`; they never share a step, so a range
    // query merges them into one series, as Prometheus does, while an instant query at a
    // step where both have a value fails.
    let mut src = MemorySource::default();
    let early: Vec<(i64, f64)> = (0..6).map(|i| (i * MIN, i as f64)).collect();
    let late: Vec<(i64, f64)> = (20..26).map(|i| (i * MIN, 10.0 * i as f64)).collect();
    src.add("early", &[("src", "a")], &early);
    src.add("late", &[("src", "a")], &late);
    let got =
        matrix(range(&src, "-{__name__=~'early|late'}", 0, 25 * MIN, 5 * MIN).expect("range"));
    assert_eq!(
        got,
        vec![(
            r#"{src="a"}"#.to_string(),
            vec![
                (0, -0.0),
                (5 * MIN, -5.0),
                // At 10m the last sample (5m) is exactly the lookback old: out.
                (20 * MIN, -200.0),
                (25 * MIN, -250.0)
            ]
        )]
    );
    let got = matrix(
        range(
            &src,
            "delta({__name__=~'early|late'}[3m])",
            0,
            25 * MIN,
            5 * MIN,
        )
        .expect("range"),
    );
    // Windows with two samples or more: 5m (early) and 25m (late).
    assert_eq!(
        got,
        vec![(
            r#"{src="a"}"#.to_string(),
            vec![(5 * MIN, 3.0), (25 * MIN, 30.0)]
        )]
    );
    let mut both = src;
    both.add("late", &[("src", "b")], &early);
    both.add("early", &[("src", "b")], &early);
    let err = range(&both, "-{__name__=~'early|late'}", 0, 25 * MIN, 5 * MIN)
        .expect_err("two series of one label set at one step");
    assert_eq!(
        err.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
}

//! Subqueries. Cases are Prometheus 3's `promql/promqltest/testdata/subquery.test`, loaded at
//! the same times, unless marked as worked out by hand.

use super::functions::{check_at, load, runs, vals};
use super::*;

const S: i64 = 1000;

/// "load 10s: metric1_total 0+1x1000, metric2_total 0+2x1000, metric3_total 0+3x1000".
fn counters() -> MemorySource {
    let mut src = MemorySource::default();
    load(
        &mut src,
        10 * S,
        "metric1_total",
        &[],
        &runs(&[(0., 1., 1000)]),
    );
    load(
        &mut src,
        10 * S,
        "metric2_total",
        &[],
        &runs(&[(0., 2., 1000)]),
    );
    load(
        &mut src,
        10 * S,
        "metric3_total",
        &[],
        &runs(&[(0., 3., 1000)]),
    );
    src
}

#[test]
fn inner_steps_are_multiples_of_the_step_inside_a_left_open_window() {
    let mut src = MemorySource::default();
    load(&mut src, 10 * S, "metric_total", &[], &vals(&[1., 2.]));
    // Steps before 0s find no sample.
    check_at(
        &src,
        10 * S,
        &[("sum_over_time(metric_total[50s:10s])", &[("{}", 3.)])],
    );
    check_at(
        &src,
        10 * S,
        &[("sum_over_time(metric_total[50s:5s])", &[("{}", 4.)])],
    );
    // Every inner step yields the last value, 2.
    check_at(
        &src,
        300 * S,
        &[("sum_over_time(metric_total[50s:10s])", &[("{}", 10.)])],
    );
    // The sample at 10s leaves the lookback after 5m10s: only the step at 5m remains.
    check_at(
        &src,
        359 * S,
        &[("sum_over_time(metric_total[60s:10s])", &[("{}", 2.)])],
    );
    check_at(
        &src,
        10 * S,
        &[("rate(metric_total[20s:10s])", &[("{}", 0.1)])],
    );
    check_at(
        &src,
        20 * S,
        &[("rate(metric_total[20s:5s])", &[("{}", 0.06666666666666667)])],
    );
}

#[test]
fn offset_moves_the_window_and_steps_stay_aligned() {
    let src = counters();
    check_at(
        &src,
        1000 * S,
        &[("sum_over_time(metric1_total[30s:10s])", &[("{}", 297.)])],
    );
    // 97 + 98*2 + 99*2 + 100: with a 5s step, every value but the first and last twice.
    check_at(
        &src,
        1000 * S,
        &[("sum_over_time(metric1_total[30s:5s])", &[("{}", 591.)])],
    );
    for q in [
        "sum_over_time(metric1_total[30s:10s] offset 10s)",
        "sum_over_time(metric1_total[30s:10s] offset 9s)",
        "sum_over_time(metric1_total[30s:10s] offset 7s)",
        "sum_over_time(metric1_total[30s:10s] offset 5s)",
        "sum_over_time(metric1_total[30s:10s] offset 3s)",
        "sum_over_time((metric1_total)[30s:10s] offset 3s)",
        "sum_over_time(metric1_total[30:10] offset 3)",
    ] {
        check_at(&src, 1010 * S, &[(q, &[("{}", 297.)])]);
    }
}

#[test]
fn nested_subqueries() {
    let src = counters();
    check_at(
        &src,
        1000 * S,
        &[
            (
                "rate(sum_over_time(metric1_total[30s:10s])[50s:10s])",
                &[("{}", 0.30000000000000004)],
            ),
            (
                "rate(sum_over_time(metric2_total[30s:10s])[50s:10s])",
                &[("{}", 0.6000000000000001)],
            ),
            (
                "rate(sum_over_time(metric3_total[30s:10s])[50s:10s])",
                &[("{}", 0.9)],
            ),
            (
                "rate(sum_over_time((metric1_total+metric2_total+metric3_total)[30s:10s])[30s:10s])",
                &[("{}", 1.8)],
            ),
        ],
    );
}

#[test]
fn rate_over_a_subquery_extrapolates_like_over_samples() {
    // Fibonacci every 7s, so that the rate is not constant.
    let fib = [
        1., 1., 2., 3., 5., 8., 13., 21., 34., 55., 89., 144., 233., 377., 610.,
    ];
    let mut src = MemorySource::default();
    load(&mut src, 7 * S, "metric_total", &[], &vals(&fib));
    check_at(
        &src,
        80 * S,
        &[
            ("rate(metric_total[1m])", &[("{}", 2.517857143)]),
            // Extrapolated to the window's start: [2@20, 144@80].
            (
                "rate(metric_total[1m500ms:10s])",
                &[("{}", 2.3666666666666667)],
            ),
            // Extrapolated to where the counter would be zero: 144 / 61.
            ("rate(metric_total[1m1s:10s])", &[("{}", 2.360655737704918)]),
        ],
    );
    check_at(
        &src,
        20 * S,
        &[
            ("min_over_time(metric_total[10s])", &[("{}", 2.)]),
            // Steps at 10s (1@7s) and 20s (2@14s).
            ("min_over_time(metric_total[15s:10s])", &[("{}", 1.)]),
        ],
    );
}

#[test]
fn functions_over_subqueries_drop_the_name_per_series() {
    let mut src = MemorySource::default();
    let series = [
        (
            "1",
            "production",
            runs(&[(0., 20., 1000), (200., 30., 1000)]),
        ),
        (
            "0",
            "production",
            runs(&[(0., 10., 1000), (100., 30., 1000)]),
        ),
        ("0", "canary", runs(&[(0., 30., 1000), (300., 80., 1000)])),
        ("1", "canary", runs(&[(0., 40., 2000)])),
    ];
    for (instance, group, values) in &series {
        let labels = [
            ("job", "api-server"),
            ("instance", *instance),
            ("group", *group),
        ];
        load(&mut src, 10 * S, "http_requests_total", &labels, values);
    }
    check_at(
        &src,
        8000 * S,
        &[(
            r#"rate(http_requests_total{group=~"pro.*"}[1m:10s])"#,
            &[
                (
                    r#"{group="production", instance="0", job="api-server"}"#,
                    1.,
                ),
                (
                    r#"{group="production", instance="1", job="api-server"}"#,
                    2.,
                ),
            ],
        )],
    );
    check_at(
        &src,
        20000 * S,
        &[(
            "avg_over_time(rate(http_requests_total[1m])[1m:1s])",
            &[
                (r#"{group="canary", instance="0", job="api-server"}"#, 8.),
                (r#"{group="canary", instance="1", job="api-server"}"#, 4.),
                (
                    r#"{group="production", instance="0", job="api-server"}"#,
                    3.,
                ),
                (
                    r#"{group="production", instance="1", job="api-server"}"#,
                    3.,
                ),
            ],
        )],
    );
    // `last_over_time` keeps the name of what the subquery returns (worked out by hand).
    check_at(
        &src,
        8000 * S,
        &[(
            r#"last_over_time(http_requests_total{instance="0", group="canary"}[1m:10s])"#,
            &[(
                r#"{__name__="http_requests_total", group="canary", instance="0", job="api-server"}"#,
                24000.,
            )],
        )],
    );
}

#[test]
fn bare_subquery_in_an_instant_query_is_a_matrix_of_the_inner_steps() {
    // Worked out by hand: steps 980s, 990s, 1000s; the selector keeps its name.
    let src = counters();
    let m = matrix(instant(&src, "metric1_total[30s:10s]", 1000 * S).expect("query runs"));
    assert_eq!(
        m,
        [(
            r#"{__name__="metric1_total"}"#.to_owned(),
            vec![(980 * S, 98.), (990 * S, 99.), (1000 * S, 100.)]
        )]
    );
    // Offset moves the steps back; they stay multiples of the step.
    let m = matrix(instant(&src, "metric1_total[30s:10s] offset 3s", 1000 * S).expect("runs"));
    assert_eq!(
        m[0].1,
        [(970 * S, 97.), (980 * S, 98.), (990 * S, 99.)],
        "{m:?}"
    );
    // A bare subquery is not a range query's result.
    assert!(matches!(
        range(&src, "metric1_total[30s:10s]", 0, 10 * S, S),
        Err(QueryError::InvalidRangeQueryType { .. })
    ));
}

#[test]
fn subquery_in_a_range_query_is_evaluated_once_for_all_steps() {
    // Worked out by hand: at 1000s, 1010s, 1020s the last three values are summed.
    let src = counters();
    let m = matrix(
        range(
            &src,
            "sum_over_time(metric1_total[30s:10s])",
            1000 * S,
            1020 * S,
            10 * S,
        )
        .expect("query runs"),
    );
    assert_eq!(
        m,
        [(
            "{}".to_owned(),
            vec![(1000 * S, 297.), (1010 * S, 300.), (1020 * S, 303.)]
        )]
    );
    assert_eq!(src.sample_reads.load(Ordering::Relaxed), 1);
}

#[test]
fn default_step_is_the_evaluation_interval() {
    // Worked out by hand: a 3m window at 1000s holds the minutes 840s, 900s, 960s.
    let src = counters();
    check_at(
        &src,
        1000 * S,
        &[("sum_over_time(metric1_total[3m:])", &[("{}", 270.)])],
    );
    let engine = Engine::new(EngineOptions {
        default_subquery_step_ms: 30 * S,
        ..EngineOptions::default()
    });
    let v = engine
        .instant(
            &src,
            &Tenant::default(),
            "sum_over_time(metric1_total[3m:])",
            1000 * S,
        )
        .expect("query runs");
    // 840s, 870s, ..., 990s.
    assert_eq!(
        vector(v),
        [("{}".to_owned(), 84. + 87. + 90. + 93. + 96. + 99.)]
    );
}

#[test]
fn at_pins_the_subquery_and_start_names_the_query_start_inside_it() {
    // Worked out by hand.
    let src = counters();
    check_at(
        &src,
        1000 * S,
        &[(
            "sum_over_time(metric1_total[30s:10s] @ 500)",
            &[("{}", 147.)],
        )],
    );
    let m = matrix(
        range(
            &src,
            "sum_over_time(metric1_total[30s:10s] @ 500)",
            1000 * S,
            1100 * S,
            50 * S,
        )
        .expect("query runs"),
    );
    assert_eq!(
        m[0].1,
        [(1000 * S, 147.), (1050 * S, 147.), (1100 * S, 147.)]
    );
    // Inside the subquery, `@ start()` is the query's start (1000s), not the inner start.
    let m = matrix(
        range(
            &src,
            "sum_over_time((metric1_total @ start())[30s:10s])",
            1000 * S,
            1010 * S,
            10 * S,
        )
        .expect("query runs"),
    );
    assert_eq!(m[0].1, [(1000 * S, 300.), (1010 * S, 300.)]);
}

#[test]
fn absent_over_time_of_a_subquery_has_no_labels() {
    let src = counters();
    check_at(
        &src,
        60 * S,
        &[
            (
                "absent_over_time(rate(nonexistent[5m])[5m:])",
                &[("{}", 1.)],
            ),
            (
                r#"absent_over_time(nonexistent{job="x"}[5m:1m])"#,
                &[("{}", 1.)],
            ),
            ("absent_over_time(metric1_total[5m:1m])", &[]),
            ("present_over_time(rate(nonexistent[5m])[5m:])", &[]),
        ],
    );
}

#[test]
fn subquery_points_count_towards_the_sample_limit() {
    let src = counters();
    let small = Engine::new(EngineOptions {
        max_samples: 50,
        ..EngineOptions::default()
    });
    // 100 inner steps of one series: 100 points held at once.
    let err = small
        .instant(
            &src,
            &Tenant::default(),
            "sum_over_time(metric1_total[100s:1s])",
            1000 * S,
        )
        .expect_err("100 points > 50");
    assert!(matches!(err, QueryError::TooManySamples), "{err}");
    assert!(
        small
            .instant(
                &src,
                &Tenant::default(),
                "sum_over_time(metric1_total[30s:1s])",
                1000 * S
            )
            .is_ok()
    );
}

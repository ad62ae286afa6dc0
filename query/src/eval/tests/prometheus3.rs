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

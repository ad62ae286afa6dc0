//! Binary operators and unary minus. Data and expected values follow Prometheus'
//! `promql/promqltest/testdata/operators.test` where noted, else are worked out by hand.

use super::*;

fn check(src: &MemorySource, cases: &[(&str, &[(&str, f64)])]) {
    check_vectors(src, T, cases, (1e-9, 1.0, false));
}

fn scalar(src: &MemorySource, q: &str) -> f64 {
    match instant(src, q, T).unwrap_or_else(|e| panic!("{q}: {e}")) {
        Value::Scalar(s) => s.value,
        other => panic!("{q}: expected a scalar, got {other:?}"),
    }
}

/// operators.test's `http_requests` (api-server only) at 50m, `vector_matching_a/b`.
fn data() -> MemorySource {
    let mut src = MemorySource::default();
    src.add(
        "http_requests",
        &[("job", "api"), ("instance", "0"), ("group", "production")],
        &[(T, 100.0)],
    );
    src.add(
        "http_requests",
        &[("job", "api"), ("instance", "1"), ("group", "production")],
        &[(T, 200.0)],
    );
    src.add(
        "http_requests",
        &[("job", "api"), ("instance", "0"), ("group", "canary")],
        &[(T, 300.0)],
    );
    src.add(
        "http_requests",
        &[("job", "api"), ("instance", "1"), ("group", "canary")],
        &[(T, 400.0)],
    );
    src.add("vector_matching_a", &[("l", "x")], &[(T, 10.0)]);
    src.add("vector_matching_a", &[("l", "y")], &[(T, 20.0)]);
    src.add("vector_matching_b", &[("l", "x")], &[(T, 40.0)]);
    src.add("one", &[("l", "x")], &[(T, 2.0)]);
    src.add("info", &[("instance", "0"), ("dc", "eu")], &[(T, 1.0)]);
    src.add("info", &[("instance", "1"), ("dc", "us")], &[(T, 1.0)]);
    src
}

#[test]
fn scalar_arithmetic_and_comparisons() {
    let src = MemorySource::default();
    for (q, want) in [
        ("1 + 2 * 3", 7.0),
        ("2 ^ 3 ^ 2", 512.0),
        ("-2 ^ 2", -4.0),
        ("7 % 4", 3.0),
        ("-7 % 4", -3.0),
        ("1 / 0", f64::INFINITY),
        ("0 / 0", f64::NAN),
        ("1 atan2 1", std::f64::consts::FRAC_PI_4),
        ("1 == bool 1", 1.0),
        ("1 > bool 2", 0.0),
        ("NaN != bool NaN", 1.0),
        ("- (3)", -3.0),
    ] {
        let got = scalar(&src, q);
        assert!(
            got == want || (got.is_nan() && want.is_nan()),
            "{q}: {got} != {want}"
        );
    }
}

#[test]
fn vector_scalar_operations_drop_the_name_except_filters() {
    let src = data();
    let api = |i: &str, g: &str| format!(r#"{{group="{g}", instance="{i}", job="api"}}"#);
    let named = |i: &str, g: &str| {
        format!(r#"{{__name__="http_requests", group="{g}", instance="{i}", job="api"}}"#)
    };
    let (c0, c1, p0, p1) = (
        api("0", "canary"),
        api("1", "canary"),
        api("0", "production"),
        api("1", "production"),
    );
    let (nc1, np1) = (named("1", "canary"), named("1", "production"));
    check(
        &src,
        &[
            // operators.test: "http_requests{job="api-server"} * 2" style.
            (
                "http_requests * 2",
                &[(&c0, 600.0), (&c1, 800.0), (&p0, 200.0), (&p1, 400.0)],
            ),
            (
                "1000 - http_requests",
                &[(&c0, 700.0), (&c1, 600.0), (&p0, 900.0), (&p1, 800.0)],
            ),
            (
                "-http_requests{instance=\"0\"}",
                &[(&c0, -300.0), (&p0, -100.0)],
            ),
            // A filter keeps the vector's value and name, whichever side the scalar is on.
            (
                "http_requests{instance=\"1\"} > 150",
                &[(&nc1, 400.0), (&np1, 200.0)],
            ),
            (
                "150 < http_requests{instance=\"1\"}",
                &[(&nc1, 400.0), (&np1, 200.0)],
            ),
            (
                "http_requests{instance=\"1\"} > bool 250",
                &[(&c1, 1.0), (&p1, 0.0)],
            ),
            ("http_requests > 1000", &[]),
            ("nothing + 1", &[]),
        ],
    );
}

#[test]
fn one_to_one_matching() {
    let src = data();
    check(
        &src,
        &[
            // operators.test "vector_matching_a - vector_matching_b" style: unmatched drop.
            (
                "vector_matching_a - vector_matching_b",
                &[(r#"{l="x"}"#, -30.0)],
            ),
            (
                "vector_matching_a < vector_matching_b",
                &[(r#"{__name__="vector_matching_a", l="x"}"#, 10.0)],
            ),
            (
                "vector_matching_a > bool vector_matching_b",
                &[(r#"{l="x"}"#, 0.0)],
            ),
            // `on` keeps only the matching labels.
            (
                r#"http_requests{group="canary"} + on (instance) http_requests{group="production"}"#,
                &[(r#"{instance="0"}"#, 400.0), (r#"{instance="1"}"#, 600.0)],
            ),
            (
                r#"http_requests{group="canary"} / ignoring (group) http_requests{group="production"}"#,
                &[
                    (r#"{instance="0", job="api"}"#, 3.0),
                    (r#"{instance="1", job="api"}"#, 2.0),
                ],
            ),
            // A filter with `ignoring` keeps the name and drops only the ignored labels.
            (
                r#"http_requests{group="canary"} > ignoring (group) http_requests{group="production"}"#,
                &[
                    (
                        r#"{__name__="http_requests", instance="0", job="api"}"#,
                        300.0,
                    ),
                    (
                        r#"{__name__="http_requests", instance="1", job="api"}"#,
                        400.0,
                    ),
                ],
            ),
            // Without matching labels nothing matches: the groups differ.
            (
                r#"http_requests{group="canary"} + http_requests{group="production"}"#,
                &[],
            ),
        ],
    );
}

#[test]
fn group_left_and_group_right_copy_labels_from_the_one_side() {
    let src = data();
    check(
        &src,
        &[
            (
                r#"http_requests{group="canary"} * on (instance) group_left (dc) info"#,
                &[
                    (
                        r#"{dc="eu", group="canary", instance="0", job="api"}"#,
                        300.0,
                    ),
                    (
                        r#"{dc="us", group="canary", instance="1", job="api"}"#,
                        400.0,
                    ),
                ],
            ),
            (
                r#"info * on (instance) group_right (dc) http_requests{instance="1"}"#,
                &[
                    (
                        r#"{dc="us", group="canary", instance="1", job="api"}"#,
                        400.0,
                    ),
                    (
                        r#"{dc="us", group="production", instance="1", job="api"}"#,
                        200.0,
                    ),
                ],
            ),
            // A comparison keeps the left operand's value: here the "one" side's.
            (
                r#"info < on (instance) group_right http_requests{instance="1"}"#,
                &[
                    (
                        r#"{__name__="http_requests", group="canary", instance="1", job="api"}"#,
                        1.0,
                    ),
                    (
                        r#"{__name__="http_requests", group="production", instance="1", job="api"}"#,
                        1.0,
                    ),
                ],
            ),
        ],
    );
}

#[test]
fn set_operators_keep_labels() {
    let src = data();
    check(
        &src,
        &[
            (
                "vector_matching_a and vector_matching_b",
                &[(r#"{__name__="vector_matching_a", l="x"}"#, 10.0)],
            ),
            (
                "vector_matching_a unless vector_matching_b",
                &[(r#"{__name__="vector_matching_a", l="y"}"#, 20.0)],
            ),
            (
                "vector_matching_b or vector_matching_a",
                &[
                    (r#"{__name__="vector_matching_a", l="y"}"#, 20.0),
                    (r#"{__name__="vector_matching_b", l="x"}"#, 40.0),
                ],
            ),
            (
                "vector_matching_a and on () info",
                &[
                    (r#"{__name__="vector_matching_a", l="x"}"#, 10.0),
                    (r#"{__name__="vector_matching_a", l="y"}"#, 20.0),
                ],
            ),
            ("vector_matching_a and nothing", &[]),
            (
                r#"http_requests{group="canary"} unless on (instance) http_requests{instance="0", group="production"}"#,
                &[(
                    r#"{__name__="http_requests", group="canary", instance="1", job="api"}"#,
                    400.0,
                )],
            ),
        ],
    );
}

#[test]
fn matching_errors_use_prometheus_words() {
    let src = data();
    let err = instant(&src, "http_requests + on (instance) info", T).expect_err("many-to-one");
    assert_eq!(
        err.to_string(),
        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
    );
    let err = instant(&src, "info + on (instance) http_requests", T).expect_err("duplicate");
    assert_eq!(
        err.to_string(),
        r#"found duplicate series for the match group {instance="0"} on the right hand-side of the operation: [{__name__="http_requests", group="production", instance="0", job="api"}, {__name__="http_requests", group="canary", instance="0", job="api"}];many-to-many matching not allowed: matching labels must be unique on one side"#
    );
    // Two "many" series that become one once the name is dropped.
    let err = instant(
        &src,
        r#"{__name__=~"vector_matching_a|vector_matching_b", l="x"} * on (l) group_left one"#,
        T,
    )
    .expect_err("grouping not unique");
    assert_eq!(
        err.to_string(),
        "multiple matches for labels: grouping labels must ensure unique matches"
    );
    // Prometheus checks the matching before a comparison filters: the same errors where every
    // comparison is false (engine.go's `VectorBinop` checks `matchedSigsPresent` and
    // `insertedSigs` before `if !keep && !returnBool`).
    for (q, expected) in [
        (
            "http_requests < on (instance) info",
            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
        ),
        (
            // `info` has no `group`: copying it removes what tells the two series apart.
            "http_requests < on (instance) group_left (group) info",
            "multiple matches for labels: grouping labels must ensure unique matches",
        ),
    ] {
        let err = instant(&src, q, T).expect_err(q);
        assert_eq!(err.to_string(), expected, "{q}");
    }
    let err = instant(
        &src,
        r#"{__name__=~"vector_matching_a|vector_matching_b"} + 1"#,
        T,
    )
    .expect_err("same labels once the name is gone");
    assert_eq!(
        err.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
}

#[test]
fn nan_and_stale_in_binary_operations() {
    let mut src = MemorySource::default();
    src.add("m", &[("a", "1")], &[(T, f64::NAN)]);
    src.add("m", &[("a", "2")], &[(T - MIN, 1.0), (T - 1, stale())]);
    check(
        &src,
        &[
            // NaN compares false with everything, itself included.
            ("m == m", &[]),
            ("m != bool m", &[(r#"{a="1"}"#, 1.0)]),
            ("m + 1", &[(r#"{a="1"}"#, f64::NAN)]),
        ],
    );
}

#[test]
fn binary_operators_in_range_queries_match_per_step() {
    let mut src = MemorySource::default();
    src.add(
        "a",
        &[("x", "1")],
        &[(T, 1.0), (T + MIN, 2.0), (T + 2 * MIN, 3.0)],
    );
    src.add(
        "b",
        &[("x", "1")],
        &[(T + MIN, 10.0), (T + 90_000, stale())],
    );
    let m = matrix(range(&src, "a + b", T, T + 2 * MIN, MIN).expect("query runs"));
    assert_eq!(m, [(r#"{x="1"}"#.into(), vec![(T + MIN, 12.0)])]);
    let m = matrix(range(&src, "a or b", T, T + 2 * MIN, MIN).expect("query runs"));
    assert_eq!(
        m,
        [(
            r#"{__name__="a", x="1"}"#.into(),
            vec![(T, 1.0), (T + MIN, 2.0), (T + 2 * MIN, 3.0)]
        )]
    );
    let m = matrix(range(&src, "a unless b", T, T + 2 * MIN, MIN).expect("query runs"));
    assert_eq!(
        m,
        [(
            r#"{__name__="a", x="1"}"#.into(),
            vec![(T, 1.0), (T + 2 * MIN, 3.0)]
        )]
    );
    // A scalar operand may differ per step; here it does not, but it is applied per step.
    let m = matrix(range(&src, "a > 1.5", T, T + 2 * MIN, MIN).expect("query runs"));
    assert_eq!(
        m,
        [(
            r#"{__name__="a", x="1"}"#.into(),
            vec![(T + MIN, 2.0), (T + 2 * MIN, 3.0)]
        )]
    );
}

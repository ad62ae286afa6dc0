//! The API end to end through the router, over an in-memory data source.

use super::{HttpState, MAX_BODY_BYTES, router};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use protocols::{Labels, Sample, SeriesId, Tenant};
use query::{DataSource, DataSourceError, Matcher, STALE_NAN_BITS, SeriesRef};
use std::collections::BTreeSet;
use std::sync::Arc;
use tower::ServiceExt;

/// 2023-11-14T22:13:20Z.
const T: i64 = 1_700_000_000_000;

#[derive(Default)]
struct MemorySource {
    series: Vec<(SeriesRef, Vec<Sample>)>,
    /// Every call fails as unavailable storage does.
    down: bool,
}

impl MemorySource {
    fn add(&mut self, metric: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) {
        let labels = Labels::from_metric(metric, labels.iter().copied()).expect("valid labels");
        let id = SeriesId::of(&Tenant::default(), &labels);
        let samples = samples.iter().map(|&(t, v)| Sample::new(t, v)).collect();
        self.series.push((SeriesRef { id, labels }, samples));
    }

    fn check(&self) -> Result<(), DataSourceError> {
        if self.down {
            return Err(DataSourceError::Unavailable("disk on fire".into()));
        }
        Ok(())
    }
}

impl DataSource for MemorySource {
    fn select_series(
        &self,
        _tenant: &Tenant,
        matchers: &[Matcher],
    ) -> Result<Vec<SeriesRef>, DataSourceError> {
        self.check()?;
        Ok(self
            .series
            .iter()
            .filter(|(s, _)| {
                matchers
                    .iter()
                    .all(|m| m.matches(s.labels.get(&m.name).unwrap_or("")))
            })
            .map(|(s, _)| s.clone())
            .rev()
            .collect())
    }

    fn samples(&self, id: SeriesId, start: i64, end: i64) -> Result<Vec<Sample>, DataSourceError> {
        self.check()?;
        Ok(self
            .series
            .iter()
            .filter(|(s, _)| s.id == id)
            .flat_map(|(_, samples)| samples)
            .filter(|s| (start..=end).contains(&s.timestamp_ms))
            .copied()
            .collect())
    }

    fn label_names(&self, _tenant: &Tenant) -> Result<Vec<String>, DataSourceError> {
        self.check()?;
        let names: BTreeSet<String> = self
            .series
            .iter()
            .flat_map(|(s, _)| s.labels.iter().map(|l| l.name.clone()))
            .collect();
        Ok(names.into_iter().collect())
    }

    fn label_values(&self, _tenant: &Tenant, name: &str) -> Result<Vec<String>, DataSourceError> {
        self.check()?;
        let values: BTreeSet<String> = self
            .series
            .iter()
            .filter_map(|(s, _)| s.labels.get(name).map(str::to_owned))
            .collect();
        Ok(values.into_iter().collect())
    }
}

fn fixture() -> MemorySource {
    let mut src = MemorySource::default();
    src.add(
        "temp",
        &[("site", "s1"), ("device", "d1")],
        &[(T - 60_000, 20.0), (T - 30_000, 21.5)],
    );
    src.add("temp", &[("site", "s2")], &[(T - 90_000, 19.0), (T, 19.25)]);
    src.add(
        "humidity",
        &[("site", "s1")],
        &[
            (T - 120_000, 40.0),
            (T - 10_000, f64::from_bits(STALE_NAN_BITS)),
        ],
    );
    src
}

fn app_with(src: MemorySource, recorder: &PrometheusRecorder) -> Router {
    router(HttpState {
        source: Arc::new(src),
        metrics: recorder.handle(),
        // Development mode: these tests are about the API, not about tokens (auth_tests.rs).
        auth: Arc::new(
            crate::auth::Authenticator::in_memory(Some(Tenant::default())).expect("auth"),
        ),
        ingest_rate_limit: None,
        settings: Default::default(),
        ingest: None,
        cluster: None,
        range_cache: None,
    })
}

fn app() -> Router {
    app_with(fixture(), &PrometheusBuilder::new().build_recorder())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .body(Body::empty())
        .expect("valid request")
}

fn post_form(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .expect("valid request")
}

/// Status and body of the response.
async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(req).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

async fn error_of(app: &Router, req: Request<Body>) -> (StatusCode, String, String) {
    let (status, body) = send(app, req).await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["status"], "error", "{body}");
    let kind = json["errorType"].as_str().expect("errorType").to_owned();
    let error = json["error"].as_str().expect("error").to_owned();
    (status, kind, error)
}

#[tokio::test]
async fn instant_query_returns_prometheus_json() {
    let app = app();
    let (status, body) = send(&app, get("/api/v1/query?query=temp&time=1700000000.123")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        concat!(
            r#"{"status":"success","data":{"resultType":"vector","result":["#,
            r#"{"metric":{"__name__":"temp","device":"d1","site":"s1"},"value":[1700000000.123,"21.5"]},"#,
            r#"{"metric":{"__name__":"temp","site":"s2"},"value":[1700000000.123,"19.25"]}]}}"#
        )
    );

    // The stale marker hides humidity; a regex on __name__ still finds temp.
    let (_, body) = send(
        &app,
        get("/api/v1/query?query=%7B__name__%3D~%22hum.*%7Ctemp%22%2Csite%3D%22s1%22%7D&time=2023-11-14T22:13:20Z"),
    )
    .await;
    assert_eq!(
        body,
        concat!(
            r#"{"status":"success","data":{"resultType":"vector","result":["#,
            r#"{"metric":{"__name__":"temp","device":"d1","site":"s1"},"value":[1700000000,"21.5"]}]}}"#
        )
    );
}

#[tokio::test]
async fn post_form_body_and_query_string_both_work() {
    let app = app();
    let want = r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"2"]}}"#;
    let (status, body) = send(&app, post_form("/api/v1/query", "query=2&time=1700000000")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, want));
    let (_, body) = send(&app, post_form("/api/v1/query?query=2&time=1700000000", "")).await;
    assert_eq!(body, want);
    // The body wins over the URL, as in Go's Request.Form.
    let (_, body) = send(
        &app,
        post_form("/api/v1/query?query=3", "query=2&time=1700000000"),
    )
    .await;
    assert_eq!(body, want);
}

#[tokio::test]
async fn range_query_returns_a_matrix_at_each_step() {
    let app = app();
    let want = concat!(
        r#"{"status":"success","data":{"resultType":"matrix","result":["#,
        r#"{"metric":{"__name__":"temp","site":"s2"},"values":"#,
        r#"[[1699999910,"19"],[1699999940,"19"],[1699999970,"19"],[1700000000,"19.25"]]}]}}"#
    );
    for req in [
        get(
            "/api/v1/query_range?query=temp%7Bsite%3D%22s2%22%7D&start=1699999910&end=1700000000&step=30",
        ),
        get(
            "/api/v1/query_range?query=temp%7Bsite%3D%22s2%22%7D&start=2023-11-14T22:11:50Z&end=1700000000&step=30s",
        ),
        post_form(
            "/api/v1/query_range",
            "query=temp%7Bsite%3D%22s2%22%7D&start=1699999910&end=1700000010.5&step=30",
        ),
    ] {
        let (status, body) = send(&app, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, want);
    }
    let (_, body) = send(
        &app,
        get("/api/v1/query_range?query=1.5&start=0&end=1.5&step=500ms"),
    )
    .await;
    assert_eq!(
        body,
        r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[0,"1.5"],[0.500,"1.5"],[1,"1.5"],[1.500,"1.5"]]}]}}"#
    );
}

#[tokio::test]
async fn instant_matrix_and_string_results() {
    let app = app();
    let (_, body) = send(
        &app,
        get("/api/v1/query?query=temp%7Bsite%3D%22s1%22%7D%5B1m%5D&time=1700000000"),
    )
    .await;
    // (t - 1m, t]: the sample exactly one minute old is out.
    assert_eq!(
        body,
        concat!(
            r#"{"status":"success","data":{"resultType":"matrix","result":["#,
            r#"{"metric":{"__name__":"temp","device":"d1","site":"s1"},"values":[[1699999970,"21.5"]]}]}}"#
        )
    );
    let (_, body) = send(&app, get("/api/v1/query?query=%22a%3Cb%22&time=1.001")).await;
    assert_eq!(
        body,
        r#"{"status":"success","data":{"resultType":"string","result":[1.001,"a\u003cb"]}}"#
    );
}

#[tokio::test]
async fn bad_queries_get_prometheus_errors() {
    let app = app();
    let cases: &[(&str, StatusCode, &str, &str)] = &[
        (
            "/api/v1/query?query=limitk(1,temp)",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"query\": aggregation `limitk` (experimental in Prometheus 3, \
             --enable-feature=promql-experimental-functions) is not supported yet",
        ),
        (
            "/api/v1/query?query=temp%7B",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"query\": unexpected end of input inside braces",
        ),
        (
            "/api/v1/query",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"query\": no expression found in input",
        ),
        (
            "/api/v1/query?query=%7Ba%3D~%22.*%22%7D",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"query\": vector selector must contain at least one non-empty matcher",
        ),
        (
            "/api/v1/query?query=temp&time=yesterday",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"time\": Invalid time value for 'time': cannot parse \"yesterday\" to a valid timestamp",
        ),
        (
            "/api/v1/query?query=temp&timeout=soon",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"timeout\": cannot parse \"soon\" to a valid duration",
        ),
        (
            "/api/v1/query_range?query=temp&end=10&step=1",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"start\": cannot parse \"\" to a valid timestamp",
        ),
        (
            "/api/v1/query_range?query=temp&start=10&end=5&step=x",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"end\": end timestamp must not be before start time",
        ),
        (
            "/api/v1/query_range?query=temp&start=0&end=10&step=0",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
        ),
        (
            "/api/v1/query_range?query=temp&start=0&end=11001&step=1",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ),
        (
            "/api/v1/query_range?query=temp%5B5m%5D&start=0&end=60&step=15",
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"query\": invalid expression type \"range vector\" for range query, must be Scalar or instant Vector",
        ),
        (
            "/api/v1/query?query=temp&timeout=0",
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "query timed out in expression evaluation",
        ),
    ];
    for (uri, status, kind, message) in cases {
        let got = error_of(&app, get(uri)).await;
        assert_eq!(
            got,
            (*status, (*kind).to_owned(), (*message).to_owned()),
            "{uri}"
        );
    }
    // 11,000 intervals are still fine.
    let (status, _) = send(
        &app,
        get("/api/v1/query_range?query=temp&start=0&end=11000&step=1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn storage_failure_is_unavailable() {
    let src = MemorySource {
        down: true,
        ..fixture()
    };
    let app = app_with(src, &PrometheusBuilder::new().build_recorder());
    for uri in [
        "/api/v1/query?query=temp",
        "/api/v1/labels",
        "/api/v1/series?match[]=temp",
    ] {
        let (status, kind, message) = error_of(&app, get(uri)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(kind, "unavailable");
        assert_eq!(message, "storage unavailable: disk on fire");
    }
}

#[tokio::test]
async fn labels_and_values_with_and_without_match() {
    let app = app();
    let cases = [
        (
            get("/api/v1/labels"),
            r#"{"status":"success","data":["__name__","device","site"]}"#,
        ),
        (
            get("/api/v1/labels?match[]=humidity&start=0&end=2023-11-14T22:13:20Z"),
            r#"{"status":"success","data":["__name__","site"]}"#,
        ),
        (
            post_form(
                "/api/v1/labels",
                "match%5B%5D=humidity&match%5B%5D=temp%7Bsite%3D%22s1%22%7D",
            ),
            r#"{"status":"success","data":["__name__","device","site"]}"#,
        ),
        (
            get("/api/v1/label/__name__/values"),
            r#"{"status":"success","data":["humidity","temp"]}"#,
        ),
        (
            get("/api/v1/label/site/values?match[]=temp&match[]=temp%7Bsite%3D%22s1%22%7D"),
            r#"{"status":"success","data":["s1","s2"]}"#,
        ),
        (
            get("/api/v1/label/device/values?match[]=humidity"),
            r#"{"status":"success","data":[]}"#,
        ),
        (
            get("/api/v1/label/nope/values"),
            r#"{"status":"success","data":[]}"#,
        ),
        (
            get("/api/v1/label/__name__/values?limit=1"),
            r#"{"status":"success","data":["humidity"],"warnings":["results truncated due to limit"]}"#,
        ),
        (
            get("/api/v1/labels?limit=3"),
            r#"{"status":"success","data":["__name__","device","site"]}"#,
        ),
    ];
    for (req, want) in cases {
        let uri = req.uri().to_string();
        let (status, body) = send(&app, req).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, want), "{uri}");
    }

    let errors = [
        (
            "/api/v1/label/bad-name/values",
            "invalid label name: \"bad-name\"",
        ),
        (
            "/api/v1/labels?limit=-1",
            "invalid parameter \"limit\": limit must be non-negative",
        ),
        (
            "/api/v1/labels?start=x",
            "invalid parameter \"start\": Invalid time value for 'start': cannot parse \"x\" to a valid timestamp",
        ),
        (
            "/api/v1/labels?match[]=%7Ba%3D%22%22%7D",
            "match[] must contain at least one non-empty matcher",
        ),
    ];
    for (uri, message) in errors {
        let got = error_of(&app, get(uri)).await;
        assert_eq!(
            got,
            (StatusCode::BAD_REQUEST, "bad_data".into(), message.into()),
            "{uri}"
        );
    }
}

/// `start` and `end` (either or both) keep the series with a sample in the range, in the
/// series endpoint and both label endpoints, with and without `match[]`.
#[tokio::test]
async fn start_and_end_keep_the_series_with_samples_in_range() {
    let app = app();
    let s = |offset_ms: i64| ((T + offset_ms) / 1000).to_string();
    let names_of = |body: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        v["data"]
            .as_array()
            .expect("array")
            .iter()
            .map(|x| match x {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .collect()
    };
    let cases = [
        // Only temp{site="s2"} has a sample at or after T - 5 s.
        (
            format!(
                "/api/v1/label/site/values?start={}&end={}",
                s(-5_000),
                s(60_000)
            ),
            vec!["s2"],
        ),
        (
            format!("/api/v1/labels?start={}", s(0)),
            vec!["__name__", "site"],
        ),
        // Only humidity has a sample in [T - 125 s, T - 115 s].
        (
            format!(
                "/api/v1/label/__name__/values?start={}&end={}",
                s(-125_000),
                s(-115_000)
            ),
            vec!["humidity"],
        ),
        (
            format!(
                "/api/v1/label/__name__/values?match[]=temp&start={}&end={}",
                s(-125_000),
                s(-115_000)
            ),
            vec![],
        ),
        // Nothing in (T - 60 s, T - 30 s) exclusive of both: [T - 55 s, T - 45 s].
        (
            format!(
                "/api/v1/series?match[]=temp&start={}&end={}",
                s(-55_000),
                s(-45_000)
            ),
            vec![],
        ),
        (
            format!("/api/v1/series?match[]=temp&end={}", s(-50_000)),
            vec![
                r#"{"__name__":"temp","device":"d1","site":"s1"}"#,
                r#"{"__name__":"temp","site":"s2"}"#,
            ],
        ),
        (
            format!(
                "/api/v1/series?match[]=temp&match[]=humidity&start={}",
                s(-20_000)
            ),
            vec![
                r#"{"__name__":"humidity","site":"s1"}"#,
                r#"{"__name__":"temp","site":"s2"}"#,
            ],
        ),
    ];
    for (uri, want) in cases {
        let (status, body) = send(&app, get(&uri)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert_eq!(names_of(&body), want, "{uri}: {body}");
    }
}

#[tokio::test]
async fn series_unions_repeated_match_and_requires_one() {
    let app = app();
    let want = concat!(
        r#"{"status":"success","data":["#,
        r#"{"__name__":"humidity","site":"s1"},"#,
        r#"{"__name__":"temp","device":"d1","site":"s1"}]}"#
    );
    for req in [
        get("/api/v1/series?match[]=humidity&match[]=%7Bsite%3D%22s1%22%7D"),
        post_form(
            "/api/v1/series",
            "match%5B%5D=humidity&match%5B%5D=%7Bsite%3D%22s1%22%7D",
        ),
        post_form(
            "/api/v1/series?match[]=humidity",
            "match[]=temp{device=\"d1\"}",
        ),
    ] {
        let (status, body) = send(&app, req).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, want));
    }
    let (_, body) = send(&app, get("/api/v1/series?match[]=temp&limit=1")).await;
    assert_eq!(
        body,
        r#"{"status":"success","data":[{"__name__":"temp","device":"d1","site":"s1"}],"warnings":["results truncated due to limit"]}"#
    );

    let errors = [
        ("/api/v1/series", "no match[] parameter provided"),
        (
            "/api/v1/series?match[]=",
            "invalid parameter \"match[]\": no expression found in input",
        ),
        (
            "/api/v1/series?match[]=sum(temp)",
            "invalid parameter \"match[]\": \"sum(temp)\" is not a series selector such as up{job=\"node\"}",
        ),
    ];
    for (uri, message) in errors {
        let got = error_of(&app, get(uri)).await;
        assert_eq!(
            got,
            (StatusCode::BAD_REQUEST, "bad_data".into(), message.into()),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn oversized_body_is_refused_with_413() {
    let app = app();
    let body = format!("query=temp&pad={}", "x".repeat(MAX_BODY_BYTES));
    let (status, kind, message) = error_of(&app, post_form("/api/v1/query", &body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(kind, "bad_data");
    assert_eq!(
        message,
        format!("request body is larger than {MAX_BODY_BYTES} bytes")
    );
}

#[tokio::test]
async fn health_metrics_and_unknown_routes() {
    let app = app();
    assert_eq!(
        send(&app, get("/health")).await,
        (StatusCode::OK, "ok".to_owned())
    );
    let response = app
        .clone()
        .oneshot(get("/metrics"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/plain"))
    );
    let (status, _) = send(&app, get("/api/v1/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let response = app
        .clone()
        .oneshot(get("/api/v1/query?query=1"))
        .await
        .expect("infallible");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
}

#[test]
fn requests_and_rejections_are_counted() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let app = app_with(fixture(), &recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Handlers and middleware run on this thread, so the thread-local recorder sees them.
    let metrics_page = metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            for uri in [
                "/api/v1/query?query=temp",
                "/api/v1/query?query=temp%7B",
                "/api/v1/query?query=sort_by_label(temp,%22a%22)",
                "/api/v1/query_range?query=temp&start=0&end=11001&step=1",
                "/api/v1/query_range?query=temp&start=0&end=1&step=bad",
                "/api/v1/series",
                "/nowhere",
            ] {
                send(&app, get(uri)).await;
            }
            send(&app, get("/metrics")).await.1
        })
    });
    let text = handle.render();
    for line in [
        r#"updraft_core_queries_rejected_total{reason="parse"} 1"#,
        r#"updraft_core_queries_rejected_total{reason="unsupported"} 1"#,
        r#"updraft_core_queries_rejected_total{reason="too_many_points"} 1"#,
        r#"updraft_core_queries_rejected_total{reason="bad_param"} 2"#,
        r#"updraft_core_http_requests_total{handler="/api/v1/query",code="200"} 1"#,
        r#"updraft_core_http_requests_total{handler="/api/v1/query",code="400"} 2"#,
        r#"updraft_core_http_requests_total{handler="/api/v1/query_range",code="400"} 2"#,
        r#"updraft_core_http_requests_total{handler="/api/v1/series",code="400"} 1"#,
        r#"updraft_core_http_requests_total{handler="unmatched",code="404"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // `/metrics` serves the same registry.
    assert!(metrics_page.contains("updraft_core_queries_rejected_total"));
}

#[tokio::test]
async fn discovery_endpoints_answer_like_prometheus() {
    let app = app();
    let (status, body) = send(&app, get("/api/v1/status/buildinfo")).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["version"], "3.0.0");
    assert_eq!(v["data"]["application"], "updraft");
    let (status, body) = send(&app, get("/api/v1/query_exemplars?query=temp")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"status":"success","data":[]}"#)
    );
    let (status, body) = send(&app, get("/api/v1/metadata")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"status":"success","data":{}}"#)
    );
}

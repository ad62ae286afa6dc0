//! The write routes end to end through the router, over real storage in a temporary
//! directory: what is accepted is durable and readable through the query API, what is refused
//! gets the protocol's status code, a clear message and a counter.

use super::{HttpState, router};
use crate::storage::{CompactionOptions, Storage, StorageOptions};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use protocols::remote_write::{self, Label, Sample as RwSample, TimeSeries, WriteRequest};
use protocols::{Labels, SeriesId, Tenant};
use query::{DataSource, STALE_NAN_BITS};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// 2023-11-14T22:13:20Z.
const T: i64 = 1_700_000_000_000;

struct Node {
    app: Router,
    storage: Storage,
    _dir: tempfile::TempDir,
}

fn options() -> StorageOptions {
    StorageOptions {
        compaction: CompactionOptions {
            interval: Duration::from_secs(3600),
            ..CompactionOptions::default()
        },
        ..StorageOptions::default()
    }
}

fn app_over(storage: &Storage, recorder: &PrometheusRecorder, ingest: bool) -> Router {
    router(HttpState {
        source: Arc::new(storage.clone()),
        metrics: recorder.handle(),
        // Development mode: these tests are about the API, not about tokens (auth_tests.rs).
        auth: Arc::new(
            crate::auth::Authenticator::in_memory(Some(Tenant::default())).expect("auth"),
        ),
        ingest_rate_limit: None,
        settings: Default::default(),
        ingest: ingest.then(|| storage.clone()),
        cluster: None,
        range_cache: Some(storage.range_cache()),
    })
}

fn node_with(recorder: &PrometheusRecorder) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::open(dir.path(), options()).expect("open");
    Node {
        app: app_over(&storage, recorder, true),
        storage,
        _dir: dir,
    }
}

fn node() -> Node {
    node_with(&PrometheusBuilder::new().build_recorder())
}

fn post(uri: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Request<Body> {
    let mut req = Request::post(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Body::from(body)).expect("valid request")
}

const SNAPPY: [(&str, &str); 3] = [
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "snappy"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

fn remote_write(body: Vec<u8>) -> Request<Body> {
    post("/api/v1/write", &SNAPPY, body)
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(req).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| Label {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|&(timestamp, value)| RwSample { value, timestamp })
            .collect(),
    }
}

fn encode(timeseries: Vec<TimeSeries>) -> Vec<u8> {
    remote_write::encode_request(&WriteRequest { timeseries }).expect("encodes")
}

/// Every stored sample of `metric{labels}` as (timestamp, value bits).
fn stored(storage: &Storage, metric: &str, labels: &[(&str, &str)]) -> Vec<(i64, u64)> {
    let labels = Labels::from_metric(metric, labels.iter().copied()).expect("valid");
    let id = SeriesId::of(&Tenant::default(), &labels);
    storage
        .samples(id, i64::MIN, i64::MAX)
        .expect("readable")
        .iter()
        .map(|s| (s.timestamp_ms, s.value.to_bits()))
        .collect()
}

/// `query` at `time_s` through the router: (labels, value) per series.
async fn instant(app: &Router, query: &str, time_s: f64) -> Vec<(String, String)> {
    let uri = format!(
        "/api/v1/query?query={}&time={time_s}",
        query
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    );
    let (status, body) = send(app, Request::get(uri).body(Body::empty()).expect("req")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["data"]["result"]
        .as_array()
        .expect("vector")
        .iter()
        .map(|r| (r["metric"].to_string(), r["value"][1].to_string()))
        .collect()
}

#[tokio::test]
async fn remote_write_is_stored_bit_exact_and_queryable() {
    let n = node();
    let stale = f64::from_bits(STALE_NAN_BITS);
    let body = encode(vec![
        // Out of order, and one series split over two entries of the request.
        series(
            &[("__name__", "up"), ("job", "node"), ("instance", "a:9100")],
            &[(T + 30_000, 1.0), (T, 0.0), (T + 15_000, 1.0)],
        ),
        series(
            &[("job", "node"), ("instance", "b:9100"), ("__name__", "up")],
            &[(T, 1.0), (T + 15_000, stale)],
        ),
        series(
            &[("__name__", "up"), ("job", "node"), ("instance", "a:9100")],
            &[(T + 45_000, 0.25)],
        ),
        // An empty label value is an absent label. (No -0.0 here: protobuf, Prometheus' Go
        // encoder included, drops a double equal to 0 as the field's default.)
        series(&[("__name__", "temp"), ("site", "")], &[(T, 1e-300)]),
        // Exemplar- or histogram-only series have no samples: skipped.
        series(&[("__name__", "hist_only")], &[]),
    ]);
    let (status, text) = send(&n.app, remote_write(body)).await;
    assert_eq!((status, text.as_str()), (StatusCode::NO_CONTENT, ""));

    // Durable before the answer: readable at once, the stale marker bit for bit.
    assert_eq!(
        stored(&n.storage, "up", &[("job", "node"), ("instance", "a:9100")]),
        [
            (T, 0f64.to_bits()),
            (T + 15_000, 1f64.to_bits()),
            (T + 30_000, 1f64.to_bits()),
            (T + 45_000, 0.25f64.to_bits())
        ]
    );
    assert_eq!(
        stored(&n.storage, "up", &[("job", "node"), ("instance", "b:9100")]),
        [(T, 1f64.to_bits()), (T + 15_000, STALE_NAN_BITS)]
    );
    assert_eq!(stored(&n.storage, "temp", &[]), [(T, 1e-300f64.to_bits())]);
    // Through PromQL: the stale marker ends b's series.
    let t = (T + 20_000) as f64 / 1000.0;
    assert_eq!(
        instant(&n.app, "up", t).await,
        [(
            r#"{"__name__":"up","instance":"a:9100","job":"node"}"#.to_owned(),
            r#""1""#.to_owned()
        )]
    );
}

#[tokio::test]
async fn remote_write_keeps_double_underscore_labels_but_the_type_and_unit_ones() {
    let n = node();
    // Relabelling leftovers such as `__address__` are stored and queryable, as in Prometheus.
    let body = encode(vec![series(
        &[
            ("__name__", "up"),
            ("__address__", "10.0.0.1:9100"),
            ("job", "node"),
        ],
        &[(T, 1.0)],
    )]);
    let (status, text) = send(&n.app, remote_write(body)).await;
    assert_eq!((status, text.as_str()), (StatusCode::NO_CONTENT, ""));
    assert_eq!(
        stored(
            &n.storage,
            "up",
            &[("__address__", "10.0.0.1:9100"), ("job", "node")]
        ),
        [(T, 1f64.to_bits())]
    );
    assert_eq!(
        instant(&n.app, r#"up{__address__=~"10\\..+"}"#, T as f64 / 1000.0).await,
        [(
            r#"{"__address__":"10.0.0.1:9100","__name__":"up","job":"node"}"#.to_owned(),
            r#""1""#.to_owned()
        )]
    );
    // `__type__`/`__unit__` are Prometheus' experimental type-and-unit labels: refused, named.
    let body = encode(vec![series(
        &[("__name__", "up"), ("__type__", "gauge")],
        &[(T, 1.0)],
    )]);
    let (status, text) = send(&n.app, remote_write(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("type-and-unit"), "{text}");
}

#[tokio::test]
async fn batches_without_an_agent_are_applied_every_time_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recorder = PrometheusBuilder::new().build_recorder();
    {
        let storage = Storage::open(dir.path(), options()).expect("open");
        let app = app_over(&storage, &recorder, true);
        // The same (series, timestamp) twice: a retry of a request. The second is applied (no
        // duplicate check), and the last write wins.
        for v in [1.0, 2.0] {
            let body = encode(vec![series(&[("__name__", "m")], &[(T, v)])]);
            assert_eq!(
                send(&app, remote_write(body)).await.0,
                StatusCode::NO_CONTENT
            );
        }
        let body = encode(vec![series(&[("__name__", "m")], &[(T + 1, 3.0)])]);
        assert_eq!(
            send(&app, remote_write(body)).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            stored(&storage, "m", &[]),
            [(T, 2f64.to_bits()), (T + 1, 3f64.to_bits())]
        );
        // No offset is recorded for the empty agent id.
        assert_eq!(storage.agent_offset("").expect("readable"), None);
    }
    // Reopened (WAL replay included): the same samples.
    let storage = Storage::open(dir.path(), options()).expect("reopen");
    assert_eq!(
        stored(&storage, "m", &[]),
        [(T, 2f64.to_bits()), (T + 1, 3f64.to_bits())]
    );
    assert_eq!(storage.agent_offset("").expect("readable"), None);
}

#[tokio::test]
async fn remote_write_refuses_bad_input_with_the_spec_status() {
    let n = node();
    let good = encode(vec![series(&[("__name__", "ok")], &[(T, 1.0)])]);

    // Corrupt snappy: 400, never retried.
    let (status, text) = send(&n.app, remote_write(b"not snappy at all".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("snappy"), "{text}");
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 2);
    assert_eq!(
        send(&n.app, remote_write(truncated)).await.0,
        StatusCode::BAD_REQUEST
    );
    // Snappy around bytes that are not a WriteRequest.
    let junk = remote_write::snappy_compress(&[0x0a, 0xff, 0x01]).expect("compresses");
    let (status, text) = send(&n.app, remote_write(junk)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("protobuf"), "{text}");
    // A header announcing 64 MiB decoded: refused before decompressing.
    let (status, text) = send(
        &n.app,
        remote_write(vec![0x80, 0x80, 0x80, 0x20, 0x00, 0x01]),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert!(text.contains("67108864"), "{text}");
    // A body over the compressed limit, announced by Content-Length.
    let big = vec![0u8; super::ingest::MAX_WRITE_BODY_BYTES + 1];
    assert_eq!(
        send(&n.app, remote_write(big)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Remote write 2.0 and other encodings: 415.
    let v2 = post(
        "/api/v1/write",
        &[
            (
                "content-type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            ),
            ("content-encoding", "snappy"),
        ],
        good.clone(),
    );
    assert_eq!(send(&n.app, v2).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let gzip = post(
        "/api/v1/write",
        &[("content-encoding", "gzip")],
        good.clone(),
    );
    assert_eq!(
        send(&n.app, gzip).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert!(stored(&n.storage, "ok", &[]).is_empty());

    // Invalid series are refused one by one; the rest of the request is stored.
    let body = encode(vec![
        series(&[("job", "x")], &[(T, 1.0)]),
        series(&[("__name__", "1bad")], &[(T, 1.0)]),
        series(&[("__name__", "m"), ("bad-label", "v")], &[(T, 1.0)]),
        series(&[("__name__", "m"), ("a", "1"), ("a", "2")], &[(T, 1.0)]),
        series(&[("__name__", "ok")], &[(T, 1.0)]),
    ]);
    let (status, text) = send(&n.app, remote_write(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        text,
        "4 series refused, first: series {job=\"x\"}: series has no metric name (__name__ \
         label); the other 1 samples were stored\n"
    );
    assert_eq!(stored(&n.storage, "ok", &[]), [(T, 1f64.to_bits())]);
}

#[tokio::test]
async fn a_node_without_storage_refuses_writes_as_retryable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::open(dir.path(), options()).expect("open");
    let app = app_over(&storage, &PrometheusBuilder::new().build_recorder(), false);
    let body = encode(vec![series(&[("__name__", "m")], &[(T, 1.0)])]);
    let response = app
        .clone()
        .oneshot(remote_write(body))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    let (status, text) = send(&app, post("/api/v2/write", &[], b"m v=1".to_vec())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        text,
        r#"{"code":"unavailable","message":"this node does not accept writes"}"#
    );
}

#[tokio::test]
async fn influx_v1_lines_are_stored_with_their_precision() {
    let n = node();
    let body = "\
# sensors
weather,site=s1,room\\ name=lab\\,1 temp=21.5,hum=40i,door=t,note=\"skip me\" 1700000000
weather,site=s2 temp=-3 1700000015
cpu-load,host=h1 value=5u 1700000000
";
    let (status, text) = send(
        &n.app,
        post("/write?db=telegraf&precision=s", &[], body.into()),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::NO_CONTENT, ""));
    assert_eq!(
        stored(
            &n.storage,
            "weather_temp",
            &[("site", "s1"), ("room_name", "lab,1")]
        ),
        [(T, 21.5f64.to_bits())]
    );
    assert_eq!(
        stored(
            &n.storage,
            "weather_hum",
            &[("site", "s1"), ("room_name", "lab,1")]
        ),
        [(T, 40f64.to_bits())]
    );
    assert_eq!(
        stored(
            &n.storage,
            "weather_door",
            &[("site", "s1"), ("room_name", "lab,1")]
        ),
        [(T, 1f64.to_bits())]
    );
    assert_eq!(
        stored(&n.storage, "weather_temp", &[("site", "s2")]),
        [(T + 15_000, (-3f64).to_bits())]
    );
    let t = (T + 15_000) as f64 / 1000.0;
    assert_eq!(
        instant(&n.app, r#"weather_temp{site="s2"}"#, t).await,
        [(
            r#"{"__name__":"weather_temp","site":"s2"}"#.to_owned(),
            r#""-3""#.to_owned()
        )]
    );
    assert_eq!(
        instant(&n.app, "cpu_load_value", t).await,
        [(
            r#"{"__name__":"cpu_load_value","host":"h1"}"#.to_owned(),
            r#""5""#.to_owned()
        )]
    );

    // The default precision is nanoseconds; minutes and hours exist in v1 only.
    for (uri, ts, want) in [
        ("/write", "1700000000123456789", T + 123),
        ("/write?precision=m", "28333333", 28_333_333 * 60_000),
        (
            "/api/v2/write?bucket=b&org=o",
            "1700000000123456789",
            T + 123,
        ),
        (
            "/api/v2/write?bucket=b&precision=us",
            "1700000000123456",
            T + 123,
        ),
        (
            "/api/v2/write?bucket=b&precision=ms",
            "1700000000123",
            T + 123,
        ),
    ] {
        let body = format!("p,uri={} v=1 {ts}", uri.replace(['/', '?', '=', '&'], "_"));
        let (status, text) = send(&n.app, post(uri, &[], body.into())).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{uri}: {text}");
        let label = uri.replace(['/', '?', '=', '&'], "_");
        assert_eq!(
            stored(&n.storage, "p_v", &[("uri", &label)]),
            [(want, 1f64.to_bits())],
            "{uri}"
        );
    }
}

#[tokio::test]
async fn influx_bad_lines_are_refused_by_number_and_the_good_ones_stored() {
    let n = node();
    let body = "good v=1 1700000000000\nbad,a=1\ngood v=2 1700000001000\n\
                bad v=\"open\ngood,__unit__=1 v=1 1700000000000\ngood v=3 1700000002000\n";
    let (status, text) = send(&n.app, post("/write?precision=ms", &[], body.into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        v["error"],
        "partial write: 3 of 6 lines refused; \
         line 2: missing fields (at column 8): \"bad,a=1\"; \
         line 4: unterminated string field value (at column 7): \"bad v=\\\"open\"; \
         line 5: measurement \"good\": label name \"__unit__\" is reserved for Prometheus' \
         experimental type-and-unit labels (--enable-feature=type-and-unit-labels), which are \
         not supported; \
         3 samples of the other lines were stored"
    );
    assert_eq!(
        stored(&n.storage, "good_v", &[]),
        [
            (T, 1f64.to_bits()),
            (T + 1000, 2f64.to_bits()),
            (T + 2000, 3f64.to_bits())
        ]
    );

    // v2 answers in its own shape; a bad precision refuses the whole request.
    let (status, text) = send(
        &n.app,
        post("/api/v2/write?bucket=b&precision=m", &[], b"m v=1".to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        text,
        r#"{"code":"invalid","message":"invalid precision \"m\": use one of ns, us, ms, s"}"#
    );
    let (status, text) = send(&n.app, post("/write", &[], vec![b'm', b' ', 0xff])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("not UTF-8"), "{text}");
    let zstd = post("/write", &[("content-encoding", "zstd")], b"m v=1".to_vec());
    assert_eq!(
        send(&n.app, zstd).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let gzip = post("/write", &[("content-encoding", "gzip")], b"m v=1".to_vec());
    let (status, text) = send(&n.app, gzip).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("corrupt gzip body"), "{text}");
    // Only string fields, or nothing at all: nothing to store, nothing wrong.
    for body in ["m s=\"x\"", "", "# just a comment\n"] {
        let (status, text) = send(&n.app, post("/write", &[], body.into())).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body:?}: {text}");
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in memory");
    e.finish().expect("in memory")
}

#[tokio::test]
async fn influx_gzip_bodies_are_inflated_within_the_limit() {
    let n = node();
    // Two gzip members back to back, as a concatenating sender makes them.
    let mut body = gzip(b"z,k=a v=1 1700000000000\n");
    body.extend(gzip(b"z,k=b v=2 1700000000000\n"));
    let req = post(
        "/api/v2/write?bucket=b&precision=ms",
        &[("content-encoding", "gzip")],
        body,
    );
    assert_eq!(send(&n.app, req).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        stored(&n.storage, "z_v", &[("k", "a")]),
        [(T, 1f64.to_bits())]
    );
    assert_eq!(
        stored(&n.storage, "z_v", &[("k", "b")]),
        [(T, 2f64.to_bits())]
    );
    // A small body that inflates past the limit is refused, not inflated whole.
    let bomb = gzip(&vec![b'#'; super::ingest::MAX_DECODED_BYTES + 1]);
    assert!(bomb.len() < 1 << 20);
    let req = post("/write", &[("content-encoding", "gzip")], bomb);
    let (status, text) = send(&n.app, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
}

#[test]
fn accepted_samples_and_refusals_are_counted() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let n = node_with(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The handlers run on this thread (CPU work on the blocking pool returns its counts), so
    // the thread-local recorder sees every counter.
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let body = encode(vec![
                series(&[("__name__", "a")], &[(T, 1.0), (T + 1, 2.0)]),
                series(&[("no_name", "x")], &[(T, 1.0)]),
            ]);
            send(&n.app, remote_write(body)).await;
            send(&n.app, remote_write(b"junk".to_vec())).await;
            let lines = "m v=1,s=\"x\" 1\nbad\nm,__type__=1 v=1\nm v=1 9223372036854775807\n";
            send(&n.app, post("/write?precision=h", &[], lines.into())).await;
            send(&n.app, post("/api/v2/write?precision=x", &[], vec![])).await;
        })
    });
    let text = handle.render();
    for line in [
        r#"updraft_core_ingest_samples_total{protocol="remote_write"} 2"#,
        r#"updraft_core_ingest_samples_total{protocol="influx_v1"} 1"#,
        r#"updraft_core_ingest_rejected_total{protocol="remote_write",reason="invalid_labels"} 1"#,
        r#"updraft_core_ingest_rejected_total{protocol="remote_write",reason="bad_snappy"} 1"#,
        r#"updraft_core_ingest_rejected_total{protocol="influx_v1",reason="bad_line"} 1"#,
        r#"updraft_core_ingest_rejected_total{protocol="influx_v1",reason="invalid_labels"} 1"#,
        r#"updraft_core_ingest_rejected_total{protocol="influx_v1",reason="bad_timestamp"} 1"#,
        r#"updraft_core_ingest_rejected_total{protocol="influx_v2",reason="bad_param"} 1"#,
        r#"updraft_core_ingest_fields_skipped_total{protocol="influx_v1",reason="string"} 1"#,
        r#"updraft_core_http_requests_total{handler="/api/v1/write",code="400"} 2"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

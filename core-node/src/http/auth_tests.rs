//! Authentication, roles and tenant isolation through the router, over real storage: the
//! auth matrix (every route × every kind of caller → the documented status), and proof that
//! no tenant reads or writes another's series through any endpoint.

use super::{HttpState, router};
use crate::auth::{Authenticator, Role};
use crate::storage::{CompactionOptions, Storage, StorageOptions};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use protocols::Tenant;
use protocols::remote_write::{self, Label, Sample as RwSample, TimeSeries, WriteRequest};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// 2023-11-14T22:13:20Z.
const T: i64 = 1_700_000_000_000;

struct Node {
    app: Router,
    auth: Arc<Authenticator>,
    _storage: Storage,
    _dir: tempfile::TempDir,
}

fn node_with(recorder: &PrometheusRecorder, rate_limit: Option<f64>) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::open(
        dir.path(),
        StorageOptions {
            compaction: CompactionOptions {
                interval: Duration::from_secs(3600),
                ..CompactionOptions::default()
            },
            ..StorageOptions::default()
        },
    )
    .expect("open");
    let auth = Arc::new(Authenticator::in_memory(None).expect("auth"));
    let app = router(HttpState {
        source: Arc::new(storage.clone()),
        metrics: recorder.handle(),
        auth: Arc::clone(&auth),
        ingest: Some(storage.clone()),
        cluster: None,
        ingest_rate_limit: rate_limit,
        settings: Default::default(),
        range_cache: Some(storage.range_cache()),
    });
    Node {
        app,
        auth,
        _storage: storage,
        _dir: dir,
    }
}

fn tenant(s: &str) -> Tenant {
    Tenant::new(s).expect("tenant")
}

impl Node {
    fn token(&self, tenant_name: &str, role: Role) -> String {
        self.auth
            .create(&tenant(tenant_name), role, "", None)
            .expect("token")
            .1
            .reveal()
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String, axum::http::HeaderMap) {
    let response = app.clone().oneshot(req).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        String::from_utf8(bytes.to_vec()).expect("utf-8"),
        headers,
    )
}

fn remote_write_body(metric: &str, site: &str, value: f64) -> Vec<u8> {
    let labels = [("__name__", metric), ("site", site)];
    remote_write::encode_request(&WriteRequest {
        timeseries: vec![TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: vec![RwSample {
                value,
                timestamp: T,
            }],
        }],
    })
    .expect("encodes")
}

/// One request of the matrix.
struct Call {
    method: &'static str,
    uri: String,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Call {
    fn get(uri: &str) -> Self {
        Self {
            method: "GET",
            uri: uri.to_owned(),
            content_type: "",
            body: Vec::new(),
        }
    }

    fn post(uri: &str, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST",
            uri: uri.to_owned(),
            content_type,
            body: body.into(),
        }
    }

    fn delete(uri: &str) -> Self {
        Self {
            method: "DELETE",
            uri: uri.to_owned(),
            content_type: "",
            body: Vec::new(),
        }
    }

    fn request(&self, authorization: Option<&str>) -> Request<Body> {
        let mut req = Request::builder().method(self.method).uri(&self.uri);
        if !self.content_type.is_empty() {
            req = req.header(header::CONTENT_TYPE, self.content_type);
            if self.content_type == "application/x-protobuf" {
                req = req.header(header::CONTENT_ENCODING, "snappy");
            }
        }
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        req.body(Body::from(self.body.clone())).expect("request")
    }
}

const FORM: &str = "application/x-www-form-urlencoded";
const PROTOBUF: &str = "application/x-protobuf";

#[tokio::test]
async fn every_route_answers_each_kind_of_caller_with_the_documented_status() {
    let node = node_with(&PrometheusBuilder::new().build_recorder(), None);
    let read = node.token("acme", Role::Read);
    let write = node.token("acme", Role::Write);
    let admin = node.token("acme", Role::Admin);
    let other_read = node.token("globex", Role::Read);
    let other_write = node.token("globex", Role::Write);
    let other_admin = node.token("globex", Role::Admin);
    // Well-formed, never issued.
    let wrong = format!("updraft_{}_{}", "0123456789abcdef", "ab".repeat(32));

    // Columns: no token, wrong token, read, write, admin, another tenant's token with the
    // role the route needs. Another tenant is let in, but only to its own series (see the
    // isolation test below) or its own tokens (its admin cannot see or revoke acme's: 404).
    #[rustfmt::skip]
    let matrix: Vec<(Call, [u16; 6])> = vec![
        (Call::get("/health"),                                          [200, 200, 200, 200, 200, 200]),
        (Call::get("/metrics"),                                         [401, 401, 200, 403, 200, 200]),
        (Call::get("/api/v1/query?query=up&time=1700000000"),           [401, 401, 200, 403, 403, 200]),
        (Call::post("/api/v1/query", FORM, "query=up&time=1700000000"), [401, 401, 200, 403, 403, 200]),
        (Call::get("/api/v1/query_range?query=up&start=1700000000&end=1700000060&step=15"),
                                                                        [401, 401, 200, 403, 403, 200]),
        (Call::post("/api/v1/query_range", FORM, "query=up&start=1700000000&end=1700000060&step=15"),
                                                                        [401, 401, 200, 403, 403, 200]),
        (Call::get("/api/v1/series?match[]=up"),                        [401, 401, 200, 403, 403, 200]),
        (Call::post("/api/v1/series", FORM, "match[]=up"),              [401, 401, 200, 403, 403, 200]),
        (Call::get("/api/v1/labels"),                                   [401, 401, 200, 403, 403, 200]),
        (Call::post("/api/v1/labels", FORM, ""),                        [401, 401, 200, 403, 403, 200]),
        (Call::get("/api/v1/label/__name__/values"),                    [401, 401, 200, 403, 403, 200]),
        (Call::get("/api/v1/status/buildinfo"),                         [401, 401, 200, 403, 403, 200]),
        (Call::get("/api/v1/metadata"),                                 [401, 401, 200, 403, 403, 200]),
        (Call::get("/api/v1/query_exemplars?query=up"),                 [401, 401, 200, 403, 403, 200]),
        (Call::post("/api/v1/write", PROTOBUF, remote_write_body("m", "s", 1.0)),
                                                                        [401, 401, 403, 204, 403, 204]),
        (Call::post("/write", "text/plain", "m,site=s v=1 1700000000000000000"),
                                                                        [401, 401, 403, 204, 403, 204]),
        (Call::post("/api/v2/write", "text/plain", "m,site=s v=1 1700000000000000000"),
                                                                        [401, 401, 403, 204, 403, 204]),
        (Call::get("/api/v1/admin/tokens"),                             [401, 401, 403, 403, 200, 200]),
        (Call::post("/api/v1/admin/tokens", "application/json", r#"{"role":"read"}"#),
                                                                        [401, 401, 403, 403, 201, 201]),
        (Call::delete("/api/v1/admin/tokens/{victim}"),                 [401, 401, 403, 403, 200, 404]),
        (Call::get("/api/v1/admin/tenant"),                             [401, 401, 403, 403, 200, 200]),
        (Call::get("/api/v1/admin/config"),                             [401, 401, 403, 403, 200, 200]),
        (Call::get("/no/such/path"),                                    [401, 401, 404, 404, 404, 404]),
    ];

    let bearer = |t: &str| format!("Bearer {t}");
    for (call, expected) in matrix {
        let other = match (call.method, call.uri.as_str()) {
            (_, u) if u.starts_with("/api/v1/admin/") => &other_admin,
            ("POST", "/api/v1/write" | "/write" | "/api/v2/write") => &other_write,
            _ => &other_read,
        };
        let callers: [Option<String>; 6] = [
            None,
            Some(bearer(&wrong)),
            Some(bearer(&read)),
            Some(bearer(&write)),
            Some(bearer(&admin)),
            Some(bearer(other)),
        ];
        for (column, (authorization, want)) in callers.iter().zip(expected).enumerate() {
            let mut call_now = Call {
                method: call.method,
                uri: call.uri.clone(),
                content_type: call.content_type,
                body: call.body.clone(),
            };
            if call.uri.contains("{victim}") {
                // A fresh acme token to revoke in every cell.
                let (victim, _) = node
                    .auth
                    .create(&tenant("acme"), Role::Read, "victim", None)
                    .expect("victim");
                call_now.uri = call.uri.replace("{victim}", victim.id.as_str());
            }
            let (status, body, headers) =
                send(&node.app, call_now.request(authorization.as_deref())).await;
            assert_eq!(
                status.as_u16(),
                want,
                "{} {} column {column}: {body}",
                call.method,
                call.uri
            );
            if want == 401 {
                let v: serde_json::Value = serde_json::from_str(&body).expect("json error");
                assert_eq!(v["status"], "error");
                assert_eq!(v["errorType"], "unauthorized");
                let challenges: Vec<_> = headers.get_all(header::WWW_AUTHENTICATE).iter().collect();
                assert_eq!(challenges.len(), 2, "{body}");
            }
            if want == 403 {
                let v: serde_json::Value = serde_json::from_str(&body).expect("json error");
                assert_eq!(v["errorType"], "forbidden");
            }
        }
    }
}

#[tokio::test]
async fn a_token_is_accepted_as_bearer_influx_token_or_basic_password_and_nothing_else() {
    let node = node_with(&PrometheusBuilder::new().build_recorder(), None);
    let read = node.token("acme", Role::Read);
    let uri = "/api/v1/labels";
    let basic = |user: &str, pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    };
    let cases = [
        (format!("Bearer {read}"), 200),
        (format!("Token {read}"), 200),
        (basic("grafana", &read), 200),
        (basic("", &read), 200),
        (basic(&read, "x"), 401),
        (basic("grafana", ""), 401),
        (read.clone(), 401),
        (format!("Bearer {}", &read[..read.len() - 1]), 401),
        // The right id with another secret.
        (
            format!("Bearer {}{}", &read[..read.len() - 64], "f".repeat(64)),
            401,
        ),
    ];
    for (authorization, want) in cases {
        let (status, body, _) = send(&node.app, Call::get(uri).request(Some(&authorization))).await;
        assert_eq!(status.as_u16(), want, "{authorization}: {body}");
    }
}

#[test]
fn refusals_are_counted_by_reason() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let node = node_with(&recorder, None);
            let write = node.token("acme", Role::Write);
            let known_id = &write[..write.len() - 64];
            let expired = node
                .auth
                .create(&tenant("acme"), Role::Read, "", Some(1))
                .expect("token")
                .1
                .reveal();
            for authorization in [
                None,
                Some("Bearer nonsense".to_owned()),
                Some(format!(
                    "Bearer updraft_{}_{}",
                    "1".repeat(16),
                    "2".repeat(64)
                )),
                Some(format!("Bearer {known_id}{}", "3".repeat(64))),
                Some(format!("Bearer {write}")),
                Some(format!("Bearer {expired}")),
            ] {
                send(
                    &node.app,
                    Call::get("/api/v1/labels").request(authorization.as_deref()),
                )
                .await;
            }
        });
    });
    let text = handle.render();
    for reason in [
        "missing",
        "malformed",
        "unknown_token",
        "wrong_secret",
        "forbidden",
        "expired",
    ] {
        assert!(
            text.contains(&format!(
                "updraft_core_auth_failures_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted once in:\n{text}"
        );
    }
}

/// Every read endpoint's answer, for one token, as text to search.
async fn everything_visible(app: &Router, token: &str) -> Vec<(String, String)> {
    let auth = format!("Bearer {token}");
    let calls = [
        Call::get("/api/v1/query?query=%7B__name__%3D~%22.%2B%22%7D&time=1700000000"),
        Call::post(
            "/api/v1/query",
            FORM,
            "query=%7B__name__%3D~%22.%2B%22%7D&time=1700000000",
        ),
        Call::get(
            "/api/v1/query_range?query=%7B__name__%3D~%22.%2B%22%7D&start=1699999990&end=1700000010&step=5",
        ),
        Call::get("/api/v1/query?query=count(%7B__name__%3D~%22.%2B%22%7D)&time=1700000000"),
        Call::get("/api/v1/series?match[]=%7B__name__%3D~%22.%2B%22%7D"),
        Call::post(
            "/api/v1/series",
            FORM,
            "match[]=%7B__name__%3D~%22.%2B%22%7D",
        ),
        Call::get("/api/v1/labels"),
        Call::get("/api/v1/labels?match[]=%7B__name__%3D~%22.%2B%22%7D"),
        Call::get("/api/v1/label/__name__/values"),
        Call::get("/api/v1/label/site/values"),
        Call::get("/api/v1/label/only_a/values"),
        Call::get("/api/v1/label/only_b/values"),
    ];
    let mut out = Vec::new();
    for call in calls {
        let (status, body, _) = send(app, call.request(Some(&auth))).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", call.uri);
        out.push((call.uri.clone(), body));
    }
    out
}

#[tokio::test]
async fn no_series_crosses_tenants_through_any_endpoint_in_either_direction() {
    let node = node_with(&PrometheusBuilder::new().build_recorder(), None);
    let (a_write, a_read) = (
        node.token("acme", Role::Write),
        node.token("acme", Role::Read),
    );
    let (b_write, b_read) = (
        node.token("globex", Role::Write),
        node.token("globex", Role::Read),
    );
    // acme writes over remote_write and line protocol, globex over line protocol (v2).
    let write = |uri: &str, ct: &'static str, body: Vec<u8>, token: &str| {
        Call::post(uri, ct, body).request(Some(&format!("Bearer {token}")))
    };
    let (s, body, _) = send(
        &node.app,
        write(
            "/api/v1/write",
            PROTOBUF,
            remote_write_body("acme_secret", "plant_a", 1.0),
            &a_write,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, body, _) = send(
        &node.app,
        write(
            "/write?precision=ms",
            "text/plain",
            b"acme_line,site=plant_a,only_a=x v=2 1700000000000".to_vec(),
            &a_write,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, body, _) = send(
        &node.app,
        write(
            "/api/v2/write?precision=ms",
            "text/plain",
            b"globex_line,site=plant_b,only_b=y v=3 1700000000000".to_vec(),
            &b_write,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");

    let a_sees = everything_visible(&node.app, &a_read).await;
    let b_sees = everything_visible(&node.app, &b_read).await;
    let mentions =
        |seen: &[(String, String)], what: &str| seen.iter().any(|(_, b)| b.contains(what));
    // Each tenant sees its own series…
    for own in ["acme_secret", "acme_line_v", "plant_a", "only_a"] {
        assert!(mentions(&a_sees, own), "acme does not see its own {own}");
    }
    for own in ["globex_line_v", "plant_b", "only_b"] {
        assert!(mentions(&b_sees, own), "globex does not see its own {own}");
    }
    // …and nothing of the other, through any endpoint.
    for (uri, body) in &a_sees {
        for foreign in ["globex", "plant_b", "only_b", "\"y\""] {
            assert!(
                !body.contains(foreign),
                "acme sees {foreign} via {uri}: {body}"
            );
        }
    }
    for (uri, body) in &b_sees {
        for foreign in ["acme", "plant_a", "only_a", "\"x\""] {
            assert!(
                !body.contains(foreign),
                "globex sees {foreign} via {uri}: {body}"
            );
        }
    }
    // count() over everything: 2 series for acme, 1 for globex.
    let count = |seen: &[(String, String)]| {
        let (_, body) = seen
            .iter()
            .find(|(u, _)| u.contains("count("))
            .expect("count query");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(count(&a_sees), "2");
    assert_eq!(count(&b_sees), "1");
}

#[tokio::test]
async fn an_admin_manages_only_its_own_tenants_tokens() {
    let node = node_with(&PrometheusBuilder::new().build_recorder(), None);
    let a_admin = format!("Bearer {}", node.token("acme", Role::Admin));
    let b_admin = format!("Bearer {}", node.token("globex", Role::Admin));
    let (s, body, _) = send(
        &node.app,
        Call::post(
            "/api/v1/admin/tokens",
            "application/json",
            r#"{"role":"read","description":"grafana"}"#,
        )
        .request(Some(&a_admin)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).expect("json");
    let token = created["data"]["token"]
        .as_str()
        .expect("token shown")
        .to_owned();
    let id = created["data"]["id"].as_str().expect("id").to_owned();
    assert_eq!(created["data"]["tenant"], "acme");
    // The new token works at once, as acme's reader.
    let (s, _, _) = send(
        &node.app,
        Call::get("/api/v1/labels").request(Some(&format!("Bearer {token}"))),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // acme's list shows it (without the secret); globex's does not.
    let (_, listed, _) = send(
        &node.app,
        Call::get("/api/v1/admin/tokens").request(Some(&a_admin)),
    )
    .await;
    assert!(listed.contains(&id) && listed.contains("grafana") && !listed.contains(&token));
    let (_, listed, _) = send(
        &node.app,
        Call::get("/api/v1/admin/tokens").request(Some(&b_admin)),
    )
    .await;
    assert!(
        !listed.contains(&id) && !listed.contains("acme"),
        "{listed}"
    );
    // globex may neither create for acme nor revoke acme's token.
    let (s, _, _) = send(
        &node.app,
        Call::post(
            "/api/v1/admin/tokens",
            "application/json",
            r#"{"role":"read","tenant":"acme"}"#,
        )
        .request(Some(&b_admin)),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let uri = format!("/api/v1/admin/tokens/{id}");
    let (s, _, _) = send(&node.app, Call::delete(&uri).request(Some(&b_admin))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = send(&node.app, Call::delete(&uri).request(Some(&a_admin))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = send(
        &node.app,
        Call::get("/api/v1/labels").request(Some(&format!("Bearer {token}"))),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a revoked token still works");
    let (s, _, _) = send(
        &node.app,
        Call::post(
            "/api/v1/admin/tokens",
            "application/json",
            r#"{"role":"root"}"#,
        )
        .request(Some(&a_admin)),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn tokens_expire_through_the_router_and_the_admin_api_sets_and_shows_expiry() {
    let node = node_with(&PrometheusBuilder::new().build_recorder(), None);
    let admin = format!("Bearer {}", node.token("acme", Role::Admin));
    // Expired a long time ago: 401 with Prometheus' error JSON and a clear message.
    let (_, expired) = node
        .auth
        .create(&tenant("acme"), Role::Read, "", Some(1))
        .expect("token");
    let (s, body, headers) = send(
        &node.app,
        Call::get("/api/v1/labels").request(Some(&format!("Bearer {}", expired.reveal()))),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["errorType"], "unauthorized");
    assert_eq!(v["error"], "token expired");
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));

    // Created with a lifetime: works now, and both create and list say when it expires.
    let (s, body, _) = send(
        &node.app,
        Call::post(
            "/api/v1/admin/tokens",
            "application/json",
            r#"{"role":"read","expires_in":"1h"}"#,
        )
        .request(Some(&admin)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).expect("json");
    let expires = created["data"]["expires"]
        .as_str()
        .expect("expires")
        .to_owned();
    let at = chrono::DateTime::parse_from_rfc3339(&expires).expect("rfc 3339");
    let in_ms = at.timestamp_millis() - crate::auth::store::now_ms();
    assert!((3_500_000..=3_600_000).contains(&in_ms), "{expires}");
    let token = created["data"]["token"].as_str().expect("token").to_owned();
    let (s, _, _) = send(
        &node.app,
        Call::get("/api/v1/labels").request(Some(&format!("Bearer {token}"))),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, listed, _) = send(
        &node.app,
        Call::get("/api/v1/admin/tokens").request(Some(&admin)),
    )
    .await;
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let rows = listed["data"].as_array().expect("rows");
    assert!(rows.iter().any(|r| r["expires"] == expires.as_str()));
    assert!(
        rows.iter().any(|r| r["expires"].is_null()),
        "the admin token never expires"
    );

    // An expiry that is not one, or already past, is a bad request.
    for bad in [
        r#"{"role":"read","expires_in":"soon"}"#,
        r#"{"role":"read","expires_in":"0d"}"#,
        r#"{"role":"read","expires_at":"2001-01-01T00:00:00Z"}"#,
        r#"{"role":"read","expires_in":"1d","expires_at":"2100-01-01T00:00:00Z"}"#,
    ] {
        let (s, body, _) = send(
            &node.app,
            Call::post("/api/v1/admin/tokens", "application/json", bad).request(Some(&admin)),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (s, body, _) = send(
        &node.app,
        Call::post(
            "/api/v1/admin/tokens",
            "application/json",
            r#"{"role":"write","expires_at":"2100-01-01T00:00:00Z"}"#,
        )
        .request(Some(&admin)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert!(
        body.contains(r#""expires":"2100-01-01T00:00:00Z""#),
        "{body}"
    );
}

#[tokio::test]
async fn a_tenant_over_its_ingest_rate_gets_429_with_retry_after_and_others_do_not() {
    let node = node_with(&PrometheusBuilder::new().build_recorder(), Some(2.0));
    let a = format!("Bearer {}", node.token("acme", Role::Write));
    let b = format!("Bearer {}", node.token("globex", Role::Write));
    // Five samples: admitted (the bucket was full), then paid for.
    let lines = "m v=1 1700000000000\nm v=2 1700000001000\nm v=3 1700000002000\nm v=4 1700000003000\nm v=5 1700000004000";
    let req =
        |auth: &str| Call::post("/write?precision=ms", "text/plain", lines).request(Some(auth));
    let (s, body, _) = send(&node.app, req(&a)).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let (s, body, headers) = send(&node.app, req(&a)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry: u64 = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let (s, body, _) = send(&node.app, req(&b)).await;
    assert_eq!(
        s,
        StatusCode::NO_CONTENT,
        "another tenant is not slowed: {body}"
    );
}

/// `GET /api/v1/admin/tenant` and `/api/v1/admin/config` show the caller's tenant (its series,
/// tokens, limits and retention) and the node's settings, and nothing of another tenant.
#[tokio::test]
async fn the_admin_views_show_the_own_tenant_and_the_node_without_other_tenants() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let mut node = node_with(&recorder, Some(500.0));
    let mut node_map = serde_json::Map::new();
    node_map.insert("durability".into(), "fsync".into());
    node.app = router(HttpState {
        source: Arc::new(node._storage.clone()),
        metrics: recorder.handle(),
        auth: Arc::clone(&node.auth),
        ingest: Some(node._storage.clone()),
        cluster: None,
        ingest_rate_limit: Some(500.0),
        settings: Arc::new(crate::http::Settings {
            limits: crate::storage::Limits::default(),
            retention: crate::storage::Retention {
                default: None,
                per_tenant: [(tenant("globex"), Some(Duration::from_secs(30 * 86_400)))]
                    .into_iter()
                    .collect(),
            },
            node: node_map,
        }),
        range_cache: Some(node._storage.range_cache()),
    });
    let acme_admin = format!("Bearer {}", node.token("acme", Role::Admin));
    let globex_admin = format!("Bearer {}", node.token("globex", Role::Admin));
    let acme_write = format!("Bearer {}", node.token("acme", Role::Write));
    for site in ["a", "b", "c"] {
        let call = Call::post("/api/v1/write", PROTOBUF, remote_write_body("m", site, 1.0));
        let (status, body, _) = send(&node.app, call.request(Some(&acme_write))).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let get = |uri: &'static str, who: &str| {
        let app = node.app.clone();
        let who = who.to_owned();
        async move {
            let (status, body, _) = send(&app, Call::get(uri).request(Some(&who))).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(v["status"], "success");
            v["data"].clone()
        }
    };
    let acme = get("/api/v1/admin/tenant", &acme_admin).await;
    assert_eq!(acme["tenant"], "acme");
    assert_eq!(acme["series"], 3);
    assert_eq!(acme["tokens"], 2, "the admin and the write token");
    assert_eq!(acme["retention"], "forever");
    assert_eq!(acme["limits"]["max_series_per_tenant"], 1_000_000);
    assert_eq!(acme["limits"]["ingest_rate_limit"], 500.0);
    let globex = get("/api/v1/admin/tenant", &globex_admin).await;
    assert_eq!(globex["tenant"], "globex");
    assert_eq!(globex["series"], 0);
    assert_eq!(globex["tokens"], 1);
    assert_eq!(globex["retention"], "30d");

    let config = get("/api/v1/admin/config", &acme_admin).await;
    assert_eq!(config["durability"], "fsync");
    assert_eq!(config["retention"], "forever");
    assert_eq!(config["limits"]["max_labels_per_series"], 30);
    let text = config.to_string();
    assert!(!text.contains("globex"), "another tenant named: {text}");
    let config = get("/api/v1/admin/config", &globex_admin).await;
    assert_eq!(config["retention"], "30d");
}

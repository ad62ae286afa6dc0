//! Replays the calls Grafana's built-in Prometheus data source makes against a real core node
//! fed by a real agent: the health check (POST instant query `1+1`, then buildinfo), label
//! names and values for the query editor, series with `match[]`, and a step-aligned
//! `query_range` as a dashboard panel sends it. Each answer is checked as Grafana reads it.

use serde_json::Value;
use std::time::Duration;
use updraft_tests::*;

fn json(status_body: (u16, String)) -> Value {
    let (status, body) = status_body;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

#[test]
fn grafana_prometheus_datasource_calls_get_prometheus_answers() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let agent = Agent::start(work.path(), &certs, core.quic, &[])?;

    // Two sites, two devices each, three readings 10 s apart.
    let t0_ms: i64 = 1_700_000_000_000;
    for (site, device, base) in [
        ("s1", "d1", 20.0),
        ("s1", "d2", 21.0),
        ("s2", "d3", 22.0),
        ("s2", "d4", 23.0),
    ] {
        for k in 0..3 {
            let payload = format!(
                r#"{{"ts":{},"celsius":{}}}"#,
                t0_ms + k * 10_000,
                base + k as f64
            );
            agent.publish(&format!("{site}/{device}/temp"), payload.as_bytes())?;
        }
    }
    let t0 = t0_ms as f64 / 1000.0;
    core.wait_for_points(
        r#"temp_celsius{device="d4"}"#,
        (t0, t0 + 20.0, 10.0),
        &[(t0, 23.0), (t0 + 10.0, 24.0), (t0 + 20.0, 25.0)],
        Duration::from_secs(15),
    )?;

    // Health check: POST /api/v1/query with query=1+1, then buildinfo.
    let health = json(http_post_form(
        &core.url("/api/v1/query"),
        &[("query", "1+1"), ("time", &format!("{}", t0 + 20.0))],
    )?);
    assert_eq!(health["data"]["resultType"], "scalar");
    assert_eq!(health["data"]["result"][1], "2");
    let build = json(http_get(&core.url("/api/v1/status/buildinfo"))?);
    assert!(
        build["data"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );

    // Query editor: label names, metric names, values of one label under a selector.
    let names = json(http_get(&core.url(&format!(
        "/api/v1/labels?start={}&end={}",
        t0,
        t0 + 20.0
    )))?);
    assert_eq!(
        names["data"],
        serde_json::json!(["__name__", "device", "site"])
    );
    let metrics = json(http_get(&core.url("/api/v1/label/__name__/values"))?);
    assert_eq!(metrics["data"], serde_json::json!(["temp_celsius"]));
    let devices = json(http_get(&core.url(&format!(
        "/api/v1/label/device/values?match[]={}",
        encode(r#"temp_celsius{site="s2"}"#)
    )))?);
    assert_eq!(devices["data"], serde_json::json!(["d3", "d4"]));
    let series = json(http_post_form(
        &core.url("/api/v1/series"),
        &[
            ("match[]", r#"{site="s1"}"#),
            ("start", &t0.to_string()),
            ("end", &(t0 + 20.0).to_string()),
        ],
    )?);
    assert_eq!(series["data"].as_array().map(Vec::len), Some(2));

    // A panel: step-aligned range query of an aggregation, POSTed as a form.
    let panel = json(http_post_form(
        &core.url("/api/v1/query_range"),
        &[
            ("query", "avg by (site) (temp_celsius)"),
            ("start", &t0.to_string()),
            ("end", &(t0 + 20.0).to_string()),
            ("step", "10"),
        ],
    )?);
    assert_eq!(panel["data"]["resultType"], "matrix");
    let result = panel["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(result.len(), 2);
    assert_eq!(result[0]["metric"], serde_json::json!({"site": "s1"}));
    // Whole seconds are printed as integers, as Prometheus does.
    let t = t0_ms / 1000;
    assert_eq!(
        result[0]["values"],
        serde_json::json!([[t, "20.5"], [t + 10, "21.5"], [t + 20, "22.5"]])
    );
    assert_eq!(result[1]["metric"], serde_json::json!({"site": "s2"}));
    assert_eq!(
        result[1]["values"],
        serde_json::json!([[t, "22.5"], [t + 10, "23.5"], [t + 20, "24.5"]])
    );
    Ok(())
}

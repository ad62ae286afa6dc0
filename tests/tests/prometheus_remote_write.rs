//! A real Prometheus (2.42) scrapes the core's own `/metrics` and remote-writes what it
//! scraped to the core's `/api/v1/write`. Every series and sample Prometheus holds for the
//! job arrives at the core, bit for bit: the same PromQL on both servers gives the same
//! answer. Also: InfluxDB line protocol posted over plain HTTP reads back through PromQL.

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use updraft_tests::*;

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as f64 / 1000.0)
        .unwrap_or_default()
}

/// A matrix or vector answer as labels (JSON text) → values (JSON text), order-free.
fn by_series(answer: &Value) -> BTreeMap<String, String> {
    answer["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|s| {
                    let values = if s["values"].is_null() {
                        &s["value"]
                    } else {
                        &s["values"]
                    };
                    (s["metric"].to_string(), values.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn prometheus_remote_write_arrives_with_the_values_prometheus_has() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: updraft
    static_configs:
      - targets: ["{core}"]
remote_write:
  - url: "http://{core}/api/v1/write"
    queue_config:
      batch_send_deadline: 500ms
      min_backoff: 50ms
      max_backoff: 1s
"#,
        core = core.http
    );
    let prometheus = Prometheus::start(work.path(), &config)?;

    // Five scrapes in Prometheus.
    wait_for("five scrapes", Duration::from_secs(60), || {
        let a = prometheus
            .query(r#"count_over_time(up{job="updraft"}[1m])"#, now_s())
            .ok()?;
        let n: f64 = a["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
        (n >= 5.0).then_some(())
    })?;

    // Every raw sample of the job in a 10 s window that has ended: the same on both servers
    // once remote write has caught up. Stale markers are not in a range selector's answer on
    // either side; the values are compared as Prometheus formats them (Go's shortest form).
    // 2.5 s back: every scrape stamped before then (timeout 1 s) is committed in Prometheus.
    let at = now_s() - 2.5;
    let selector = r#"{job="updraft"}[10s]"#;
    let want = by_series(&prometheus.query(selector, at)?);
    assert!(
        want.len() > 20,
        "Prometheus scraped only {} series: {want:?}",
        want.len()
    );
    let mut got = BTreeMap::new();
    let arrived = wait_for(
        "the core to hold what Prometheus holds",
        Duration::from_secs(30),
        || {
            got = by_series(&core.query(selector, Some(at)).ok()?);
            (got == want).then_some(())
        },
    );
    if arrived.is_err() {
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .take(5)
            .collect();
        panic!(
            "the core never matched Prometheus: {} series there, {} here; first differences \
             (Prometheus' side): {missing:#?}",
            want.len(),
            got.len()
        );
    }

    // An aggregation over what arrived gives the same number on both.
    let q = r#"sum by (job) (up{job="updraft"}) + count({job="updraft", __name__=~"scrape_.*"})"#;
    assert_eq!(
        by_series(&core.query(q, Some(at))?),
        by_series(&prometheus.query(q, at)?)
    );
    // The core counted what it accepted.
    let metrics = core.metrics();
    assert!(
        metric_sum(
            &metrics,
            "updraft_core_ingest_samples_total",
            Some(r#"protocol="remote_write""#)
        ) > 0.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "updraft_core_ingest_rejected_total", None),
        0.0,
        "{metrics}"
    );
    Ok(())
}

#[test]
fn line_protocol_over_http_reads_back_through_promql() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;

    let t0 = 1_700_000_000i64;
    let body = format!(
        "weather,site=s1,station=north\\ gate temp=21.5,ok=true,note=\"fine\" {t0}\n\
         weather,site=s1,station=north\\ gate temp=22,ok=false {}\n\
         pump,id=7 rpm=1200i,flow=3.25 {t0}\n",
        t0 + 10
    );
    let (status, text) = http_post(
        &core.url("/write?db=plant&precision=s"),
        "text/plain; charset=utf-8",
        &[],
        body.as_bytes(),
    )?;
    assert_eq!((status, text.as_str()), (204, ""));
    let (status, text) = http_post(
        &core.url("/api/v2/write?org=o&bucket=plant&precision=ms"),
        "text/plain",
        &[],
        format!("pump,id=7 rpm=1300i {}\nbroken,tag=1\n", (t0 + 10) * 1000).as_bytes(),
    )?;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("line 2: missing fields"), "{text}");

    let t0f = t0 as f64;
    core.wait_for_points(
        r#"weather_temp{station="north gate"}"#,
        (t0f, t0f + 10.0, 10.0),
        &[(t0f, 21.5), (t0f + 10.0, 22.0)],
        Duration::from_secs(10),
    )?;
    core.wait_for_points(
        "weather_ok",
        (t0f, t0f + 10.0, 10.0),
        &[(t0f, 1.0), (t0f + 10.0, 0.0)],
        Duration::from_secs(10),
    )?;
    // The good line of the partial v2 write is there.
    core.wait_for_points(
        r#"pump_rpm{id="7"}"#,
        (t0f, t0f + 10.0, 10.0),
        &[(t0f, 1200.0), (t0f + 10.0, 1300.0)],
        Duration::from_secs(10),
    )?;
    let a = core.query("pump_flow", Some(t0f))?;
    assert_eq!(a["data"]["result"][0]["value"][1], "3.25");
    // The string field made no series.
    let a = core.query(r#"{__name__=~"weather_note.*"}"#, Some(t0f))?;
    assert_eq!(a["data"]["result"], serde_json::json!([]));
    let metrics = core.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "updraft_core_ingest_rejected_total",
            Some(r#"reason="bad_line""#)
        ),
        1.0
    );
    assert_eq!(
        metric_sum(&metrics, "updraft_core_ingest_fields_skipped_total", None),
        1.0
    );
    Ok(())
}

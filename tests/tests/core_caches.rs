//! The caches of a real core node, through its HTTP API: the cache metrics are on /metrics at
//! 0 from the start; a refreshed range query and an instant query at "now" are answered from
//! the caches with the same answer as a request that bypasses them (`nocache=1`,
//! `Cache-Control: no-cache`); a late sample written into a cached range shows at once.

use std::time::{SystemTime, UNIX_EPOCH};
use updraft_tests::*;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn write(core: &Core, series: &[RemoteWriteSeries]) -> anyhow::Result<()> {
    let (status, text) = http_post(
        &core.url("/api/v1/write"),
        "application/x-protobuf",
        &[
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        &remote_write_body(series),
    )?;
    anyhow::ensure!(status == 204, "remote write refused: {status} {text}");
    Ok(())
}

fn device(dev: u32, samples: Vec<(i64, f64)>) -> RemoteWriteSeries {
    (
        vec![
            ("__name__".to_owned(), "temp".to_owned()),
            ("dev".to_owned(), dev.to_string()),
        ],
        samples,
    )
}

/// `query_range` through the caches and past them: (cached answer, uncached answer).
fn both(core: &Core, url: &str) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    let cached = get_json(&core.url(url))?;
    let bypass = get_json(&core.url(&format!("{url}&nocache=1")))?;
    Ok((cached["data"].clone(), bypass["data"].clone()))
}

#[test]
fn caches_answer_as_storage_does_and_show_on_metrics() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start_with_args(work.path(), &certs, &["--range-cache-settle-secs", "1"])?;

    let text = core.metrics();
    for (name, filter) in [
        (
            "updraft_core_range_cache_extents_total",
            Some(r#"outcome="hit""#),
        ),
        (
            "updraft_core_range_cache_extents_total",
            Some(r#"outcome="miss""#),
        ),
        ("updraft_core_range_cache_evictions_total", None),
        ("updraft_core_range_cache_bytes", None),
        (
            "updraft_core_last_value_lookups_total",
            Some(r#"outcome="hit""#),
        ),
        ("updraft_core_last_value_evictions_total", None),
        ("updraft_core_last_value_entries", None),
    ] {
        assert_eq!(metric_sum(&text, name, filter), 0.0, "{name} at start");
    }
    assert_eq!(
        metric_sum(&text, "updraft_core_range_cache_budget_bytes", None),
        256.0 * 1024.0 * 1024.0
    );

    // Two hours of one sample a minute for four devices, up to a minute ago.
    let now = now_ms() - now_ms() % 60_000;
    let series: Vec<_> = (0..4)
        .map(|dev| {
            device(
                dev,
                (1..=120)
                    .map(|m| (now - m * 60_000, f64::from(dev) * 100.0 + m as f64))
                    .collect(),
            )
        })
        .collect();
    write(&core, &series)?;

    let (start, end) = ((now - 7_200_000) / 1000, now / 1000);
    let url = format!(
        "/api/v1/query_range?query={}&start={start}&end={end}&step=60",
        encode("sum by (dev) (rate(temp[5m]))")
    );
    let (first, bypass) = both(&core, &url)?;
    assert_eq!(first, bypass);
    let (second, bypass) = both(&core, &url)?;
    assert_eq!(second, bypass);
    assert_eq!(first, second);
    let text = core.metrics();
    assert!(
        metric_sum(
            &text,
            "updraft_core_range_cache_extents_total",
            Some(r#"outcome="hit""#)
        ) > 0.0,
        "a refreshed range query read no cached extent"
    );
    assert!(metric_sum(&text, "updraft_core_range_cache_bytes", None) > 0.0);
    assert!(
        metric_sum(
            &text,
            "updraft_core_range_cache_queries_total",
            Some(r#"path="bypass""#)
        ) >= 2.0
    );

    // A late sample an hour back lands in cached extents: the next answer has it.
    write(&core, &[device(1, vec![(now - 3_600_000 + 30_000, 1e6)])])?;
    let (late, bypass) = both(&core, &url)?;
    assert_eq!(late, bypass);
    assert_ne!(
        late, second,
        "the late sample is missing from the cached answer"
    );
    let invalidated = metric_sum(
        &core.metrics(),
        "updraft_core_range_cache_invalidated_total",
        None,
    );
    assert!(invalidated > 0.0);

    // The current value of every device: from the last-value cache after the first read.
    let query = format!("/api/v1/query?query={}", encode("timestamp(temp)"));
    for _ in 0..2 {
        let cached = get_json(&core.url(&query))?;
        let (status, bypass) = http_get_with(&core.url(&query), &[("Cache-Control", "no-cache")])?;
        assert_eq!(status, 200);
        let bypass: serde_json::Value = serde_json::from_str(&bypass)?;
        let values = |v: &serde_json::Value| -> Vec<String> {
            v["data"]["result"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|s| format!("{} {}", s["metric"], s["value"][1]))
                        .collect()
                })
                .unwrap_or_default()
        };
        let cached_values = values(&cached);
        assert_eq!(cached_values.len(), 4, "{cached}");
        // Evaluated at the request's own "now": the same values, whatever the times.
        assert_eq!(cached_values, values(&bypass));
    }
    let text = core.metrics();
    assert!(
        metric_sum(
            &text,
            "updraft_core_last_value_lookups_total",
            Some(r#"outcome="hit""#)
        ) >= 4.0,
        "the second read of the current values did not come from the last-value cache"
    );
    assert!(metric_sum(&text, "updraft_core_last_value_entries", None) >= 4.0);
    Ok(())
}

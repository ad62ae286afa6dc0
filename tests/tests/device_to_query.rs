//! One sample's whole journey: `mosquitto_pub` → edge agent (embedded broker, buffer, QUIC) →
//! core node (fjall) → `/api/v1/query` and `/api/v1/query_range`, with exact values.

use std::time::Duration;
use updraft_tests::*;

#[test]
fn published_values_come_back_exactly_from_the_query_api() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let agent = Agent::start(work.path(), &certs, core.quic, &[])?;

    // A plain number, stamped with the receive time: visible to an instant query "now".
    agent.publish("site1/dev1/temp", b"21.5")?;
    let answer = wait_for("temp in an instant query", Duration::from_secs(15), || {
        let a = core.query("temp", None).ok()?;
        (a["data"]["result"].as_array()?.len() == 1).then_some(a)
    })?;
    let series = &answer["data"]["result"][0];
    assert_eq!(answer["data"]["resultType"], "vector");
    assert_eq!(
        series["metric"],
        serde_json::json!({"__name__": "temp", "site": "site1", "device": "dev1"})
    );
    assert_eq!(series["value"][1], "21.5");

    // JSON objects with explicit timestamps (ms and RFC 3339): every numeric field becomes a
    // series named <metric>_<field>.
    let t0_ms: i64 = 1_700_000_000_000;
    agent.publish(
        "site1/dev2/env",
        format!(r#"{{"ts":{t0_ms},"value":1.25,"hum":40.5,"label":"x"}}"#).as_bytes(),
    )?;
    agent.publish(
        "site1/dev2/env",
        format!(r#"{{"ts":{},"value":2.5,"hum":41}}"#, t0_ms + 10_000).as_bytes(),
    )?;
    agent.publish(
        "site1/dev2/env",
        br#"{"timestamp":"2023-11-14T22:13:40Z","value":-3.75,"hum":1e-3}"#,
    )?;
    // The same metric over MQTT 5.
    mosquitto_pub(
        agent.mqtt5_port,
        "site1/dev2/env",
        format!(r#"{{"ts":{},"value":5e300,"hum":0}}"#, t0_ms + 30_000).as_bytes(),
        &["-V", "mqttv5"],
    )?;

    let t0 = t0_ms as f64 / 1000.0;
    let window = (t0, t0 + 30.0, 10.0);
    core.wait_for_points(
        r#"env_value{device="dev2"}"#,
        window,
        &[
            (t0, 1.25),
            (t0 + 10.0, 2.5),
            (t0 + 20.0, -3.75),
            (t0 + 30.0, 5e300),
        ],
        Duration::from_secs(15),
    )?;
    core.wait_for_points(
        "env_hum",
        window,
        &[
            (t0, 40.5),
            (t0 + 10.0, 41.0),
            (t0 + 20.0, 0.001),
            (t0 + 30.0, 0.0),
        ],
        Duration::from_secs(15),
    )?;
    // Non-numeric fields do not become series.
    let labels = get_json(&core.url("/api/v1/label/__name__/values"))?;
    assert_eq!(
        labels["data"],
        serde_json::json!(["env_hum", "env_value", "temp"])
    );
    let series = get_json(&core.url(&format!(
        "/api/v1/series?match[]={}",
        encode("{site=\"site1\"}")
    )))?;
    assert_eq!(series["data"].as_array().map(Vec::len), Some(3));

    // Both sides count what they did.
    let agent_metrics = agent.metrics();
    assert!(metric_sum(&agent_metrics, "updraft_edge_samples_acked_total", None) >= 9.0);
    assert!(metric_sum(&core.metrics(), "updraft_core_samples_stored_total", None) >= 9.0);
    Ok(())
}

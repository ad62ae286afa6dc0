//! `simulator fleet` publishes a few seconds of a reference dataset's devices into a real edge
//! agent, which ships them to a real core. Every message the fleet counts as acknowledged (QoS
//! 1 PUBACK over MQTT 3.1.1, then QoS 2 PUBCOMP over MQTT 5) must be queryable in the core:
//! the summary's acknowledged sample count equals the samples the core stores, and nothing
//! failed. The fleet replays an hour-old stretch of the dataset at 600× so a few seconds carry
//! thousands of samples with timestamps in the past.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use updraft_tests::{Agent, Core, binary, get_json, make_certs, wait_for};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs `simulator fleet <args> --json --quiet` to its end; returns its summary.
fn fleet(work: &std::path::Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let log = work.join(format!("fleet-{}.log", now_ms()));
    let child = Command::new(binary("simulator"))
        .arg("fleet")
        .args(args)
        .args(["--json", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let out = child.wait_with_output()?;
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    anyhow::ensure!(
        out.status.success(),
        "simulator fleet failed ({}): {stderr}",
        out.status
    );
    let text = String::from_utf8(out.stdout)?;
    serde_json::from_str(text.trim()).map_err(|e| anyhow::anyhow!("summary {text:?}: {e}"))
}

/// Samples stored under every metric whose name starts with one of `prefixes` (one query per
/// metric: `count_over_time` drops the name, so one query over several would clash).
fn stored(core: &Core, prefixes: &[&str]) -> u64 {
    let names = get_json(&core.url("/api/v1/label/__name__/values")).unwrap_or_default();
    let names = names["data"].as_array().cloned().unwrap_or_default();
    names
        .iter()
        .filter_map(|n| n.as_str())
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
        .map(|name| {
            core.query(&format!("sum(count_over_time({name}[1d]))"), None)
                .ok()
                .and_then(|a| a["data"]["result"][0]["value"][1].as_str()?.parse().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn count(summary: &serde_json::Value, field: &str) -> u64 {
    summary[field].as_u64().unwrap_or(u64::MAX)
}

/// Checks one run's summary and waits for the core to hold exactly its acknowledged samples.
fn check_run(core: &Core, summary: &serde_json::Value, prefixes: &[&str]) -> anyhow::Result<()> {
    eprintln!("fleet summary: {summary}");
    let acked = count(summary, "acknowledged");
    let acked_samples = count(summary, "acknowledged_samples");
    assert!(acked > 50, "too few messages acknowledged: {summary}");
    assert_eq!(count(summary, "failed"), 0, "{summary}");
    assert_eq!(count(summary, "connection_errors"), 0, "{summary}");
    assert_eq!(count(summary, "sent"), acked, "{summary}");
    assert_eq!(count(summary, "sent_samples"), acked_samples, "{summary}");
    let got = wait_for(
        "the core to hold every acknowledged sample",
        Duration::from_secs(60),
        || {
            let n = stored(core, prefixes);
            (n >= acked_samples).then_some(n)
        },
    );
    let got = match got {
        Ok(n) => n,
        Err(e) => anyhow::bail!("{e}: core holds {}", stored(core, prefixes)),
    };
    assert_eq!(got, acked_samples, "stored vs acknowledged ({prefixes:?})");
    Ok(())
}

#[test]
fn every_acknowledged_fleet_message_is_stored() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let agent = Agent::start(work.path(), &certs, core.quic, &[])?;
    let start = (now_ms() - 3 * 3_600_000).to_string();

    // MQTT 3.1.1, QoS 1, sensor-mix: 40 devices over 8 connections.
    let port = agent.mqtt_port.to_string();
    let summary = fleet(
        work.path(),
        &[
            "--port",
            &port,
            "--dataset",
            "sensor-mix",
            "--devices",
            "40",
            "--connections",
            "8",
            "--qos",
            "1",
            "--seed",
            "7",
            "--start",
            &start,
            "--speed",
            "600",
            "--duration",
            "3s",
        ],
    )?;
    assert_eq!(summary["per_qos"][0]["qos"], 1);
    check_run(&core, &summary, &["sensors_"])?;

    // MQTT 5, QoS 2, iot-trucks (two measurements per tick), one connection per truck.
    let port5 = agent.mqtt5_port.to_string();
    let summary = fleet(
        work.path(),
        &[
            "--port",
            &port5,
            "--mqtt-version",
            "5",
            "--dataset",
            "iot-trucks",
            "--devices",
            "6",
            "--qos",
            "2",
            "--seed",
            "7",
            "--start",
            &start,
            "--speed",
            "600",
            "--duration",
            "3s",
        ],
    )?;
    assert_eq!(summary["per_qos"][0]["qos"], 2);
    assert!(summary["per_qos"][0]["ack_p99_ms"].is_number(), "{summary}");
    check_run(&core, &summary, &["readings_", "diagnostics_"])?;
    drop(agent);
    Ok(())
}

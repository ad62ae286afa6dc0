//! kill -9 of the core node in the middle of ingest, then a restart: every sample the core
//! acknowledged is still there, and the agent delivers everything else from its buffer.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use updraft_tests::*;

#[test]
fn core_kill9_during_ingest_then_restart_loses_nothing() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let mut core = Core::start(work.path(), &certs)?;
    let agent = Agent::start(work.path(), &certs, core.quic, &[])?;

    // One long-lived publisher: mosquitto_pub -l sends every stdin line as a message.
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &agent.mqtt_port.to_string(),
            "-q",
            "1",
        ])
        .args(["-t", "plant/press1/stream", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = publisher
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;

    let t0_ms: i64 = 1_600_000_000_000;
    let total: i64 = 3000;
    let kill_at = 1200;
    let mut acked_before_kill = 0.0;
    for i in 0..total {
        writeln!(stdin, r#"{{"ts":{},"v":{i}}}"#, t0_ms + i * 1000)?;
        if i % 100 == 99 {
            stdin.flush()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        if i == kill_at {
            stdin.flush()?;
            // Let some batches be acknowledged first, so the kill lands mid-stream.
            wait_for("first acknowledgements", Duration::from_secs(15), || {
                let acked = metric_sum(&agent.metrics(), "updraft_edge_samples_acked_total", None);
                (acked > 0.0).then_some(())
            })?;
            acked_before_kill =
                metric_sum(&agent.metrics(), "updraft_edge_samples_acked_total", None);
            core = core.restart_after_kill9()?;
        }
    }
    drop(stdin);
    let _ = publisher.wait();
    assert!(acked_before_kill > 0.0 && acked_before_kill < total as f64);

    // Each step reads the sample at exactly its timestamp; a missing sample would show the
    // previous value (lookback) and never match.
    let t0 = t0_ms as f64 / 1000.0;
    let expected: Vec<(f64, f64)> = (0..total).map(|k| (t0 + k as f64, k as f64)).collect();
    core.wait_for_points(
        "stream_v",
        (t0, t0 + (total - 1) as f64, 1.0),
        &expected,
        Duration::from_secs(60),
    )?;
    assert!(core.process.log_text().contains("core node ready"));
    Ok(())
}

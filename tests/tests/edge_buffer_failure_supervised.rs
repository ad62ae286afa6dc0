//! A failed buffer is supervised (issue #14, item 1, the edge agent's part): the real binary,
//! with the debug-build test hook `UPDRAFT_EDGE_TEST_PANIC_AFTER_APPENDS=1`, panics in its
//! buffer thread on the first append. Then `/health` answers 503 with the reason,
//! `updraft_edge_buffer_healthy` goes from 1 to 0, the log says what happened and what to do,
//! and the process exits non-zero after `--buffer-failure-exit-delay-ms`, not before. Started
//! again on the same data directory, without the hook, it recovers and is healthy.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use updraft_tests::{
    Agent, Process, binary, free_tcp_port, free_udp_port, http_get, make_certs, mosquitto_pub,
    wait_for,
};

const EXIT_DELAY: Duration = Duration::from_secs(3);

/// The value of an unlabelled metric; a missing metric is an error, not 0.
fn metric(text: &str, name: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("no {name} in /metrics:\n{text}"))?
        .trim()
        .parse()
        .with_context(|| format!("{name} is not a number"))
}

#[test]
fn a_panicking_buffer_thread_turns_health_and_metric_then_exits_non_zero() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    // Nothing answers QUIC there: the agent buffers all the same.
    let core = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let mqtt_port = free_tcp_port();
    let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let mut cmd = Command::new(binary("edge-agent"));
    cmd.args(["--agent-id", "test-agent"])
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
        .args(["--mqtt5-listen", &format!("127.0.0.1:{}", free_tcp_port())])
        .args(["--http-listen", &http.to_string()])
        .arg("--data-dir")
        .arg(work.path().join("agent-data"))
        .args(["--core", &core.to_string()])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("agent.pem"))
        .arg("--key")
        .arg(certs.join("agent-key.pem"))
        .args([
            "--buffer-failure-exit-delay-ms",
            &EXIT_DELAY.as_millis().to_string(),
        ])
        .env("UPDRAFT_EDGE_TEST_PANIC_AFTER_APPENDS", "1");
    let log = work.path().join("agent-failing.log");
    let mut agent = Process::spawn("edge-agent", cmd, log)?;
    let health = format!("http://{http}/health");
    let metrics = format!("http://{http}/metrics");
    wait_for("edge-agent /health 200", Duration::from_secs(30), || {
        matches!(http_get(&health), Ok((200, _))).then_some(())
    })?;
    let before = http_get(&metrics)?.1;
    if metric(&before, "updraft_edge_buffer_healthy")? != 1.0 {
        bail!("a fresh buffer is not reported healthy:\n{before}");
    }

    // QoS 0: nothing will be acknowledged, and the client need not wait for that.
    mosquitto_pub(mqtt_port, "plant1/pump7/temp", b"21.5", &["-q", "0"])?;
    let body = wait_for("/health 503", Duration::from_secs(30), || {
        match http_get(&health) {
            Ok((503, body)) => Some(body),
            _ => None,
        }
    })?;
    let seen = Instant::now();
    if !body.contains("buffer failed") || !body.contains("panicked") {
        bail!("/health does not name the reason: {body:?}");
    }
    let after = http_get(&metrics)?.1;
    if metric(&after, "updraft_edge_buffer_healthy")? != 0.0 {
        bail!("updraft_edge_buffer_healthy is not 0 after the failure:\n{after}");
    }
    if let Some(status) = agent.exit_status() {
        bail!("the agent exited ({status}) before its exit delay");
    }

    let status = wait_for("the agent to exit", Duration::from_secs(30), || {
        agent.exit_status()
    })?;
    if status.success() || status.code() != Some(1) {
        bail!("a failed buffer must end the agent with status 1, got {status}");
    }
    // The delay runs from the failure, which came before the 503 was seen.
    if seen.elapsed() + Duration::from_millis(500) < EXIT_DELAY / 2 {
        bail!("exited {:?} after the 503: no grace period", seen.elapsed());
    }
    let text = agent.log_text();
    for needed in [
        "the buffer failed",
        "supervisor",
        "recovery keeps every fsynced",
    ] {
        if !text.contains(needed) {
            bail!("the log does not say {needed:?}:\n{text}");
        }
    }
    drop(agent);

    // Recovery is safe: the same data directory opens, healthy, without the hook.
    let again = Agent::start(work.path(), &certs, core, &[])?;
    let text = again.metrics();
    if metric(&text, "updraft_edge_buffer_healthy")? != 1.0 {
        bail!("the restarted agent's buffer is not healthy:\n{text}");
    }
    Ok(())
}

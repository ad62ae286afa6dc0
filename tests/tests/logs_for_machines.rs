//! Logs for machines (issue #14, item 8): with stderr going to a file (as under systemd or a
//! log collector) the real binaries write no ANSI escape codes, and `--log-format json`
//! makes every line one JSON object with `timestamp`, `level`, `target`, `message` and the
//! event's fields at the top level.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use updraft_tests::{
    Agent, Process, core_command, free_tcp_port, free_udp_port, http_get, make_certs, wait_for,
};

const ESC: u8 = 0x1b;

/// Starts `core-node` on `<work>/<name>` with its stderr in `<work>/<name>.log` and waits for
/// `/health`; returns the process and its log's path.
fn start_core(
    work: &Path,
    certs: &Path,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<(Process, PathBuf)> {
    let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let quic = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let mut cmd = core_command(&work.join(name), http, quic, certs);
    cmd.arg("--insecure-dev-mode").args(extra);
    let log = work.join(format!("{name}.log"));
    let process = Process::spawn("core-node", cmd, log.clone())?;
    let url = format!("http://{http}/health");
    wait_for("core-node /health", Duration::from_secs(30), || {
        matches!(http_get(&url), Ok((200, _))).then_some(())
    })?;
    Ok((process, log))
}

/// Waits until the log file holds a line containing `needle` (the start-up line is written
/// just before or after the listener answers), and returns the file's bytes.
fn log_with(log: &Path, needle: &str) -> anyhow::Result<Vec<u8>> {
    wait_for(
        &format!("{needle:?} in {}", log.display()),
        Duration::from_secs(30),
        || {
            let bytes = std::fs::read(log).ok()?;
            String::from_utf8_lossy(&bytes)
                .contains(needle)
                .then_some(bytes)
        },
    )
}

fn assert_no_escape_codes(what: &str, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(at) = bytes.iter().position(|b| *b == ESC) {
        let from = at.saturating_sub(40);
        let to = (at + 40).min(bytes.len());
        bail!(
            "{what}: an ESC byte (ANSI escape code) at offset {at} of a log written to a file: \
             {:?}",
            String::from_utf8_lossy(&bytes[from..to])
        );
    }
    Ok(())
}

/// Every line parses as a JSON object with the standard keys; returns the objects.
fn json_lines(what: &str, bytes: &[u8]) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{what}: not UTF-8"))?;
    let mut objects = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{what}: a log line is not JSON: {line:?}"))?;
        for key in ["timestamp", "level", "target", "message"] {
            if !value.get(key).is_some_and(serde_json::Value::is_string) {
                bail!("{what}: a log line has no string {key:?}: {line}");
            }
        }
        let level = value["level"].as_str().unwrap_or_default();
        if !["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level) {
            bail!("{what}: unknown level {level:?}: {line}");
        }
        objects.push(value);
    }
    if objects.is_empty() {
        bail!("{what}: the JSON log is empty");
    }
    Ok(objects)
}

fn line_with_message<'a>(
    what: &str,
    objects: &'a [serde_json::Value],
    message: &str,
) -> anyhow::Result<&'a serde_json::Value> {
    objects
        .iter()
        .find(|o| o["message"] == message)
        .with_context(|| format!("{what}: no JSON line with message {message:?}"))
}

#[test]
fn core_node_logs_plain_text_to_a_file_and_json_on_request() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;

    let (mut core, text_log) = start_core(work.path(), &certs, "core-text", &[])?;
    let bytes = log_with(&text_log, "core node ready")?;
    core.kill9();
    assert_no_escape_codes("core-node, default format", &bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    if !text
        .lines()
        .any(|l| l.contains(" INFO ") && l.contains("core node ready"))
    {
        bail!("core-node, default format: no plain INFO line for the start:\n{text}");
    }

    let (mut core, json_log) =
        start_core(work.path(), &certs, "core-json", &["--log-format", "json"])?;
    let bytes = log_with(&json_log, "core node ready")?;
    core.kill9();
    assert_no_escape_codes("core-node --log-format json", &bytes)?;
    let objects = json_lines("core-node --log-format json", &bytes)?;
    let ready = line_with_message("core-node --log-format json", &objects, "core node ready")?;
    // The event's fields sit next to the message, where a log shipper indexes them.
    if ready["level"] != "INFO" || !ready["http"].is_string() || ready["target"] != "core_node" {
        bail!("core-node --log-format json: unexpected start line {ready}");
    }
    Ok(())
}

#[test]
fn edge_agent_logs_plain_text_to_a_file_and_json_on_request() -> anyhow::Result<()> {
    let certs_dir = tempfile::tempdir()?;
    let certs = certs_dir.path().join("certs");
    make_certs(&certs)?;
    // Nothing answers QUIC there: the agent starts and buffers all the same.
    let core = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));

    let work = tempfile::tempdir()?;
    let mut agent = Agent::start(work.path(), &certs, core, &[])?;
    let log = work.path().join("agent.log");
    let bytes = log_with(&log, "edge agent started")?;
    agent.process.kill9();
    assert_no_escape_codes("edge-agent, default format", &bytes)?;

    let work = tempfile::tempdir()?;
    let mut agent = Agent::start(work.path(), &certs, core, &["--log-format", "json"])?;
    let log = work.path().join("agent.log");
    let bytes = log_with(&log, "edge agent started")?;
    agent.process.kill9();
    assert_no_escape_codes("edge-agent --log-format json", &bytes)?;
    let objects = json_lines("edge-agent --log-format json", &bytes)?;
    let started = line_with_message(
        "edge-agent --log-format json",
        &objects,
        "edge agent started",
    )?;
    if started["agent_id"] != "test-agent" || started["level"] != "INFO" {
        bail!("edge-agent --log-format json: unexpected start line {started}");
    }
    Ok(())
}

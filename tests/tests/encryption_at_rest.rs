//! Encryption proof (issue 8): after a real edge agent and a real core node stored series with
//! distinctive label names, values and sample values, no file under either data directory
//! holds those strings or the value's raw little- or big-endian f64 bytes. The same run with
//! encryption off finds them, so the scan can fail. Also: the core refuses, with exit status 2,
//! to open its encrypted data without the master key.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use updraft_tests::*;

const LABEL: &str = "zq_secret_label";
const VALUE: &str = "zq_secret_value_91823";
const METRIC: &str = "zq_secret_metric";
/// Not a short decimal, so the codec keeps its full bits.
const SAMPLE: f64 = 33_333.333_333_333_336;
const MASTER_KEY: &str = "8f3a1c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a";

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn spawn(mut cmd: Command, log: PathBuf, encrypted: bool) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        cmd.stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .stdin(Stdio::null())
            .env("RUST_LOG", "info")
            .env_remove("UPDRAFT_MASTER_KEY");
        if encrypted {
            cmd.env("UPDRAFT_MASTER_KEY", MASTER_KEY);
        }
        Ok(Self {
            child: cmd.spawn()?,
            log,
        })
    }

    /// SIGTERM and wait: the process flushes and exits as an operator would stop it.
    fn stop(&mut self) -> anyhow::Result<()> {
        signal(self.child.id(), "TERM")?;
        wait_for("process exit", Duration::from_secs(30), || {
            matches!(self.child.try_wait(), Ok(Some(_))).then_some(())
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} -----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn core_command(work: &Path, certs: &Path, http: u16, quic: u16) -> Command {
    let mut cmd = Command::new(binary("core-node"));
    cmd.arg("--data-dir")
        .arg(work.join("core-data"))
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--quic-listen", &format!("127.0.0.1:{quic}")])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("core.pem"))
        .arg("--key")
        .arg(certs.join("core-key.pem"))
        .arg("--insecure-dev-mode");
    cmd
}

/// Every file under `dir` holding one of the needles, as "path: needle". An error when `dir`
/// holds no bytes at all: finding nothing in nothing proves nothing.
fn files_holding(dir: &Path, needles: &[(&str, Vec<u8>)]) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut scanned = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path)?;
            scanned += bytes.len();
            for (what, needle) in needles {
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    found.push(format!("{}: {what}", path.display()));
                }
            }
        }
    }
    anyhow::ensure!(scanned > 0, "{}: no data to scan", dir.display());
    Ok(found)
}

/// Runs core and agent, stores one sample, stops both; returns what the scans found in the
/// core's and the agent's data directories.
fn store_and_scan(encrypted: bool) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let (http, quic) = (free_tcp_port(), free_udp_port());
    let mut core = Running::spawn(
        core_command(work.path(), &certs, http, quic),
        work.path().join("core.log"),
        encrypted,
    )?;
    let health = format!("http://127.0.0.1:{http}/health");
    wait_for("core /health", Duration::from_secs(30), || {
        matches!(http_get(&health), Ok((200, _))).then_some(())
    })?;

    let (mqtt, agent_http) = (free_tcp_port(), free_tcp_port());
    let agent_dir = work.path().join("agent-data");
    let mut cmd = Command::new(binary("edge-agent"));
    cmd.args(["--agent-id", "test-agent"])
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
        .args(["--mqtt5-listen", &format!("127.0.0.1:{}", free_tcp_port())])
        .args(["--http-listen", &format!("127.0.0.1:{agent_http}")])
        .arg("--data-dir")
        .arg(&agent_dir)
        .args(["--core", &format!("127.0.0.1:{quic}")])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("agent.pem"))
        .arg("--key")
        .arg(certs.join("agent-key.pem"))
        .args([
            "--topic-template",
            &format!("{{{LABEL}}}/{{device}}/{{metric}}"),
        ]);
    if encrypted {
        // The agent takes its key from a file named by a flag (the core above from the
        // environment): both ways are covered. The file lies outside both data directories.
        let key_file = work.path().join("edge.key");
        std::fs::write(&key_file, MASTER_KEY)?;
        cmd.arg("--master-key-file").arg(&key_file);
    }
    let mut agent = Running::spawn(cmd, work.path().join("agent.log"), false)?;
    let agent_health = format!("http://127.0.0.1:{agent_http}/health");
    wait_for("agent /health", Duration::from_secs(30), || {
        matches!(http_get(&agent_health), Ok((200, _))).then_some(())
    })?;

    let topic = format!("{VALUE}/dev1/{METRIC}");
    mosquitto_pub(mqtt, &topic, format!("{SAMPLE:?}").as_bytes(), &[])?;
    let query = format!(
        "http://127.0.0.1:{http}/api/v1/query?query={}",
        encode(&format!("{METRIC}{{{LABEL}=\"{VALUE}\"}}"))
    );
    wait_for("the sample on the core", Duration::from_secs(30), || {
        let answer = get_json(&query).ok()?;
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse::<f64>();
        (value.ok()? == SAMPLE).then_some(())
    })?;
    // Listings work on the encrypted index too.
    let (_, names) = http_get(&format!("http://127.0.0.1:{http}/api/v1/labels"))?;
    assert!(names.contains(LABEL), "{names}");

    agent.stop()?;
    core.stop()?;
    let needles = [
        ("label name", LABEL.as_bytes().to_vec()),
        ("label value", VALUE.as_bytes().to_vec()),
        ("f64 LE bytes", SAMPLE.to_le_bytes().to_vec()),
        ("f64 BE bytes", SAMPLE.to_be_bytes().to_vec()),
    ];
    let in_core = files_holding(&work.path().join("core-data"), &needles)?;
    let in_agent = files_holding(&agent_dir, &needles)?;

    if encrypted {
        // Without the key the core refuses to start, with status 2 and a clear message.
        let (h, q) = (free_tcp_port(), free_udp_port());
        let mut cmd = core_command(work.path(), &certs, h, q);
        let out = cmd.env_remove("UPDRAFT_MASTER_KEY").output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("a master key is needed"), "{stderr}");
    }
    Ok((in_core, in_agent))
}

#[test]
fn encrypted_data_directories_hold_no_label_text_or_raw_values() -> anyhow::Result<()> {
    let (core, agent) = store_and_scan(true)?;
    assert!(core.is_empty(), "core files in clear: {core:#?}");
    assert!(agent.is_empty(), "agent files in clear: {agent:#?}");
    Ok(())
}

#[test]
fn the_scan_finds_the_text_when_encryption_is_off() -> anyhow::Result<()> {
    let (core, agent) = store_and_scan(false)?;
    let has = |found: &[String], what: &str| found.iter().any(|f| f.ends_with(what));
    assert!(
        has(&core, "label name") && has(&core, "label value"),
        "{core:#?}"
    );
    assert!(
        has(&agent, "label value") && has(&agent, "f64 LE bytes"),
        "{agent:#?}"
    );
    Ok(())
}

//! Harness for Updraft's cross-process tests: starts the real `core-node` and `edge-agent`
//! binaries on free loopback ports, talks to them over real sockets, and publishes with the
//! real `mosquitto_pub` client.
//!
//! The binaries must be built first (`cargo build --bins`; the README's test command does it).
//! Each process's output goes to a log file in its temporary directory; when a test fails, the
//! logs are printed so the failure can be read without re-running.
//!
//! Here: processes, ports, waiting, HTTP and metrics helpers, certificates. [`node`]: a core
//! node under test; [`edge`]: agents, MQTT clients and brokers, a UDP relay; [`peers`]: a real
//! Prometheus and remote_write bodies.

mod edge;
mod node;
mod peers;

pub use edge::*;
pub use node::*;
pub use peers::*;

use anyhow::{Context, bail};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the test executable (`target/<profile>/<name>`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --bins`",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound, then released; collisions are unlikely).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_default()
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or_default()
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running child process, killed (SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null())
            .env("RUST_LOG", "info");
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// GET a URL; returns status and body. Connection errors are `Err`.
pub fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    http_get_with(url, &[])
}

/// [`http_get`] with request headers.
pub fn http_get_with(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call()?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    Ok((status, body))
}

/// GET a URL and parse JSON; fails on a non-200 status.
pub fn get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = http_get(url)?;
    if status != 200 {
        bail!("GET {url} answered {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("parsing JSON from {url}: {body}"))
}

/// Percent-encodes a query parameter value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sum of every sample of `name` (optionally restricted to series containing `label_filter`,
/// e.g. `reason="invalid_json"`) in a Prometheus text exposition.
///
/// Panics, naming the metric, when no sample matches: a renamed or never-exported metric must
/// fail the test, not read as 0 (the binaries export their counters at 0 from the start).
/// Where absence is the expected outcome, use [`metric_sum_if_present`] and say why.
pub fn metric_sum(text: &str, name: &str, label_filter: Option<&str>) -> f64 {
    metric_sum_if_present(text, name, label_filter).unwrap_or_else(|| {
        let filter = label_filter.map(|f| format!("{{{f}}}")).unwrap_or_default();
        let mut names: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        names.dedup();
        let head: String = text.chars().take(300).collect();
        panic!(
            "metric {name}{filter} is not in the scrape (renamed, or not exported at 0 from the \
             start?); the scrape has: {names:?}; it begins: {head:?}"
        )
    })
}

/// As [`metric_sum`], but `None` when no sample of `name` (with `label_filter`) is in the
/// scrape. Only for metrics whose absence is an expected, asserted outcome.
pub fn metric_sum_if_present(text: &str, name: &str, label_filter: Option<&str>) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            if base != name {
                return None;
            }
            if label_filter.is_some_and(|f| !series.contains(f)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Called when a test cannot run on this machine (no root, a tool missing, the kernel refuses
/// a namespace): an error naming `reason`, so the test fails. Only with
/// `UPDRAFT_ALLOW_SKIP=1` and outside CI (`CI` unset) is it a printed `SKIPPED: <reason>`
/// and `Ok`, for a developer machine that cannot run it; CI never skips.
pub fn skip_or_fail(reason: &str) -> anyhow::Result<()> {
    let allowed = std::env::var("UPDRAFT_ALLOW_SKIP").is_ok_and(|v| v == "1");
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    if allowed && !ci {
        // Straight to stderr, past the test harness' output capture: a skip is always seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {reason} (UPDRAFT_ALLOW_SKIP=1)"
        );
        return Ok(());
    }
    bail!(
        "cannot run here: {reason} (scripts/test.sh installs what the tests need; \
         UPDRAFT_ALLOW_SKIP=1 skips instead, outside CI)"
    )
}

/// Creates the CA and certificates with the real `core-node certs` command; the agent
/// certificate is bound to the agent id [`Agent::start`] uses (`test-agent`).
pub fn make_certs(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(binary("core-node"))
        .args(["certs", "--agent-id", "test-agent", "--dir"])
        .arg(dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "core-node certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The `core-node` command with its data directory, listeners and the QUIC certificates of
/// `certs` (as `make_certs` writes them); add flags, then start it.
pub fn core_command(data_dir: &Path, http: SocketAddr, quic: SocketAddr, certs: &Path) -> Command {
    let mut cmd = Command::new(binary("core-node"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["--http-listen", &http.to_string()])
        .args(["--quic-listen", &quic.to_string()])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("core.pem"))
        .arg("--key")
        .arg(certs.join("core-key.pem"));
    cmd
}

/// GET a `/metrics` URL; panics, naming the URL, unless it answers 200.
pub(crate) fn scrape(url: &str) -> String {
    match http_get(url) {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET {url} answered {status}: {body}"),
        Err(e) => panic!("GET {url} failed: {e:#}"),
    }
}

/// POST a form-encoded body (as Grafana's Prometheus data source does); returns status and body.
pub fn http_post_form(url: &str, form: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent.post(url).send_form(form.iter().copied())?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    Ok((status, body))
}

/// POST `body` with `content_type` and extra `headers`; returns status and body.
pub fn http_post(
    url: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = agent.post(url).header("Content-Type", content_type);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body)?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    Ok((status, body))
}

impl Process {
    /// The operating-system process id (for `kill -STOP` and the like).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Sends a signal (`"STOP"`, `"CONT"`, ...) to `pid` with the `kill` command.
pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed with {status}");
    }
    Ok(())
}

impl Process {
    /// The exit status once the process has ended by itself; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

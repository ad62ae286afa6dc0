//! Harness for Updraft's cross-process tests: starts the real `core-node` and `edge-agent`
//! binaries on free loopback ports, talks to them over real sockets, and publishes with the
//! real `mosquitto_pub` client.
//!
//! The binaries must be built first (`cargo build --bins`; the README's test command does it).
//! Each process's output goes to a log file in its temporary directory; when a test fails, the
//! logs are printed so the failure can be read without re-running.

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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent.get(url).call()?;
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

/// A core node process with its addresses.
pub struct Core {
    pub process: Process,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub data_dir: PathBuf,
    certs: PathBuf,
    log: PathBuf,
    dev_mode: bool,
    /// Flags after the harness's own, kept for a restart.
    extra_args: Vec<String>,
}

impl Core {
    /// Starts a core node on fresh ports and waits until `/health` answers. It runs in
    /// `--insecure-dev-mode` (no tokens needed): most tests are not about authentication.
    pub fn start(work: &Path, certs: &Path) -> anyhow::Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let quic = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        Self::start_at(work, certs, http, quic, true, Vec::new())
    }

    /// As [`Core::start`], but secure (the default outside tests): every request but
    /// `/health` needs a token.
    pub fn start_secure(work: &Path, certs: &Path) -> anyhow::Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let quic = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        Self::start_at(work, certs, http, quic, false, Vec::new())
    }

    fn start_at(
        work: &Path,
        certs: &Path,
        http: SocketAddr,
        quic: SocketAddr,
        dev_mode: bool,
        extra_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let data_dir = work.join("core-data");
        let log = work.join("core.log");
        let mut cmd = core_command(&data_dir, http, quic, certs);
        if dev_mode {
            cmd.arg("--insecure-dev-mode");
        }
        cmd.args(&extra_args);
        let process = Process::spawn("core-node", cmd, log.clone())?;
        let core = Self {
            process,
            http,
            quic,
            data_dir,
            certs: certs.to_path_buf(),
            log,
            dev_mode,
            extra_args,
        };
        core.wait_healthy()?;
        Ok(core)
    }

    /// Kills the process with SIGKILL and starts it again on the same ports, data and flags.
    pub fn restart_after_kill9(mut self) -> anyhow::Result<Self> {
        self.process.kill9();
        let work = self.log.parent().map(Path::to_path_buf).unwrap_or_default();
        let (certs, http, quic, dev) = (self.certs.clone(), self.http, self.quic, self.dev_mode);
        let extra = std::mem::take(&mut self.extra_args);
        drop(self);
        Self::start_at(&work, &certs, http, quic, dev, extra)
    }

    pub fn wait_healthy(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/health", self.http);
        wait_for("core-node /health", Duration::from_secs(30), || {
            matches!(http_get(&url), Ok((200, _))).then_some(())
        })
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.http, path_and_query)
    }

    /// `/api/v1/query` at `time` (Unix seconds) or now.
    pub fn query(&self, promql: &str, time: Option<f64>) -> anyhow::Result<serde_json::Value> {
        let mut url = self.url(&format!("/api/v1/query?query={}", encode(promql)));
        if let Some(t) = time {
            url.push_str(&format!("&time={t}"));
        }
        get_json(&url)
    }

    /// `/api/v1/query_range`, times in Unix seconds.
    pub fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> anyhow::Result<serde_json::Value> {
        get_json(&self.url(&format!(
            "/api/v1/query_range?query={}&start={start}&end={end}&step={step}",
            encode(promql)
        )))
    }

    /// The core's `/metrics` text. Panics when the scrape fails: an empty text would read
    /// as "no such metric", hiding the real cause.
    pub fn metrics(&self) -> String {
        scrape(&self.url("/metrics"))
    }

    /// Number of series an instant query of `promql` answers now. A failed query is an
    /// error, never 0: "nothing stored" must be told apart from "could not ask".
    pub fn series_count(&self, promql: &str) -> anyhow::Result<usize> {
        let answer = self.query(promql, None)?;
        answer["data"]["result"]
            .as_array()
            .map(Vec::len)
            .with_context(|| format!("no result array for {promql}: {answer}"))
    }

    /// The single value an instant query of `promql` answers at `time` (Unix seconds, or
    /// now): `None` for an empty answer, an error for a failed query or more than one series.
    pub fn instant_value(&self, promql: &str, time: Option<f64>) -> anyhow::Result<Option<f64>> {
        let answer = self.query(promql, time)?;
        let result = answer["data"]["result"]
            .as_array()
            .with_context(|| format!("no result array for {promql}: {answer}"))?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => one["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .map(Some)
                .with_context(|| format!("no value in the answer to {promql}: {answer}")),
            _ => bail!(
                "{promql} answered {} series, expected one: {answer}",
                result.len()
            ),
        }
    }
}

/// GET a `/metrics` URL; panics, naming the URL, unless it answers 200.
fn scrape(url: &str) -> String {
    match http_get(url) {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET {url} answered {status}: {body}"),
        Err(e) => panic!("GET {url} failed: {e:#}"),
    }
}

/// An edge agent process with its addresses.
pub struct Agent {
    pub process: Process,
    pub mqtt_port: u16,
    pub mqtt5_port: u16,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
}

impl Agent {
    /// Starts an edge agent that ships to `core_quic`, and waits until `/health` answers.
    pub fn start(
        work: &Path,
        certs: &Path,
        core_quic: SocketAddr,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mqtt_port = free_tcp_port();
        let mqtt5_port = free_tcp_port();
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let data_dir = work.join("agent-data");
        let mut cmd = Command::new(binary("edge-agent"));
        cmd.args(["--agent-id", "test-agent"])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
            .args(["--mqtt5-listen", &format!("127.0.0.1:{mqtt5_port}")])
            .args(["--http-listen", &http.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--core", &core_quic.to_string()])
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("agent.pem"))
            .arg("--key")
            .arg(certs.join("agent-key.pem"))
            .args(extra_args);
        let process = Process::spawn("edge-agent", cmd, work.join("agent.log"))?;
        let agent = Self {
            process,
            mqtt_port,
            mqtt5_port,
            http,
            data_dir,
        };
        let url = format!("http://{}/health", agent.http);
        wait_for("edge-agent /health", Duration::from_secs(30), || {
            matches!(http_get(&url), Ok((200, _))).then_some(())
        })?;
        Ok(agent)
    }

    /// The agent's `/metrics` text; panics when the scrape fails (see [`Core::metrics`]).
    pub fn metrics(&self) -> String {
        scrape(&format!("http://{}/metrics", self.http))
    }

    /// Publishes one message with the real `mosquitto_pub` (QoS 1 by default).
    pub fn publish(&self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        mosquitto_pub(self.mqtt_port, topic, payload, &[])
    }
}

/// Runs `mosquitto_pub` against 127.0.0.1:`port`. The payload is passed on stdin (`-s`), so
/// any bytes, including a 1 MB payload, can be sent.
pub fn mosquitto_pub(port: u16, topic: &str, payload: &[u8], extra: &[&str]) -> anyhow::Result<()> {
    let out = run_mosquitto_pub(port, topic, payload, extra)?;
    if !out.status.success() {
        bail!(
            "mosquitto_pub -t {topic} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs [`mosquitto_pub`] expecting a refusal: `Ok` with the client's output when it ran and
/// exited non-zero; an error when it published, or when it could not run at all (a missing
/// client must not pass for a refusal).
pub fn mosquitto_pub_refused(port: u16, topic: &str, extra: &[&str]) -> anyhow::Result<String> {
    let out = run_mosquitto_pub(port, topic, b"1", extra)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        bail!("mosquitto_pub -t {topic} {extra:?} was not refused: it published ({text})");
    }
    Ok(text)
}

/// `mosquitto_pub` to its exit; an error only when it could not be run.
fn run_mosquitto_pub(
    port: u16,
    topic: &str,
    payload: &[u8],
    extra: &[&str],
) -> anyhow::Result<std::process::Output> {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-s",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running mosquitto_pub (apt-get install mosquitto-clients)")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A client refused early may close stdin first: its exit status tells.
        let _ = stdin.write_all(payload);
    }
    Ok(child.wait_with_output()?)
}

/// Values of a range-query answer's single series as (unix seconds, value) pairs.
pub fn matrix_points(answer: &serde_json::Value) -> Vec<(f64, f64)> {
    answer["data"]["result"][0]["values"]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

impl Core {
    /// Polls a range query until its single series' points equal `expected` exactly. Waiting
    /// on the point count alone is not enough: a step without its own sample shows the
    /// previous one (lookback) until the missing sample arrives.
    pub fn wait_for_points(
        &self,
        promql: &str,
        (start, end, step): (f64, f64, f64),
        expected: &[(f64, f64)],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut last = Vec::new();
        let found = wait_for(promql, timeout, || {
            let a = self.query_range(promql, start, end, step).ok()?;
            last = matrix_points(&a);
            (last == expected).then_some(())
        });
        if found.is_err() {
            bail!(
                "{promql} never returned the expected points\nexpected: {expected:?}\nlast seen: {last:?}"
            );
        }
        Ok(())
    }
}

/// A long-lived `mosquitto_pub -l` client (QoS 1): every line written to it is published as
/// one message on its topic. Its output goes to a log file. Killed when dropped.
pub struct LinePublisher {
    topic: String,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    log: PathBuf,
}

impl LinePublisher {
    /// Starts `mosquitto_pub -l` against 127.0.0.1:`port`, publishing on `topic`.
    pub fn start(port: u16, topic: &str, log: PathBuf) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", topic, "-l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .context("running mosquitto_pub (apt-get install mosquitto-clients)")?;
        let stdin = child.stdin.take();
        Ok(Self {
            topic: topic.to_owned(),
            child,
            stdin,
            log,
        })
    }

    /// Hands one message (without its newline) to the client; returns once the pipe took it.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("publisher for {} already finished", self.topic))?;
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        stdin.write_all(buf.as_bytes()).with_context(|| {
            format!(
                "mosquitto_pub -t {} stopped taking lines: {}",
                self.topic,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }

    /// Closes stdin, so the client publishes what is left and exits; fails unless it exits
    /// successfully within `timeout`.
    pub fn finish(&mut self, timeout: Duration) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let child = &mut self.child;
        let status = wait_for(
            &format!("mosquitto_pub -t {} to exit", self.topic),
            timeout,
            || child.try_wait().ok().flatten(),
        )?;
        if !status.success() {
            bail!(
                "mosquitto_pub -t {} exited with {status}: {}",
                self.topic,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Drop for LinePublisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Sum of every sample of the agent's metric `name` (all label sets); panics when the
    /// scrape has no such metric (see [`metric_sum`]).
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics(), name, None)
    }
}

/// One series of a matrix answer: its labels and its points as (Unix milliseconds, value).
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixSeries {
    pub labels: std::collections::BTreeMap<String, String>,
    pub points_ms: Vec<(i64, f64)>,
}

/// Every series of a matrix answer. Strict, unlike [`matrix_points`]: a point whose time or
/// value does not parse is an error rather than skipped, so nothing the core returned can go
/// unseen.
pub fn matrix_series(answer: &serde_json::Value) -> anyhow::Result<Vec<MatrixSeries>> {
    if answer["data"]["resultType"] != "matrix" {
        bail!("not a matrix answer: {answer}");
    }
    let result = answer["data"]["result"]
        .as_array()
        .with_context(|| format!("no result array in {answer}"))?;
    let mut out = Vec::with_capacity(result.len());
    for series in result {
        let labels = series["metric"]
            .as_object()
            .with_context(|| format!("series without a metric object: {series}"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let values = series["values"]
            .as_array()
            .with_context(|| format!("series without values: {series}"))?;
        let points_ms = values
            .iter()
            .map(|p| {
                let t = p[0]
                    .as_f64()
                    .with_context(|| format!("bad point time in {p}"))?;
                let v = p[1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .with_context(|| format!("bad point value in {p}"))?;
                // Times have millisecond resolution; rounding undoes the float seconds.
                Ok(((t * 1000.0).round() as i64, v))
            })
            .collect::<anyhow::Result<_>>()?;
        out.push(MatrixSeries { labels, points_ms });
    }
    Ok(out)
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

impl Agent {
    /// Starts an edge agent like [`Agent::start`] with `config` (TOML) written to
    /// `<work>/agent.toml` and passed as `--config`; `extra_args` still win over the file.
    pub fn start_with_config(
        work: &Path,
        certs: &Path,
        core_quic: SocketAddr,
        config: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let path = work.join("agent.toml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let path = path.to_str().context("work directory path is not UTF-8")?;
        let mut args = vec!["--config", path];
        args.extend_from_slice(extra_args);
        Self::start(work, certs, core_quic, &args)
    }

    /// Publishes `payload` as one message by writing it to a file first and sending it with
    /// `mosquitto_pub -f`, the way a binary payload (a protobuf) is sent from a shell.
    pub fn publish_file(&self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), payload)?;
        let out = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.mqtt_port.to_string(),
                "-q",
                "1",
            ])
            .args(["-t", topic, "-f"])
            .arg(file.path())
            .stdin(Stdio::null())
            .output()
            .context("running mosquitto_pub (apt-get install mosquitto-clients)")?;
        if !out.status.success() {
            bail!(
                "mosquitto_pub -t {topic} -f failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Core {
    /// The raw samples of every series `selector` selects within `range` (a PromQL duration
    /// such as `1h`) before `at` (Unix seconds): an instant query of `selector[range]`.
    pub fn raw_samples(
        &self,
        selector: &str,
        range: &str,
        at: f64,
    ) -> anyhow::Result<Vec<MatrixSeries>> {
        matrix_series(&self.query(&format!("{selector}[{range}]"), Some(at))?)
    }
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

/// A real Prometheus server (the Debian package's `prometheus`, 2.42 on bookworm) on a free
/// loopback port, with its data in `<work>/prometheus-data`.
pub struct Prometheus {
    pub process: Process,
    pub http: SocketAddr,
}

impl Prometheus {
    /// Writes `config` (prometheus.yml) to `<work>/prometheus.yml`, starts Prometheus and
    /// waits until `/-/ready` answers.
    pub fn start(work: &Path, config: &str) -> anyhow::Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let config_path = work.join("prometheus.yml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={http}"))
            .arg("--log.level=info");
        let process = Process::spawn(
            "prometheus (apt-get install prometheus)",
            cmd,
            work.join("prometheus.log"),
        )?;
        let prometheus = Self { process, http };
        let url = format!("http://{http}/-/ready");
        wait_for("prometheus /-/ready", Duration::from_secs(60), || {
            matches!(http_get(&url), Ok((200, _))).then_some(())
        })?;
        Ok(prometheus)
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.http, path_and_query)
    }

    /// `/api/v1/query` at `time` (Unix seconds).
    pub fn query(&self, promql: &str, time: f64) -> anyhow::Result<serde_json::Value> {
        get_json(&self.url(&format!(
            "/api/v1/query?query={}&time={time}",
            encode(promql)
        )))
    }
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

/// A real `mosquitto` broker (Debian's /usr/sbin/mosquitto) on a free loopback port, with a
/// temporary config: anonymous clients, in-memory persistence only, queues large enough that
/// it never drops a QoS 1 message for an offline persistent session.
pub struct Mosquitto {
    pub process: Process,
    pub port: u16,
}

impl Mosquitto {
    pub fn start(work: &Path) -> anyhow::Result<Self> {
        let port = free_tcp_port();
        let config = work.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 0\nmax_inflight_messages 20\nlog_dest stdout\n\
                 log_type error\nlog_type warning\nlog_type notice\n"
            ),
        )?;
        let program = if Path::new("/usr/sbin/mosquitto").exists() {
            PathBuf::from("/usr/sbin/mosquitto")
        } else {
            PathBuf::from("mosquitto")
        };
        let mut cmd = Command::new(program);
        cmd.arg("-c").arg(&config);
        let process = Process::spawn(
            "mosquitto (apt-get install mosquitto)",
            cmd,
            work.join("mosquitto.log"),
        )?;
        wait_for("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        Ok(Self { process, port })
    }
}

/// Publishes every line of `lines` as one message with one `mosquitto_pub -l` process
/// (`extra` adds options such as `-q 1 -M 1000`); returns when the client has exited
/// successfully.
pub fn mosquitto_pub_lines(
    port: u16,
    topic: &str,
    lines: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-l",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running mosquitto_pub (apt-get install mosquitto-clients)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "mosquitto_pub -l -t {topic} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Prometheus {
    /// Starts Prometheus like [`Prometheus::start`], with `extra_args` after the harness's own
    /// flags (e.g. `--web.enable-remote-write-receiver`, `--storage.tsdb.retention.time=30d`).
    pub fn start_with_args(work: &Path, config: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let config_path = work.join("prometheus.yml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={http}"))
            .arg("--log.level=info")
            .args(extra_args);
        let process = Process::spawn(
            "prometheus (apt-get install prometheus)",
            cmd,
            work.join("prometheus.log"),
        )?;
        let prometheus = Self { process, http };
        let url = format!("http://{http}/-/ready");
        wait_for("prometheus /-/ready", Duration::from_secs(60), || {
            matches!(http_get(&url), Ok((200, _))).then_some(())
        })?;
        Ok(prometheus)
    }
}

/// One series of a remote_write request: its labels (`__name__` among them) and its samples as
/// `(Unix ms, value)`.
pub type RemoteWriteSeries = (Vec<(String, String)>, Vec<(i64, f64)>);

/// A Prometheus remote_write 1.0 body: `series` (labels, `(Unix ms, value)` samples) as a
/// protobuf `WriteRequest`, snappy-compressed. Written by hand, so that the test harness needs
/// no protobuf or snappy crate: the protobuf is encoded field by field, and the snappy block
/// is a single literal (valid snappy, just not smaller), which every decoder accepts.
pub fn remote_write_body(series: &[RemoteWriteSeries]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(out: &mut Vec<u8>, tag: u64, bytes: &[u8]) {
        varint(out, (tag << 3) | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    let mut request = Vec::new();
    for (labels, samples) in series {
        let mut ts = Vec::new();
        for (name, value) in labels {
            let mut label = Vec::new();
            field(&mut label, 1, name.as_bytes());
            field(&mut label, 2, value.as_bytes());
            field(&mut ts, 1, &label);
        }
        for &(t, v) in samples {
            let mut sample = Vec::new();
            sample.push((1 << 3) | 1); // double, fixed64
            sample.extend_from_slice(&v.to_bits().to_le_bytes());
            sample.push(2 << 3); // int64, varint (two's complement for negatives)
            varint(&mut sample, t as u64);
            field(&mut ts, 2, &sample);
        }
        field(&mut request, 1, &ts);
    }
    // Snappy block: the decoded length, then one literal of it all.
    let mut out = Vec::with_capacity(request.len() + 10);
    varint(&mut out, request.len() as u64);
    if !request.is_empty() {
        let n = request.len() - 1;
        if n < 60 {
            out.push((n as u8) << 2);
        } else {
            let bytes = n.to_le_bytes();
            let width = bytes.iter().rposition(|&b| b != 0).map_or(1, |i| i + 1);
            out.push((59 + width as u8) << 2);
            out.extend_from_slice(&bytes[..width]);
        }
        out.extend_from_slice(&request);
    }
    out
}

/// A userspace UDP proxy that adds latency: datagrams from a client to `listen` go to
/// `target`, and the target's answers go back to that client, each direction delayed by
/// `delay` (order kept). Stands in for `tc netem`, which needs a kernel module. One client at
/// a time (the last address it heard from), which fits an agent: all its QUIC connections
/// share one socket. Stops when dropped.
pub struct UdpDelayProxy {
    pub listen: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpDelayProxy {
    pub fn start(target: SocketAddr, delay: Duration) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex, mpsc};
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        back.connect(target)?;
        let listen = front.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let mut threads = Vec::new();
        // For each direction a reader stamps every datagram with its due time and a writer
        // sends it then: a constant delay keeps the order.
        for forward in [true, false] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let (from, to) = if forward {
                (Arc::clone(&front), Arc::clone(&back))
            } else {
                (Arc::clone(&back), Arc::clone(&front))
            };
            from.set_read_timeout(Some(Duration::from_millis(100)))?;
            let (reader_stop, reader_client) = (Arc::clone(&stop), Arc::clone(&client));
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !reader_stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = from.recv_from(&mut buf) else {
                        continue;
                    };
                    if forward && let Ok(mut c) = reader_client.lock() {
                        *c = Some(peer);
                    }
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }));
            let (writer_stop, writer_client) = (Arc::clone(&stop), Arc::clone(&client));
            threads.push(std::thread::spawn(move || {
                while !writer_stop.load(Ordering::Relaxed) {
                    let Ok((due, datagram)) = rx.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let _ = if forward {
                        to.send(&datagram)
                    } else {
                        match writer_client.lock().ok().and_then(|c| *c) {
                            Some(peer) => to.send_to(&datagram, peer),
                            None => continue,
                        }
                    };
                }
            }));
        }
        Ok(Self {
            listen,
            stop,
            threads,
        })
    }
}

impl Drop for UdpDelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Process {
    /// The exit status once the process has ended by itself; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Core {
    /// Starts a core node like [`Core::start`] (development mode, fresh ports) with
    /// `extra_args` after the harness's own flags, and waits until `/health` answers.
    pub fn start_with_args(work: &Path, certs: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let quic = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let extra = extra_args.iter().map(|a| (*a).to_owned()).collect();
        Self::start_at(work, certs, http, quic, true, extra)
    }

    /// The core process's peak resident set size in bytes (`VmHWM` in /proc/<pid>/status).
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let pid = self.process.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
        Ok(kib * 1024)
    }
}

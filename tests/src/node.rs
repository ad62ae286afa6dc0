//! A core node under test: starting, restarting and querying it, and reading its answers.

use crate::*;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

impl Core {
    /// Starts a core node like [`Core::start`] (development mode, fresh ports) with
    /// `extra_args` after the harness's own flags, and waits until `/health` answers.
    pub fn start_with_args(work: &Path, certs: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let quic = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let extra = extra_args.iter().map(|a| (*a).to_owned()).collect();
        Self::start_at(work, certs, http, quic, true, extra)
    }

    /// As [`Core::start_with_args`], but secure (every request but `/health` needs a token).
    pub fn start_secure_with_args(
        work: &Path,
        certs: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let quic = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let extra = extra_args.iter().map(|a| (*a).to_owned()).collect();
        Self::start_at(work, certs, http, quic, false, extra)
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

//! Real peers: a Prometheus server, and remote_write bodies to send to either.

use crate::*;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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

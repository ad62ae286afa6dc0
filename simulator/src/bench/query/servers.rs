//! The two servers `bench query` compares, each a real process on loopback ports: Prometheus
//! (`--web.enable-remote-write-receiver`, blocks backfilled by promtool beforehand) and an
//! Updraft `core-node`. Each is stopped by its own process id when dropped.

use super::http;
use anyhow::{Context, bail};
use core_node::storage::Durability;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One server process and where it answers HTTP.
pub(crate) struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Path of remote_write's endpoint.
    pub write_path: &'static str,
    child: Child,
}

impl Server {
    /// Wraps a started process; [`Server::wait_ready`] next.
    pub(crate) fn new(
        name: &'static str,
        addr: SocketAddr,
        write_path: &'static str,
        child: Child,
    ) -> Self {
        Self {
            name,
            addr,
            write_path,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the process so far (`VmHWM` of `/proc/<pid>/status`).
    pub(crate) fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_status_kib(&status, "VmHWM").with_context(|| format!("no VmHWM in {path}"))
    }

    /// Stops the process the way an operator would (SIGTERM through `kill`, so no unsafe
    /// code here), waits up to `limit` for it to exit, and kills it after that.
    pub(crate) fn terminate(mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!(
                    "{} still running {limit:?} after SIGTERM; killed",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// CPU time (user + system) the process has used so far, all threads.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .with_context(|| format!("reading /proc/{}/stat of {}", self.pid(), self.name))?;
        parse_cpu(&stat).with_context(|| format!("parsing /proc/{}/stat", self.pid()))
    }

    /// Waits (at most `limit`) until the process uses less than 2 % of a core over a second,
    /// three seconds in a row: background work (Prometheus' block reload, Updraft's flushes
    /// and compactions) must not be counted against what is measured next.
    pub fn settle(&self, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut quiet = 0;
        let mut last = self.cpu()?;
        while quiet < 3 && start.elapsed() < limit {
            std::thread::sleep(Duration::from_secs(1));
            let now = self.cpu()?;
            quiet = if now.saturating_sub(last) <= Duration::from_millis(20) {
                quiet + 1
            } else {
                0
            };
            last = now;
        }
        Ok(start.elapsed())
    }

    pub(crate) fn wait_ready(&mut self, path: &str, log: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; log: {}",
                    self.name,
                    log.display()
                );
            }
            // 2xx: InfluxDB 1.6's `/ping` answers 204.
            if http::get(self.addr, path).is_ok_and(|r| (200..300).contains(&r.status)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {READY_TIMEOUT:?}; log: {}",
                    self.name,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in USER_HZ (100 per second
/// on every Linux configuration the kernel exports to user space).
fn parse_cpu(stat: &str) -> Option<Duration> {
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// A `kB` field of a `/proc/<pid>/status` text, in bytes.
fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A loopback TCP address nobody listens on right now.
pub(crate) fn free_tcp() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(crate) fn free_udp() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

pub(crate) fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

/// Starts Prometheus on `data_dir` (which may already hold backfilled blocks) and waits until
/// it is ready. Retention is ten years so the 2024 blocks are not deleted as expired.
pub(crate) fn start_prometheus(
    binary: &Path,
    root: &Path,
    data_dir: &Path,
) -> anyhow::Result<Server> {
    let addr = free_tcp()?;
    let config = root.join("prometheus.yml");
    // No scrape jobs: every sample comes from the backfill and remote_write.
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n")?;
    let log = root.join("prometheus.log");
    let (out, err) = log_file(&log)?;
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data_dir.display()))
        .arg("--storage.tsdb.retention.time=10y")
        .arg(format!("--web.listen-address={addr}"))
        .arg("--web.enable-remote-write-receiver")
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut server = Server {
        name: "prometheus",
        addr,
        write_path: "/api/v1/write",
        child,
    };
    server.wait_ready("/-/ready", &log)?;
    Ok(server)
}

/// Creates certificates (the QUIC listener needs them even though only HTTP is used), then
/// starts `core-node` on a fresh data directory and waits for `/health`.
pub(crate) fn start_core_node(
    binary: &Path,
    root: &Path,
    durability: Durability,
) -> anyhow::Result<Server> {
    start_core_node_with_quic(binary, root, durability).map(|(server, _)| server)
}

/// [`start_core_node`], also returning the node's QUIC address (for an edge agent).
pub(crate) fn start_core_node_with_quic(
    binary: &Path,
    root: &Path,
    durability: Durability,
) -> anyhow::Result<(Server, SocketAddr)> {
    let certs = root.join("certs");
    let status = Command::new(binary)
        .args(["certs", "--dir"])
        .arg(&certs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {} certs", binary.display()))?;
    if !status.success() {
        bail!("{} certs failed ({status})", binary.display());
    }
    let addr = free_tcp()?;
    let quic = free_udp()?;
    let log = root.join("core-node.log");
    let (out, err) = log_file(&log)?;
    let child = Command::new(binary)
        .arg("--data-dir")
        .arg(root.join("core"))
        .arg("--http-listen")
        .arg(addr.to_string())
        .arg("--quic-listen")
        .arg(quic.to_string())
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("core.pem"))
        .arg("--key")
        .arg(certs.join("core-key.pem"))
        .arg("--durability")
        .arg(durability_name(durability))
        // A benchmark on loopback, not about tokens: no authentication.
        .arg("--insecure-dev-mode")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut server = Server {
        name: "updraft",
        addr,
        write_path: "/api/v1/write",
        child,
    };
    server.wait_ready("/health", &log)?;
    Ok((server, quic))
}

pub(crate) fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Fsync => "fsync",
        Durability::Buffered => "buffered",
    }
}

/// `core-node` next to the running simulator (both are built into the same target directory),
/// else `target/release/core-node` under the current directory.
pub(crate) fn default_core_node() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("core-node")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/release/core-node"))
}

/// Writes the OpenMetrics text in `openmetrics` into Prometheus blocks under `out_dir` with
/// `promtool tsdb create-blocks-from openmetrics --max-block-duration=<max_block_duration>`.
pub(crate) fn promtool_backfill(
    promtool: &Path,
    openmetrics: &Path,
    out_dir: &Path,
    max_block_duration: &str,
) -> anyhow::Result<()> {
    let out = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(format!("--max-block-duration={max_block_duration}"))
        .arg("-q")
        .arg(openmetrics)
        .arg(out_dir)
        .output()
        .with_context(|| format!("running {}", promtool.display()))?;
    if !out.status.success() {
        bail!(
            "promtool failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_from_a_stat_line() {
        let stat = "1234 (prom (x) y) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0";
        assert_eq!(parse_cpu(stat), Some(Duration::from_millis(1750)));
        assert_eq!(parse_cpu("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").expect("linux");
        assert!(parse_cpu(&own).is_some());
    }

    #[test]
    fn reads_peak_rss_from_a_status_text() {
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_kib(status, "VmHW"), None);
    }
}

//! VictoriaMetrics 1.79 (`victoria-metrics` of the Debian package) as a benchmark peer: one
//! process on a free loopback port, its data directory under the run's directory, started and
//! stopped through the same [`Server`] as the other peers.
//!
//! Flags, and why: `-retentionPeriod=100y` (the datasets start in 2024, and the default of one
//! month would drop them as expired), `-search.disableCache` (the rollup result cache would
//! answer a repeated timed query from memory, which neither Prometheus nor Updraft does),
//! `-loggerLevel=WARN`. Everything else is the default a new user gets.
//!
//! Durability: VictoriaMetrics has no WAL. It keeps acknowledged samples in memory and writes
//! them into parts on disk about once a second, so a crash loses the last second or so.
//!
//! Line protocol goes to `/write?precision=ns` without `db`: with `?db=bench` VictoriaMetrics
//! adds a `db` label to every series, which Updraft (it ignores `db`) does not keep.
//!
//! Before its bytes are counted ([`settle_and_stop`]): `/internal/force_flush` (in-memory
//! parts to disk), `/internal/force_merge` (each month's partition merged into as few parts as
//! it can, in the background), a wait until no merge runs and the process is idle, then SIGTERM,
//! on which it writes its caches under `cache/`; every file under the data directory counts,
//! `cache/` included (as Updraft's fjall journal does).

use super::super::query::http;
use super::super::query::servers::{Server, free_tcp, log_file};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The system's name in figures and tables.
pub(crate) const NAME: &str = "victoria-metrics";
/// Where the Debian package puts the binary.
pub(crate) const BINARY: &str = "/usr/bin/victoria-metrics";
/// The Debian package, for "not installed" messages.
pub(crate) const PACKAGE: &str = "victoria-metrics";
/// Line protocol's endpoint (see the module doc for why without `db`).
pub(crate) const LINE_PROTOCOL_PATH: &str = "/write?precision=ns";
const WRITE_PATH: &str = "/api/v1/write";

/// A running VictoriaMetrics and its data directory.
pub(crate) struct Victoria {
    pub server: Server,
    pub data: PathBuf,
}

/// The command-line flags for a data directory and a listen address.
fn flags(data: &Path, addr: std::net::SocketAddr) -> Vec<String> {
    vec![
        format!("-storageDataPath={}", data.display()),
        format!("-httpListenAddr={addr}"),
        "-retentionPeriod=100y".to_owned(),
        "-search.disableCache".to_owned(),
        "-loggerLevel=WARN".to_owned(),
    ]
}

/// Starts VictoriaMetrics with its data in `root/victoria-metrics` and waits for `/health`.
pub(crate) fn start(binary: &Path, root: &Path) -> anyhow::Result<Victoria> {
    let data = root.join("victoria-metrics");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let addr = free_tcp()?;
    let log = root.join("victoria-metrics.log");
    let (out, err) = log_file(&log)?;
    let child = Command::new(binary)
        .args(flags(&data, addr))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut server = Server::new(NAME, addr, WRITE_PATH, child);
    server.wait_ready("/health", &log)?;
    Ok(Victoria { server, data })
}

/// The Debian package's version, e.g. `1.79.5+ds1-2+b5` (the binary built by Debian prints
/// no version of its own).
pub(crate) fn version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", PACKAGE])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !v.is_empty()).then(|| format!("victoria-metrics {v} (Debian)"))
}

/// Sum of the gauges named `name` (any labels) in a Prometheus text exposition.
fn gauge_sum(metrics: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

fn internal(vm: &Victoria, path: &str) -> anyhow::Result<()> {
    let r = http::get(vm.server.addr, path)?;
    if !(200..300).contains(&r.status) {
        bail!("{NAME} answered {path} with {}: {}", r.status, r.text());
    }
    Ok(())
}

/// Writes the samples waiting in memory to searchable parts.
pub(crate) fn force_flush(vm: &Victoria) -> anyhow::Result<()> {
    internal(vm, "/internal/force_flush")
}

/// Flushes, force-merges, waits (at most `limit`) until no merge runs and the process is idle,
/// then stops it gracefully; returns the data directory (every file of it is the figure) and
/// how long settling took.
pub(crate) fn settle_and_stop(
    vm: Victoria,
    limit: Duration,
) -> anyhow::Result<(PathBuf, Duration)> {
    let start = Instant::now();
    force_flush(&vm)?;
    internal(&vm, "/internal/force_merge")?;
    loop {
        let metrics = http::get(vm.server.addr, "/metrics")?.text();
        let busy = [
            "vm_active_force_merges",
            "vm_active_merges",
            "vm_pending_rows",
        ]
        .iter()
        .map(|g| gauge_sum(&metrics, g).with_context(|| format!("{NAME} exports no {g}")))
        .collect::<anyhow::Result<Vec<f64>>>()?;
        if busy.iter().all(|&v| v == 0.0) {
            break;
        }
        if start.elapsed() > limit {
            bail!(
                "{NAME} still merging after {limit:?} (force merges, merges, pending rows: {busy:?})"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    vm.server.settle(Duration::from_secs(30))?;
    let status = vm.server.terminate(Duration::from_secs(60))?;
    if !status.success() {
        bail!("{NAME} exited with {status} after SIGTERM");
    }
    Ok((vm.data, start.elapsed()))
}

/// Bytes by top-level part of the data directory (`data`, `indexdb`, `cache`, ...), file
/// lengths, for the notes.
pub(crate) fn parts(data: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(data) else {
        return Vec::new();
    };
    let mut parts: Vec<(String, u64)> = entries
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = if e.path().is_dir() {
                super::super::query::dir_bytes(&e.path())
            } else {
                e.metadata().map_or(0, |m| m.len())
            };
            (name, bytes)
        })
        .collect();
    parts.sort();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_keep_history_and_skip_the_result_cache() {
        let addr: std::net::SocketAddr = "127.0.0.1:18428".parse().expect("addr");
        let f = flags(Path::new("/tmp/x/victoria-metrics"), addr);
        assert!(f.contains(&"-storageDataPath=/tmp/x/victoria-metrics".to_owned()));
        assert!(f.contains(&"-httpListenAddr=127.0.0.1:18428".to_owned()));
        assert!(f.contains(&"-retentionPeriod=100y".to_owned()));
        assert!(f.contains(&"-search.disableCache".to_owned()));
    }

    #[test]
    fn gauges_sum_over_labels() {
        let m = "vm_active_merges{type=\"indexdb\"} 1\nvm_active_merges{type=\"storage/big\"} 2\n\
                 vm_active_merges_total 9\nvm_active_force_merges 0\n";
        assert_eq!(gauge_sum(m, "vm_active_merges"), Some(3.0));
        assert_eq!(gauge_sum(m, "vm_active_force_merges"), Some(0.0));
        assert_eq!(gauge_sum(m, "vm_pending_rows"), None);
    }
}

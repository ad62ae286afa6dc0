//! InfluxDB 1.6 (`influxd` of the Debian package) as a benchmark peer: a temporary
//! configuration on free loopback ports, one database, line protocol over HTTP `/write`.
//!
//! The configuration keeps everything the benchmarks compare and turns the rest off: no usage
//! reporting, no `_internal` monitor database (it would add its own bytes and CPU), no
//! retention enforcement or continuous queries, HTTP access logging off. The WAL is fsynced
//! on every write (`wal-fsync-delay = "0s"`, 1.6's default), the index is 1.6's default
//! `inmem` (rebuilt from the TSM files' series keys at start-up, so nothing of it is on disk
//! beyond those keys). `cold` sets both `cache-snapshot-write-cold-duration` and
//! `compact-full-write-cold-duration`: that long after the last write, the cache is written
//! to TSM and each shard compacted fully (the defaults are 10 min and 4 h).

use super::super::query::http;
use super::super::query::servers::{Server, free_tcp, log_file};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const DATABASE: &str = "bench";
const WRITE_PATH: &str = "/write?db=bench&precision=ns";

/// A running `influxd` and its directories.
pub(crate) struct Influx {
    pub server: Server,
    pub dir: PathBuf,
}

impl Influx {
    pub fn meta_dir(&self) -> PathBuf {
        self.dir.join("meta")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn wal_dir(&self) -> PathBuf {
        self.dir.join("wal")
    }
}

/// The configuration file's text.
fn config(
    dir: &Path,
    http: std::net::SocketAddr,
    rpc: std::net::SocketAddr,
    cold: Duration,
) -> String {
    let cold = format!("{}s", cold.as_secs().max(1));
    format!(
        r#"reporting-disabled = true
bind-address = "{rpc}"

[meta]
  dir = "{meta}"
  logging-enabled = false

[data]
  dir = "{data}"
  wal-dir = "{wal}"
  wal-fsync-delay = "0s"
  index-version = "inmem"
  query-log-enabled = false
  trace-logging-enabled = false
  cache-snapshot-write-cold-duration = "{cold}"
  compact-full-write-cold-duration = "{cold}"

[retention]
  enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{http}"
  log-enabled = false
  write-tracing = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[logging]
  level = "warn"
"#,
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
        wal = dir.join("wal").display(),
    )
}

/// Starts `influxd` with its directories under `root/influxdb`, waits for `/ping`, creates the
/// database.
pub(crate) fn start(binary: &Path, root: &Path, cold: Duration) -> anyhow::Result<Influx> {
    let dir = root.join("influxdb");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let addr = free_tcp()?;
    let rpc = free_tcp()?;
    let conf = root.join("influxdb.conf");
    std::fs::write(&conf, config(&dir, addr, rpc, cold))?;
    let log = root.join("influxdb.log");
    let (out, err) = log_file(&log)?;
    let child = Command::new(binary)
        .arg("run")
        .arg("-config")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut server = Server::new("influxdb", addr, WRITE_PATH, child);
    server.wait_ready("/ping", &log)?;
    let r = http::post(
        addr,
        &format!("/query?q=CREATE%20DATABASE%20{DATABASE}"),
        &[],
        &[],
    )?;
    if r.status != 200 || r.text().contains("\"error\"") {
        bail!(
            "influxdb refused CREATE DATABASE ({}): {}",
            r.status,
            r.text()
        );
    }
    Ok(Influx { server, dir })
}

/// `influxd version`'s first line, e.g. `InfluxDB v1.6.7~rc0 (git: unknown unknown)`.
pub(crate) fn version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next()?.trim().to_owned())
}

/// Shard directories (`data/<db>/<rp>/<id>`) and their `.tsm` files; compaction is over when
/// every shard holds one TSM file and no temporary one.
fn tsm_files_per_shard(data: &Path) -> Vec<(usize, usize)> {
    let mut shards = Vec::new();
    let Ok(dbs) = std::fs::read_dir(data) else {
        return shards;
    };
    for db in dbs.flatten() {
        let Ok(rps) = std::fs::read_dir(db.path()) else {
            continue;
        };
        // `_series` (1.6's series file, partitions of preallocated segments) is no shard.
        for rp in rps.flatten().filter(|rp| rp.file_name() != "_series") {
            let Ok(ids) = std::fs::read_dir(rp.path()) else {
                continue;
            };
            for id in ids.flatten() {
                let Ok(files) = std::fs::read_dir(id.path()) else {
                    continue;
                };
                let names: Vec<String> = files
                    .flatten()
                    .map(|f| f.file_name().to_string_lossy().into_owned())
                    .collect();
                let tsm = names.iter().filter(|n| n.ends_with(".tsm")).count();
                let tmp = names.iter().filter(|n| n.ends_with(".tmp")).count();
                shards.push((tsm, tmp));
            }
        }
    }
    shards
}

/// Waits (at most `limit`) until every shard is one TSM file, the WAL is empty of closed
/// segments' data, and the process is idle; returns how long it took.
pub(crate) fn wait_fully_compacted(influx: &Influx, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let shards = tsm_files_per_shard(&influx.data_dir());
        let wal = super::super::query::dir_bytes(&influx.wal_dir());
        let done = !shards.is_empty() && shards.iter().all(|&(tsm, tmp)| tsm == 1 && tmp == 0);
        if done && wal == 0 {
            influx.server.settle(Duration::from_secs(30))?;
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!(
                "influxdb not fully compacted after {limit:?}: shards (tsm, tmp files) {shards:?}, wal {wal} bytes"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_sets_dirs_ports_and_cold_durations() {
        let http: std::net::SocketAddr = "127.0.0.1:18086".parse().expect("addr");
        let rpc: std::net::SocketAddr = "127.0.0.1:18088".parse().expect("addr");
        let c = config(Path::new("/tmp/x"), http, rpc, Duration::from_secs(5));
        assert!(c.contains("bind-address = \"127.0.0.1:18086\""));
        assert!(c.contains("bind-address = \"127.0.0.1:18088\""));
        assert!(c.contains("wal-dir = \"/tmp/x/wal\""));
        assert!(c.contains("compact-full-write-cold-duration = \"5s\""));
        assert!(c.contains("wal-fsync-delay = \"0s\""));
        assert!(c.contains("store-enabled = false"));
    }
}

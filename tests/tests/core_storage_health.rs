//! Storage health of a real core node on a small tmpfs it cannot see past:
//!
//! - a disk filled through the write API turns the node read-only before the file system is
//!   full: writes get a retryable 503 naming the reason, queries still answer (with every
//!   acknowledged sample), `/health` answers 503, the metrics say so, and the node takes
//!   writes again by itself once space is freed;
//! - a storage write that fails (the guard turned off, the disk filled behind the node's back)
//!   is reported by `/health`, the metrics and the log, and the node exits non-zero after its
//!   grace period; restarted with room, it replays its WAL and keeps every acknowledged sample.
//!
//! Mounting a tmpfs needs root (CAP_SYS_ADMIN), as the nftables tests need it: without it the
//! tests fail, they do not pass silently.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use updraft_tests::{
    core_command, free_tcp_port, free_udp_port, http_get, http_post, make_certs, wait_for,
};

/// A tmpfs of `size` MiB mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mounting a {mib} MiB tmpfs failed (this test needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A core node process whose exit status the test reads.
struct Node {
    child: Child,
    http: SocketAddr,
    log: PathBuf,
}

impl Node {
    fn start(work: &Path, data: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let certs = work.join("certs");
        if !certs.join("ca.pem").exists() {
            make_certs(&certs)?;
        }
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let quic = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let log = work.join(format!("core-{}.log", http.port()));
        let out = std::fs::File::create(&log)?;
        let child = core_command(data, http, quic, &certs)
            .arg("--insecure-dev-mode")
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("starting core-node")?;
        let node = Self { child, http, log };
        wait_for("core-node /health", Duration::from_secs(30), || {
            http_get(&node.url("/health")).ok().map(|_| ())
        })?;
        Ok(node)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    fn health(&self) -> anyhow::Result<(u16, String)> {
        http_get(&self.url("/health"))
    }

    /// The value of an unlabelled gauge or counter; absent is an error, not 0.
    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (_, text) = http_get(&self.url("/metrics"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("metric {name} missing from /metrics"))
    }

    /// POSTs line protocol (ms timestamps); returns the status and body.
    fn write(&self, body: &str) -> anyhow::Result<(u16, String)> {
        http_post(
            &self.url("/write?db=fill&precision=ms"),
            "text/plain",
            &[],
            body.as_bytes(),
        )
    }

    /// The number of samples of `metric` the node answers for the last hour.
    fn stored(&self, metric: &str) -> anyhow::Result<f64> {
        let query = format!("sum(count_over_time({metric}[1h]))");
        let (status, body) = http_get(&self.url(&format!(
            "/api/v1/query?query={}",
            updraft_tests::encode(&query)
        )))?;
        if status != 200 {
            bail!("query answered {status}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let result = &v["data"]["result"];
        match result.as_array().map(Vec::as_slice) {
            Some([]) => Ok(0.0),
            Some([one]) => one["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .context("a sample value"),
            _ => bail!("unexpected answer {v}"),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- core-node log -----\n{}", self.log_text());
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `series` × `per_series` samples of `metric`, at 1 ms steps from `from_ms`.
fn lines(metric: &str, series: usize, per_series: usize, from_ms: i64) -> String {
    let mut out = String::with_capacity(series * per_series * 40);
    for s in 0..series {
        for i in 0..per_series {
            let ts = from_ms + i as i64;
            out.push_str(&format!("{metric},device=d{s} value={}.5 {ts}\n", i % 97));
        }
    }
    out
}

/// Fills `path`'s file system with a file until it is full (or `limit` bytes).
fn fill(path: &Path, limit: u64) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let block = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    while written < limit {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(_) => break,
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

#[test]
fn a_disk_filled_through_the_api_turns_the_node_read_only_until_space_is_freed()
-> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let disk = Tmpfs::mount(48)?;
    // Room the test gives back later: 12 MiB, more than the 10 % margin over the minimum.
    let filler = disk.path().join("filler");
    fill(&filler, 12 << 20)?;
    let node = Node::start(
        work.path(),
        &disk.path().join("data"),
        &["--min-free-disk-mib", "16"],
    )?;
    assert_eq!(node.health()?, (200, "ok".to_owned()));
    assert_eq!(node.metric("updraft_core_storage_healthy")?, 1.0);

    // Fill through the API until the node refuses, counting what it acknowledged.
    let start = now_ms() - 30 * 60_000;
    let (mut acked, mut refusal) = (0u64, None);
    for round in 0..400 {
        let (status, body) = node.write(&lines("fill", 200, 100, start + round * 100))?;
        match status {
            204 => acked += 200 * 100,
            503 => {
                refusal = Some(body);
                break;
            }
            other => bail!("write answered {other}: {body}"),
        }
    }
    let refusal = refusal.context("the node never refused a write while its disk filled")?;
    assert!(
        refusal.contains("disk almost full") && refusal.contains("retry later"),
        "{refusal}"
    );
    assert!(acked > 0, "nothing was acknowledged before the disk filled");
    let free = fs_free(disk.path())?;
    assert!(
        free > 0,
        "the file system filled up completely: the guard came too late"
    );

    let (status, body) = node.health()?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("read-only") && body.contains("disk almost full"),
        "{body}"
    );
    assert_eq!(node.metric("updraft_core_storage_healthy")?, 0.0);
    assert_eq!(node.metric("updraft_core_storage_read_only")?, 1.0);
    // Queries keep working, with every acknowledged sample.
    assert_eq!(node.stored("fill_value")?, acked as f64);
    // Refusals go on while the disk is full: retryable, the sender keeps its data.
    assert_eq!(node.write(&lines("fill", 1, 1, start))?.0, 503);

    std::fs::remove_file(&filler)?;
    wait_for(
        "the node to take writes again",
        Duration::from_secs(30),
        || matches!(node.health(), Ok((200, _))).then_some(()),
    )?;
    assert_eq!(node.metric("updraft_core_storage_healthy")?, 1.0);
    assert_eq!(node.metric("updraft_core_storage_read_only")?, 0.0);
    let (status, body) = node.write(&lines("after", 10, 10, now_ms() - 60_000))?;
    assert_eq!(status, 204, "{body}");
    assert_eq!(node.stored("after_value")?, 100.0);
    assert_eq!(node.stored("fill_value")?, acked as f64);
    Ok(())
}

#[test]
fn a_failed_storage_write_is_reported_then_the_node_exits_and_a_restart_keeps_every_ack()
-> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let disk = Tmpfs::mount(32)?;
    let data = disk.path().join("data");
    // The disk-space guard off: the disk fills behind the node's back, as a full disk would
    // with no guard, so the next WAL write fails for real.
    let mut node = Node::start(
        work.path(),
        &data,
        &[
            "--min-free-disk-mib",
            "0",
            "--storage-failure-exit-secs",
            "3",
        ],
    )?;
    let before = now_ms() - 10 * 60_000;
    let (status, body) = node.write(&lines("kept", 20, 50, before))?;
    assert_eq!(status, 204, "{body}");

    let filler = disk.path().join("filler");
    fill(&filler, u64::MAX)?;
    let (status, body) = node.write(&lines("lost", 200, 200, now_ms() - 60_000))?;
    assert_eq!(
        status, 503,
        "a write on a full disk must fail, retryable: {body}"
    );

    let (status, body) = node.health()?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("storage failed") && body.contains("write-ahead log"),
        "{body}"
    );
    assert_eq!(node.metric("updraft_core_storage_healthy")?, 0.0);
    assert_eq!(node.metric("updraft_core_storage_failures_total")?, 1.0);
    // Writes are refused with the reason, not "shutting down".
    let (status, body) = node.write(&lines("lost", 1, 1, now_ms()))?;
    assert_eq!(status, 503);
    assert!(body.contains("write-ahead log"), "{body}");

    let exit = wait_for(
        "the node to exit after its grace period",
        Duration::from_secs(60),
        || node.child.try_wait().ok().flatten(),
    )?;
    assert_eq!(exit.code(), Some(1), "exit status {exit}");
    let log = node.log_text();
    assert!(log.contains("STORAGE FAILED"), "{log}");
    assert!(log.contains("restart the node"), "{log}");

    // A supervisor restarts it once there is room: the WAL replays, nothing acknowledged is
    // missing.
    std::fs::remove_file(&filler)?;
    let node = Node::start(work.path(), &data, &["--min-free-disk-mib", "0"])?;
    assert_eq!(node.health()?, (200, "ok".to_owned()));
    assert_eq!(node.stored("kept_value")?, 1000.0);
    Ok(())
}

/// Free bytes of the file system holding `path`, from `df`.
fn fs_free(path: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df printed {text:?}"))
}

//! `simulator bench cluster`: the cluster on this one machine. Everything shares the same
//! cores, so the figures compare CPU, not throughput:
//!
//! - `cpu_s_per_msample_1node`, `_3nodes_rf1`, `_3nodes_rf3`: CPU seconds (utime + stime of
//!   every core-node process) per million samples written over line protocol by 4 clients,
//!   the single node against 3 nodes at replication factor 1 and 3 (fsync on).
//! - `acked_lost`, `phantoms`, `failover_unavailable_ms` (the worst of the kills) and
//!   `failover_unavailable_ms_p50`: 3 nodes at RF 3 written to through every node while a
//!   random node is killed with SIGKILL and restarted; the unavailability of a kill is the
//!   longest time without an acknowledged write after it (each write touches every group).
//! - `idle_cpu_percent_64_groups`: CPU of the busiest node of 3 hosting 64 groups each, idle.
//! - `query_ms_1node`, `query_ms_3nodes`: `sum by (host) (rate(q_v[5m]))` over `--series`
//!   series (median of 5), on the single node and through a node of a 3-node RF 3 cluster.

use super::Reporter;
use super::figure::Figure;
use super::query::http;
use super::query::servers::{Server, default_core_node, free_tcp, free_udp, log_file};
use super::table::Table;
use anyhow::{Context, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCENARIO: &str = "cluster";
const SYSTEM: &str = "updraft";
/// Series of the failover writer: enough that every write touches every group.
const FAILOVER_SERIES: u64 = 64;

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Samples written for each CPU-per-sample figure.
    #[arg(long, default_value_t = 2_000_000)]
    pub samples: u64,
    /// SIGKILLs of the failover part.
    #[arg(long, default_value_t = 5)]
    pub kills: u32,
    /// Series of the query part (100 hosts; 30 samples each, 10 s apart).
    #[arg(long, default_value_t = 100_000)]
    pub series: u64,
    /// The core-node binary [default: next to this one, else target/release/core-node].
    #[arg(long)]
    pub core_node: Option<PathBuf>,
}

/// A core-node process of the bench, single or clustered.
struct Node {
    server: Server,
    cluster: Option<std::net::SocketAddr>,
    args: Vec<String>,
    log: PathBuf,
    binary: PathBuf,
}

impl Node {
    fn start(binary: &Path, certs: &Path, root: &Path, id: Option<u64>) -> anyhow::Result<Self> {
        let name = id.map_or("single".to_owned(), |i| format!("node-{i}"));
        std::fs::create_dir_all(root)?;
        let http = free_tcp()?;
        let quic = free_udp()?;
        let cluster = id.map(|_| free_udp()).transpose()?;
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            root.join(&name).display().to_string(),
            "--http-listen".into(),
            http.to_string(),
            "--quic-listen".into(),
            quic.to_string(),
            "--ca".into(),
            certs.join("ca.pem").display().to_string(),
            "--cert".into(),
            certs.join("core.pem").display().to_string(),
            "--key".into(),
            certs.join("core-key.pem").display().to_string(),
            "--insecure-dev-mode".into(),
            "--min-free-disk-mib".into(),
            "0".into(),
        ];
        if let (Some(id), Some(cluster)) = (id, cluster) {
            args.extend([
                "--node-id".into(),
                id.to_string(),
                "--cluster-listen".into(),
                cluster.to_string(),
            ]);
        }
        let log = root.join(format!("{name}.log"));
        let server = spawn(binary, &args, &log, http)?;
        Ok(Self {
            server,
            cluster,
            args,
            log,
            binary: binary.to_path_buf(),
        })
    }

    /// SIGKILL, then the same process again (same ports, data, flags).
    fn kill9_and_restart(&mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-KILL", &self.server.pid().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(50));
        self.server = spawn(&self.binary, &self.args, &self.log, self.server.addr)?;
        Ok(())
    }
}

fn spawn(
    binary: &Path,
    args: &[String],
    log: &Path,
    http: std::net::SocketAddr,
) -> anyhow::Result<Server> {
    let (out, err) = log_file(log)?;
    let child = Command::new(binary)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut server = Server::new(SYSTEM, http, "/api/v1/write", child);
    server.wait_ready("/health", log)?;
    Ok(server)
}

fn certs(binary: &Path, dir: &Path) -> anyhow::Result<()> {
    let status = Command::new(binary)
        .args([
            "certs",
            "--node-id",
            "1",
            "--node-id",
            "2",
            "--node-id",
            "3",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("core-node certs failed ({status})");
    }
    Ok(())
}

/// Starts 3 clustered nodes and creates the cluster.
fn cluster(
    binary: &Path,
    certs: &Path,
    root: &Path,
    rf: usize,
    groups_per_node: usize,
) -> anyhow::Result<Vec<Node>> {
    let nodes = (1..=3)
        .map(|id| Node::start(binary, certs, root, Some(id)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let list: Vec<serde_json::Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({
                "id": i + 1,
                "cluster": n.cluster.map(|c| c.to_string()).unwrap_or_default(),
                "http": n.server.addr.to_string(),
            })
        })
        .collect();
    let body = serde_json::json!({"nodes": list, "replication_factor": rf, "groups_per_node": groups_per_node});
    let answer = http::post(
        nodes[0].server.addr,
        "/api/v1/admin/cluster/init",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )?;
    if answer.status != 200 {
        bail!("cluster init answered {}: {}", answer.status, answer.text());
    }
    wait_ready(&nodes)?;
    Ok(nodes)
}

/// Waits until every node has the cluster map and knows a leader for each group it holds.
fn wait_ready(nodes: &[Node]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in nodes {
        loop {
            let ready = http::get(node.server.addr, "/api/v1/admin/cluster")
                .ok()
                .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                .is_some_and(|v| {
                    let data = &v["data"];
                    data["map_version"].as_u64().unwrap_or(0) > 0
                        && data["groups"].as_array().is_some_and(|groups| {
                            groups
                                .iter()
                                .all(|g| g["local"].is_null() || !g["local"]["leader"].is_null())
                        })
                });
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("node at {} not ready within a minute", node.server.addr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

fn cpu(nodes: &[Node]) -> anyhow::Result<Duration> {
    nodes.iter().map(|n| n.server.cpu()).sum()
}

/// Line protocol: series `s` of `q` (host `h{s % 100}`), sample `i`, 10 s apart.
fn lines(first_series: u64, series: u64, sample: u64, base_s: u64) -> String {
    let mut out = String::with_capacity((series * 48) as usize);
    for s in first_series..first_series + series {
        out.push_str(&format!(
            "q,host=h{},series=s{s} v={} {}\n",
            s % 100,
            (s + sample) % 1000,
            base_s + sample * 10
        ));
    }
    out
}

/// Writes `series × samples_per_series` samples with 4 clients in batches of 5,000 lines,
/// spread over `nodes`; every batch must be acknowledged.
fn load(nodes: &[Node], series: u64, samples_per_series: u64, base_s: u64) -> anyhow::Result<()> {
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.server.addr).collect();
    let batch_series = 5_000.min(series);
    let mut jobs = Vec::new();
    for sample in 0..samples_per_series {
        for first in (0..series).step_by(batch_series as usize) {
            jobs.push((first, batch_series.min(series - first), sample));
        }
    }
    let jobs = Arc::new(Mutex::new(jobs.into_iter().enumerate()));
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (jobs, addrs) = (Arc::clone(&jobs), addrs.clone());
                scope.spawn(move || -> anyhow::Result<()> {
                    loop {
                        let next = jobs.lock().map_err(|_| anyhow::anyhow!("lock"))?.next();
                        let Some((k, (first, n, sample))) = next else {
                            return Ok(());
                        };
                        let body = lines(first, n, sample, base_s);
                        let addr = addrs[k % addrs.len()];
                        let r = http::post(addr, "/write?precision=s", &[], body.as_bytes())?;
                        if r.status != 204 {
                            bail!("write to {addr} answered {}: {}", r.status, r.text());
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        }
        Ok(())
    })
}

/// CPU seconds per million samples of writing `samples` into `nodes`.
fn cpu_per_msample(nodes: &[Node], samples: u64, base_s: u64) -> anyhow::Result<f64> {
    let series = 10_000u64;
    let per_series = samples.div_ceil(series);
    let before = cpu(nodes)?;
    load(nodes, series, per_series, base_s)?;
    // Settled: flushes triggered by the load are part of its cost.
    for n in nodes {
        n.server.settle(Duration::from_secs(60))?;
    }
    let used = cpu(nodes)?.saturating_sub(before);
    Ok(used.as_secs_f64() / (series * per_series) as f64 * 1e6)
}

fn query_ms(node: &Node, at_s: u64) -> anyhow::Result<f64> {
    let q = format!(
        "/api/v1/query?query={}&time={at_s}",
        "sum%20by%20(host)%20(rate(q_v%5B5m%5D))"
    );
    let mut times = Vec::new();
    for round in 0..6 {
        let started = Instant::now();
        let r = http::get(node.server.addr, &q)?;
        if r.status != 200 {
            bail!("query answered {}: {}", r.status, r.text());
        }
        let body: serde_json::Value = serde_json::from_slice(&r.body)?;
        let hosts = body["data"]["result"].as_array().map_or(0, Vec::len);
        if hosts != 100 {
            bail!("the query returned {hosts} hosts, not 100");
        }
        if round > 0 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Kills a random node `kills` times under writes; answers (acked lost, phantoms, the
/// unavailability after each kill in ms).
fn failover(nodes: &mut [Node], kills: u32, base_s: u64) -> anyhow::Result<(u64, u64, Vec<f64>)> {
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.server.addr).collect();
    let acks: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let sent: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acks, sent, stop) = (Arc::clone(&acks), Arc::clone(&sent), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body: String = (0..FAILOVER_SERIES)
                    .map(|s| format!("fo,series=s{s} v={i} {}\n", base_s + i))
                    .collect();
                sent.lock().map(|mut s| s.insert(i)).ok();
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut k = i as usize;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    let addr = addrs[k % addrs.len()];
                    k += 1;
                    if http::post(addr, "/write?precision=s", &[], body.as_bytes())
                        .is_ok_and(|r| r.status == 204)
                    {
                        acks.lock().map(|mut a| a.push((Instant::now(), i))).ok();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                i += 1;
            }
        })
    };
    let mut kill_times = Vec::new();
    // Each node in turn: every one is a group leader at some point.
    for k in 0..kills as usize {
        std::thread::sleep(Duration::from_secs(2));
        let victim = k % nodes.len();
        kill_times.push(Instant::now());
        nodes[victim].kill9_and_restart()?;
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?;
    let acks = acks.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let sent = sent.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    // Unavailability of a kill: the longest gap between acknowledgements in the 4 s after it.
    let mut unavailable = Vec::new();
    for t in &kill_times {
        let window: Vec<Instant> = acks
            .iter()
            .map(|(at, _)| *at)
            .filter(|at| *at >= *t && *at <= *t + Duration::from_secs(4))
            .collect();
        let mut last = *t;
        let mut worst = Duration::ZERO;
        for at in window {
            worst = worst.max(at - last);
            last = at;
        }
        unavailable.push(worst.as_secs_f64() * 1000.0);
    }
    // Every node must hold every acknowledged sample of every series, and nothing unsent.
    let acked: BTreeSet<u64> = acks.iter().map(|(_, i)| *i).collect();
    let (mut lost, mut phantoms) = (0u64, 0u64);
    let at = base_s + sent.iter().next_back().copied().unwrap_or(0) + 1;
    for node in nodes.iter() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let last = loop {
            let r = http::get(
                node.server.addr,
                &format!("/api/v1/query?query=fo_v%5B1d%5D&time={at}"),
            )?;
            let body: serde_json::Value = serde_json::from_slice(&r.body)?;
            let (mut l, mut p) = (0u64, 0u64);
            let series = body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for s in &series {
                let got: BTreeSet<u64> = s["values"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .filter_map(|p| p[1].as_str()?.parse::<f64>().ok())
                            .map(|v| v as u64)
                            .collect()
                    })
                    .unwrap_or_default();
                l += acked.difference(&got).count() as u64;
                p += got.difference(&sent).count() as u64;
            }
            l += (FAILOVER_SERIES - series.len() as u64) * acked.len() as u64;
            if l == 0 || Instant::now() > deadline {
                break (l, p);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        lost += last.0;
        phantoms += last.1;
    }
    Ok((lost, phantoms, unavailable))
}

pub fn run(args: &ClusterArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    let binary = args.core_node.clone().unwrap_or_else(default_core_node);
    let work = tempfile::tempdir()?;
    let root = work.path();
    let certs_dir = root.join("certs");
    certs(&binary, &certs_dir)?;
    let base_s = 1_700_000_000u64;
    let mut figures: Vec<Figure> = Vec::new();
    let mut add = |figure: &str, value: f64, unit: &str| {
        figures.push(Figure::new(
            SCENARIO,
            "synthetic",
            SYSTEM,
            figure,
            value,
            unit,
        ));
    };

    reporter.note("cpu per sample: single node");
    let single = vec![Node::start(&binary, &certs_dir, &root.join("cpu1"), None)?];
    add(
        "cpu_s_per_msample_1node",
        cpu_per_msample(&single, args.samples, base_s)?,
        "s",
    );
    drop(single);
    for (rf, name) in [
        (1usize, "cpu_s_per_msample_3nodes_rf1"),
        (3, "cpu_s_per_msample_3nodes_rf3"),
    ] {
        reporter.note(&format!("cpu per sample: 3 nodes, rf {rf}"));
        let nodes = cluster(
            &binary,
            &certs_dir,
            &root.join(format!("cpu3-rf{rf}")),
            rf,
            4,
        )?;
        add(name, cpu_per_msample(&nodes, args.samples, base_s)?, "s");
    }

    reporter.note(&format!("failover: {} kills", args.kills));
    let mut nodes = cluster(&binary, &certs_dir, &root.join("failover"), 3, 4)?;
    let (lost, phantoms, mut unavailable) = failover(&mut nodes, args.kills, base_s)?;
    drop(nodes);
    unavailable.sort_by(f64::total_cmp);
    add("acked_lost", lost as f64, "samples");
    add("phantoms", phantoms as f64, "samples");
    add(
        "failover_unavailable_ms",
        unavailable.last().copied().unwrap_or(f64::NAN),
        "ms",
    );
    add(
        "failover_unavailable_ms_p50",
        unavailable
            .get(unavailable.len() / 2)
            .copied()
            .unwrap_or(f64::NAN),
        "ms",
    );

    reporter.note("idle cpu: 3 nodes, 64 groups each");
    let nodes = cluster(&binary, &certs_dir, &root.join("idle"), 3, 64)?;
    // Every group elected and settled before measuring.
    std::thread::sleep(Duration::from_secs(5));
    let before: Vec<Duration> = nodes
        .iter()
        .map(|n| n.server.cpu())
        .collect::<anyhow::Result<_>>()?;
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let busiest = nodes
        .iter()
        .zip(&before)
        .map(|(n, b)| n.server.cpu().map(|c| c.saturating_sub(*b)))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or_default();
    add(
        "idle_cpu_percent_64_groups",
        busiest.as_secs_f64() / window.as_secs_f64() * 100.0,
        "%",
    );
    drop(nodes);

    reporter.note(&format!("query: {} series", args.series));
    let at = base_s + 30 * 10;
    let single = vec![Node::start(&binary, &certs_dir, &root.join("q1"), None)?];
    load(&single, args.series, 30, base_s)?;
    add("query_ms_1node", query_ms(&single[0], at)?, "ms");
    drop(single);
    let nodes = cluster(&binary, &certs_dir, &root.join("q3"), 3, 4)?;
    load(&nodes, args.series, 30, base_s)?;
    add("query_ms_3nodes", query_ms(&nodes[1], at)?, "ms");
    drop(nodes);

    let mut table = Table::new(["figure", "value", "unit"]);
    for f in &figures {
        table.push_row([
            f.figure.clone(),
            super::table::format_value(f.value),
            f.unit.clone(),
        ]);
    }
    let footnotes = vec![format!(
        "Every process on one machine ({} cores): compare CPU, not throughput. CPU: utime + \
         stime of every core-node process. Writes: line protocol, 4 clients, batches of 5,000 \
         lines, fsync on; RF 3 writes every sample on 3 nodes. Failover: {} SIGKILLs, one \
         node after another, under writes through every node. Query: median of 5 after a \
         warm-up, {} series, 30 samples each.",
        reporter.machine().cores,
        args.kills,
        args.series
    )];
    reporter.dataset_result(
        "cluster (3 nodes on one machine)",
        &figures,
        &table,
        &footnotes,
    );
    Ok(())
}

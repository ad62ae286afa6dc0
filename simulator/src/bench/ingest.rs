//! `simulator bench ingest`: samples/s, CPU per sample and peak RSS of the server process,
//! Updraft against each peer on its own protocol, real processes on loopback ports.
//!
//! # Protocols and peers
//!
//! - **remote_write**: Updraft `core-node` `/api/v1/write` against Prometheus 2.42's
//!   remote-write receiver (`--web.enable-remote-write-receiver`) and VictoriaMetrics 1.79's
//!   `/api/v1/write`. Prometheus writes its WAL without fsync, so Updraft runs with
//!   `--durability buffered` (its journal handed to the OS before the answer, no fsync): both
//!   survive a process crash, neither a power loss.
//! - **line protocol**: Updraft `/write` against InfluxDB 1.6.7's `/write` (`?db=bench&
//!   precision=ns`) and VictoriaMetrics 1.79's (`?precision=ns`). InfluxDB fsyncs its WAL
//!   before answering (`wal-fsync-delay = "0s"`, its default), so Updraft runs with
//!   `--durability fsync`.
//!
//! VictoriaMetrics has no WAL: it acknowledges samples held in memory and writes them to disk
//! about once a second, less durable than Updraft in either mode; the rows say so.
//!
//! # Client and data
//!
//! Every system gets the same requests, byte for byte within a protocol and sample for sample
//! across the two: the dataset cut into windows of `--window` and groups of
//! `--series-per-request` series ([`batches`]). `--connections` threads send them, thread `w`
//! taking the groups `g` with `g mod connections = w`, each group's requests in time order,
//! one request in flight per thread and one TCP connection per request (the same blocking
//! HTTP/1.1 client for everyone); the threads meet at the end of every window, so the data
//! reaches the server roughly in time order, as Prometheus needs. Bodies are built before
//! the clock starts.
//!
//! # Figures (per dataset, medians of `--rounds`; each run on a fresh process and directory)
//!
//! - `<protocol>_samples_per_s`: samples ÷ wall time from the first request to the last
//!   answer.
//! - `<protocol>_cpu_ns_per_sample`: utime + stime of the server process (`/proc/<pid>/stat`,
//!   all threads) from just before the first request until the process is idle again (under
//!   2 % of a core for 3 s in a row, at most 60 s), so deferred work (flushes, WAL
//!   compression, snapshots) counts; ÷ samples.
//! - `<protocol>_peak_rss_bytes`: `VmHWM` of the server process after that.
//!
//! The machine's cores are shared by the client and the server; the client's own CPU is not
//! counted, but it competes with the server for the same cores, equally for every system.

pub mod batches;

use super::codec::thousands;
use super::query::http;
use super::query::servers::{self, Server};
use super::storage::{Root, influxdb, missing, victoria_metrics};
use super::table::{Table, format_value};
use super::{DatasetArgs, Figure, Reporter};
use crate::datasets::{self, Dataset, DatasetSpec, SeriesData};
use anyhow::{Context, bail};
use batches::{Batch, Cut, Format};
use core_node::storage::Durability;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const SCENARIO: &str = "ingest";
/// The targets: line protocol at least 3 × InfluxDB 1.6.7's samples/s and 1.5 ×
/// VictoriaMetrics', at most half its CPU per sample; remote_write at most 0.4 ×
/// VictoriaMetrics' CPU per sample and no more peak RSS.
const TARGET_LP_VS_INFLUX: f64 = 3.0;
const TARGET_LP_VS_VM: f64 = 1.5;
const TARGET_LP_CPU_VS_VM: f64 = 0.5;
const TARGET_RW_CPU_VS_VM: f64 = 0.4;
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(60);
/// InfluxDB's defaults for the cache snapshot (10 min) apply during `ingest`.
const INFLUX_COLD: Duration = Duration::from_secs(600);

/// `simulator bench ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Datasets to run on (repeat or comma-separate); all three by default.
    #[arg(long = "dataset", value_enum, value_delimiter = ',')]
    pub datasets: Vec<Dataset>,
    /// Trucks in iot-trucks.
    #[arg(long, default_value_t = 100)]
    pub trucks: u64,
    /// Devices in sensor-mix.
    #[arg(long, default_value_t = 200)]
    pub devices: u64,
    /// Hosts in metrics-mix.
    #[arg(long, default_value_t = 50)]
    pub hosts: u64,
    /// Period generated, e.g. 2h, 1d.
    #[arg(long, default_value = "2h", value_parser = datasets::parse_duration_ms)]
    pub duration: i64,
    /// Seed of every random stream.
    #[arg(long, default_value_t = datasets::DEFAULT_SEED)]
    pub seed: u64,
    /// Runs of each system on each dataset; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Time span of one request's samples.
    #[arg(long, default_value = "10m", value_parser = datasets::parse_duration_ms)]
    pub window: i64,
    /// Series per request (groups of series are what the client threads share out, so keep
    /// at least `--connections` groups: iot-trucks 100 trucks has 1,000 series).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    pub series_per_request: u64,
    /// Client threads, one request in flight each.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub connections: u64,
    /// The core-node binary [default: next to this simulator, else target/release/core-node].
    #[arg(long)]
    pub core_node: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/prometheus")]
    pub prometheus: PathBuf,
    #[arg(long, default_value = "/usr/bin/influxd")]
    pub influxd: PathBuf,
    #[arg(long, default_value = victoria_metrics::BINARY)]
    pub victoria_metrics: PathBuf,
    /// Directory for the servers' data and logs, kept afterwards [default: a temporary
    /// directory, removed afterwards].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl IngestArgs {
    fn specs(&self) -> Vec<DatasetSpec> {
        DatasetArgs {
            datasets: self.datasets.clone(),
            trucks: self.trucks,
            devices: self.devices,
            hosts: self.hosts,
            duration: self.duration,
            seed: self.seed,
        }
        .specs()
    }
}

/// The systems measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Updraft(Durability),
    Prometheus,
    Influx,
    Victoria,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Updraft(_) => "updraft",
            System::Prometheus => "prometheus",
            System::Influx => "influxdb",
            System::Victoria => victoria_metrics::NAME,
        }
    }

    fn durability(self) -> &'static str {
        match self {
            System::Updraft(Durability::Fsync) => "fsync",
            System::Updraft(Durability::Buffered) => "buffered",
            System::Prometheus => "WAL, no fsync",
            System::Influx => "WAL fsync per write",
            System::Victoria => "no WAL, in memory ~1 s",
        }
    }
}

/// One protocol's comparison: Updraft and the peers, each with why it cannot run, if so.
struct Pair {
    protocol: &'static str,
    format: Format,
    updraft: Durability,
    peers: Vec<(System, Option<String>)>,
}

/// The target for Updraft (`u`) against `peer` on `format`, judged; `–` if none.
fn target(format: Format, peer: System, u: &Run, p: &Run) -> String {
    let judge = |ok: bool| if ok { "met" } else { "not met" };
    let speed = u.samples_per_s / p.samples_per_s;
    let cpu = u.cpu_ns_per_sample / p.cpu_ns_per_sample;
    match (format, peer) {
        (Format::LineProtocol, System::Influx) => {
            format!(
                "≥ {TARGET_LP_VS_INFLUX}× samples/s: {}",
                judge(speed >= TARGET_LP_VS_INFLUX)
            )
        }
        (Format::LineProtocol, System::Victoria) => format!(
            "≥ {TARGET_LP_VS_VM}× samples/s: {}; CPU ≤ {TARGET_LP_CPU_VS_VM}×: {}",
            judge(speed >= TARGET_LP_VS_VM),
            judge(cpu <= TARGET_LP_CPU_VS_VM)
        ),
        (Format::RemoteWrite, System::Victoria) => format!(
            "CPU ≤ {TARGET_RW_CPU_VS_VM}×: {}; peak RSS ≤ 1×: {}",
            judge(cpu <= TARGET_RW_CPU_VS_VM),
            judge(u.peak_rss_bytes <= p.peak_rss_bytes)
        ),
        _ => "–".to_owned(),
    }
}

/// One run's measurements.
#[derive(Debug, Clone, Copy)]
struct Run {
    samples_per_s: f64,
    cpu_ns_per_sample: f64,
    peak_rss_bytes: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A started server, and what must stay alive while it runs.
struct Started {
    server: Server,
}

fn start(
    system: System,
    args: &IngestArgs,
    core_node: &Path,
    dir: &Path,
) -> anyhow::Result<Started> {
    let server = match system {
        System::Updraft(d) => servers::start_core_node(core_node, dir, d)?,
        System::Prometheus => {
            servers::start_prometheus(&args.prometheus, dir, &dir.join("prometheus"))?
        }
        System::Influx => influxdb::start(&args.influxd, dir, INFLUX_COLD)?.server,
        System::Victoria => victoria_metrics::start(&args.victoria_metrics, dir)?.server,
    };
    Ok(Started { server })
}

/// The server path of `format` on `system`.
fn write_path(system: System, format: Format, server: &Server) -> &'static str {
    match (system, format) {
        (System::Updraft(_), Format::LineProtocol) => "/write?db=bench&precision=ns",
        (System::Victoria, Format::LineProtocol) => victoria_metrics::LINE_PROTOCOL_PATH,
        _ => server.write_path,
    }
}

fn headers(format: Format) -> &'static [(&'static str, &'static str)] {
    match format {
        Format::RemoteWrite => &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            ("User-Agent", "updraft-simulator"),
        ],
        Format::LineProtocol => &[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("User-Agent", "updraft-simulator"),
        ],
    }
}

/// Sends every batch on `connections` threads (see the module doc). The threads wait for each
/// other at the end of each window of time: a thread with less work would otherwise run more
/// than an hour of data ahead, and Prometheus refuses samples older than its newest − 1 h.
pub(crate) fn send_parallel(
    server: &Server,
    path: &str,
    hdrs: &[(&str, &str)],
    bodies: &[Batch],
    connections: usize,
) -> anyhow::Result<Duration> {
    let connections = connections.max(1);
    let windows = bodies.last().map_or(0, |b| b.window + 1);
    let barrier = std::sync::Barrier::new(connections);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|w| {
                let (barrier, failed) = (&barrier, &failed);
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut result = Ok(());
                    let mut mine = bodies
                        .iter()
                        .filter(|b| b.group % connections == w)
                        .peekable();
                    for window in 0..windows {
                        while let Some(b) = mine.next_if(|b| b.window == window) {
                            if result.is_err() || failed.load(Ordering::Relaxed) {
                                continue;
                            }
                            result = post_one(server, path, hdrs, b);
                            if result.is_err() {
                                failed.store(true, Ordering::Relaxed);
                            }
                        }
                        // Every thread reaches every window's barrier, failed or not.
                        barrier.wait();
                    }
                    result
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(r) => r?,
                Err(_) => bail!("a client thread panicked"),
            }
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

fn post_one(server: &Server, path: &str, hdrs: &[(&str, &str)], b: &Batch) -> anyhow::Result<()> {
    let r = http::post(server.addr, path, hdrs, &b.body)?;
    if !(200..300).contains(&r.status) {
        bail!(
            "{} answered a write of {} samples (window {}, group {}) with {}: {}",
            server.name,
            b.samples,
            b.window,
            b.group,
            r.status,
            r.text().trim()
        );
    }
    Ok(())
}

fn measure_one(
    system: System,
    format: Format,
    args: &IngestArgs,
    core_node: &Path,
    dir: &Path,
    bodies: &[Batch],
    samples: u64,
) -> anyhow::Result<Run> {
    let Started { server } = start(system, args, core_node, dir)?;
    server.settle(SETTLE_LIMIT)?;
    let cpu_before = server.cpu()?;
    let wall = send_parallel(
        &server,
        write_path(system, format, &server),
        headers(format),
        bodies,
        args.connections as usize,
    )?;
    server.settle(SETTLE_LIMIT)?;
    let cpu = server.cpu()?.saturating_sub(cpu_before);
    let hwm = server.peak_rss_bytes()?;
    let _ = server.terminate(STOP_LIMIT);
    Ok(Run {
        samples_per_s: samples as f64 / wall.as_secs_f64().max(1e-9),
        cpu_ns_per_sample: cpu.as_nanos() as f64 / samples.max(1) as f64,
        peak_rss_bytes: hwm as f64,
    })
}

pub fn run(args: &IngestArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    let root = Root::new(&args.data_dir, "updraft-bench-ingest-")?;
    let core_node = args
        .core_node
        .clone()
        .unwrap_or_else(servers::default_core_node);
    let vm_missing = missing(&args.victoria_metrics, victoria_metrics::PACKAGE);
    let pairs = [
        Pair {
            protocol: "remote_write",
            format: Format::RemoteWrite,
            updraft: Durability::Buffered,
            peers: vec![
                (System::Prometheus, missing(&args.prometheus, "prometheus")),
                (System::Victoria, vm_missing.clone()),
            ],
        },
        Pair {
            protocol: "line_protocol",
            format: Format::LineProtocol,
            updraft: Durability::Fsync,
            peers: vec![
                (System::Influx, missing(&args.influxd, "influxdb")),
                (System::Victoria, vm_missing),
            ],
        },
    ];
    let mut notes = Vec::new();
    for (system, m) in pairs.iter().flat_map(|p| &p.peers) {
        if let Some(m) = m {
            let line = format!("MISSING: {m}; its rows say so, no figure is made up.");
            if !notes.contains(&line) {
                reporter.note(&format!("ingest: {}: {m}: reported missing", system.name()));
                notes.push(line);
            }
        }
    }
    let cut = Cut {
        window_ms: args.window,
        series_per_request: args.series_per_request as usize,
    };
    let mut figures = Vec::new();
    let mut table = Table::new([
        "dataset",
        "protocol",
        "system (durability)",
        "samples/s",
        "CPU ns/sample",
        "peak RSS (MiB)",
        "updraft ÷ this (samples/s)",
        "updraft ÷ this (CPU/sample)",
        "target (updraft against this)",
    ]);
    for spec in args.specs() {
        let name = spec.dataset.name();
        let series: Vec<SeriesData> = datasets::generate(&spec).collect();
        let samples: u64 = series.iter().map(|s| s.samples.len() as u64).sum();
        for pair in &pairs {
            let bodies = batches::build(&series, cut, pair.format)?;
            let bytes: usize = bodies.iter().map(|b| b.body.len()).sum();
            reporter.note(&format!(
                "ingest: {name} {} over {}: {} samples in {} requests, {:.1} MB",
                super::describe_spec(&spec),
                pair.protocol,
                thousands(samples),
                thousands(bodies.len() as u64),
                bytes as f64 / 1e6
            ));
            let mut systems = vec![System::Updraft(pair.updraft)];
            systems.extend(
                pair.peers
                    .iter()
                    .filter(|(_, m)| m.is_none())
                    .map(|&(s, _)| s),
            );
            let mut runs: Vec<Vec<Run>> = vec![Vec::new(); systems.len()];
            for round in 0..args.rounds as usize {
                for k in 0..systems.len() {
                    // Alternate who goes first: a warm page cache or a busy neighbour should
                    // not always favour the same system.
                    let i = (round + k) % systems.len();
                    let system = systems[i];
                    let dir = root.fresh(&format!(
                        "{name}-{}-{}-{round}",
                        pair.protocol,
                        system.name()
                    ))?;
                    let r = measure_one(
                        system,
                        pair.format,
                        args,
                        &core_node,
                        &dir,
                        &bodies,
                        samples,
                    )
                    .with_context(|| format!("{} on {name}", system.name()))?;
                    reporter.note(&format!(
                        "ingest: {name} {} round {}: {} {:.0} samples/s, {:.0} ns CPU/sample, peak RSS {:.0} MiB",
                        pair.protocol,
                        round + 1,
                        system.name(),
                        r.samples_per_s,
                        r.cpu_ns_per_sample,
                        r.peak_rss_bytes / f64::from(1u32 << 20)
                    ));
                    runs[i].push(r);
                    if args.data_dir.is_none() {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
            }
            let medians: Vec<Run> = runs
                .iter()
                .map(|rs| Run {
                    samples_per_s: median(rs.iter().map(|r| r.samples_per_s).collect()),
                    cpu_ns_per_sample: median(rs.iter().map(|r| r.cpu_ns_per_sample).collect()),
                    peak_rss_bytes: median(rs.iter().map(|r| r.peak_rss_bytes).collect()),
                })
                .collect();
            for (system, m) in systems.iter().zip(&medians) {
                let f = |fig: &str, v: f64, unit: &str| {
                    Figure::new(
                        SCENARIO,
                        name,
                        system.name(),
                        &format!("{}_{fig}", pair.protocol),
                        v,
                        unit,
                    )
                };
                figures.push(f("samples_per_s", m.samples_per_s, "samples/s"));
                figures.push(f("cpu_ns_per_sample", m.cpu_ns_per_sample, "ns"));
                figures.push(f("peak_rss_bytes", m.peak_rss_bytes, "B"));
            }
            let u = medians[0];
            for (i, (system, m)) in systems.iter().zip(&medians).enumerate() {
                let (speed, cpu, target) = if i == 0 {
                    (String::new(), String::new(), String::new())
                } else {
                    (
                        format!("{:.2}×", u.samples_per_s / m.samples_per_s),
                        format!("{:.2}×", u.cpu_ns_per_sample / m.cpu_ns_per_sample),
                        target(pair.format, *system, &u, m),
                    )
                };
                table.push_row([
                    name.to_owned(),
                    pair.protocol.to_owned(),
                    format!("{} ({})", system.name(), system.durability()),
                    format_value(m.samples_per_s),
                    format_value(m.cpu_ns_per_sample),
                    format!("{:.0}", m.peak_rss_bytes / f64::from(1u32 << 20)),
                    speed,
                    cpu,
                    target,
                ]);
            }
            for (peer, m) in &pair.peers {
                if let Some(m) = m {
                    table.push_row([
                        name.to_owned(),
                        pair.protocol.to_owned(),
                        format!("{}: MISSING", peer.name()),
                        m.clone(),
                    ]);
                }
            }
        }
    }
    notes.insert(
        0,
        format!(
            "Data: {}. Requests of ≤ {} series × {} s of samples, {} client threads, one request \
             in flight each, one connection per request; identical requests for every system \
             of a protocol. Medians of {} runs, each on a fresh process and directory, the \
             order of the systems alternating. CPU: the server process only, until idle again. \
             Updraft's durability matches the peer's: buffered against Prometheus (WAL without \
             fsync), fsync against InfluxDB (wal-fsync-delay 0s); VictoriaMetrics 1.79 has no \
             WAL (acknowledged samples wait in memory about 1 s), its own default.",
            args.specs()
                .iter()
                .map(|s| format!("{} {}", s.dataset.name(), super::describe_spec(s)))
                .collect::<Vec<_>>()
                .join(", "),
            args.series_per_request,
            args.window / 1000,
            args.connections,
            args.rounds
        ),
    );
    notes.push(
        "Where Updraft's line-protocol CPU goes (perf profiles of core-node taking iot-trucks \
         100 × 2h over /write; not re-measured by this command): on 2026-11-25 (commit 832f62a) \
         parsing lines about 20 %, malloc/free about 23 % (every line built its label set \
         afresh), SipHash about 5 %. On 2026-12-07 each line is parsed into one reused buffer \
         and a repeated tag set maps to its series by the hash of its text, once per request: \
         label sets and malloc/free fell under 2 %, parsing was about a third, and the kernel \
         zeroing fresh pages for request bodies and batches (`clear_page_erms`) the largest \
         share, about 37 %: mimalloc's transparent huge pages, each fresh page a 2 MiB fault. \
         Since then mimalloc is built without them (`no_thp`) and the parser's name scan takes \
         a third fewer instructions."
            .to_owned(),
    );
    if reporter.json() {
        for n in &notes {
            reporter.note(n);
        }
    }
    reporter.dataset_result(
        "ingest: Updraft against Prometheus 2.42 (remote_write), InfluxDB 1.6.7 (line protocol) and VictoriaMetrics 1.79 (both)",
        &figures,
        &table,
        &notes,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_odd_and_even_count() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 4.0);
        assert!(median(Vec::new()).is_nan());
    }
}

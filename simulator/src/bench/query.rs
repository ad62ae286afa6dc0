//! `simulator bench query`: range-query latency and remote_write ingest CPU, Updraft against
//! Prometheus 2.42 and VictoriaMetrics 1.79, real processes on this machine, same data, same
//! client.
//!
//! # Data
//!
//! - Long set: `iot-trucks`, `--long-trucks` (1: 10 series at 10 s) over `--long-duration`
//!   (30 days) from 2024-01-01. Prometheus gets it as blocks: the simulator's OpenMetrics
//!   exporter, then `promtool tsdb create-blocks-from openmetrics --max-block-duration=486h`
//!   (the largest block Prometheus' own compactor makes with a 10-year retention, so it finds
//!   nothing to compact at start-up); its remote-write receiver refuses samples older than the
//!   head's max time − 1 h, so history cannot go that way. Updraft gets the same samples over
//!   remote_write (`/api/v1/write`, requests of 10 series × 1,000 samples); any order suits it.
//!   VictoriaMetrics ([`victoria_metrics`]) gets the same requests as Updraft.
//! - Short set: `metrics-mix`, `--hosts` (313) over `--duration` (2 h) starting where the long
//!   set ends, only its `node_cpu_seconds_total` series (32 per host: 10,016 counters at 15 s).
//!   Both servers get the same remote_write requests, byte for byte, in global time order (as
//!   Prometheus requires): `--series-per-request` series × `--samples-per-series` samples each,
//!   snappy protobuf, one request in flight, one connection per request.
//!
//! # Figures
//!
//! - `query_<shape>_ms` (systems `updraft`, `prometheus`, `victoria-metrics`): the median wall time of
//!   `--rounds` `GET /api/v1/query_range` after a warm-up, from the request to the last byte of
//!   the answer; the servers take turns within a round. Before timing, each answer is compared
//!   with Prometheus' (series, timestamps, values within 1e-9; [`answers`]) and a warning is
//!   printed where one differs. VictoriaMetrics speaks MetricsQL, whose `rate` and lookback
//!   differ from PromQL's: where its answer differs, the table gives no Updraft ÷
//!   VictoriaMetrics latency ratio (latency is compared only where all three agree).
//! - `remote_write_cpu_ns_per_sample`: CPU time of the server process (utime + stime of
//!   `/proc/<pid>/stat`, all threads) from before the short set's first request until it is idle
//!   again after the last (so deferred work such as flushes counts), ÷ samples sent.
//!
//! Durability is not equal by default: Updraft fsyncs its WAL before answering a write
//! (`--durability buffered` hands it to the OS only), Prometheus writes its WAL without fsync.

mod answers;
pub(crate) mod http;
pub(crate) mod servers;

use super::codec::thousands;
use super::storage::{missing, victoria_metrics};
use super::table::{Table, format_value};
use super::{Figure, Reporter};
use crate::datasets::{self, Dataset, DatasetSpec, SeriesData};
use answers::{differing_points, parse_answer, points};
use anyhow::{Context, bail};
use core_node::storage::Durability;
use protocols::remote_write::{self as rw, WriteRequest};
use servers::Server;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SCENARIO: &str = "query";
/// The issue's target: each Updraft figure at most half of Prometheus'.
const TARGET_RATIO: f64 = 0.5;
/// Samples per series per request when loading the long set into Updraft.
const LONG_SAMPLES_PER_SERIES: usize = 1_000;
const SHORT_METRIC: &str = "node_cpu_seconds_total";
const SHORT_STEP_MS: i64 = 30_000;
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// `simulator bench query`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// Trucks of the long set (iot-trucks, 10 series each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub long_trucks: u64,
    /// Period of the long set, e.g. 30d.
    #[arg(long, default_value = "30d", value_parser = datasets::parse_duration_ms)]
    pub long_duration: i64,
    /// Hosts of the short set (metrics-mix; 32 node_cpu_seconds_total series each).
    #[arg(long, default_value_t = 313, value_parser = clap::value_parser!(u64).range(1..))]
    pub hosts: u64,
    /// Period of the short set, e.g. 2h.
    #[arg(long, default_value = "2h", value_parser = datasets::parse_duration_ms)]
    pub duration: i64,
    /// Seed of every random stream.
    #[arg(long, default_value_t = datasets::DEFAULT_SEED)]
    pub seed: u64,
    /// Timed runs of each query (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Series per remote_write request of the short set.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub series_per_request: u64,
    /// Samples per series per remote_write request of the short set.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub samples_per_series: u64,
    /// When core-node acknowledges a write: after fsync, or after handing it to the OS.
    #[arg(long, value_enum, default_value_t = Durability::Fsync)]
    pub durability: Durability,
    /// The core-node binary [default: next to this simulator, else target/release/core-node].
    #[arg(long)]
    pub core_node: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/prometheus")]
    pub prometheus: PathBuf,
    #[arg(long, default_value = "/usr/bin/promtool")]
    pub promtool: PathBuf,
    #[arg(long, default_value = victoria_metrics::BINARY)]
    pub victoria_metrics: PathBuf,
    /// Directory for both servers' data and logs, kept afterwards [default: a temporary
    /// directory, removed afterwards].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// One timed query.
struct Shape {
    /// `query_<key>_ms`.
    key: &'static str,
    dataset: Dataset,
    promql: String,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
}

impl Shape {
    fn path(&self) -> String {
        format!(
            "/api/v1/query_range?query={}&start={}&end={}&step={}",
            http::encode_component(&self.promql),
            seconds(self.start_ms),
            seconds(self.end_ms),
            seconds(self.step_ms)
        )
    }
}

/// `1704067200123` → `1704067200.123`.
fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// The five shapes of the issue, on the long set (1) and the short set (2–5).
fn shapes(long: &DatasetSpec, short: &DatasetSpec) -> Vec<Shape> {
    let long_end = long.start_ms + long.duration_ms;
    // About 10,000 points, whole seconds, at least the dataset's 10 s interval.
    let long_step = ((long.duration_ms / 10_000 + 999) / 1000).max(10) * 1000;
    let short_end = short.start_ms + short.duration_ms;
    let short = |key, promql: &str| Shape {
        key,
        dataset: Dataset::MetricsMix,
        promql: promql.to_owned(),
        start_ms: short.start_ms,
        end_ms: short_end,
        step_ms: SHORT_STEP_MS,
    };
    vec![
        Shape {
            key: "one_series",
            dataset: Dataset::IotTrucks,
            promql: r#"readings_velocity{name="truck_0"}"#.to_owned(),
            start_ms: long.start_ms,
            end_ms: long_end,
            step_ms: long_step,
        },
        short(
            "sum_by_rate",
            &format!("sum by (mode) (rate({SHORT_METRIC}[5m]))"),
        ),
        short("topk", &format!("topk(5, rate({SHORT_METRIC}[5m]))")),
        short(
            "regex",
            &format!(r#"{SHORT_METRIC}{{instance=~"host-1.*",mode=~"user|system"}}"#),
        ),
        short(
            "quantile_over_time",
            &format!(r#"quantile_over_time(0.9, {SHORT_METRIC}{{mode="user"}}[10m])"#),
        ),
    ]
}

/// Remote_write bodies for `series`, in global time order: for each window of
/// `samples_per_series` samples, the series in groups of `series_per_request`.
pub(crate) fn encode_requests(
    series: &[SeriesData],
    series_per_request: usize,
    samples_per_series: usize,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let longest = series.iter().map(|s| s.samples.len()).max().unwrap_or(0);
    let mut bodies = Vec::new();
    for window in (0..longest).step_by(samples_per_series.max(1)) {
        for group in series.chunks(series_per_request.max(1)) {
            let timeseries: Vec<rw::TimeSeries> = group
                .iter()
                .filter_map(|s| {
                    let samples = s.samples.get(window..)?;
                    let samples = &samples[..samples.len().min(samples_per_series)];
                    (!samples.is_empty()).then(|| rw::TimeSeries {
                        labels: s
                            .info
                            .labels
                            .iter()
                            .map(|l| rw::Label {
                                name: l.name.to_string(),
                                value: l.value.to_string(),
                            })
                            .collect(),
                        samples: samples
                            .iter()
                            .map(|x| rw::Sample {
                                value: x.value,
                                timestamp: x.timestamp_ms,
                            })
                            .collect(),
                    })
                })
                .collect();
            if !timeseries.is_empty() {
                bodies.push(rw::encode_request(&WriteRequest { timeseries })?);
            }
        }
    }
    Ok(bodies)
}

/// What sending a stream of requests cost the server.
struct Ingest {
    wall: Duration,
    /// CPU from before the first request to the end of the last answer.
    cpu_during: Duration,
    /// CPU from before the first request until the server was idle again.
    cpu_settled: Duration,
}

fn send_all(server: &Server, bodies: &[Vec<u8>], settle: bool) -> anyhow::Result<Ingest> {
    let headers = [
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
        ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ("User-Agent", "updraft-simulator"),
    ];
    let cpu_before = server.cpu()?;
    let start = Instant::now();
    for (i, body) in bodies.iter().enumerate() {
        let r = http::post(server.addr, server.write_path, &headers, body)?;
        if !(200..300).contains(&r.status) {
            bail!(
                "{} answered request {i} of {} with {}: {}",
                server.name,
                bodies.len(),
                r.status,
                r.text().trim()
            );
        }
    }
    let wall = start.elapsed();
    let cpu_during = server.cpu()?.saturating_sub(cpu_before);
    if settle {
        server.settle(SETTLE_LIMIT)?;
    }
    let cpu_settled = server.cpu()?.saturating_sub(cpu_before);
    Ok(Ingest {
        wall,
        cpu_during,
        cpu_settled,
    })
}

fn query_once(server: &Server, path: &str) -> anyhow::Result<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let r = http::get(server.addr, path)?;
    let elapsed = start.elapsed();
    if r.status != 200 {
        bail!(
            "{} answered {path} with {}: {}",
            server.name,
            r.status,
            r.text()
        );
    }
    Ok((elapsed, r.body))
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// Bytes of every file under `dir`.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn samples_in(series: &[SeriesData]) -> u64 {
    series.iter().map(|s| s.samples.len() as u64).sum()
}

pub fn run(args: &QueryArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    let temp;
    let root = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("updraft-bench-query-")
                .tempdir()
                .context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let prom_dir = root.join("prometheus");
    if prom_dir.exists() || root.join("core").exists() {
        bail!(
            "{} already holds a run's data; remove it or pick another --data-dir",
            root.display()
        );
    }
    let core_node = args
        .core_node
        .clone()
        .unwrap_or_else(servers::default_core_node);
    let long_spec = DatasetSpec::new(Dataset::IotTrucks, args.long_trucks, args.long_duration)
        .with_seed(args.seed);
    let short_spec = DatasetSpec::new(Dataset::MetricsMix, args.hosts, args.duration)
        .with_seed(args.seed)
        .with_start_ms(long_spec.start_ms + long_spec.duration_ms);
    let mut notes = Vec::new();

    // The long set: OpenMetrics → promtool blocks for Prometheus; requests for Updraft.
    let t = Instant::now();
    let om_path = root.join("long.om");
    let om_lines = {
        let file = std::fs::File::create(&om_path)
            .with_context(|| format!("creating {}", om_path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let n = datasets::export::write_openmetrics(&long_spec, &mut out)?;
        std::io::Write::flush(&mut out)?;
        n
    };
    let om_bytes = std::fs::metadata(&om_path)?.len();
    servers::promtool_backfill(&args.promtool, &om_path, &prom_dir, "486h")?;
    std::fs::remove_file(&om_path)?;
    let long_series: Vec<SeriesData> = datasets::generate(&long_spec).collect();
    let long_samples = samples_in(&long_series);
    let long_bodies = encode_requests(&long_series, long_series.len(), LONG_SAMPLES_PER_SERIES)?;
    drop(long_series);
    reporter.note(&format!(
        "query: long set iot-trucks {}: {} samples, {:.0} MB OpenMetrics → promtool blocks in {:.1} s",
        super::describe_spec(&long_spec),
        thousands(om_lines),
        om_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    ));

    let short_series: Vec<SeriesData> = datasets::generate(&short_spec)
        .filter(|s| s.info.labels.metric_name() == SHORT_METRIC)
        .collect();
    let short_samples = samples_in(&short_series);
    let short_bodies = encode_requests(
        &short_series,
        args.series_per_request as usize,
        args.samples_per_series as usize,
    )?;
    let short_body_bytes: usize = short_bodies.iter().map(Vec::len).sum();
    reporter.note(&format!(
        "query: short set metrics-mix {} ({SHORT_METRIC} only): {} series, {} samples, {} requests, {:.1} MB snappy",
        super::describe_spec(&short_spec),
        thousands(short_series.len() as u64),
        thousands(short_samples),
        short_bodies.len(),
        short_body_bytes as f64 / 1e6
    ));
    drop(short_series);

    let prometheus = servers::start_prometheus(&args.prometheus, &root, &prom_dir)?;
    let updraft = servers::start_core_node(&core_node, &root, args.durability)?;
    let vm_missing = missing(&args.victoria_metrics, victoria_metrics::PACKAGE);
    let vm = match &vm_missing {
        None => Some(victoria_metrics::start(&args.victoria_metrics, &root)?),
        Some(m) => {
            reporter.note(&format!("query: {m}: reported missing"));
            notes.push(format!(
                "MISSING: {m}; its columns say so, no figure is made up."
            ));
            None
        }
    };
    reporter.note(&format!(
        "query: prometheus pid {} on {}, core-node pid {} on {} (durability {}), data in {}",
        prometheus.pid(),
        prometheus.addr,
        updraft.pid(),
        updraft.addr,
        servers::durability_name(args.durability),
        root.display()
    ));
    // VictoriaMetrics, like Updraft, takes history over remote_write.
    for server in std::iter::once(&updraft).chain(vm.as_ref().map(|v| &v.server)) {
        let t = Instant::now();
        send_all(server, &long_bodies, false)?;
        reporter.note(&format!(
            "query: long set into {} over remote_write: {} samples in {} requests, {:.1} s",
            server.name,
            thousands(long_samples),
            long_bodies.len(),
            t.elapsed().as_secs_f64()
        ));
    }
    drop(long_bodies);

    // Ingest: the same requests to each server, each measured from an idle start.
    let mut figures = Vec::new();
    let mut ingest = Vec::new();
    let mut systems = vec![&prometheus, &updraft];
    systems.extend(vm.as_ref().map(|v| &v.server));
    for &server in &systems {
        let waited = server.settle(SETTLE_LIMIT)?;
        let r = send_all(server, &short_bodies, true)?;
        reporter.note(&format!(
            "query: remote_write into {} (idle after {:.0} s): {:.1} s wall, {:.0} ksamples/s, CPU {:.2} s during, {:.2} s until idle",
            server.name,
            waited.as_secs_f64(),
            r.wall.as_secs_f64(),
            short_samples as f64 / r.wall.as_secs_f64().max(1e-9) / 1e3,
            r.cpu_during.as_secs_f64(),
            r.cpu_settled.as_secs_f64()
        ));
        let ns = r.cpu_settled.as_nanos() as f64 / short_samples.max(1) as f64;
        figures.push(Figure::new(
            SCENARIO,
            Dataset::MetricsMix.name(),
            server.name,
            "remote_write_cpu_ns_per_sample",
            ns,
            "ns",
        ));
        ingest.push(ns);
    }
    drop(short_bodies);
    if let Some(v) = &vm {
        // Its last second of samples waits in memory; queries must see them.
        victoria_metrics::force_flush(v)?;
    }

    // Queries: answers compared with Prometheus' on the warm-up, then alternating timed
    // rounds. systems: prometheus, updraft, then victoria-metrics if it runs.
    let mut rows = Vec::new();
    let mut mismatches = Vec::new();
    let mut vm_mismatches = Vec::new();
    for shape in shapes(&long_spec, &short_spec) {
        let path = shape.path();
        let mut answers = Vec::new();
        for &server in &systems {
            let (_, body) = query_once(server, &path)?;
            answers.push(parse_answer(server, &body)?);
        }
        let counts: Vec<(usize, usize)> = answers.iter().map(|a| (a.len(), points(a))).collect();
        // Points missing or different either way, for each system against Prometheus.
        let differing: Vec<usize> = answers
            .iter()
            .map(|a| differing_points(&answers[0], a).max(differing_points(a, &answers[0])))
            .collect();
        for (i, &server) in systems.iter().enumerate().skip(1) {
            if differing[i] > 0 {
                reporter.note(&format!(
                    "WARNING query {}: {} returned {} series / {} points, prometheus {} / {}; {} points missing, extra or different",
                    shape.key, server.name, counts[i].0, counts[i].1, counts[0].0, counts[0].1, differing[i]
                ));
            }
        }
        if differing[1] > 0 {
            mismatches.push(format!("{} ({} points)", shape.key, differing[1]));
        }
        if differing.get(2).is_some_and(|&d| d > 0) {
            vm_mismatches.push(format!("{} ({} points)", shape.key, differing[2]));
        }
        let n = systems.len();
        let mut times = vec![Vec::new(); n];
        for round in 0..args.rounds as usize {
            for k in 0..n {
                let i = (round + k) % n;
                times[i].push(query_once(systems[i], &path)?.0);
            }
        }
        let medians: Vec<f64> = times.into_iter().map(|t| ms(median(t))).collect();
        let figure = format!("query_{}_ms", shape.key);
        for (&server, &v) in systems.iter().zip(&medians) {
            figures.push(Figure::new(
                SCENARIO,
                shape.dataset.name(),
                server.name,
                &figure,
                v,
                "ms",
            ));
        }
        reporter.note(&format!(
            "query {}: {} ({} series, {} points)",
            shape.key,
            systems
                .iter()
                .zip(&medians)
                .map(|(s, v)| format!("{} {v:.1} ms", s.name))
                .collect::<Vec<_>>()
                .join(", "),
            counts[0].0,
            counts[0].1
        ));
        let all_agree = differing.iter().all(|&d| d == 0);
        rows.push((shape, counts[1], medians, all_agree));
    }

    let mut table = Table::new([
        "dataset",
        "query shape",
        "series / points",
        "updraft (ms)",
        "prometheus (ms)",
        "updraft/prometheus",
        "≤ 0.5×",
        "victoria-metrics (ms)",
        "updraft/victoria-metrics (where all agree)",
    ]);
    let vm_cell = |v: Option<f64>| match (v, &vm_missing) {
        (Some(v), _) => format_value(v),
        (None, Some(_)) => "missing".to_owned(),
        (None, None) => "–".to_owned(),
    };
    for (shape, (series, points), medians, all_agree) in &rows {
        let (p, u, v) = (medians[0], medians[1], medians.get(2).copied());
        let vm_ratio = match v {
            Some(v) if *all_agree => format!("{:.2}×", u / v),
            Some(_) => "answers differ".to_owned(),
            None => vm_cell(None),
        };
        table.push_row([
            shape.dataset.name().to_owned(),
            format!("`{}`", shape.promql),
            format!(
                "{} / {}",
                thousands(*series as u64),
                thousands(*points as u64)
            ),
            format_value(u),
            format_value(p),
            format!("{:.2}×", u / p),
            met(u / p).to_owned(),
            vm_cell(v),
            vm_ratio,
        ]);
    }
    let (u, p, v) = (ingest[1], ingest[0], ingest.get(2).copied());
    table.push_row([
        Dataset::MetricsMix.name().to_owned(),
        "remote_write CPU per sample (ns, not ms)".to_owned(),
        format!("{} samples", thousands(short_samples)),
        format_value(u),
        format_value(p),
        format!("{:.2}×", u / p),
        met(u / p).to_owned(),
        vm_cell(v),
        v.map_or_else(|| vm_cell(None), |v| format!("{:.2}×", u / v)),
    ]);

    notes.push(format!(
        "Data: long set iot-trucks {} ({} samples; Prometheus: promtool blocks, {:.0} MB OpenMetrics; \
         Updraft and VictoriaMetrics: remote_write); short set metrics-mix {} restricted to {SHORT_METRIC} ({} samples, \
         the same remote_write requests to each, {} series × {} samples per request, time order). Ranges: long-set \
         query step {} s, short-set queries step {} s. Medians of {} runs after a warm-up.",
        super::describe_spec(&long_spec),
        thousands(long_samples),
        om_bytes as f64 / 1e6,
        super::describe_spec(&short_spec),
        thousands(short_samples),
        args.series_per_request,
        args.samples_per_series,
        shapes(&long_spec, &short_spec)[0].step_ms / 1000,
        SHORT_STEP_MS / 1000,
        args.rounds
    ));
    notes.push(format!(
        "Durability: Updraft --durability {} ({}); Prometheus 2.42 WAL without fsync per write; \
         VictoriaMetrics 1.79 no WAL (samples wait in memory about 1 s; it takes the long set \
         over remote_write as Updraft does, with its response cache off). \
         CPU per sample: utime+stime of the server process from before the first request until \
         idle again.",
        servers::durability_name(args.durability),
        match args.durability {
            Durability::Fsync => "WAL fsynced before each 204",
            Durability::Buffered => "WAL handed to the OS before each 204, no fsync",
        }
    ));
    if vm.is_some() {
        notes.push(if vm_mismatches.is_empty() {
            "VictoriaMetrics' answers equal Prometheus' on every shape.".to_owned()
        } else {
            format!(
                "VictoriaMetrics' answers differ from Prometheus' (MetricsQL: missing, extra or \
                 different points): {}; the updraft/victoria-metrics latency ratio is given only \
                 where all three answers agree.",
                vm_mismatches.join(", ")
            )
        });
    }
    if !mismatches.is_empty() {
        notes.push(format!(
            "Answers differ from Prometheus' (missing points or values off by more than 1e-9 \
             relative): {}.",
            mismatches.join(", ")
        ));
    }
    notes.push(format!(
        "On disk after the run: Updraft {:.1} MB, Prometheus {:.1} MB (blocks + WAL, head not \
         compacted){}.",
        dir_bytes(&root.join("core")) as f64 / 1e6,
        dir_bytes(&prom_dir) as f64 / 1e6,
        vm.as_ref().map_or_else(String::new, |v| format!(
            ", VictoriaMetrics {:.1} MB (not merged)",
            dir_bytes(&v.data) as f64 / 1e6
        ))
    ));
    drop(vm);
    drop(updraft);
    drop(prometheus);
    if reporter.json() {
        for n in &notes {
            reporter.note(n);
        }
    }
    reporter.dataset_result(
        "query: Updraft against Prometheus 2.42 and VictoriaMetrics 1.79 (range queries, remote_write ingest)",
        &figures,
        &table,
        &notes,
    );
    Ok(())
}

fn met(ratio: f64) -> &'static str {
    if ratio <= TARGET_RATIO {
        "met"
    } else {
        "not met"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_in_time_order_in_groups() {
        let spec = DatasetSpec::new(Dataset::MetricsMix, 2, 10 * 60_000);
        let series: Vec<SeriesData> = datasets::generate(&spec)
            .filter(|s| s.info.labels.metric_name() == SHORT_METRIC)
            .collect();
        assert_eq!(series.len(), 64);
        let bodies = encode_requests(&series, 50, 15).expect("encodes");
        // 40 scrapes per series: windows of 15, 15, 10; two requests (50 + 14 series) each.
        assert_eq!(bodies.len(), 6);
        let decoded: Vec<WriteRequest> = bodies
            .iter()
            .map(|b| rw::decode_request(b, rw::DEFAULT_MAX_DECODED_BYTES).expect("decodes"))
            .collect();
        let count: usize = decoded
            .iter()
            .flat_map(|r| &r.timeseries)
            .map(|t| t.samples.len())
            .sum();
        assert_eq!(count as u64, samples_in(&series));
        let max_first = decoded[0..2]
            .iter()
            .flat_map(|r| &r.timeseries)
            .flat_map(|t| &t.samples)
            .map(|s| s.timestamp)
            .max();
        let min_second = decoded[2..4]
            .iter()
            .flat_map(|r| &r.timeseries)
            .flat_map(|t| &t.samples)
            .map(|s| s.timestamp)
            .min();
        assert!(max_first < min_second, "windows overlap");
    }

    #[test]
    fn shapes_cover_the_issue_and_fit_prometheus_point_limit() {
        let long = DatasetSpec::new(Dataset::IotTrucks, 1, 30 * datasets::DAY_MS);
        let short = DatasetSpec::new(Dataset::MetricsMix, 313, 2 * 3_600_000)
            .with_start_ms(long.start_ms + long.duration_ms);
        let s = shapes(&long, &short);
        let keys: Vec<&str> = s.iter().map(|s| s.key).collect();
        assert_eq!(
            keys,
            [
                "one_series",
                "sum_by_rate",
                "topk",
                "regex",
                "quantile_over_time"
            ]
        );
        for shape in &s {
            assert!((shape.end_ms - shape.start_ms) / shape.step_ms <= 11_000);
        }
        assert_eq!(s[0].step_ms, 260_000);
        assert!(
            s[1].path()
                .starts_with("/api/v1/query_range?query=sum%20by%20%28mode%29")
        );
        assert!(
            s[1].path()
                .ends_with("&start=1706659200.000&end=1706666400.000&step=30.000")
        );
    }
}

//! `simulator bench billion`: a billion `iot-trucks` samples into one core node through the
//! real ingest path, then bytes on disk, memory and query times.
//!
//! # What runs
//!
//! One process holds everything: a core node started with [`core_node::run`] on a fresh data
//! directory (certificates from [`core_node::certs::ensure`], loopback ports found by binding
//! port 0), the dataset generator on its own thread, and a QUIC client ([`quic_client`]). The
//! client plays `--agents` edge agents: one connection each, mutual TLS 1.3 with the agent
//! certificate, one batch in flight each. Each agent has its own agent id: the core acknowledges
//! a batch whose sequence is at or below the agent's last applied one as a duplicate without
//! storing it, so one agent id with several batches in flight would lose whichever arrived out
//! of order. Every batch must come back `Stored` whole; anything else aborts the run.
//!
//! Batches are built in timestamp order: the fleet advances in windows of `--chunk-samples`
//! ticks; in each window, each series of each truck becomes one chunk
//! ([`SeriesChunk::encode`]), and `--batch-samples / (10 × chunk)` trucks make one
//! [`WriteBatch`]. Late arrivals of the dataset are not replayed (every sample arrives on time).
//!
//! # Scale
//!
//! A truck reports 10 series every 10 s and misses 1 % of its ticks, so the fleet yields
//! `trucks × 10 × 0.99` samples per tick. The fleet stays at `--trucks` (10,000: 100,000 series,
//! of which `readings_velocity` gives exactly the 10,000 series of the aggregation query) and
//! the duration is the number of ticks that reaches `--samples`: 10,102 ticks (28 h 3 min) for
//! 1,000,000,000, 203 ticks (33 min 50 s) for 20,000,000. `--trucks 1000` gives the other shape
//! of a billion (10,000 series × 11.7 days).
//!
//! # Figures (system `updraft`, dataset `iot-trucks`)
//!
//! - `samples_per_second`: acknowledged samples ÷ wall clock from the first batch generated to
//!   the last acknowledgement. The background compactor of the node runs meanwhile.
//! - `bytes_per_sample`: after ingest the node is stopped, its storage reopened directly and
//!   compacted to completion (`compact_now`, `seal_after: 0`) and flushed (`Storage::flush`:
//!   checkpoint, memtables to tables, major compaction, as DATASETS.md's "after a flush");
//!   once the directory size is stable, every file under the node's data directory ÷ samples
//!   acknowledged: the node's WAL (`wal/`), fjall's journal, and every keyspace's tables
//!   (chunks, series, postings index, dirty marks, meta); the note breaks the total down by
//!   part.
//! - `peak_rss_bytes`: `VmHWM` of the process at the end of ingest: the node, the generator
//!   (its fleet state alone is ~150 MiB at 10,000 trucks) and the client. The phases after
//!   ingest are left out: the reopened storage replays fjall's journal on top of the heap the
//!   stopped node left in the allocator, which a running node never does (the table's note
//!   gives the whole run's peak).
//! - `bytes_per_active_series`: (RSS after ingest − RSS before the node started) ÷ series. It
//!   includes the node's fixed-size buffers (fjall memtables and block cache), which dominate
//!   unless there are very many series; run with two `--trucks` to get the marginal cost.
//! - `query_one_series_ms`: `readings_velocity{name="truck_0"}` over the whole range, step
//!   range/10,000 (at least 10 s), through [`query::Engine::range`] on the reopened storage.
//! - `query_agg_10k_series_ms`: `sum(readings_velocity)` (10,000 series) over the last hour
//!   at a 10 s step. Both queries: median of `--query-rounds`.

mod generator;
pub(crate) mod probe;

use super::codec::thousands;
use super::table::{format_value, pivot};
use super::timing::Timing;
use super::{Figure, Reporter, quic_client};
use crate::datasets::{self, Dataset, DatasetSpec};
use anyhow::{Context, bail};
use core_node::storage::{CompactionOptions, Durability, Storage, StorageOptions};
use generator::{Frame, GenStats, Generator, Truck};
use probe::{cpu_diff, metric_value, proc_status_bytes, settle_disk, threads_cpu};
use protocols::Tenant;
use protocols::wire::AgentId;
use query::{Engine, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SCENARIO: &str = "billion";
const SYSTEM: &str = "updraft";
/// `iot-trucks` reports every 10 s (DATASETS.md).
const TICK_MS: i64 = 10_000;
/// Share of a truck's ticks that are reported (1 % are missing).
const PRESENT: f64 = 0.99;
const EPOCH: u64 = 1;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
const AGG_METRIC: &str = "readings_velocity";
const AGG_RANGE_MS: i64 = 3_600_000;

/// `simulator bench billion`.
#[derive(Debug, Clone, clap::Args)]
pub struct BillionArgs {
    /// Samples to ingest; the duration follows from it and the fleet size.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub samples: u64,
    /// Trucks in the fleet (10 series each).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub trucks: u64,
    /// Seed of every random stream.
    #[arg(long, default_value_t = datasets::DEFAULT_SEED)]
    pub seed: u64,
    /// When the core acknowledges a batch: after fsync, or after handing it to the OS.
    #[arg(long, value_enum, default_value_t = Durability::Fsync)]
    pub durability: Durability,
    /// Simulated edge agents: one QUIC connection and one batch in flight each.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub agents: u64,
    /// Ticks per series per batch, i.e. samples per chunk (fewer where ticks are missing).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub chunk_samples: u64,
    /// Samples per batch (whole trucks, at least one).
    #[arg(long, default_value_t = 80_000)]
    pub batch_samples: u64,
    /// Runs of each query; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(3..))]
    pub query_rounds: u32,
    /// Directory for the node's data and certificates, kept afterwards [default: a temporary
    /// directory, removed afterwards].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The dataset a `--samples` and `--trucks` call for.
pub fn spec_for(samples: u64, trucks: u64, seed: u64) -> DatasetSpec {
    let dataset = Dataset::IotTrucks;
    let per_tick = trucks as f64 * dataset.series_per_entity() as f64 * PRESENT;
    let ticks = (samples as f64 / per_tick).ceil().max(1.0) as i64;
    DatasetSpec::new(dataset, trucks, ticks * TICK_MS).with_seed(seed)
}

/// What the ingest phase measured.
struct Ingest {
    samples: u64,
    elapsed: Duration,
    gen_stats: GenStats,
    latencies: Vec<Duration>,
    rss_before: u64,
    rss_after: u64,
    hwm_after: u64,
    cpu_by_thread: Vec<(String, Duration)>,
    metrics: String,
}

/// A run's result, ready to print.
struct Outcome {
    heading: String,
    figures: Vec<Figure>,
    notes: Vec<String>,
}

pub fn run(args: &BillionArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    let outcome = measure(args, reporter)?;
    if reporter.json() {
        // The table's footnotes say where the time and the bytes went; keep them on stderr.
        for n in &outcome.notes {
            reporter.note(n);
        }
    }
    let table = pivot(&outcome.figures, Dataset::IotTrucks.name(), None);
    reporter.dataset_result(&outcome.heading, &outcome.figures, &table, &outcome.notes);
    Ok(())
}

fn measure(args: &BillionArgs, reporter: &Reporter) -> anyhow::Result<Outcome> {
    let spec = spec_for(args.samples, args.trucks, args.seed);
    let series_count = spec.series_count();
    let k = spec.dataset.series_per_entity() as u64;
    let trucks_per_batch = (args.batch_samples / (k * args.chunk_samples)).max(1) as usize;
    let temp;
    let root = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("updraft-billion-")
                .tempdir()
                .context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let data_dir = root.join("core");
    if data_dir.exists() {
        bail!(
            "{} already holds a node's data: its agent offsets would turn every batch into a \
             duplicate; remove it or pick another --data-dir",
            data_dir.display()
        );
    }
    reporter.note(&format!(
        "billion: {} samples requested → iot-trucks {} ({} series, {} ticks), durability {}, \
         {} agents, {} samples/chunk, {} trucks/batch (~{} samples), data in {}",
        thousands(args.samples),
        super::describe_spec(&spec),
        thousands(series_count),
        spec.duration_ms / TICK_MS,
        durability_name(args.durability),
        args.agents,
        args.chunk_samples,
        trucks_per_batch,
        thousands(trucks_per_batch as u64 * k * args.chunk_samples),
        root.display()
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let ingest = runtime.block_on(ingest(args, &spec, &root, trucks_per_batch, reporter))?;
    // Dropping the runtime drops every task the node left behind, and with them its storage
    // handles: the writer and compactor threads are joined and the directory is free.
    runtime.shutdown_timeout(Duration::from_secs(10));

    let storage = open_storage(&data_dir, args.durability)?;
    reporter.note("compacting every (series, day) now...");
    let t = Instant::now();
    let merged = storage
        .compact_now(&CompactionOptions {
            seal_after: Duration::ZERO,
            ..CompactionOptions::default()
        })
        .context("compacting")?;
    let compaction = t.elapsed();
    let t = Instant::now();
    reporter.note("flushing: checkpoint, memtables to tables, major compaction...");
    storage.flush().context("flushing storage")?;
    let disk = settle_disk(&data_dir)?;
    let settle = t.elapsed();

    let queries = run_queries(&storage, &spec, args.query_rounds as usize)?;
    let run_hwm = proc_status_bytes("VmHWM").unwrap_or(ingest.hwm_after);
    drop(storage);

    let samples = ingest.samples;
    let sps = samples as f64 / ingest.elapsed.as_secs_f64().max(1e-9);
    let bps = disk.total as f64 / samples.max(1) as f64;
    let per_series =
        ingest.rss_after.saturating_sub(ingest.rss_before) as f64 / series_count as f64;
    let dataset = spec.dataset.name();
    let figure = |name: &str, value: f64, unit: &str| {
        Figure::new(SCENARIO, dataset, SYSTEM, name, value, unit)
    };
    let figures = vec![
        figure("samples_per_second", sps, "samples/s"),
        figure("bytes_per_sample", bps, "B"),
        figure("peak_rss_bytes", ingest.hwm_after as f64, "B"),
        figure("query_one_series_ms", ms(queries.one.median), "ms"),
        figure("query_agg_10k_series_ms", ms(queries.agg.median), "ms"),
        figure("bytes_per_active_series", per_series, "B"),
    ];

    let mut notes = vec![
        format!(
            "Data: iot-trucks {}: {} series, {} samples acknowledged in {} batches; durability \
             `{}`.",
            super::describe_spec(&spec),
            thousands(series_count),
            thousands(samples),
            thousands(ingest.gen_stats.batches),
            durability_name(args.durability)
        ),
        format!(
            "Targets (issue): ≥ 1,000,000 samples/s (Prometheus 2.42 remote write ≈ 2.2 M/s without \
             fsync); ≤ 2.0 bytes/sample (Prometheus 6.5); ≤ 1 KiB RAM per active series \
             (Prometheus ~3 KiB). Prometheus figures are quoted from the issue, not measured in \
             this run. Here: {:.2} M samples/s, {:.3} bytes/sample, {} B/series.",
            sps / 1e6,
            bps,
            format_value(per_series)
        ),
    ];
    notes.extend(ingest_notes(args, &ingest));
    notes.push(format!(
        "Disk: {} in total (every file under the node's data directory after ingest, compaction \
         of {} (series, day)s in {:.1} s, and {:.1} s to flush and settle): {}. Without the \
         node's WAL and fjall's journal (both bounded in size, so their share falls as data \
         grows): {:.3} bytes/sample.",
        mib(disk.total),
        thousands(merged as u64),
        compaction.as_secs_f64(),
        settle.as_secs_f64(),
        disk.parts
            .iter()
            .map(|(name, b)| format!("{name} {}", mib(*b)))
            .collect::<Vec<_>>()
            .join(", "),
        disk.tables() as f64 / samples.max(1) as f64,
    ));
    notes.push(format!(
        "Memory: RSS {} before the node started (generator state built), {} after ingest; peak \
         during ingest {} (node, generator and client in one process); peak of the whole run \
         {} (with the compaction and queries on the reopened storage).",
        mib(ingest.rss_before),
        mib(ingest.rss_after),
        mib(ingest.hwm_after),
        mib(run_hwm)
    ));
    notes.push(format!(
        "Queries (reopened storage, query::Engine::range, median of {r}, best in brackets): \
         one series `{}` over the whole range at step {} s: {:.1} ms ({:.1}), {} points; \
         aggregation `sum({AGG_METRIC})` over the last {} min at step 10 s across {} series, \
         {} points: {:.1} ms ({:.1}).",
        queries.one_query,
        queries.one_step_ms as f64 / 1000.0,
        ms(queries.one.median),
        ms(queries.one.best),
        queries.one_points,
        queries.agg_range_ms / 60_000,
        thousands(queries.agg_series as u64),
        queries.agg_steps,
        ms(queries.agg.median),
        ms(queries.agg.best),
        r = args.query_rounds,
    ));
    Ok(Outcome {
        heading: format!(
            "billion: {dataset} ({}), durability {}",
            super::describe_spec(&spec),
            durability_name(args.durability)
        ),
        figures,
        notes,
    })
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Fsync => "fsync",
        Durability::Buffered => "buffered",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// Starts the node, replays the dataset through it, stops it.
async fn ingest(
    args: &BillionArgs,
    spec: &DatasetSpec,
    root: &Path,
    trucks_per_batch: usize,
    reporter: &Reporter,
) -> anyhow::Result<Ingest> {
    let certs_dir = root.join("certs");
    core_node::certs::ensure(&core_node::certs::CertRequest {
        dir: certs_dir.clone(),
        core_hosts: core_node::certs::CertRequest::default_hosts(),
        agent_id: "bench-agent".into(),
        agent_tenant: Tenant::default(),
        force: false,
    })
    .context("creating certificates")?;
    // The node's counters are part of what it costs; a second run in one process (tests)
    // finds a recorder installed already and reads none of the node's metrics.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap_or_else(|_| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle()
        });
    let mut config = core_node::config::CoreConfig::local(&root.join("core"), &certs_dir);
    config.durability = args.durability;
    config.quic_listen = free_port(true)?;
    config.http_listen = free_port(false)?;
    let quic_addr = config.quic_listen;

    let trucks: Vec<Truck> = (0..spec.entities)
        .map(|i| Truck::new(datasets::entity(spec, i)))
        .collect();
    let rss_before = proc_status_bytes("VmRSS").unwrap_or_default();

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut core = tokio::spawn(core_node::run(config, metrics.clone(), async move {
        let _ = stop_rx.await;
    }));
    let mut conns = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..args.agents as usize {
        // The core binds each batch's agent id to the agent id in the client certificate, so
        // every simulated agent gets its own certificate from the run's CA.
        let endpoint = quic_client::endpoint(lane_client(&certs_dir, i)?)?;
        endpoints.push(endpoint.clone());
        let conn = tokio::select! {
            c = quic_client::connect(&endpoint, quic_addr, "localhost") => c?,
            exited = &mut core => match exited {
                Ok(Err(e)) => return Err(e.context("core node failed to start")),
                _ => bail!("core node stopped during start-up"),
            },
        };
        conns.push(conn);
    }

    let started = Instant::now();
    let cpu_before = threads_cpu();
    let acked = Arc::new(AtomicU64::new(0));
    let mut lanes = tokio::task::JoinSet::new();
    let mut agents = Vec::new();
    for (i, conn) in conns.iter().enumerate() {
        let (tx, rx) = mpsc::channel(2);
        agents.push((AgentId(lane_agent_id(i)), tx));
        lanes.spawn(lane(conn.clone(), rx, acked.clone()));
    }
    let generator = Generator {
        spec: spec.clone(),
        trucks,
        chunk_ticks: args.chunk_samples as i64,
        trucks_per_batch,
        agents,
    };
    let gen_thread = std::thread::Builder::new()
        .name("billion-gen".into())
        .spawn(move || generator.run())
        .context("starting the generator")?;

    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    let mut latencies = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    let (mut last_samples, mut last_at) = (0u64, Instant::now());
    let expected = spec.entities as f64
        * spec.dataset.series_per_entity() as f64
        * PRESENT
        * (spec.duration_ms / TICK_MS) as f64;
    loop {
        tokio::select! {
            joined = lanes.join_next() => match joined {
                None => break,
                Some(Ok(Ok(mut l))) => latencies.append(&mut l),
                Some(Ok(Err(e))) => {
                    failure.get_or_insert(e);
                    lanes.abort_all();
                }
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => {
                    failure.get_or_insert(anyhow::anyhow!("agent task failed: {e}"));
                    lanes.abort_all();
                }
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                let n = acked.load(Ordering::Relaxed);
                reporter.note(&format!(
                    "  {:>6.0} s: {} samples ({:.1} %), {:.2} M/s now, {:.2} M/s overall, RSS {}",
                    started.elapsed().as_secs_f64(),
                    thousands(n),
                    100.0 * n as f64 / expected,
                    (n - last_samples) as f64 / (now - last_at).as_secs_f64() / 1e6,
                    n as f64 / started.elapsed().as_secs_f64() / 1e6,
                    mib(proc_status_bytes("VmRSS").unwrap_or_default()),
                ));
                (last_samples, last_at) = (n, now);
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu_by_thread = cpu_diff(&cpu_before, &threads_cpu());
    let rss_after = proc_status_bytes("VmRSS").unwrap_or_default();
    let hwm_after = proc_status_bytes("VmHWM").unwrap_or_default();
    let gen_result = gen_thread.join();
    let rendered = metrics.render();

    for (endpoint, conn) in endpoints.iter().zip(&conns) {
        quic_client::close(endpoint, std::slice::from_ref(conn)).await;
    }
    let _ = stop_tx.send(());
    let core_result = core.await;
    if let Some(e) = failure {
        return Err(e);
    }
    let gen_stats = match gen_result {
        Ok(r) => r?,
        Err(_) => bail!("the generator panicked"),
    };
    match core_result {
        Ok(r) => r.context("core node failed")?,
        Err(e) => bail!("core node task failed: {e}"),
    }
    let samples = acked.load(Ordering::Relaxed);
    if samples != gen_stats.samples {
        bail!(
            "{} samples generated but {} acknowledged",
            gen_stats.samples,
            samples
        );
    }
    Ok(Ingest {
        samples,
        elapsed,
        gen_stats,
        latencies,
        rss_before,
        rss_after,
        hwm_after,
        cpu_by_thread,
        metrics: rendered,
    })
}

/// One simulated agent: sends its batches one at a time; returns each batch's round trip.
async fn lane(
    conn: quinn::Connection,
    mut rx: mpsc::Receiver<Frame>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    while let Some(frame) = rx.recv().await {
        let t = Instant::now();
        let n = quic_client::send_batch(&conn, &frame.bytes, frame.sequence, frame.samples).await?;
        latencies.push(t.elapsed());
        acked.fetch_add(n, Ordering::Relaxed);
    }
    Ok(latencies)
}

fn ingest_notes(args: &BillionArgs, ingest: &Ingest) -> Vec<String> {
    let g = &ingest.gen_stats;
    let wall = ingest.elapsed.as_secs_f64();
    let busy = g.elapsed.saturating_sub(g.blocked);
    let mut lat = ingest.latencies.clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| ms(*d))
    };
    let limiting = if g.blocked.as_secs_f64() < 0.05 * g.elapsed.as_secs_f64() {
        " — the GENERATOR limits this run (it almost never waited for the agents)"
    } else {
        ""
    };
    let metric = |name: &str| metric_value(&ingest.metrics, name);
    let commit_s = metric("updraft_core_commit_seconds_sum");
    let commits = metric("updraft_core_commit_seconds_count");
    let total_cpu: Duration = ingest.cpu_by_thread.iter().map(|(_, d)| *d).sum();
    let mut notes = vec![
        format!(
            "Ingest: {:.1} s wall; {} agents × 1 batch in flight over QUIC/mTLS; {:.0} KiB per \
             frame on average ({:.2} wire bytes/sample); ack round trip p50 {:.1} ms, p99 {:.1} \
             ms, max {:.1} ms.",
            wall,
            args.agents,
            g.frame_bytes as f64 / g.batches.max(1) as f64 / 1024.0,
            g.frame_bytes as f64 / g.samples.max(1) as f64,
            pct(0.5),
            pct(0.99),
            pct(1.0)
        ),
        format!(
            "Generator (thread `billion-gen`): {:.1} s generating + {:.1} s encoding chunks and \
             frames, {:.1} s waiting for the agents, {:.1} s CPU; its own rate {:.2} M \
             samples/s of busy time{limiting}.",
            g.generate.as_secs_f64(),
            g.encode.as_secs_f64(),
            g.blocked.as_secs_f64(),
            g.cpu.as_secs_f64(),
            g.samples as f64 / busy.as_secs_f64().max(1e-9) / 1e6
        ),
    ];
    if let (Some(sum), Some(count)) = (commit_s, commits) {
        notes.push(format!(
            "Core writer: {} group commits, {:.1} s applying and committing ({:.0} % of the \
             wall clock; the writer is one thread), {:.1} ms per commit on average; (series, day) \
             merges by the node's compactor during ingest: {} (counted per finished pass).",
            thousands(count as u64),
            sum,
            100.0 * sum / wall,
            1000.0 * sum / count.max(1.0),
            metric("updraft_core_compactions_total").map_or("0".into(), |v| thousands(v as u64)),
        ));
    }
    notes.push(format!(
        "CPU during ingest by thread: {} (total {:.1} s of {:.1} s available on {} cores).",
        ingest
            .cpu_by_thread
            .iter()
            .take(8)
            .map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        total_cpu.as_secs_f64(),
        wall * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ));
    notes
}

/// A loopback address with a port that was free a moment ago.
fn free_port(udp: bool) -> anyhow::Result<std::net::SocketAddr> {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(if udp {
        std::net::UdpSocket::bind(any)?.local_addr()?
    } else {
        std::net::TcpListener::bind(any)?.local_addr()?
    })
}

/// The name simulated agent `i` sends its batches under.
fn lane_agent_id(i: usize) -> String {
    format!("bench-agent-{i}")
}

/// A QUIC client configuration with a certificate for simulated agent `i`, issued by the CA in
/// `certs_dir` into `certs_dir/lane-<i>`.
fn lane_client(certs_dir: &Path, i: usize) -> anyhow::Result<quinn::ClientConfig> {
    let dir = certs_dir.join(format!("lane-{i}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(certs_dir.join(file), dir.join(file))
            .with_context(|| format!("copying {file}"))?;
    }
    core_node::certs::ensure(&core_node::certs::CertRequest {
        dir: dir.clone(),
        core_hosts: core_node::certs::CertRequest::default_hosts(),
        agent_id: lane_agent_id(i),
        agent_tenant: Tenant::default(),
        force: false,
    })
    .with_context(|| format!("certificate of agent {i}"))?;
    quic_client::client_config(
        &dir.join("ca.pem"),
        &dir.join("agent.pem"),
        &dir.join("agent-key.pem"),
    )
}

/// Opens the stopped node's storage; retries briefly while a straggling handle lets go.
pub(crate) fn open_storage(data_dir: &Path, durability: Durability) -> anyhow::Result<Storage> {
    let options = StorageOptions {
        durability,
        compaction: CompactionOptions {
            // Only `compact_now` merges: a background pass would race it for the same days.
            interval: Duration::from_secs(24 * 3600),
            ..CompactionOptions::default()
        },
        ..StorageOptions::default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Storage::open(data_dir, options.clone()) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "storage not free yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reopening {}", data_dir.display()));
            }
        }
    }
}

struct Queries {
    one_query: String,
    one_step_ms: i64,
    one_points: usize,
    one: Timing,
    agg_range_ms: i64,
    agg_series: usize,
    agg_steps: usize,
    agg: Timing,
}

fn run_queries(storage: &Storage, spec: &DatasetSpec, rounds: usize) -> anyhow::Result<Queries> {
    let engine = Engine::default();
    let tenant = Tenant::default();
    let (start, end) = (spec.start_ms, spec.start_ms + spec.duration_ms);
    let one_query = format!("{AGG_METRIC}{{name=\"truck_0\"}}");
    let one_step_ms = ((end - start) / 10_000 + 1).max(TICK_MS);
    let mut one_points = 0;
    let one = timed(rounds, || {
        let Value::Matrix(m) =
            engine.range(storage, &tenant, &one_query, start, end, one_step_ms)?
        else {
            bail!("{one_query} did not return a matrix");
        };
        if m.len() != 1 || m[0].points.is_empty() {
            bail!(
                "{one_query} returned {} series, expected 1 with points",
                m.len()
            );
        }
        one_points = m[0].points.len();
        Ok(())
    })?;

    let agg_range_ms = AGG_RANGE_MS.min(end - start);
    let agg_start = end - agg_range_ms;
    // How many series the aggregation reads (checked once, untimed).
    let Value::Matrix(selected) =
        engine.range(storage, &tenant, AGG_METRIC, agg_start, end, TICK_MS)?
    else {
        bail!("{AGG_METRIC} did not return a matrix");
    };
    let agg_series = selected.len();
    drop(selected);
    if agg_series as u64 != spec.entities {
        bail!(
            "{AGG_METRIC} returned {agg_series} series, expected one per truck ({})",
            spec.entities
        );
    }
    let agg_query = format!("sum({AGG_METRIC})");
    let mut agg_steps = 0;
    let agg = timed(rounds, || {
        let Value::Matrix(m) =
            engine.range(storage, &tenant, &agg_query, agg_start, end, TICK_MS)?
        else {
            bail!("{agg_query} did not return a matrix");
        };
        let [sum] = m.as_slice() else {
            bail!("{agg_query} returned {} series, expected one", m.len());
        };
        agg_steps = sum.points.len();
        std::hint::black_box(&m);
        Ok(())
    })?;
    Ok(Queries {
        one_query,
        one_step_ms,
        one_points,
        one,
        agg_range_ms,
        agg_series,
        agg_steps,
        agg,
    })
}

/// Runs `pass` `rounds` times and times each run; the first error aborts.
fn timed(rounds: usize, mut pass: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Timing> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        pass()?;
        times.push(t.elapsed());
    }
    times.sort_unstable();
    Ok(Timing {
        best: times[0],
        median: times[times.len() / 2],
        rounds: times.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_billion_is_ten_thousand_trucks_for_a_day_and_four_hours() {
        let spec = spec_for(1_000_000_000, 10_000, 1);
        assert_eq!(spec.duration_ms / TICK_MS, 10_102);
        assert_eq!(spec.series_count(), 100_000);
        let small = spec_for(20_000_000, 10_000, 1);
        assert_eq!(small.duration_ms / TICK_MS, 203);
        let days = spec_for(1_000_000_000, 1_000, 1);
        assert_eq!(days.duration_ms / TICK_MS, 101_011);
    }

    #[test]
    fn a_small_run_stores_every_sample_and_reports_six_figures() {
        let args = BillionArgs {
            samples: 3_000,
            trucks: 3,
            seed: 1,
            durability: Durability::Buffered,
            agents: 2,
            chunk_samples: 16,
            batch_samples: 500,
            query_rounds: 3,
            data_dir: None,
        };
        let outcome = measure(&args, &Reporter::new(true)).expect("run");
        let names: Vec<&str> = outcome.figures.iter().map(|f| f.figure.as_str()).collect();
        assert_eq!(
            names,
            [
                "samples_per_second",
                "bytes_per_sample",
                "peak_rss_bytes",
                "query_one_series_ms",
                "query_agg_10k_series_ms",
                "bytes_per_active_series",
            ]
        );
        assert!(outcome.figures.iter().all(|f| f.scenario == "billion"
            && f.dataset == "iot-trucks"
            && f.system == "updraft"));
        // 3 trucks × 101 ticks × 10 series, less the missing ticks.
        let data = &outcome.notes[0];
        assert!(data.contains("30 series"), "{data}");
        assert!(outcome.figures[1].value > 0.0);
    }
}

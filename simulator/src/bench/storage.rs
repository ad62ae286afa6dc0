//! `simulator bench storage`: bytes per sample on disk, Updraft against Prometheus 2.42,
//! InfluxDB 1.6.7 and VictoriaMetrics 1.79, on the same generated data, after each system's
//! compaction has settled.
//!
//! # How each system gets the data and settles
//!
//! - **Updraft**: a `core-node` process on a fresh directory takes the dataset over
//!   remote_write (`/api/v1/write`, requests cut by time, see [`batches`](super::ingest::batches)),
//!   then is stopped with SIGTERM. The node has no admin call to compact and does not compact
//!   on shutdown, so the simulator reopens its storage in-process, as `bench billion` does:
//!   `compact_now` (every (series, day) merged, `seal_after: 0`), `Storage::flush`
//!   (checkpoint, memtables to tables, major compaction), then waits until the directory's
//!   size is stable. Counted: every file under the node's data directory (tables of every
//!   keyspace: chunks, series, postings index, meta; fjall's journal; the node's WAL).
//! - **Prometheus 2.42**: the simulator's OpenMetrics export, then `promtool tsdb
//!   create-blocks-from openmetrics --max-block-duration=<--prom-block-duration>` (18 h, the
//!   third level of Prometheus' compaction ranges 2 h → 6 h → 18 h: the block size
//!   DATASETS.md quotes). promtool writes each block through the TSDB's own compactor, so the
//!   blocks are what a running Prometheus leaves after compacting to that level. Counted:
//!   every file of every block (chunks, index, meta.json, tombstones). No WAL: nothing is in
//!   a head.
//! - **InfluxDB 1.6.7**: `influxd` with a temporary configuration ([`influxdb`]), line protocol
//!   over HTTP `/write` (the same requests' samples, one line per sample), then left alone
//!   until the cache is snapshotted and every shard fully compacted to one TSM file
//!   (`cache-snapshot-write-cold-duration` and `compact-full-write-cold-duration` set to
//!   `--influx-cold`). Counted: `data/` (TSM files, `fields.idx`), `wal/` and `meta/`. The
//!   index is 1.6's default `inmem`: built in memory from the TSM files' series keys.
//! - **VictoriaMetrics 1.79**: `victoria-metrics` ([`victoria_metrics`]) takes the same
//!   remote_write requests as Updraft, then `/internal/force_flush`, `/internal/force_merge`,
//!   a wait until no merge runs and it is idle, and a graceful stop. Counted: every file under
//!   its data directory (data and indexdb parts, metadata, the caches it saves to `cache/` on
//!   stop). It has no WAL, so its two figures are equal.
//!
//! # Figures (per dataset and system, unit B)
//!
//! - `bytes_per_sample`: every byte the system keeps on disk for the dataset (DATASETS.md:
//!   data + index + WAL after a flush) ÷ samples (every field value is one sample).
//! - `data_index_bytes_per_sample`: the same without write-ahead logs and journals (the
//!   issue's "data + index"): Updraft without `wal/` and fjall's `*.jnl`, InfluxDB without
//!   `wal/`, Prometheus' blocks as they are (they have no log). The target (≤ 0.30 ×
//!   Prometheus on `iot-trucks`) is judged on this one. After the flush the WAL is empty (a
//!   flush that leaves nothing unflushed lets every segment go), but fjall's journal is
//!   bounded at 64 MiB, not emptied, so it is a fixed cost that dominates datasets of a few
//!   million samples.
//!
//! Bytes are allocated bytes (`du`), not file lengths: InfluxDB preallocates its series
//! file as sparse 4 MiB segments (32 MiB of length, tens of KiB on disk). The notes give file
//! lengths too. With `--rounds N > 1`, the run of median total is reported. A peer whose
//! binary is missing is reported missing.

pub mod influxdb;
pub mod victoria_metrics;

use super::codec::thousands;
use super::ingest::batches::{self, Cut, Format};
use super::query::{dir_bytes, http, servers};
use super::table::{Table, format_value};
use super::{DatasetArgs, Figure, Reporter};
use crate::datasets::{self, Dataset, DatasetSpec, SeriesData};
use anyhow::{Context, bail};
use core_node::storage::{CompactionOptions, Durability};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SCENARIO: &str = "storage";
/// The target on `iot-trucks`: Updraft at most 0.30 × Prometheus' bytes/sample.
const TARGET_VS_PROMETHEUS: f64 = 0.30;
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// `simulator bench storage`.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
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
    /// Period generated (6h: 2.1 M iot-trucks samples; DATASETS.md's reference is 1d).
    #[arg(long, default_value = "6h", value_parser = datasets::parse_duration_ms)]
    pub duration: i64,
    /// Seed of every random stream.
    #[arg(long, default_value_t = datasets::DEFAULT_SEED)]
    pub seed: u64,
    /// Runs per dataset and system; the median is reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Largest block promtool writes (Prometheus' compaction levels: 2h, 6h, 18h, 54h, ...).
    #[arg(long, default_value = "18h")]
    pub prom_block_duration: String,
    /// InfluxDB's cache-snapshot and full-compaction cold durations.
    #[arg(long, default_value = "5s", value_parser = datasets::parse_duration_ms)]
    pub influx_cold: i64,
    /// The core-node binary [default: next to this simulator, else target/release/core-node].
    #[arg(long)]
    pub core_node: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/promtool")]
    pub promtool: PathBuf,
    #[arg(long, default_value = "/usr/bin/influxd")]
    pub influxd: PathBuf,
    #[arg(long, default_value = victoria_metrics::BINARY)]
    pub victoria_metrics: PathBuf,
    /// Directory for the systems' data and logs, kept afterwards [default: a temporary
    /// directory, removed afterwards].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl StorageArgs {
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

/// Requests of 250 series × 10 minutes, as `bench ingest` sends by default.
const CUT: Cut = Cut {
    window_ms: 600_000,
    series_per_request: 250,
};

/// One system's bytes on disk, by part.
struct Measured {
    /// Bytes allocated on disk (what `du` counts): the figure.
    total: u64,
    /// The same without write-ahead logs and journals (the "data + index").
    data_index: u64,
    /// Sum of the files' lengths (what `du --apparent-size` counts).
    apparent: u64,
    /// Lengths by part.
    parts: Vec<(String, u64)>,
    /// Seconds spent loading and settling, for the notes.
    load_s: f64,
    settle_s: f64,
}

/// (bytes allocated, sum of file lengths) of every file under `dir`. Allocated bytes are the
/// figure: InfluxDB preallocates its series file's segments as sparse 4 MiB files, whose
/// length says nothing about the disk they take; for the other systems the two differ only by
/// the rounding of each file to whole blocks.
pub(crate) fn disk_bytes(dir: &Path) -> (u64, u64) {
    disk_bytes_except(dir, |_| false)
}

/// [`disk_bytes`] of the files for which `skip` is false.
fn disk_bytes_except(dir: &Path, skip: impl Fn(&Path) -> bool) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut allocated, mut apparent) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(_) if skip(&e.path()) => {}
                Ok(m) => {
                    allocated += m.blocks() * 512;
                    apparent += m.len();
                }
                Err(_) => {}
            }
        }
    }
    (allocated, apparent)
}

/// A root for temporary or kept data.
pub(crate) struct Root {
    pub path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Root {
    pub(crate) fn new(dir: &Option<PathBuf>, prefix: &str) -> anyhow::Result<Self> {
        match dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                Ok(Self {
                    path: d.clone(),
                    _temp: None,
                })
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .context("creating a temporary directory")?;
                Ok(Self {
                    path: t.path().to_path_buf(),
                    _temp: Some(t),
                })
            }
        }
    }

    /// A fresh subdirectory (an error if it exists: a kept `--data-dir` of an earlier run).
    pub(crate) fn fresh(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.path.join(name);
        if p.exists() {
            bail!(
                "{} already exists; remove it or pick another --data-dir",
                p.display()
            );
        }
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }
}

/// `Some(reason)` when `binary` cannot be run.
pub(crate) fn missing(binary: &Path, package: &str) -> Option<String> {
    (!binary.exists()).then(|| {
        format!(
            "{} is not installed ({} missing; `apt-get install {package}`)",
            package,
            binary.display()
        )
    })
}

pub fn run(args: &StorageArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    let root = Root::new(&args.data_dir, "updraft-bench-storage-")?;
    let core_node = args
        .core_node
        .clone()
        .unwrap_or_else(servers::default_core_node);
    let prom_missing = missing(&args.promtool, "prometheus");
    let influx_missing = missing(&args.influxd, "influxdb");
    let vm_missing = missing(&args.victoria_metrics, victoria_metrics::PACKAGE);
    let mut notes = Vec::new();
    for m in [&prom_missing, &influx_missing, &vm_missing]
        .into_iter()
        .flatten()
    {
        reporter.note(&format!("storage: {m}: reported missing"));
        notes.push(format!(
            "MISSING: {m}; its column says so, no figure is made up."
        ));
    }
    let mut figures = Vec::new();
    let mut table = Table::new([
        "dataset",
        "samples",
        "updraft all files",
        "updraft data+index",
        "prometheus 2.42 blocks",
        "influxdb 1.6.7 all",
        "influxdb data+index",
        "victoria-metrics 1.79 all files",
        "updraft/prometheus (data+index)",
        "updraft/influxdb (data+index)",
        "updraft/prometheus (all files)",
        "updraft/victoria-metrics (all files)",
        "target: data+index ≤ 0.30× prometheus",
    ]);
    for spec in args.specs() {
        let series: Vec<SeriesData> = datasets::generate(&spec).collect();
        let samples: u64 = series.iter().map(|s| s.samples.len() as u64).sum();
        let name = spec.dataset.name();
        reporter.note(&format!(
            "storage: {name} {}: {} series, {} samples",
            super::describe_spec(&spec),
            thousands(series.len() as u64),
            thousands(samples)
        ));
        let mut results: [Vec<Measured>; 4] = Default::default();
        for round in 0..args.rounds {
            let dir = root.fresh(&format!("{name}-{round}"))?;
            let m = updraft(&core_node, &dir, &series)?;
            reporter.note(&format!(
                "storage: {name} round {}: updraft {:.3} B/sample ({:.1} s load, {:.1} s compact+flush)",
                round + 1,
                m.total as f64 / samples as f64,
                m.load_s,
                m.settle_s
            ));
            results[0].push(m);
            if prom_missing.is_none() {
                let m = prometheus(args, &spec, &dir)?;
                reporter.note(&format!(
                    "storage: {name} round {}: prometheus {:.3} B/sample ({:.1} s export+promtool)",
                    round + 1,
                    m.total as f64 / samples as f64,
                    m.load_s
                ));
                results[1].push(m);
            }
            if influx_missing.is_none() {
                let m = influx(args, &dir, &series)?;
                reporter.note(&format!(
                    "storage: {name} round {}: influxdb {:.3} B/sample ({:.1} s load, {:.1} s until fully compacted)",
                    round + 1,
                    m.total as f64 / samples as f64,
                    m.load_s,
                    m.settle_s
                ));
                results[2].push(m);
            }
            if vm_missing.is_none() {
                let m = victoria(args, &dir, &series)?;
                reporter.note(&format!(
                    "storage: {name} round {}: victoria-metrics {:.3} B/sample ({:.1} s load, {:.1} s flush+merge+stop)",
                    round + 1,
                    m.total as f64 / samples as f64,
                    m.load_s,
                    m.settle_s
                ));
                results[3].push(m);
            }
            if args.data_dir.is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        // (all files, data + index) per system.
        let mut bps: [Option<(f64, f64)>; 4] = [None; 4];
        for (i, system) in ["updraft", "prometheus", "influxdb", victoria_metrics::NAME]
            .into_iter()
            .enumerate()
        {
            let Some(m) = median_by_total(&mut results[i]) else {
                continue;
            };
            let per = |b: u64| b as f64 / samples.max(1) as f64;
            bps[i] = Some((per(m.total), per(m.data_index)));
            figures.push(Figure::new(
                SCENARIO,
                name,
                system,
                "bytes_per_sample",
                per(m.total),
                "B",
            ));
            figures.push(Figure::new(
                SCENARIO,
                name,
                system,
                "data_index_bytes_per_sample",
                per(m.data_index),
                "B",
            ));
            notes.push(format!(
                "{name}, {system}: {} bytes allocated, {} without logs ({:.3} B/sample by file lengths); file lengths: {}.",
                thousands(m.total),
                thousands(m.data_index),
                m.apparent as f64 / samples.max(1) as f64,
                m.parts
                    .iter()
                    .map(|(p, b)| format!("{p} {}", thousands(*b)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let cell = |v: Option<f64>, missing: &Option<String>| match (v, missing) {
            (Some(v), _) => format_value(v),
            (None, Some(_)) => "missing".to_owned(),
            (None, None) => String::new(),
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".to_owned(),
        };
        let all = |i: usize| bps[i].map(|b| b.0);
        let di = |i: usize| bps[i].map(|b| b.1);
        let target = match (spec.dataset, di(0), di(1)) {
            (Dataset::IotTrucks, Some(u), Some(p)) if p > 0.0 => if u / p <= TARGET_VS_PROMETHEUS {
                "met"
            } else {
                "not met"
            }
            .to_owned(),
            (Dataset::IotTrucks, _, _) => "no peer".to_owned(),
            _ => "(iot-trucks only)".to_owned(),
        };
        table.push_row([
            name.to_owned(),
            thousands(samples),
            cell(all(0), &None),
            cell(di(0), &None),
            cell(all(1), &prom_missing),
            cell(all(2), &influx_missing),
            cell(di(2), &influx_missing),
            cell(all(3), &vm_missing),
            ratio(di(0), di(1)),
            ratio(di(0), di(2)),
            ratio(all(0), all(1)),
            ratio(all(0), all(3)),
            target,
        ]);
    }
    notes.insert(
        0,
        format!(
            "Data: {}; seed {}. Bytes allocated on disk (`du`). Updraft: core-node, remote_write \
             (requests of ≤ {} series × {} s), then stopped, reopened, compact_now + flush; all \
             files = every file of its data directory (tables, fjall journal, WAL); data+index = \
             without the WAL and the journal (the WAL is empty after the flush; the journal is \
             capped at 64 MiB, not emptied, and at this scale it dominates). Prometheus 2.42: promtool create-blocks-from \
             openmetrics --max-block-duration={}; every file of every block (chunks, index, \
             meta). InfluxDB 1.6.7: line protocol over /write, cache snapshot and full \
             compaction after {} s cold; data (TSM, fields.idx), wal and meta directories, \
             index inmem. VictoriaMetrics 1.79: remote_write (the same requests as Updraft), \
             then /internal/force_flush, /internal/force_merge, idle, SIGTERM; every file of \
             its data directory (data and indexdb parts, the caches it writes to cache/ on \
             stop, metadata); it has no WAL, so all files = data+index. Median of {} run(s); bytes are nearly deterministic (same data, same \
             order).",
            args.specs()
                .iter()
                .map(|s| format!("{} {}", s.dataset.name(), super::describe_spec(s)))
                .collect::<Vec<_>>()
                .join(", "),
            args.seed,
            CUT.series_per_request,
            CUT.window_ms / 1000,
            args.prom_block_duration,
            args.influx_cold / 1000,
            args.rounds
        ),
    );
    if reporter.json() {
        for n in &notes {
            reporter.note(n);
        }
    }
    reporter.dataset_result(
        "storage: bytes/sample on disk after compaction, Updraft against Prometheus 2.42, InfluxDB 1.6.7 and VictoriaMetrics 1.79",
        &figures,
        &table,
        &notes,
    );
    Ok(())
}

fn median_by_total(v: &mut Vec<Measured>) -> Option<Measured> {
    if v.is_empty() {
        return None;
    }
    v.sort_by_key(|m| m.total);
    let mid = v.len() / 2;
    Some(v.swap_remove(mid))
}

fn send_stream(
    server: &servers::Server,
    series: &[SeriesData],
    format: Format,
) -> anyhow::Result<u64> {
    let headers: &[(&str, &str)] = match format {
        Format::RemoteWrite => &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        Format::LineProtocol => &[("Content-Type", "text/plain; charset=utf-8")],
    };
    let mut sent = 0;
    batches::for_each(series, CUT, format, |b| {
        let r = http::post(server.addr, server.write_path, headers, &b.body)?;
        if !(200..300).contains(&r.status) {
            bail!(
                "{} answered a write with {}: {}",
                server.name,
                r.status,
                r.text().trim()
            );
        }
        sent += b.samples;
        Ok(())
    })?;
    Ok(sent)
}

fn updraft(core_node: &Path, dir: &Path, series: &[SeriesData]) -> anyhow::Result<Measured> {
    let root = dir.join("updraft");
    std::fs::create_dir_all(&root)?;
    let t = Instant::now();
    let server = servers::start_core_node(core_node, &root, Durability::Buffered)?;
    send_stream(&server, series, Format::RemoteWrite)?;
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let status = server.terminate(STOP_LIMIT)?;
    if !status.success() {
        bail!("core-node exited with {status} after SIGTERM");
    }
    let data = root.join("core");
    let storage = super::billion::open_storage(&data, Durability::Buffered)?;
    storage
        .compact_now(&CompactionOptions {
            seal_after: Duration::ZERO,
            ..CompactionOptions::default()
        })
        .context("compacting")?;
    storage.flush().context("flushing storage")?;
    let disk = super::billion::probe::settle_disk(&data)?;
    drop(storage);
    let (total, apparent) = disk_bytes(&data);
    let wal = data.join("wal");
    let (data_index, _) = disk_bytes_except(&data, |p| {
        p.starts_with(&wal) || p.extension().is_some_and(|e| e == "jnl")
    });
    Ok(Measured {
        total,
        data_index,
        apparent,
        parts: disk.parts,
        load_s,
        settle_s: t.elapsed().as_secs_f64(),
    })
}

fn prometheus(args: &StorageArgs, spec: &DatasetSpec, dir: &Path) -> anyhow::Result<Measured> {
    let t = Instant::now();
    let om = dir.join("data.om");
    {
        let file =
            std::fs::File::create(&om).with_context(|| format!("creating {}", om.display()))?;
        let mut out = std::io::BufWriter::new(file);
        datasets::export::write_openmetrics(spec, &mut out)?;
        std::io::Write::flush(&mut out)?;
    }
    let blocks = dir.join("prometheus");
    servers::promtool_backfill(&args.promtool, &om, &blocks, &args.prom_block_duration)?;
    std::fs::remove_file(&om)?;
    let mut parts = std::collections::BTreeMap::<String, u64>::new();
    let mut block_count = 0;
    for block in std::fs::read_dir(&blocks)?.flatten() {
        if !block.path().is_dir() {
            *parts.entry("other".into()).or_default() += block.metadata().map_or(0, |m| m.len());
            continue;
        }
        block_count += 1;
        for f in std::fs::read_dir(block.path())?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let bytes = if f.path().is_dir() {
                dir_bytes(&f.path())
            } else {
                f.metadata().map_or(0, |m| m.len())
            };
            let part = match name.as_str() {
                "chunks" => "chunks",
                "index" => "index",
                _ => "meta.json+tombstones",
            };
            *parts.entry(part.into()).or_default() += bytes;
        }
    }
    let (total, apparent) = disk_bytes(&blocks);
    let mut parts: Vec<(String, u64)> = parts.into_iter().collect();
    parts.insert(0, (format!("{block_count} blocks"), apparent));
    Ok(Measured {
        total,
        data_index: total,
        apparent,
        parts,
        load_s: t.elapsed().as_secs_f64(),
        settle_s: 0.0,
    })
}

fn influx(args: &StorageArgs, dir: &Path, series: &[SeriesData]) -> anyhow::Result<Measured> {
    let root = dir.join("influx");
    std::fs::create_dir_all(&root)?;
    let t = Instant::now();
    let cold = Duration::from_millis(args.influx_cold.max(1000) as u64);
    let influx = influxdb::start(&args.influxd, &root, cold)?;
    send_stream(&influx.server, series, Format::LineProtocol)?;
    let load_s = t.elapsed().as_secs_f64();
    let waited = influxdb::wait_fully_compacted(&influx, cold * 4 + Duration::from_secs(300))?;
    let data = influx.data_dir();
    let series_file = data.join(influxdb::DATABASE).join("_series");
    let parts = vec![
        (
            "data (TSM, fields.idx)".to_owned(),
            dir_bytes(&data) - dir_bytes(&series_file),
        ),
        (
            format!(
                "series file (allocated {})",
                thousands(disk_bytes(&series_file).0)
            ),
            dir_bytes(&series_file),
        ),
        ("wal".to_owned(), dir_bytes(&influx.wal_dir())),
        ("meta".to_owned(), dir_bytes(&influx.meta_dir())),
    ];
    let (total, apparent) = disk_bytes(&influx.dir);
    let data_index = total - disk_bytes(&influx.wal_dir()).0;
    let _ = influx.server.terminate(STOP_LIMIT);
    Ok(Measured {
        total,
        data_index,
        apparent,
        parts,
        load_s,
        settle_s: waited.as_secs_f64(),
    })
}

fn victoria(args: &StorageArgs, dir: &Path, series: &[SeriesData]) -> anyhow::Result<Measured> {
    let root = dir.join("vm");
    std::fs::create_dir_all(&root)?;
    let t = Instant::now();
    let vm = victoria_metrics::start(&args.victoria_metrics, &root)?;
    send_stream(&vm.server, series, Format::RemoteWrite)?;
    let load_s = t.elapsed().as_secs_f64();
    let (data, settled) = victoria_metrics::settle_and_stop(vm, Duration::from_secs(600))?;
    let (total, apparent) = disk_bytes(&data);
    Ok(Measured {
        total,
        data_index: total,
        apparent,
        parts: victoria_metrics::parts(&data),
        load_s,
        settle_s: settled.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_pick_the_middle_total() {
        let m = |total| Measured {
            total,
            data_index: total,
            apparent: total,
            parts: Vec::new(),
            load_s: 0.0,
            settle_s: 0.0,
        };
        let mut v = vec![m(30), m(10), m(20)];
        assert_eq!(median_by_total(&mut v).map(|m| m.total), Some(20));
        assert!(median_by_total(&mut Vec::new()).is_none());
    }

    #[test]
    fn a_missing_binary_names_its_package() {
        let m = missing(Path::new("/nonexistent/influxd"), "influxdb").expect("missing");
        assert!(m.contains("apt-get install influxdb"), "{m}");
        assert!(missing(Path::new("/bin/sh"), "sh").is_none());
    }
}

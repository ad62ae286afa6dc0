//! `simulator bench encryption`: what encryption at rest costs the core's storage.
//!
//! The same `iot-trucks` data goes into two fresh storages in this process, one in the clear
//! and one with encryption at rest (a keyring made for the run), in alternating rounds. The
//! batches are encoded once beforehand (the codec work an edge agent does), so the figures are
//! the storage's own: WAL with fsync, fjall, sealing. Figures per system (`updraft-plain`,
//! `updraft-encrypted`):
//!
//! - `ingest_cpu_ns_per_sample`: CPU time of this process (every thread: writer, fjall
//!   workers) from the first submit to the last acknowledgement, ÷ samples;
//! - `ingest_samples_per_second`: samples ÷ wall time of the same stretch;
//! - `compaction_cpu_ns_per_sample`: CPU of merging every (series, day) and flushing, ÷ samples;
//! - `query_one_series_ms`: `readings_velocity{name="truck_0"}` over the whole range;
//! - `query_agg_ms`: `sum(readings_velocity)` over every truck, the last hour at 10 s steps.
//!
//! Each is the median over `--rounds`; queries are the median of 5 runs per round. The target
//! (issue 8) is encrypted ≤ 1.10 × plain for CPU per sample and query latency.

use super::codec::thousands;
use super::table::{Table, format_value};
use super::{Figure, Reporter};
use crate::datasets::{self, Dataset, DatasetSpec};
use anyhow::{Context, bail};
use core_node::storage::{
    CompactionOptions, Durability, Encryption, Storage, StorageOptions, SubmitError,
};
use protocols::Tenant;
use protocols::wire::{AgentId, SeriesChunk, WriteBatch};
use query::Engine;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const SCENARIO: &str = "encryption";
const PLAIN: &str = "updraft-plain";
const ENCRYPTED: &str = "updraft-encrypted";
/// Samples per chunk, as an edge agent cuts them.
const CHUNK_SAMPLES: usize = 128;
/// Series per batch.
const BATCH_SERIES: usize = 500;
/// Batches in flight at once.
const IN_FLIGHT: usize = 16;
const TICK_MS: i64 = 10_000;

#[derive(Debug, Clone, clap::Args)]
pub struct EncryptionArgs {
    /// Trucks in iot-trucks (10 series each).
    #[arg(long, default_value_t = 500)]
    pub trucks: u64,
    /// Period generated, e.g. 6h, 1d.
    #[arg(long, default_value = "6h", value_parser = datasets::parse_duration_ms)]
    pub duration: i64,
    /// Rounds; each runs both systems, in alternating order.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seed of every random stream.
    #[arg(long, default_value_t = datasets::DEFAULT_SEED)]
    pub seed: u64,
}

/// One system's figures in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    ingest_cpu_ns: f64,
    ingest_per_s: f64,
    compaction_cpu_ns: f64,
    one_ms: f64,
    agg_ms: f64,
}

pub fn run(args: &EncryptionArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    let spec =
        DatasetSpec::new(Dataset::IotTrucks, args.trucks, args.duration).with_seed(args.seed);
    reporter.note(&format!(
        "encryption: generating {} ...",
        super::describe_spec(&spec)
    ));
    let (batches, samples, end_ms) = encode(&spec)?;
    reporter.note(&format!(
        "encryption: {} samples in {} batches; {} rounds of both systems",
        thousands(samples),
        batches.len(),
        args.rounds
    ));
    let mut plain = Vec::new();
    let mut encrypted = Vec::new();
    for round in 0..args.rounds.max(1) {
        // Alternate which goes first, so neither always meets a warmer page cache.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for encrypt in order {
            let r = one_round(&batches, samples, &spec, end_ms, encrypt)
                .with_context(|| format!("round {round}, encrypted: {encrypt}"))?;
            reporter.note(&format!(
                "encryption: round {round} {}: {:.0} ns/sample ingest CPU, {:.2} M samples/s, \
                 {:.0} ns/sample compaction CPU, queries {:.1} ms / {:.1} ms",
                if encrypt { ENCRYPTED } else { PLAIN },
                r.ingest_cpu_ns,
                r.ingest_per_s / 1e6,
                r.compaction_cpu_ns,
                r.one_ms,
                r.agg_ms
            ));
            if encrypt {
                encrypted.push(r);
            } else {
                plain.push(r);
            }
        }
    }
    report(reporter, &spec, samples, args.rounds, &plain, &encrypted);
    Ok(())
}

/// The dataset as write batches (chunks of [`CHUNK_SAMPLES`] per series, [`BATCH_SERIES`]
/// series per batch, in time order), the sample count and the last timestamp.
fn encode(spec: &DatasetSpec) -> anyhow::Result<(Vec<WriteBatch>, u64, i64)> {
    let series: Vec<_> = datasets::generate(spec).collect();
    let longest = series.iter().map(|s| s.samples.len()).max().unwrap_or(0);
    let end_ms = series
        .iter()
        .filter_map(|s| s.samples.last())
        .map(|s| s.timestamp_ms)
        .max()
        .unwrap_or(spec.start_ms);
    let mut batches = Vec::new();
    let mut samples = 0u64;
    let mut sequence = 0;
    for from in (0..longest).step_by(CHUNK_SAMPLES) {
        for group in series.chunks(BATCH_SERIES) {
            let mut chunks = Vec::with_capacity(group.len());
            for s in group {
                let Some(part) = s
                    .samples
                    .get(from..(from + CHUNK_SAMPLES).min(s.samples.len()))
                else {
                    continue;
                };
                if part.is_empty() {
                    continue;
                }
                samples += part.len() as u64;
                chunks.push(
                    SeriesChunk::encode(s.info.labels.clone(), part.to_vec())
                        .context("encoding a chunk")?,
                );
            }
            if chunks.is_empty() {
                continue;
            }
            sequence += 1;
            batches.push(WriteBatch {
                agent_id: AgentId("bench-encryption".into()),
                epoch: 1,
                sequence,
                tenant: Tenant::default(),
                series: chunks,
            });
        }
    }
    Ok((batches, samples, end_ms))
}

fn one_round(
    batches: &[WriteBatch],
    samples: u64,
    spec: &DatasetSpec,
    end_ms: i64,
    encrypt: bool,
) -> anyhow::Result<Round> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let keys = tempfile::tempdir().context("temporary directory")?;
    let encryption = if encrypt {
        let master = crypt::MasterKey::generate().context("master key")?;
        let ring =
            crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).context("keyring")?;
        Some(Encryption::from_keyring(&ring).context("data keys")?)
    } else {
        None
    };
    let storage = Storage::open(
        dir.path(),
        StorageOptions {
            durability: Durability::Fsync,
            compaction: CompactionOptions {
                // Only the timed compaction below merges.
                interval: Duration::from_secs(24 * 3600),
                ..CompactionOptions::default()
            },
            encryption,
            ..StorageOptions::default()
        },
    )
    .context("opening storage")?;

    let cpu = process_cpu()?;
    let wall = Instant::now();
    ingest(&storage, batches)?;
    let ingest_wall = wall.elapsed();
    let ingest_cpu = process_cpu()?.saturating_sub(cpu);

    let cpu = process_cpu()?;
    storage
        .compact_now(&CompactionOptions {
            seal_after: Duration::ZERO,
            ..CompactionOptions::default()
        })
        .context("compacting")?;
    storage.flush().context("flushing")?;
    let compaction_cpu = process_cpu()?.saturating_sub(cpu);

    let engine = Engine::default();
    let tenant = Tenant::default();
    let one = median_ms(5, || {
        engine
            .range(
                &storage,
                &tenant,
                r#"readings_velocity{name="truck_0"}"#,
                spec.start_ms,
                end_ms,
                ((end_ms - spec.start_ms) / 10_000).max(TICK_MS),
            )
            .map_err(anyhow::Error::from)
            .and_then(non_empty)
    })?;
    let agg_start = (end_ms - 3_600_000).max(spec.start_ms);
    let agg = median_ms(5, || {
        engine
            .range(
                &storage,
                &tenant,
                "sum(readings_velocity)",
                agg_start,
                end_ms,
                TICK_MS,
            )
            .map_err(anyhow::Error::from)
            .and_then(non_empty)
    })?;
    let n = samples.max(1) as f64;
    Ok(Round {
        ingest_cpu_ns: ingest_cpu.as_nanos() as f64 / n,
        ingest_per_s: n / ingest_wall.as_secs_f64().max(1e-9),
        compaction_cpu_ns: compaction_cpu.as_nanos() as f64 / n,
        one_ms: one,
        agg_ms: agg,
    })
}

/// Submits every batch with at most [`IN_FLIGHT`] unanswered, and waits for all answers.
fn ingest(storage: &Storage, batches: &[WriteBatch]) -> anyhow::Result<()> {
    let mut pending = VecDeque::new();
    for b in batches {
        let mut batch = b.clone();
        loop {
            if pending.len() >= IN_FLIGHT {
                wait(pending.pop_front())?;
            }
            match storage.submit(batch) {
                Ok(rx) => {
                    pending.push_back(rx);
                    break;
                }
                Err(SubmitError::Busy(back)) => {
                    batch = *back;
                    if pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(1));
                    } else {
                        wait(pending.pop_front())?;
                    }
                }
                Err(SubmitError::Stopped(_)) => bail!("storage stopped"),
                Err(SubmitError::Unavailable { reason, .. }) => {
                    bail!("storage refuses writes: {reason}")
                }
            }
        }
    }
    while let Some(rx) = pending.pop_front() {
        wait(Some(rx))?;
    }
    Ok(())
}

fn wait(rx: Option<core_node::storage::Pending>) -> anyhow::Result<()> {
    let Some(rx) = rx else { return Ok(()) };
    let outcome = rx
        .blocking_recv()
        .context("the writer dropped a batch")?
        .map_err(|e| anyhow::anyhow!("batch failed: {e}"))?;
    match outcome {
        protocols::wire::AckOutcome::Stored {
            rejected_series: 0, ..
        } => Ok(()),
        other => bail!("batch not stored whole: {other:?}"),
    }
}

/// A query that found nothing would time nothing: the bench fails instead.
fn non_empty(v: query::Value) -> anyhow::Result<()> {
    match v {
        query::Value::Matrix(series) if series.iter().any(|s| !s.points.is_empty()) => Ok(()),
        other => bail!("the query found no data: {other:?}"),
    }
}

fn median_ms(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(&mut times))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// User + system CPU time of this process so far (every thread), from `/proc/self/stat`.
fn process_cpu() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc/self/stat")?
            .parse()
            .context("CPU ticks")
    };
    // Linux reports these in USER_HZ, which is 100 on every architecture Linux exposes it as.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

fn report(
    reporter: &mut Reporter,
    spec: &DatasetSpec,
    samples: u64,
    rounds: usize,
    plain: &[Round],
    encrypted: &[Round],
) {
    type Pick = fn(&Round) -> f64;
    let rows: [(&str, &str, &str, Pick); 5] = [
        (
            "ingest_cpu_ns_per_sample",
            "ingest CPU per sample",
            "ns",
            |r| r.ingest_cpu_ns,
        ),
        (
            "ingest_samples_per_second",
            "ingest samples/s",
            "samples/s",
            |r| r.ingest_per_s,
        ),
        (
            "compaction_cpu_ns_per_sample",
            "compaction + flush CPU per sample",
            "ns",
            |r| r.compaction_cpu_ns,
        ),
        (
            "query_one_series_ms",
            "one series, whole range",
            "ms",
            |r| r.one_ms,
        ),
        (
            "query_agg_ms",
            "`sum(readings_velocity)`, last hour, 10 s step",
            "ms",
            |r| r.agg_ms,
        ),
    ];
    let dataset = spec.dataset.name();
    let mut figures = Vec::new();
    let mut table = Table::new(["figure", PLAIN, ENCRYPTED, "encrypted ÷ plain", "≤ 1.10×"]);
    for (name, label, unit, pick) in rows {
        let p = median(&mut plain.iter().map(pick).collect::<Vec<_>>());
        let e = median(&mut encrypted.iter().map(pick).collect::<Vec<_>>());
        figures.push(Figure::new(SCENARIO, dataset, PLAIN, name, p, unit));
        figures.push(Figure::new(SCENARIO, dataset, ENCRYPTED, name, e, unit));
        // Throughput is better when higher: its cost ratio is plain ÷ encrypted.
        let ratio = if name == "ingest_samples_per_second" {
            p / e
        } else {
            e / p
        };
        table.push_row([
            format!("{label} ({unit})"),
            format_value(p),
            format_value(e),
            format!("{ratio:.2}×"),
            if ratio <= 1.10 { "met" } else { "not met" }.to_string(),
        ]);
    }
    let notes = vec![
        format!(
            "Data: {}: {} samples in chunks of {CHUNK_SAMPLES}, {BATCH_SERIES} series per \
             batch, {IN_FLIGHT} batches in flight, fsync on. Medians of {rounds} rounds \
             (queries: median of 5 per round). For samples/s the ratio is plain ÷ encrypted, so \
             above 1 is slower when encrypted everywhere.",
            super::describe_spec(spec),
            thousands(samples)
        ),
        "CPU: utime + stime of this process (storage writer, fjall workers, compactor) while \
         it ran; batches were encoded beforehand."
            .to_string(),
    ];
    reporter.dataset_result(
        "encryption: storage with and without encryption at rest",
        &figures,
        &table,
        &notes,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_systems_store_and_answer_the_same_small_dataset() {
        let spec = DatasetSpec::new(Dataset::IotTrucks, 2, 30 * 60_000);
        let (batches, samples, end_ms) = encode(&spec).expect("encodes");
        assert_eq!(
            samples,
            datasets::generate(&spec)
                .map(|s| s.samples.len() as u64)
                .sum::<u64>(),
            "every sample is in a batch"
        );
        for encrypt in [false, true] {
            // Fails if a batch is refused or a query finds nothing.
            let r = one_round(&batches, samples, &spec, end_ms, encrypt).expect("round");
            assert!(r.ingest_per_s > 0.0 && r.one_ms >= 0.0, "{r:?}");
        }
    }
}

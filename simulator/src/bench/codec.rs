//! `simulator bench codec`: how small and how fast Updraft's chunk codec is, against the
//! Prometheus XOR chunk (Gorilla) measured in the same run on the same samples.
//!
//! For each dataset, every series is generated, cut into chunks three ways and encoded:
//!
//! | system | chunks | codec |
//! |---|---|---|
//! | `updraft` | one per series per UTC day (the core's sealed blocks) | `protocols::codec::encode` |
//! | `updraft-edge` | 256 samples (the edge buffer's chunks) | `protocols::codec::encode` |
//! | `gorilla-baseline` | as Prometheus' head cuts them (see [`chunking::prometheus_head`]) | `protocols::codec::gorilla::encode` |
//!
//! Figures per system: `bytes_per_sample` (encoded chunk bytes ÷ samples: chunk payloads only, no
//! index and no framing outside what the codec itself writes), `encode_msamples_per_s` and
//! `decode_msamples_per_s` (wall clock over all chunks of the dataset, one thread, median of
//! `--rounds`; the table also gives the best round). Before anything is timed, every chunk is
//! decoded and compared bit for bit with its samples; a mismatch aborts the run.

use super::chunking;
use super::table::{Ratio, pivot};
use super::timing::{Timing, measure};
use super::{DatasetArgs, Figure, Reporter, describe_spec};
use crate::datasets::{self, DatasetSpec};
use anyhow::{Context, bail};
use protocols::Sample;
use protocols::codec::{self, CodecError};
use std::hint::black_box;
use std::ops::Range;
use std::time::Instant;

const SCENARIO: &str = "codec";
/// Samples per chunk at the edge.
pub const EDGE_CHUNK_SAMPLES: usize = 256;

/// `simulator bench codec`.
#[derive(Debug, Clone, clap::Args)]
pub struct CodecArgs {
    #[command(flatten)]
    pub datasets: DatasetArgs,
    /// Timed rounds of encoding and of decoding each dataset; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
}

type Encode = fn(&[Sample]) -> Result<Vec<u8>, CodecError>;
type Decode = fn(&[u8]) -> Result<Vec<Sample>, CodecError>;

/// One system under test: how it cuts a series and how it encodes a chunk.
struct System {
    name: &'static str,
    chunking: &'static str,
    cut: fn(&[Sample]) -> Vec<Range<usize>>,
    encode: Encode,
    decode: Decode,
}

const SYSTEMS: [System; 3] = [
    System {
        name: "updraft",
        chunking: "1 UTC day",
        cut: chunking::utc_days,
        encode: codec::encode,
        decode: codec::decode,
    },
    System {
        name: "updraft-edge",
        chunking: "256 samples",
        cut: |s| chunking::fixed(s.len(), EDGE_CHUNK_SAMPLES),
        encode: codec::encode,
        decode: codec::decode,
    },
    System {
        name: "gorilla-baseline",
        chunking: "Prometheus head (120)",
        cut: chunking::prometheus_head,
        encode: |s| Ok(codec::gorilla::encode(s)),
        decode: codec::gorilla::decode,
    },
];

/// What one system did on one dataset.
#[derive(Debug, Clone)]
pub struct SystemResult {
    pub system: &'static str,
    pub chunking: &'static str,
    pub chunks: usize,
    pub samples: u64,
    pub bytes: u64,
    pub encode: Timing,
    pub decode: Timing,
}

impl SystemResult {
    pub fn bytes_per_sample(&self) -> f64 {
        self.bytes as f64 / self.samples.max(1) as f64
    }

    fn figures(&self, dataset: &str) -> [Figure; 3] {
        [
            Figure::new(
                SCENARIO,
                dataset,
                self.system,
                "bytes_per_sample",
                self.bytes_per_sample(),
                "B",
            ),
            Figure::new(
                SCENARIO,
                dataset,
                self.system,
                "encode_msamples_per_s",
                self.encode.median_mops(self.samples),
                "Msamples/s",
            ),
            Figure::new(
                SCENARIO,
                dataset,
                self.system,
                "decode_msamples_per_s",
                self.decode.median_mops(self.samples),
                "Msamples/s",
            ),
        ]
    }
}

pub fn run(args: &CodecArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    for spec in args.datasets.specs() {
        let started = Instant::now();
        reporter.note(&format!(
            "generating {} ({})...",
            spec.dataset,
            describe_spec(&spec)
        ));
        let series: Vec<Vec<Sample>> = datasets::generate(&spec).map(|s| s.samples).collect();
        let samples: u64 = series.iter().map(|s| s.len() as u64).sum();
        reporter.note(&format!(
            "{}: {} series, {} samples, generated in {:.1} s",
            spec.dataset,
            thousands(series.len() as u64),
            thousands(samples),
            started.elapsed().as_secs_f64()
        ));
        let results = measure_dataset(&spec, &series, args.rounds as usize)?;
        report(
            reporter,
            &spec,
            series.len(),
            samples,
            &results,
            args.rounds,
        );
    }
    Ok(())
}

/// Verifies and times every system on one dataset's series.
pub fn measure_dataset(
    spec: &DatasetSpec,
    series: &[Vec<Sample>],
    rounds: usize,
) -> anyhow::Result<Vec<SystemResult>> {
    SYSTEMS
        .iter()
        .map(|system| measure_system(spec, system, series, rounds))
        .collect()
}

fn measure_system(
    spec: &DatasetSpec,
    system: &System,
    series: &[Vec<Sample>],
    rounds: usize,
) -> anyhow::Result<SystemResult> {
    let mut chunks: Vec<&[Sample]> = Vec::new();
    let mut origin: Vec<(usize, usize)> = Vec::new(); // (series, chunk of series), for errors
    for (i, s) in series.iter().enumerate() {
        for (j, r) in (system.cut)(s).into_iter().enumerate() {
            chunks.push(&s[r]);
            origin.push((i, j));
        }
    }

    // Round-trip every chunk before timing anything: a mismatch is a bug, not a figure.
    let mut encoded = Vec::with_capacity(chunks.len());
    for (chunk, &(i, j)) in chunks.iter().zip(&origin) {
        let context = || {
            format!(
                "{} on {}: series {i}, chunk {j} ({} samples from {})",
                system.name,
                spec.dataset,
                chunk.len(),
                chunk.first().map_or(0, |s| s.timestamp_ms)
            )
        };
        let bytes = (system.encode)(chunk)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("encode failed: {}", context()))?;
        let decoded = (system.decode)(&bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("decode failed: {}", context()))?;
        if decoded.as_slice() != *chunk {
            let at = decoded
                .iter()
                .zip(chunk.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(decoded.len().min(chunk.len()));
            bail!(
                "round trip mismatch: {}: {} samples decoded for {}, first difference at sample \
                 {at}: {:?} decoded, {:?} encoded",
                context(),
                decoded.len(),
                chunk.len(),
                decoded.get(at),
                chunk.get(at)
            );
        }
        encoded.push(bytes);
    }
    let bytes: u64 = encoded.iter().map(|b| b.len() as u64).sum();
    let samples: u64 = chunks.iter().map(|c| c.len() as u64).sum();

    let encode = measure(rounds, || {
        for chunk in &chunks {
            let out = (system.encode)(black_box(chunk));
            black_box(&out);
        }
    });
    let decode = measure(rounds, || {
        for bytes in &encoded {
            let out = (system.decode)(black_box(bytes));
            black_box(&out);
        }
    });
    Ok(SystemResult {
        system: system.name,
        chunking: system.chunking,
        chunks: chunks.len(),
        samples,
        bytes,
        encode,
        decode,
    })
}

fn report(
    reporter: &mut Reporter,
    spec: &DatasetSpec,
    series: usize,
    samples: u64,
    results: &[SystemResult],
    rounds: u32,
) {
    let dataset = spec.dataset.name();
    let figures: Vec<Figure> = results.iter().flat_map(|r| r.figures(dataset)).collect();
    let mut table = pivot(
        &figures,
        dataset,
        Some(Ratio {
            figure: "bytes_per_sample",
            baseline: "gorilla-baseline",
        }),
    );
    table.insert_column(
        1,
        "chunks",
        results.iter().map(|r| r.chunking.to_owned()).collect(),
    );
    table.insert_column(
        2,
        "samples/chunk",
        results
            .iter()
            .map(|r| format!("{:.0}", r.samples as f64 / r.chunks.max(1) as f64))
            .collect(),
    );
    let best: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{} {:.1}/{:.1}",
                r.system,
                r.encode.best_mops(r.samples),
                r.decode.best_mops(r.samples)
            )
        })
        .collect();
    let footnotes = vec![format!(
        "{} series, {} samples. Bytes: encoded chunks only (no index). Speeds: one thread, \
             wall clock over all chunks, median of {rounds} rounds (best encode/decode: {}). \
             Every chunk round-tripped bit-exactly.",
        thousands(series as u64),
        thousands(samples),
        best.join(", ")
    )];
    reporter.dataset_result(
        &format!("{dataset} ({})", describe_spec(spec)),
        &figures,
        &table,
        &footnotes,
    );
}

/// `8554560` → `8,554,560`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::Dataset;

    #[test]
    fn thousands_separates() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(8_554_560), "8,554,560");
    }

    #[test]
    fn every_system_round_trips_a_small_dataset_and_reports_nine_figures() {
        for dataset in Dataset::ALL {
            let spec = DatasetSpec::new(dataset, 3, 3 * 3_600_000);
            let series: Vec<Vec<Sample>> = datasets::generate(&spec).map(|s| s.samples).collect();
            let results = measure_dataset(&spec, &series, 1).expect("round trip");
            assert_eq!(results.len(), 3);
            let total: u64 = series.iter().map(|s| s.len() as u64).sum();
            for r in &results {
                assert_eq!(r.samples, total, "{} covers every sample", r.system);
                assert!(r.bytes_per_sample() > 0.0 && r.bytes_per_sample() < 16.0);
            }
            let figures: Vec<Figure> = results
                .iter()
                .flat_map(|r| r.figures(dataset.name()))
                .collect();
            assert_eq!(figures.len(), 9);
            let systems: Vec<&str> = figures.iter().map(|f| f.system.as_str()).collect();
            assert!(systems.contains(&"updraft") && systems.contains(&"updraft-edge"));
            assert!(systems.contains(&"gorilla-baseline"));
        }
    }

    #[test]
    fn prometheus_chunk_sizes_match_the_baseline_encoder() {
        // The head cutter's byte limit relies on XorSize; check it against the real encoder on
        // the hard case (unrounded vibration) and the easy ones.
        let spec = DatasetSpec::new(Dataset::SensorMix, 20, 6 * 3_600_000);
        for s in datasets::generate(&spec) {
            for r in chunking::prometheus_head(&s.samples) {
                let chunk = &s.samples[r];
                let mut size = chunking::XorSize::new();
                for x in chunk {
                    size.append(x.timestamp_ms, x.value);
                }
                assert_eq!(size.bytes(), codec::gorilla::encode(chunk).len());
            }
        }
    }
}

//! Bytes per sample of the Updraft chunk codec against the Prometheus XOR (Gorilla) baseline,
//! on generated data shaped like the reference datasets, at the chunk sizes that matter:
//! 120 (Prometheus' chunk), 256 (an edge shipment), 8640 and 16384 (core blocks).
//!
//! `cargo bench -p protocols --bench codec_sizes` prints the table;
//! `... -- --by-series` adds a row per series name with the encodings chosen.
//! Set `CODEC_SIZES_SCALE` (default 1) to multiply the number of entities.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::{DAY_MS, Series, chunks, iot_trucks, metrics_mix, sensor_mix};
use protocols::codec::{self, gorilla};

const SIZES: [usize; 4] = [120, 256, 8640, 16384];

#[derive(Default)]
struct Tally {
    samples: usize,
    ours: usize,
    gorilla: usize,
    encodings: BTreeMap<String, usize>,
}

impl Tally {
    fn ratio(&self) -> f64 {
        self.ours as f64 / self.gorilla as f64
    }
}

fn measure(series: &[Series], size: usize) -> (Tally, BTreeMap<&'static str, Tally>) {
    let mut total = Tally::default();
    let mut by_name: BTreeMap<&'static str, Tally> = BTreeMap::new();
    for (name, chunk) in chunks(series, size) {
        let ours = match codec::encode(chunk) {
            Ok(bytes) => bytes,
            Err(e) => panic!("encoding {name}: {e}"),
        };
        let base = gorilla::encode(chunk).len();
        let h = match codec::header(&ours) {
            Ok(h) => h,
            Err(e) => panic!("header of {name}: {e}"),
        };
        let key = format!("{:?}/{:?}", h.ts_encoding, h.value_encoding);
        for t in [&mut total, by_name.entry(name).or_default()] {
            t.samples += chunk.len();
            t.ours += ours.len();
            t.gorilla += base;
            *t.encodings.entry(key.clone()).or_default() += 1;
        }
    }
    (total, by_name)
}

fn main() {
    let by_series = std::env::args().any(|a| a == "--by-series");
    let scale: usize = std::env::var("CODEC_SIZES_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let started = Instant::now();
    let datasets = [
        ("iot-trucks", iot_trucks(20 * scale, DAY_MS)),
        ("sensor-mix", sensor_mix(40 * scale, DAY_MS)),
        ("metrics-mix", metrics_mix(10 * scale, DAY_MS)),
    ];
    println!("generated in {:.1}s", started.elapsed().as_secs_f64());
    println!(
        "{:<12} {:>6} {:>10} {:>10} {:>10} {:>7}",
        "dataset", "chunk", "samples", "ours B/s", "gorilla", "ratio"
    );
    for (name, series) in &datasets {
        for size in SIZES {
            let (total, by_name) = measure(series, size);
            println!(
                "{:<12} {:>6} {:>10} {:>10.3} {:>10.3} {:>7.3}",
                name,
                size,
                total.samples,
                total.ours as f64 / total.samples as f64,
                total.gorilla as f64 / total.samples as f64,
                total.ratio()
            );
            if by_series {
                for (series, t) in by_name {
                    println!(
                        "    {:<36} {:>8.3} {:>8.3} {:>7.3}  {:?}",
                        series,
                        t.ours as f64 / t.samples as f64,
                        t.gorilla as f64 / t.samples as f64,
                        t.ratio(),
                        t.encodings
                    );
                }
            }
        }
    }
}

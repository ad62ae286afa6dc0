//! Encode and decode throughput of the Updraft chunk codec and the Gorilla baseline.
//!
//! `cargo bench -p protocols --bench codec`. Data (generated here, deterministically):
//! (a) 2-decimal random-walk temperatures every 10 s ± 50 ms of jitter, (b) full-precision
//! floats, (c) a constant series; each as one 8640-sample core block (a day at 10 s) and as
//! 256-sample edge chunks. Throughput is reported in samples (elements) per second.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Rng, START_MS, round};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use protocols::Sample;
use protocols::codec::{self, ChunkIter, gorilla};

const BLOCK: usize = 8640;

fn jittered_times(rng: &mut Rng, n: usize) -> Vec<i64> {
    (0..n as i64)
        .map(|i| START_MS + i * 10_000 + rng.int(-50, 50))
        .collect()
}

fn datasets() -> Vec<(&'static str, Vec<Sample>)> {
    let mut rng = Rng::new(42);
    let ts = jittered_times(&mut rng, BLOCK);
    let mut temp = 21.0;
    let temps = ts
        .iter()
        .map(|&t| {
            temp = (temp + rng.range(-0.05, 0.05)).clamp(-20.0, 50.0);
            Sample::new(t, round(temp, 2))
        })
        .collect();
    let floats = ts
        .iter()
        .map(|&t| Sample::new(t, 0.8 * (0.25 * rng.normal()).exp()))
        .collect();
    let constant = (0..BLOCK as i64)
        .map(|i| Sample::new(START_MS + i * 10_000, 1.0))
        .collect();
    vec![
        ("temps_2dec", temps),
        ("full_precision", floats),
        ("constant", constant),
    ]
}

fn expect<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("bench data must encode: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    for (name, data) in datasets() {
        for chunk in [BLOCK, 256] {
            let pieces: Vec<&[Sample]> = data.chunks(chunk).collect();
            let ours: Vec<Vec<u8>> = pieces.iter().map(|p| expect(codec::encode(p))).collect();
            let base: Vec<Vec<u8>> = pieces.iter().map(|p| gorilla::encode(p)).collect();
            let id = format!("{name}/{chunk}");

            let mut g = c.benchmark_group("encode");
            g.throughput(Throughput::Elements(data.len() as u64));
            g.bench_function(BenchmarkId::new("updraft", &id), |b| {
                b.iter(|| {
                    for p in &pieces {
                        black_box(expect(codec::encode(black_box(p))));
                    }
                })
            });
            g.bench_function(BenchmarkId::new("gorilla", &id), |b| {
                b.iter(|| {
                    for p in &pieces {
                        black_box(gorilla::encode(black_box(p)));
                    }
                })
            });
            g.finish();

            let mut g = c.benchmark_group("decode");
            g.throughput(Throughput::Elements(data.len() as u64));
            g.bench_function(BenchmarkId::new("updraft", &id), |b| {
                b.iter(|| {
                    for chunk in &ours {
                        black_box(expect(codec::decode(black_box(chunk))));
                    }
                })
            });
            // The query engine's path: stream, never materialise.
            g.bench_function(BenchmarkId::new("updraft_iter", &id), |b| {
                b.iter(|| {
                    let mut sum = 0.0;
                    for chunk in &ours {
                        for s in expect(ChunkIter::new(black_box(chunk))) {
                            sum += expect(s).value;
                        }
                    }
                    black_box(sum)
                })
            });
            g.bench_function(BenchmarkId::new("gorilla", &id), |b| {
                b.iter(|| {
                    for chunk in &base {
                        black_box(expect(gorilla::decode(black_box(chunk))));
                    }
                })
            });
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);

//! The caches against no caches: random writes (in order, late, backfill, rewrites of a
//! timestamp, stale markers), head flushes and retention drops, interleaved with random
//! instant and range queries of two tenants; every answer through the caches must equal the
//! answer read past them, and the caches must have answered some (or the test proves
//! nothing).

use super::{RangeCacheOptions, Uncached};
use crate::storage::record::Record;
use crate::storage::{
    Clock, CompactionOptions, Durability, SampleBatch, Storage, StorageOptions, partitions,
};
use protocols::{Labels, Sample, Tenant};
use query::{Engine, STALE_NAN_BITS};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const METRICS: [&str; 2] = ["temp", "hum"];
const DEVICES: u64 = 4;

const INSTANT: &[&str] = &[
    "temp",
    r#"hum{dev="1"}"#,
    "last_over_time(temp[10m])",
    "last_over_time(hum[1h])",
    "timestamp(temp)",
    r#"timestamp(hum{dev=~"1|2"})"#,
    "sum(temp)",
    "count(hum)",
    "temp offset 5m",
    r#"{__name__=~"temp|hum"}"#,
    "max_over_time(temp[30m])",
];

const RANGE: &[&str] = &[
    "temp",
    "sum by (dev) (rate(temp[5m]))",
    "max_over_time(hum[10m])",
    "avg(temp) + avg(hum)",
    "temp offset 10m",
    r#"{__name__=~"t.*"}"#,
    "last_over_time(temp[2m])",
    "timestamp(hum)",
    "count_over_time(temp[30m])",
    "max_over_time(rate(temp[5m])[20m:1m])",
    "time() - timestamp(temp)",
];

/// 2027-01-15, a Friday: backfills reach into the partitions (weeks) before.
const T0: i64 = 1_799_971_200_000;

struct World {
    storage: Storage,
    uncached: Uncached,
    engine: Engine,
    now: Arc<AtomicI64>,
    rng: Rng,
    tenants: [Tenant; 2],
    /// Partitions written by backfills, per tenant: what a retention drop may remove.
    backfilled: BTreeMap<(usize, i64), ()>,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(seed: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = Arc::new(AtomicI64::new(T0));
        let clock_now = Arc::clone(&now);
        let storage = Storage::open(
            dir.path(),
            StorageOptions {
                durability: Durability::Buffered,
                // Small: reads cross head flushes and chunks.
                head_max_samples: 300,
                compaction: CompactionOptions {
                    interval: Duration::from_secs(3600),
                    ..CompactionOptions::default()
                },
                clock: Clock::from_fn(move || clock_now.load(Ordering::SeqCst)),
                range_cache: RangeCacheOptions {
                    max_bytes: 2 << 20,
                    settle: Duration::from_secs(60),
                },
                ..StorageOptions::default()
            },
        )
        .expect("open");
        Self {
            uncached: Uncached(Arc::new(storage.clone())),
            storage,
            engine: Engine::default(),
            now,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            tenants: [Tenant::default(), Tenant::new("other").expect("valid")],
            backfilled: BTreeMap::new(),
            _dir: dir,
        }
    }

    fn now(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn value(&mut self) -> f64 {
        match self.rng.below(20) {
            0 => f64::from_bits(STALE_NAN_BITS),
            // Decimals, not eighths: sums of them depend on the order of their terms, which
            // must not differ between a cached extent and a fresh evaluation.
            _ => (self.rng.below(20_000) as f64 - 10_000.0) / 10.0,
        }
    }

    /// A batch of one tenant: some series, each with 1..4 ascending samples from `times`.
    fn write(&mut self, mut times: impl FnMut(&mut Rng) -> i64) {
        let t = self.rng.below(2) as usize;
        let mut series = Vec::new();
        for metric in METRICS {
            for dev in 0..DEVICES {
                if self.rng.below(3) == 0 {
                    continue;
                }
                let mut ts: Vec<i64> = (0..1 + self.rng.below(4))
                    .map(|_| times(&mut self.rng))
                    .collect();
                ts.sort_unstable();
                ts.dedup();
                let samples = ts
                    .into_iter()
                    .map(|t| Sample::new(t, self.value()))
                    .collect();
                let labels = Labels::from_metric(metric, [("dev", dev.to_string().as_str())])
                    .expect("valid");
                series.push((labels, samples));
            }
        }
        if series.is_empty() {
            return;
        }
        let batch = SampleBatch {
            tenant: self.tenants[t].clone(),
            series,
        };
        self.storage
            .submit_samples(batch)
            .expect("queued")
            .blocking_recv()
            .expect("answered")
            .expect("stored");
    }

    fn step(&mut self) {
        let now = self.now();
        match self.rng.below(20) {
            // In order: at "now" (whole seconds, so rewrites of a timestamp happen).
            0..=7 => self.write(|r| now - now % 1000 - 1000 * r.below(3) as i64),
            // Late: up to two hours back.
            8..=10 => self.write(|r| now - 1000 * (1 + r.below(7200) as i64)),
            // Backfill: days back, into older partitions.
            11 => {
                let back = 86_400_000 * (1 + self.rng.below(20) as i64);
                let at = now - back;
                self.write(|r| at - 1000 * r.below(600) as i64);
                for t in 0..2 {
                    self.backfilled.insert((t, partitions::index_of(at)), ());
                }
            }
            12 => {
                let index = self.backfilled.keys().next().copied();
                if let Some((t, index)) = index {
                    self.backfilled.remove(&(t, index));
                    self.storage
                        .apply_admitted(Record::DropPartition {
                            tenant: self.tenants[t].clone(),
                            index,
                        })
                        .expect("dropped");
                }
            }
            13 => {
                self.storage
                    .compact_now(&CompactionOptions {
                        seal_after: Duration::ZERO,
                        ..CompactionOptions::default()
                    })
                    .expect("compacted");
            }
            _ => {
                let by = 1000 * (1 + self.rng.below(90) as i64) + self.rng.below(1000) as i64;
                self.now.fetch_add(by, Ordering::SeqCst);
            }
        }
    }

    fn check_instant(&mut self) {
        let query = *self.rng.pick(INSTANT);
        let tenant = self.tenants[self.rng.below(2) as usize].clone();
        let now = self.now();
        let at = match self.rng.below(4) {
            0 => now - self.rng.below(3_600_000) as i64,
            1 => now + self.rng.below(120_000) as i64,
            _ => now,
        };
        let cached = self.engine.instant(&self.storage, &tenant, query, at);
        let fresh = self.engine.instant(&self.uncached, &tenant, query, at);
        assert_eq!(
            format!("{cached:?}"),
            format!("{fresh:?}"),
            "instant {query} at {at} (now {now}) of {tenant}"
        );
    }

    fn check_range(&mut self) {
        // Half the time a dashboard's panel: the same few queries, refreshed.
        let dashboard = self.rng.below(2) == 0;
        let query = *self.rng.pick(if dashboard { &RANGE[..3] } else { RANGE });
        let tenant = self.tenants[self.rng.below(2) as usize].clone();
        let now = self.now();
        let step = match dashboard {
            true => 15_000,
            false => *self.rng.pick(&[15_000i64, 60_000, 7_000, 300_000]),
        };
        let end = match self.rng.below(4) {
            0 => now - self.rng.below(7_200_000) as i64,
            _ => now - now % step,
        };
        // Grafana aligns the start to the step; other clients do not.
        let mut start = end - *self.rng.pick(&[600_000i64, 3_600_000, 3 * 3_600_000]);
        if self.rng.below(3) == 0 {
            start -= self.rng.below(step as u64) as i64;
        }
        let cache = self.storage.range_cache();
        let cached = cache.range(
            &self.engine,
            &self.storage,
            &tenant,
            query,
            start,
            end,
            step,
        );
        let fresh = self
            .engine
            .range(&self.uncached, &tenant, query, start, end, step);
        assert_eq!(
            format!("{cached:?}"),
            format!("{fresh:?}"),
            "range {query} over {start}..{end} step {step} (now {now}) of {tenant}"
        );
    }
}

fn differential(seed: u64, steps: usize) -> (u64, u64) {
    let mut w = World::new(seed);
    for _ in 0..steps {
        w.step();
        if w.rng.below(2) == 0 {
            w.check_instant();
        } else {
            w.check_range();
        }
    }
    let range = w.storage.range_cache().stats();
    let (_, last_value_hits) = w.storage.last_value_stats();
    (range.hits, last_value_hits)
}

#[test]
fn answers_with_caches_equal_answers_without() {
    let seeds: u64 = std::env::var("UPDRAFT_CACHE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let (mut range_hits, mut last_value_hits) = (0, 0);
    for seed in 0..seeds {
        let (r, l) = differential(seed, 400);
        range_hits += r;
        last_value_hits += l;
    }
    eprintln!("range extents from the cache: {range_hits}; last values: {last_value_hits}");
    assert!(
        range_hits > 400,
        "the range cache answered {range_hits} extents"
    );
    assert!(
        last_value_hits > 100,
        "the last-value cache answered {last_value_hits} lookups"
    );
}

impl World {
    /// Every instant query at now and every range query as a dashboard sends it, of both
    /// tenants, through the caches and past them.
    fn check_all(&self) {
        let now = self.now();
        for tenant in &self.tenants {
            for query in INSTANT {
                let cached = self.engine.instant(&self.storage, tenant, query, now);
                let fresh = self.engine.instant(&self.uncached, tenant, query, now);
                assert_eq!(
                    format!("{cached:?}"),
                    format!("{fresh:?}"),
                    "instant {query}"
                );
            }
            let cache = self.storage.range_cache();
            for query in RANGE {
                let end = now - now % 15_000;
                for start in [end - 3_600_000, end - 3 * 3_600_000] {
                    let cached = cache.range(
                        &self.engine,
                        &self.storage,
                        tenant,
                        query,
                        start,
                        end,
                        15_000,
                    );
                    let fresh =
                        self.engine
                            .range(&self.uncached, tenant, query, start, end, 15_000);
                    assert_eq!(format!("{cached:?}"), format!("{fresh:?}"), "range {query}");
                }
            }
        }
    }
}

/// Fills racing writes: queries through the caches run while a writer lands late samples in
/// what they read; once the writes stop, nothing a fill stored may differ from storage.
#[test]
fn fills_racing_writes_never_keep_a_stale_answer() {
    let mut w = World::new(42);
    for _ in 0..200 {
        w.step();
    }
    let w = Arc::new(std::sync::Mutex::new(w));
    let (storage, engine, tenants, now) = {
        let w = w.lock().expect("world");
        (
            w.storage.clone(),
            w.engine.clone(),
            w.tenants.clone(),
            Arc::clone(&w.now),
        )
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (storage, engine, tenants, now, stop) = (
                storage.clone(),
                engine.clone(),
                tenants.clone(),
                Arc::clone(&now),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(r + 7);
                let cache = storage.range_cache();
                while !stop.load(Ordering::SeqCst) {
                    let tenant = rng.pick(&tenants);
                    let at = now.load(Ordering::SeqCst);
                    let _ = engine.instant(&storage, tenant, rng.pick::<&str>(INSTANT), at);
                    let end = at - at % 15_000;
                    let _ = cache.range(
                        &engine,
                        &storage,
                        tenant,
                        rng.pick::<&str>(&RANGE[..3]),
                        end - 3_600_000,
                        end,
                        15_000,
                    );
                }
            })
        })
        .collect();
    {
        let mut w = w.lock().expect("world");
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            let now = w.now();
            // Late samples inside the last hour, and "now" moving on.
            w.write(|r| now - 1000 * (1 + r.below(3600) as i64));
            w.write(|_| now);
            w.now.fetch_add(700, Ordering::SeqCst);
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().expect("reader");
    }
    w.lock().expect("world").check_all();
}

/// The dashboards in deploy/grafana parse, and the caches' one names only metrics the node
/// exports (every name it reads is registered at start).
#[test]
fn the_dashboards_query_what_exists() {
    let names = [
        super::EXTENTS,
        super::QUERIES,
        super::BYTES,
        super::ENTRIES,
        super::EVICTIONS,
        super::INVALIDATIONS,
        "updraft_core_range_cache_budget_bytes",
        crate::storage::last_value::LOOKUPS,
        crate::storage::last_value::ENTRIES,
        crate::storage::last_value::BYTES,
        crate::storage::last_value::EVICTIONS,
        "updraft_core_last_value_budget_bytes",
    ];
    for (file, text) in [
        (
            "caches.json",
            include_str!("../../../deploy/grafana/dashboards/caches.json"),
        ),
        (
            "fleet.json",
            include_str!("../../../deploy/grafana/dashboards/fleet.json"),
        ),
    ] {
        let dashboard: serde_json::Value = serde_json::from_str(text).expect(file);
        let exprs: Vec<&str> = dashboard["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .flat_map(|p| p["targets"].as_array().expect("targets"))
            .map(|t| t["expr"].as_str().expect("expr"))
            .collect();
        assert!(!exprs.is_empty(), "{file}");
        for expr in exprs {
            let expr = expr.replace("$site", ".*");
            query::reach(&expr, &query::EngineOptions::default())
                .unwrap_or_else(|e| panic!("{file}: {expr}: {e}"));
            if file == "caches.json" {
                let named = expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("updraft_core_"));
                for name in named {
                    assert!(names.contains(&name), "{file}: {name} is not exported");
                }
            }
        }
    }
}

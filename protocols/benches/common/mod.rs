//! Deterministic bench data: a tiny PRNG and generators shaped after `shared/DATASETS.md`
//! (`iot-trucks`, `sensor-mix`, `metrics-mix`). They follow the documented distributions but are
//! not the simulator's byte-exact streams; the simulator's benchmark command measures those.

#![allow(dead_code)]

use protocols::Sample;

/// SplitMix64: small, fast, good enough for shaping data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// Uniform integer in lo..=hi.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    pub fn normal(&mut self) -> f64 {
        let u = self.f64().max(1e-300);
        let v = self.f64();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.f64().max(1e-300).ln()
    }
}

pub fn round(v: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (v * p).round() / p
}

/// 2024-01-01T00:00:00Z in ms.
pub const START_MS: i64 = 1_704_067_200_000;
pub const DAY_MS: i64 = 86_400_000;

/// One named series.
pub struct Series {
    pub name: &'static str,
    pub samples: Vec<Sample>,
}

/// `iot-trucks`: 10 series per truck every 10 s, 1% missed ticks, ±50 ms jitter.
pub fn iot_trucks(trucks: usize, duration_ms: i64) -> Vec<Series> {
    const NAMES: [&str; 10] = [
        "latitude",
        "longitude",
        "elevation",
        "velocity",
        "heading",
        "grade",
        "fuel_consumption",
        "load",
        "fuel_state",
        "status",
    ];
    let mut all = Vec::new();
    for truck in 0..trucks {
        let mut rng = Rng::new(0x10_7000 + truck as u64);
        let capacity = [1500.0, 2000.0, 5000.0][truck % 3];
        let mut state = [
            rng.range(-60.0, 60.0),
            rng.range(-170.0, 170.0),
            rng.range(0.0, 2000.0),
            rng.range(0.0, 100.0),
            rng.range(0.0, 360.0),
            rng.range(0.0, 100.0),
            rng.range(0.0, 50.0),
            rng.range(0.0, capacity),
            rng.range(0.0, 1.0),
            rng.range(0.0, 5.0),
        ];
        let limits = [
            (-90.0, 90.0, 0.005, 5),
            (-180.0, 180.0, 0.005, 5),
            (0.0, 5000.0, 10.0, 0),
            (0.0, 100.0, 10.0, 1),
            (0.0, 360.0, 5.0, 1),
            (0.0, 100.0, 5.0, 1),
            (0.0, 50.0, 5.0, 1),
            (0.0, capacity, capacity / 100.0, 0),
        ];
        let mut series: Vec<Vec<Sample>> = vec![Vec::new(); NAMES.len()];
        let ticks = duration_ms / 10_000;
        for tick in 0..ticks {
            for (i, &(lo, hi, step, _)) in limits.iter().enumerate() {
                state[i] = (state[i] + rng.range(-step, step)).clamp(lo, hi);
            }
            state[8] -= rng.range(0.0, 0.001);
            if state[8] <= 0.0 {
                state[8] = 1.0;
            }
            state[9] = (state[9] + rng.normal()).clamp(0.0, 5.0);
            let missing = rng.f64() < 0.01;
            let jitter = rng.int(-50, 50);
            let jitter = if tick == 0 { jitter.abs() } else { jitter };
            if missing {
                continue;
            }
            let t = START_MS + tick * 10_000 + jitter;
            for (i, &(_, _, _, decimals)) in limits.iter().enumerate() {
                series[i].push(Sample::new(t, round(state[i], decimals)));
            }
            series[8].push(Sample::new(t, round(state[8], 2)));
            series[9].push(Sample::new(t, state[9].round()));
        }
        all.extend(
            NAMES
                .iter()
                .zip(series)
                .map(|(&name, samples)| Series { name, samples }),
        );
    }
    all
}

/// `sensor-mix`: 8 series per device at 1–60 s, no jitter.
pub fn sensor_mix(devices: usize, duration_ms: i64) -> Vec<Series> {
    const INTERVALS_S: [i64; 20] = [
        1, 5, 5, 10, 10, 10, 10, 10, 15, 15, 15, 15, 30, 30, 30, 30, 60, 60, 60, 60,
    ];
    let mut all = Vec::new();
    for device in 0..devices {
        let mut rng = Rng::new(0x5e_0000 + device as u64);
        let interval = INTERVALS_S[device % 20] * 1000;
        let phase = rng.int(0, interval - 1);
        let base_t = rng.range(18.0, 24.0);
        let amp = rng.range(1.0, 4.0);
        let base_h = rng.range(35.0, 60.0);
        let mut walk_h = 0.0f64;
        let mut pressure = rng.range(980.0, 1030.0);
        let co2_span = rng.range(200.0, 800.0);
        let mut co2_noise = 0.0f64;
        let mut power = rng.range(0.0, 5000.0);
        let mut energy = 0.0f64;
        let mut door = 0.0;
        let mut door_left = rng.exp(30.0 * 60_000.0);
        let vib_median = rng.range(0.05, 2.0);
        let battery0 = rng.range(3.3, 3.6);
        let drain = rng.range(0.04, 0.17);
        let mut s: [Vec<Sample>; 8] = Default::default();
        let mut t = START_MS + phase;
        while t < START_MS + duration_ms {
            let hours = (t % DAY_MS) as f64 / 3_600_000.0;
            let sine = (2.0 * std::f64::consts::PI * (hours - 15.0) / 24.0).cos();
            let dt = interval as f64 / 1000.0;
            walk_h = (walk_h + 0.05 * rng.normal() * dt.sqrt()).clamp(-10.0, 10.0);
            pressure = (pressure + 0.02 * dt.sqrt() * rng.normal()).clamp(950.0, 1050.0);
            co2_noise = 0.95 * co2_noise + 5.0 * rng.normal();
            let occupied = (7.0..19.0).contains(&hours);
            power = (power + 50.0 * rng.normal() * dt.sqrt()).clamp(0.0, 5000.0);
            energy += power * dt / 3600.0;
            if rng.f64() < dt / (3.0 * 86_400.0) {
                energy = 0.0;
            }
            door_left -= interval as f64;
            if door_left <= 0.0 {
                door = 1.0 - door;
                door_left = rng.exp(if door == 1.0 { 2.0 } else { 30.0 } * 60_000.0);
            }
            let days = (t - START_MS) as f64 / DAY_MS as f64;
            let values = [
                round(base_t + amp * sine + 0.05 * rng.normal(), 2),
                round(base_h - 2.0 * amp * sine + walk_h, 1),
                round(pressure, 1),
                round(
                    420.0 + co2_span * f64::from(u8::from(occupied)) + co2_noise,
                    0,
                ),
                round(energy, 1),
                door,
                vib_median * (0.25 * rng.normal()).exp(),
                round(battery0 - drain * days + 0.002 * rng.normal(), 3),
            ];
            for (series, v) in s.iter_mut().zip(values) {
                series.push(Sample::new(t, v));
            }
            t += interval;
        }
        const NAMES: [&str; 8] = [
            "temperature_celsius",
            "humidity_percent",
            "pressure_hpa",
            "co2_ppm",
            "energy_wh_total",
            "door_open",
            "vibration_rms",
            "battery_volts",
        ];
        all.extend(
            NAMES
                .iter()
                .zip(s)
                .map(|(&name, samples)| Series { name, samples }),
        );
    }
    all
}

/// `metrics-mix`: node_exporter-like counters, gauges and histogram buckets every 15 s, with
/// the few ms of scrape jitter Prometheus timestamps carry.
pub fn metrics_mix(hosts: usize, duration_ms: i64) -> Vec<Series> {
    let mut all = Vec::new();
    for host in 0..hosts {
        let mut rng = Rng::new(0x3e_0000 + host as u64);
        let ticks = duration_ms / 15_000;
        let times: Vec<i64> = (0..ticks)
            .map(|i| START_MS + i * 15_000 + rng.int(0, 3))
            .collect();
        let mut push = |name: &'static str, values: Vec<f64>| {
            let samples = times
                .iter()
                .zip(values)
                .map(|(&t, v)| Sample::new(t, v))
                .collect();
            all.push(Series { name, samples });
        };
        // CPU seconds per mode: counters with 2 decimals.
        for (mode, share) in [
            ("idle", 0.8),
            ("user", 0.12),
            ("system", 0.05),
            ("iowait", 0.01),
        ] {
            let _ = mode;
            let mut c = rng.range(1e5, 1e6);
            push(
                "node_cpu_seconds_total",
                (0..ticks)
                    .map(|_| {
                        c += 15.0 * share * rng.range(0.5, 1.5);
                        round(c, 2)
                    })
                    .collect(),
            );
        }
        let mut mem = rng.range(2e9, 8e9);
        push(
            "node_memory_MemAvailable_bytes",
            (0..ticks)
                .map(|_| {
                    mem = (mem + 4096.0 * rng.normal() * 200.0).max(1e8);
                    (mem / 4096.0).round() * 4096.0
                })
                .collect(),
        );
        let mut rx = rng.range(1e9, 1e12).round();
        push(
            "node_network_receive_bytes_total",
            (0..ticks)
                .map(|_| {
                    rx += rng.range(1e4, 1e6).round();
                    rx
                })
                .collect(),
        );
        let mut load = rng.range(0.1, 4.0);
        push(
            "node_load1",
            (0..ticks)
                .map(|_| {
                    load = (load + 0.1 * rng.normal()).clamp(0.0, 16.0);
                    round(load, 2)
                })
                .collect(),
        );
        let mut fs = rng.range(1e10, 1e11);
        push(
            "node_filesystem_avail_bytes",
            (0..ticks)
                .map(|_| {
                    if rng.f64() < 0.3 {
                        fs -= 4096.0 * rng.int(0, 50) as f64;
                    }
                    (fs / 4096.0).round() * 4096.0
                })
                .collect(),
        );
        // A request-duration histogram: cumulative bucket counters, _sum (full precision), _count.
        const LE: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, f64::INFINITY];
        let mut buckets = [0.0f64; 8];
        let mut sum = 0.0f64;
        let mut rows: Vec<[f64; 10]> = Vec::new();
        for _ in 0..ticks {
            let requests = rng.int(0, 30);
            for _ in 0..requests {
                let d = 0.02 * (rng.normal() * 0.8).exp();
                sum += d;
                for (b, &le) in buckets.iter_mut().zip(&LE) {
                    if d <= le {
                        *b += 1.0;
                    }
                }
            }
            let mut row = [0.0; 10];
            row[..8].copy_from_slice(&buckets);
            row[8] = sum;
            row[9] = buckets[7];
            rows.push(row);
        }
        for col in 0..10 {
            let name = match col {
                8 => "http_request_duration_seconds_sum",
                9 => "http_request_duration_seconds_count",
                _ => "http_request_duration_seconds_bucket",
            };
            push(name, rows.iter().map(|r| r[col]).collect());
        }
        push("up", vec![1.0; ticks as usize]);
    }
    all
}

/// Splits each series into chunks of at most `size` samples.
pub fn chunks(series: &[Series], size: usize) -> impl Iterator<Item = (&'static str, &[Sample])> {
    series
        .iter()
        .flat_map(move |s| s.samples.chunks(size).map(move |c| (s.name, c)))
}

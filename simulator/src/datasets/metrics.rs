//! `metrics-mix`: what a Prometheus user scrapes from a fleet of Linux hosts every 15 s.
//!
//! DATASETS.md only says "counters, gauges and classic histogram buckets shaped like
//! node_exporter output at a 15 s interval", so the whole shape below is a *choice*, made to
//! resemble real node_exporter output byte for byte where it matters for compression: counters
//! that only grow, kernel resolutions (CPU time in 1/100 s, memory in KiB, disk in 512-byte
//! sectors, I/O time in ms), constant series, and a histogram whose `_sum` is full precision.
//!
//! Every host has the same 73 series (so a fleet's size is `73 × hosts`), all labelled
//! `instance="host-<i>:9100"` and `job="node"`, in this order:
//!
//! | series | count | kind | value |
//! |---|---|---|---|
//! | `node_cpu_seconds_total{cpu="0".."3", mode}`, modes idle, iowait, irq, nice, softirq, steal, system, user | 32 | counter | centiseconds / 100; steal stays 0 |
//! | `node_memory_{MemTotal, MemFree, MemAvailable, Buffers, Cached}_bytes` | 5 | gauge | multiples of 1024; MemTotal constant |
//! | `node_load1`, `node_load5`, `node_load15` | 3 | gauge | 2 decimals; 5 and 15 are moving averages of 1 |
//! | `node_network_{receive,transmit}_{bytes,packets}_total{device="eth0","lo"}` | 8 | counter | integers |
//! | `node_disk_{read_bytes, written_bytes, reads_completed, writes_completed, io_time_seconds}_total{device="sda"}` | 5 | counter | bytes in sectors, io time in ms / 1000 |
//! | `node_filesystem_{avail,size}_bytes{device="/dev/sda1", fstype="ext4", mountpoint="/"}` | 2 | gauge | multiples of 4096; size constant |
//! | `node_boot_time_seconds`, `node_context_switches_total`, `node_intr_total`, `node_procs_running` | 4 | gauge, counter, counter, gauge | integers; boot time constant |
//! | `http_request_duration_seconds_{bucket{le=".005".."10","+Inf"}, sum, count}{handler="/api/v1/query"}` | 14 | histogram | client_golang default buckets; sum unrounded |
//!
//! Timing: scrapes every 15,000 ms exactly (Prometheus aligns scrape timestamps), the first at a
//! per-host phase, a uniform integer in `0..15,000` ms; so exactly 5,760 scrapes per host per day.
//! No resets, no missing scrapes.
//!
//! Dynamics (host constants first, then per scrape, in this order): per CPU a utilisation walk
//! (normal step 0.03, clamped to 0.01..0.98) split 70/22/3/3/1/1 % into user, system, iowait,
//! softirq, irq, nice with ±20 % noise per mode and the rest idle; memory available as a walk
//! (step 0.003 of total) with cached 55 % of it; log-normal random walks for network, disk and
//! request rates; request latencies log-normal (host median 10..200 ms, σ 0.8) drawn one by one
//! into the buckets. Counters start at the host's uptime (1..30 days) × their initial rate, except
//! the histogram, whose service starts with the dataset.

use super::rng::{Rng, round_to};
use super::{Entity, MetricType, SeriesInfo, TickTime, series_info};
use std::sync::Arc;

pub(super) const NAME: &str = "metrics-mix";
pub(super) const INTERVAL_MS: i64 = 15_000;
pub(super) const SERIES_PER_HOST: usize = 73;

const CPUS: usize = 4;
/// node_exporter's mode order (alphabetical, as it sorts them).
const MODES: [&str; 8] = [
    "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
];
/// Share of busy time per mode, same order as [`MODES`] (idle takes the rest, steal none).
const BUSY_SHARE: [f64; 8] = [0.0, 0.03, 0.01, 0.01, 0.03, 0.0, 0.22, 0.70];
/// USER_HZ: /proc/stat counts CPU time in 1/100 s.
const TICKS_PER_SCRAPE: f64 = 100.0 * (INTERVAL_MS as f64 / 1000.0);
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BUCKET_LABELS: [&str; 12] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
];
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A log-normal random walk of a rate: ln(rate) steps by normal(0, 0.05) within bounds.
#[derive(Clone, Copy)]
struct LogWalk {
    ln: f64,
    lo: f64,
    hi: f64,
}

impl LogWalk {
    fn new(rng: &mut Rng, lo: f64, hi: f64) -> Self {
        let (lo, hi) = (libm::log(lo), libm::log(hi));
        Self {
            ln: rng.uniform(lo, hi),
            lo,
            hi,
        }
    }

    fn rate(&self) -> f64 {
        libm::exp(self.ln)
    }

    fn step(&mut self, rng: &mut Rng) -> f64 {
        self.ln = (self.ln + rng.normal(0.0, 0.05)).clamp(self.lo, self.hi);
        self.rate()
    }
}

pub(super) struct Host {
    series: Vec<Arc<SeriesInfo>>,
    rng: Rng,
    next_ms: i64,
    end_ms: i64,
    util: [f64; CPUS],
    cpu_ticks: [[u64; 8]; CPUS],
    mem_total: f64,
    mem_avail_frac: f64,
    mem_buffers_frac: f64,
    load: [f64; 3],
    /// eth0 rx, eth0 tx, lo rx, lo tx.
    net_rate: [LogWalk; 4],
    net_packet_size: [f64; 2],
    net_bytes: [u64; 4],
    net_packets: [u64; 4],
    disk_rate: [LogWalk; 2],
    disk_io_size: f64,
    disk_bytes: [u64; 2],
    disk_ops: [u64; 2],
    disk_io_ms: u64,
    fs_size: f64,
    fs_avail_frac: f64,
    boot_time_s: f64,
    context_switches: u64,
    interrupts: u64,
    req_rate: LogWalk,
    latency_median: f64,
    buckets: [u64; 12],
    latency_sum: f64,
}

fn labels_of(
    host: &[(&'static str, String)],
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut all = host.to_vec();
    all.extend(extra.iter().map(|&(n, v)| (n, v.to_owned())));
    all
}

fn info(
    metric: &'static str,
    family: &'static str,
    ty: MetricType,
    labels: &[(&'static str, String)],
) -> Arc<SeriesInfo> {
    let tags: Vec<(&str, &str)> = labels.iter().map(|(n, v)| (*n, v.as_str())).collect();
    series_info(metric, family, ty, "prometheus", metric, &tags)
}

fn build_series(index: u64) -> Vec<Arc<SeriesInfo>> {
    let host = vec![
        ("instance", format!("host-{index}:9100")),
        ("job", "node".to_owned()),
    ];
    let mut s = Vec::with_capacity(SERIES_PER_HOST);
    for cpu in 0..CPUS {
        let cpu = cpu.to_string();
        for mode in MODES {
            s.push(info(
                "node_cpu_seconds_total",
                "node_cpu_seconds",
                MetricType::Counter,
                &labels_of(&host, &[("cpu", &cpu), ("mode", mode)]),
            ));
        }
    }
    for m in [
        "node_memory_MemTotal_bytes",
        "node_memory_MemFree_bytes",
        "node_memory_MemAvailable_bytes",
        "node_memory_Buffers_bytes",
        "node_memory_Cached_bytes",
        "node_load1",
        "node_load5",
        "node_load15",
    ] {
        s.push(info(m, m, MetricType::Gauge, &host));
    }
    for (metric, family) in [
        (
            "node_network_receive_bytes_total",
            "node_network_receive_bytes",
        ),
        (
            "node_network_transmit_bytes_total",
            "node_network_transmit_bytes",
        ),
        (
            "node_network_receive_packets_total",
            "node_network_receive_packets",
        ),
        (
            "node_network_transmit_packets_total",
            "node_network_transmit_packets",
        ),
    ] {
        for device in ["eth0", "lo"] {
            s.push(info(
                metric,
                family,
                MetricType::Counter,
                &labels_of(&host, &[("device", device)]),
            ));
        }
    }
    for (metric, family) in [
        ("node_disk_read_bytes_total", "node_disk_read_bytes"),
        ("node_disk_written_bytes_total", "node_disk_written_bytes"),
        (
            "node_disk_reads_completed_total",
            "node_disk_reads_completed",
        ),
        (
            "node_disk_writes_completed_total",
            "node_disk_writes_completed",
        ),
        (
            "node_disk_io_time_seconds_total",
            "node_disk_io_time_seconds",
        ),
    ] {
        s.push(info(
            metric,
            family,
            MetricType::Counter,
            &labels_of(&host, &[("device", "sda")]),
        ));
    }
    let fs = labels_of(
        &host,
        &[
            ("device", "/dev/sda1"),
            ("fstype", "ext4"),
            ("mountpoint", "/"),
        ],
    );
    for m in ["node_filesystem_avail_bytes", "node_filesystem_size_bytes"] {
        s.push(info(m, m, MetricType::Gauge, &fs));
    }
    s.push(info(
        "node_boot_time_seconds",
        "node_boot_time_seconds",
        MetricType::Gauge,
        &host,
    ));
    s.push(info(
        "node_context_switches_total",
        "node_context_switches",
        MetricType::Counter,
        &host,
    ));
    s.push(info(
        "node_intr_total",
        "node_intr",
        MetricType::Counter,
        &host,
    ));
    s.push(info(
        "node_procs_running",
        "node_procs_running",
        MetricType::Gauge,
        &host,
    ));
    const FAMILY: &str = "http_request_duration_seconds";
    for le in BUCKET_LABELS {
        s.push(info(
            "http_request_duration_seconds_bucket",
            FAMILY,
            MetricType::Histogram,
            &labels_of(&host, &[("handler", "/api/v1/query"), ("le", le)]),
        ));
    }
    let handler = labels_of(&host, &[("handler", "/api/v1/query")]);
    s.push(info(
        "http_request_duration_seconds_sum",
        FAMILY,
        MetricType::Histogram,
        &handler,
    ));
    s.push(info(
        "http_request_duration_seconds_count",
        FAMILY,
        MetricType::Histogram,
        &handler,
    ));
    s
}

impl Host {
    pub(super) fn new(seed: u64, index: u64, start_ms: i64, duration_ms: i64) -> Self {
        let series = build_series(index);
        let mut rng = Rng::for_entity(NAME, seed, index);
        let phase = rng.int(0, INTERVAL_MS - 1);
        let uptime_s = rng.uniform(86_400.0, 30.0 * 86_400.0);
        let mut util = [0.0; CPUS];
        for u in &mut util {
            *u = rng.uniform(0.02, 0.6);
        }
        let mut cpu_ticks = [[0u64; 8]; CPUS];
        for (ticks, &u) in cpu_ticks.iter_mut().zip(&util) {
            let total = uptime_s * 100.0;
            let mut busy = 0u64;
            for (t, share) in ticks.iter_mut().zip(BUSY_SHARE) {
                *t = (total * u * share) as u64;
                busy += *t;
            }
            ticks[0] = (total as u64).saturating_sub(busy);
        }
        let mem_total = [8.0, 16.0, 32.0, 64.0][rng.index(4)] * GIB;
        let mem_avail_frac = rng.uniform(0.3, 0.8);
        let mem_buffers_frac = rng.uniform(0.005, 0.03);
        let load1 = util.iter().sum::<f64>();
        let net_rate = [
            LogWalk::new(&mut rng, 1e3, 1e8),
            LogWalk::new(&mut rng, 1e3, 1e8),
            LogWalk::new(&mut rng, 1e2, 1e6),
            LogWalk::new(&mut rng, 1e2, 1e6),
        ];
        let net_packet_size = [rng.uniform(300.0, 1400.0), rng.uniform(2000.0, 20_000.0)];
        let mut net_bytes = [0u64; 4];
        let mut net_packets = [0u64; 4];
        for i in 0..4 {
            net_bytes[i] = (uptime_s * net_rate[i].rate()) as u64;
            net_packets[i] = (net_bytes[i] as f64 / net_packet_size[i / 2]) as u64;
        }
        let disk_rate = [
            LogWalk::new(&mut rng, 1e3, 5e7),
            LogWalk::new(&mut rng, 1e3, 5e7),
        ];
        let disk_io_size = rng.uniform(8192.0, 65536.0);
        let mut disk_bytes = [0u64; 2];
        let mut disk_ops = [0u64; 2];
        for i in 0..2 {
            disk_bytes[i] = (uptime_s * disk_rate[i].rate() / 512.0) as u64 * 512;
            disk_ops[i] = (disk_bytes[i] as f64 / disk_io_size) as u64;
        }
        let disk_io_ms = ((disk_ops[0] + disk_ops[1]) as f64 * 0.5) as u64;
        let fs_size = [50.0, 100.0, 200.0, 500.0][rng.index(4)] * GIB;
        let fs_avail_frac = rng.uniform(0.1, 0.9);
        let boot_time_s = libm::floor(start_ms as f64 / 1000.0 - uptime_s);
        let context_switches = (uptime_s * (2000.0 + 20_000.0 * load1 / CPUS as f64)) as u64;
        let interrupts = (uptime_s * (1000.0 + 8000.0 * load1 / CPUS as f64)) as u64;
        let req_rate = LogWalk::new(&mut rng, 0.2, 10.0);
        let latency_median = rng.uniform(0.01, 0.2);
        Self {
            series,
            rng,
            next_ms: start_ms + phase,
            end_ms: start_ms.saturating_add(duration_ms.max(0)),
            util,
            cpu_ticks,
            mem_total,
            mem_avail_frac,
            mem_buffers_frac,
            load: [load1, load1, load1],
            net_rate,
            net_packet_size,
            net_bytes,
            net_packets,
            disk_rate,
            disk_io_size,
            disk_bytes,
            disk_ops,
            disk_io_ms,
            fs_size,
            fs_avail_frac,
            boot_time_s,
            context_switches,
            interrupts,
            req_rate,
            latency_median,
            buckets: [0; 12],
            latency_sum: 0.0,
        }
    }
}

/// `x` rounded down to a multiple of `unit`.
fn in_units(x: f64, unit: f64) -> f64 {
    libm::floor(x / unit) * unit
}

impl Entity for Host {
    fn series(&self) -> &[Arc<SeriesInfo>] {
        &self.series
    }

    fn next_tick(&mut self, v: &mut [f64]) -> Option<TickTime> {
        let ts = self.next_ms;
        if ts >= self.end_ms {
            return None;
        }
        self.next_ms += INTERVAL_MS;
        let rng = &mut self.rng;
        let dt = INTERVAL_MS as f64 / 1000.0;
        let mut i = 0;

        // CPU: per CPU, busy time split into modes with noise; idle takes the rest.
        for (u, ticks) in self.util.iter_mut().zip(self.cpu_ticks.iter_mut()) {
            *u = (*u + rng.normal(0.0, 0.03)).clamp(0.01, 0.98);
            let busy = *u * TICKS_PER_SCRAPE;
            let mut used = 0u64;
            for (mode, share) in BUSY_SHARE.iter().enumerate().skip(1) {
                if *share == 0.0 {
                    continue;
                }
                let inc = (busy * share * rng.uniform(0.8, 1.2) + rng.unit()) as u64;
                ticks[mode] += inc;
                used += inc;
            }
            ticks[0] += (TICKS_PER_SCRAPE as u64).saturating_sub(used);
            for t in ticks.iter() {
                v[i] = *t as f64 / 100.0;
                i += 1;
            }
        }

        // Memory.
        self.mem_avail_frac = (self.mem_avail_frac + rng.normal(0.0, 0.003)).clamp(0.05, 0.95);
        self.mem_buffers_frac =
            (self.mem_buffers_frac + rng.normal(0.0, 0.0002)).clamp(0.001, 0.05);
        let avail = self.mem_total * self.mem_avail_frac;
        let cached = avail * 0.55;
        let buffers = self.mem_total * self.mem_buffers_frac;
        let free = (avail - cached - buffers).max(0.0);
        v[i] = self.mem_total;
        v[i + 1] = in_units(free, 1024.0);
        v[i + 2] = in_units(avail, 1024.0);
        v[i + 3] = in_units(buffers, 1024.0);
        v[i + 4] = in_units(cached, 1024.0);
        i += 5;

        // Load averages: load1 follows the busy CPUs; 5 and 15 are its moving averages.
        let busy: f64 = self.util.iter().sum();
        self.load[0] = (busy * (1.0 + rng.normal(0.0, 0.2))).max(0.0);
        self.load[1] += (self.load[0] - self.load[1]) * (1.0 - libm::exp(-dt / 300.0));
        self.load[2] += (self.load[0] - self.load[2]) * (1.0 - libm::exp(-dt / 900.0));
        for l in self.load {
            v[i] = round_to(l, 2);
            i += 1;
        }

        // Network: bytes then packets, eth0 and lo each.
        for k in 0..4 {
            let bytes = (self.net_rate[k].step(rng) * dt + rng.unit()) as u64;
            self.net_bytes[k] += bytes;
            self.net_packets[k] += (bytes as f64 / self.net_packet_size[k / 2] + rng.unit()) as u64;
        }
        // Series order: receive_bytes eth0, lo; transmit_bytes eth0, lo; then packets likewise.
        for k in [0, 2, 1, 3] {
            v[i] = self.net_bytes[k] as f64;
            i += 1;
        }
        for k in [0, 2, 1, 3] {
            v[i] = self.net_packets[k] as f64;
            i += 1;
        }

        // Disk: 512-byte sectors, operations of the host's typical size, busy time in ms.
        let mut ops_now = 0u64;
        for k in 0..2 {
            let sectors = (self.disk_rate[k].step(rng) * dt / 512.0 + rng.unit()) as u64;
            self.disk_bytes[k] += sectors * 512;
            let ops = (sectors as f64 * 512.0 / self.disk_io_size + rng.unit()) as u64;
            self.disk_ops[k] += ops;
            ops_now += ops;
        }
        self.disk_io_ms += ((ops_now as f64 * rng.uniform(0.2, 1.0)) as u64).min(15_000);
        v[i] = self.disk_bytes[0] as f64;
        v[i + 1] = self.disk_bytes[1] as f64;
        v[i + 2] = self.disk_ops[0] as f64;
        v[i + 3] = self.disk_ops[1] as f64;
        v[i + 4] = self.disk_io_ms as f64 / 1000.0;
        i += 5;

        // Filesystem.
        self.fs_avail_frac = (self.fs_avail_frac + rng.normal(0.0, 0.0005)).clamp(0.02, 0.98);
        v[i] = in_units(self.fs_size * self.fs_avail_frac, 4096.0);
        v[i + 1] = self.fs_size;
        i += 2;

        // Kernel counters and gauges.
        let mean_util = busy / CPUS as f64;
        self.context_switches +=
            ((2000.0 + 20_000.0 * mean_util) * dt * rng.uniform(0.9, 1.1)) as u64;
        self.interrupts += ((1000.0 + 8000.0 * mean_util) * dt * rng.uniform(0.9, 1.1)) as u64;
        v[i] = self.boot_time_s;
        v[i + 1] = self.context_switches as f64;
        v[i + 2] = self.interrupts as f64;
        v[i + 3] = round_to(1.0 + busy + rng.normal(0.0, 1.0).abs(), 0);
        i += 4;

        // Histogram: each request's latency drawn and bucketed, as client_golang observes it.
        let requests = (self.req_rate.step(rng) * dt + rng.unit()) as u64;
        for _ in 0..requests {
            let latency = self.latency_median * libm::exp(0.8 * rng.std_normal());
            let bucket = BUCKETS
                .iter()
                .position(|&le| latency <= le)
                .unwrap_or(BUCKETS.len());
            self.buckets[bucket] += 1;
            self.latency_sum += latency;
        }
        let mut cumulative = 0u64;
        for b in self.buckets {
            cumulative += b;
            v[i] = cumulative as f64;
            i += 1;
        }
        v[i] = self.latency_sum;
        v[i + 1] = cumulative as f64;
        debug_assert_eq!(i + 2, SERIES_PER_HOST);

        Some(TickTime {
            timestamp_ms: ts,
            arrival_ms: ts,
        })
    }
}

//! `simulator bench dashboard`: the fleet dashboard (`deploy/grafana/dashboards/fleet.json`)
//! refreshed as Grafana refreshes it, over a sensor-mix fleet that keeps ingesting, on a
//! core node with its caches (`updraft`), the same node read past them (`updraft-nocache`:
//! every request carries `nocache=1`), Prometheus 2.42 and VictoriaMetrics, all holding the
//! same data.
//!
//! # What runs
//!
//! 1. The fleet's `--history` (1 h) before the start goes to every server over remote_write,
//!    in time order, a minute at a time.
//! 2. For `--duration` (10 min), every `--refresh` (10 s): the samples of the last interval
//!    go to every server, then each system's dashboard is refreshed once (the order rotates
//!    from one refresh to the next): every panel's targets at once, at most 6 requests in
//!    flight as a browser sends them, `POST` form-encoded like Grafana's Prometheus data
//!    source: each time series target as `query_range` over the last hour at a 10 s step
//!    (the data source's `timeInterval`), start and end aligned down to the step; each
//!    table target as an instant `query` at now. `$site` is All (`.*`), and the panels' metric
//!    names are sensor-mix's (the demo's agent mapping adds the `env_` prefix; it is dropped).
//!    A refresh's time is from its first request to its last answer.
//! 3. `last_value_query_ms`: the current value of every series (an instant query of all eight
//!    metrics), the median of 5 after the run, per system.
//!
//! # Figures (dataset `sensor-mix`)
//!
//! `refresh_ms_p50`, `refresh_ms_p99` and `last_value_query_ms` for each system, and
//! `cache_bytes` (the core's range-result and last-value caches at the end, from its
//! `/metrics`) for `updraft`.

use super::query::http;
use super::query::servers::{self, Server};
use super::table::{Table, format_value};
use super::{Figure, Reporter};
use crate::datasets::{self, Dataset, DatasetSpec, Entity, TickTime};
use anyhow::{Context, bail};
use core_node::storage::Durability;
use protocols::remote_write::{self as rw, WriteRequest};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SCENARIO: &str = "dashboard";
/// Grafana's Prometheus data source: its `timeInterval` (deploy/grafana/provisioning).
const STEP_MS: i64 = 10_000;
/// The dashboard's time range.
const RANGE_MS: i64 = 3_600_000;
/// Requests a browser keeps in flight to one host.
const IN_FLIGHT: usize = 6;
/// Devices per remote_write request.
const DEVICES_PER_REQUEST: usize = 250;
/// The issue's targets: `updraft` at least 5 × below `updraft-nocache` at the median, and at
/// most half of each peer.
const TARGET_VS_NOCACHE: f64 = 0.2;
const TARGET_VS_PEERS: f64 = 0.5;
const METRICS: [&str; 8] = [
    "temperature_celsius",
    "humidity_percent",
    "pressure_hpa",
    "co2_ppm",
    "energy_wh_total",
    "door_open",
    "vibration_rms",
    "battery_volts",
];

/// `simulator bench dashboard`.
#[derive(Debug, Clone, clap::Args)]
pub struct DashboardArgs {
    /// Devices of the sensor-mix fleet (8 series each).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub devices: u64,
    /// How long the dashboards are refreshed while the fleet ingests, e.g. 10m.
    #[arg(long, default_value = "10m", value_parser = datasets::parse_duration_ms)]
    pub duration: i64,
    /// The fleet's data before the start, e.g. 1h.
    #[arg(long, default_value = "1h", value_parser = datasets::parse_duration_ms)]
    pub history: i64,
    /// Time between two refreshes of each dashboard, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = datasets::parse_duration_ms)]
    pub refresh: i64,
    /// Seed of every random stream.
    #[arg(long, default_value_t = datasets::DEFAULT_SEED)]
    pub seed: u64,
    /// When core-node acknowledges a write (the peers write their WAL without fsync).
    #[arg(long, value_enum, default_value_t = Durability::Buffered)]
    pub durability: Durability,
    /// The core-node binary [default: next to this simulator, else target/release/core-node].
    #[arg(long)]
    pub core_node: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/prometheus")]
    pub prometheus: PathBuf,
    #[arg(long, default_value = "/usr/bin/victoria-metrics")]
    pub victoria_metrics: PathBuf,
    /// Directory for the servers' data and logs, kept afterwards [default: a temporary
    /// directory, removed afterwards].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// One dashboard request: a range target or an instant (table) target.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Range(String),
    Instant(String),
}

/// The fleet dashboard's targets, with sensor-mix's metric names and `$site` = All.
fn targets() -> anyhow::Result<Vec<Target>> {
    let text = include_str!("../../../deploy/grafana/dashboards/fleet.json");
    let dashboard: serde_json::Value = serde_json::from_str(text).context("fleet.json")?;
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"]
                .as_str()
                .context("expr")?
                .replace("$site", ".*")
                .replace("env_", "");
            out.push(if target["instant"].as_bool() == Some(true) {
                Target::Instant(expr)
            } else {
                Target::Range(expr)
            });
        }
    }
    if out.is_empty() {
        bail!("fleet.json has no targets");
    }
    Ok(out)
}

/// A system under test: a server and whether its requests bypass the caches.
struct System<'a> {
    name: &'static str,
    server: &'a Server,
    nocache: bool,
}

impl System<'_> {
    /// POSTs `path` with `form` (plus `nocache=1` when asked); fails on a non-200 answer.
    fn post(&self, path: &str, form: &[(&str, String)]) -> anyhow::Result<String> {
        let mut pairs: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{k}={}", http::encode_component(v)))
            .collect();
        if self.nocache {
            pairs.push("nocache=1".to_owned());
        }
        let body = pairs.join("&");
        let headers = [("Content-Type", "application/x-www-form-urlencoded")];
        let r = http::post(self.server.addr, path, &headers, body.as_bytes())?;
        if r.status != 200 {
            bail!(
                "{} answered {path} with {}: {}",
                self.name,
                r.status,
                r.text()
            );
        }
        Ok(r.text())
    }

    fn target(&self, target: &Target, now_ms: i64) -> anyhow::Result<()> {
        let secs = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
        match target {
            Target::Range(q) => {
                let end = now_ms - now_ms.rem_euclid(STEP_MS);
                let start = end - RANGE_MS;
                let form = [
                    ("query", q.clone()),
                    ("start", secs(start)),
                    ("end", secs(end)),
                    ("step", secs(STEP_MS)),
                ];
                self.post("/api/v1/query_range", &form).map(drop)
            }
            Target::Instant(q) => self
                .post(
                    "/api/v1/query",
                    &[("query", q.clone()), ("time", secs(now_ms))],
                )
                .map(drop),
        }
    }

    /// One refresh: every target, at most [`IN_FLIGHT`] at once; its wall time.
    fn refresh(&self, targets: &[Target], now_ms: i64) -> anyhow::Result<Duration> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let started = Instant::now();
        let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..IN_FLIGHT.min(targets.len()))
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<()> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(t) = targets.get(i) else {
                                return Ok(());
                            };
                            self.target(t, now_ms)?;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))
                })
                .collect()
        });
        for r in results {
            r?;
        }
        Ok(started.elapsed())
    }
}

/// A tick and the values of every series of its device.
type Tick = (TickTime, Vec<f64>);

/// The fleet's devices, each with its next tick not yet sent.
struct Fleet {
    devices: Vec<(Box<dyn Entity>, Option<Tick>)>,
}

impl Fleet {
    fn new(spec: &DatasetSpec) -> Self {
        let devices = (0..spec.entities)
            .map(|i| {
                let mut e = datasets::entity(spec, i);
                let first = next(e.as_mut());
                (e, first)
            })
            .collect();
        Self { devices }
    }

    /// Remote_write bodies of every sample up to `until_ms` not sent yet.
    fn take_until(&mut self, until_ms: i64) -> anyhow::Result<(Vec<Vec<u8>>, u64)> {
        let mut bodies = Vec::new();
        let mut samples = 0;
        for group in self.devices.chunks_mut(DEVICES_PER_REQUEST) {
            let mut timeseries = Vec::new();
            for (entity, pending) in group.iter_mut() {
                let k = entity.series().len();
                let mut points: Vec<Vec<rw::Sample>> = vec![Vec::new(); k];
                while let Some((tick, values)) =
                    pending.take_if(|(t, _)| t.timestamp_ms <= until_ms)
                {
                    for (p, v) in points.iter_mut().zip(&values) {
                        p.push(rw::Sample {
                            value: *v,
                            timestamp: tick.timestamp_ms,
                        });
                    }
                    *pending = next(entity.as_mut());
                }
                for (info, points) in entity.series().iter().zip(points) {
                    if points.is_empty() {
                        continue;
                    }
                    samples += points.len() as u64;
                    timeseries.push(rw::TimeSeries {
                        labels: info
                            .labels
                            .iter()
                            .map(|l| rw::Label {
                                name: l.name.to_string(),
                                value: l.value.to_string(),
                            })
                            .collect(),
                        samples: points,
                    });
                }
            }
            if !timeseries.is_empty() {
                bodies.push(rw::encode_request(&WriteRequest { timeseries })?);
            }
        }
        Ok((bodies, samples))
    }
}

fn next(entity: &mut dyn Entity) -> Option<Tick> {
    let mut values = vec![0.0; entity.series().len()];
    entity.next_tick(&mut values).map(|t| (t, values))
}

fn send(servers: &[&Server], bodies: &[Vec<u8>]) -> anyhow::Result<()> {
    let headers = [
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
        ("X-Prometheus-Remote-Write-Version", "0.1.0"),
    ];
    for server in servers {
        for body in bodies {
            let r = http::post(server.addr, server.write_path, &headers, body)?;
            if !(200..300).contains(&r.status) {
                bail!("{} refused a write: {} {}", server.name, r.status, r.text());
            }
        }
    }
    Ok(())
}

/// `90m`, `1h`, `10s`: as the flags take them.
fn duration_text(ms: i64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms => format!("{}s", ms as f64 / 1000.0),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn start_victoria_metrics(binary: &Path, root: &Path) -> anyhow::Result<Server> {
    let addr = servers::free_tcp()?;
    let log = root.join("victoria-metrics.log");
    let (out, err) = servers::log_file(&log)?;
    let child = Command::new(binary)
        .arg(format!("-storageDataPath={}", root.join("vm").display()))
        .arg(format!("-httpListenAddr={addr}"))
        .arg("-retentionPeriod=100y")
        .arg("-loggerLevel=ERROR")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut server = Server::new("victoria-metrics", addr, "/api/v1/write", child);
    server.wait_ready("/health", &log)?;
    Ok(server)
}

/// The `p` quantile (0..=1) of `values` in ms, nearest rank.
fn quantile_ms(values: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len().max(1));
    ms.get(rank - 1).copied().unwrap_or(f64::NAN)
}

pub fn run(args: &DashboardArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    let targets = targets()?;
    let temp = tempfile::tempdir()?;
    let root = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let core_node = args
        .core_node
        .clone()
        .unwrap_or_else(servers::default_core_node);
    let updraft = servers::start_core_node(&core_node, &root, args.durability)?;
    let prometheus = servers::start_prometheus(&args.prometheus, &root, &root.join("prom"))?;
    let vm = start_victoria_metrics(&args.victoria_metrics, &root)?;
    let all = [&updraft, &prometheus, &vm];

    let start = now_ms() - args.history;
    let spec = DatasetSpec::new(
        Dataset::SensorMix,
        args.devices,
        args.history + args.duration * 2,
    )
    .with_seed(args.seed)
    .with_start_ms(start);
    let mut fleet = Fleet::new(&spec);
    reporter.note(&format!(
        "dashboard: sensor-mix {} ({} series): {} of history to every server",
        super::describe_spec(&spec),
        spec.series_count(),
        duration_text(args.history)
    ));
    let mut sent = 0;
    let mut t = start;
    while t < now_ms() {
        t = (t + 60_000).min(now_ms());
        let (bodies, n) = fleet.take_until(t)?;
        send(&all, &bodies)?;
        sent += n;
    }
    reporter.note(&format!(
        "dashboard: history sent ({sent} samples per server)"
    ));

    let systems = [
        System {
            name: "updraft",
            server: &updraft,
            nocache: false,
        },
        System {
            name: "updraft-nocache",
            server: &updraft,
            nocache: true,
        },
        System {
            name: "prometheus",
            server: &prometheus,
            nocache: false,
        },
        System {
            name: "victoria-metrics",
            server: &vm,
            nocache: false,
        },
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); systems.len()];
    let refresh = Duration::from_millis(u64::try_from(args.refresh.max(1)).unwrap_or(10_000));
    let until = Instant::now() + Duration::from_millis(u64::try_from(args.duration).unwrap_or(0));
    let mut round = 0;
    while Instant::now() < until {
        let tick = Instant::now();
        let (bodies, n) = fleet.take_until(now_ms())?;
        send(&all, &bodies)?;
        sent += n;
        for k in 0..systems.len() {
            let i = (k + round) % systems.len();
            times[i].push(systems[i].refresh(&targets, now_ms())?);
        }
        round += 1;
        let spent = tick.elapsed();
        if spent < refresh {
            std::thread::sleep(refresh - spent);
        }
    }
    reporter.note(&format!(
        "dashboard: {round} refreshes of each system, {sent} samples per server"
    ));

    let every = format!(r#"{{__name__=~"{}"}}"#, METRICS.join("|"));
    let mut last_value = Vec::new();
    for s in &systems {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            s.target(&Target::Instant(every.clone()), now_ms())?;
            runs.push(started.elapsed());
        }
        last_value.push(quantile_ms(&runs, 0.5));
    }
    let scrape = http::get(updraft.addr, "/metrics")?.text();
    let cache_bytes: f64 = [
        "updraft_core_range_cache_bytes",
        "updraft_core_last_value_bytes",
    ]
    .iter()
    .map(|name| metric(&scrape, name))
    .sum();

    let dataset = Dataset::SensorMix.name();
    let mut figures = Vec::new();
    let mut table = Table::new([
        "system",
        "refresh p50 ms",
        "refresh p99 ms",
        "current values ms",
    ]);
    for (i, s) in systems.iter().enumerate() {
        let (p50, p99) = (quantile_ms(&times[i], 0.5), quantile_ms(&times[i], 0.99));
        figures.push(Figure::new(
            SCENARIO,
            dataset,
            s.name,
            "refresh_ms_p50",
            p50,
            "ms",
        ));
        figures.push(Figure::new(
            SCENARIO,
            dataset,
            s.name,
            "refresh_ms_p99",
            p99,
            "ms",
        ));
        figures.push(Figure::new(
            SCENARIO,
            dataset,
            s.name,
            "last_value_query_ms",
            last_value[i],
            "ms",
        ));
        table.push_row([
            s.name.to_owned(),
            format_value(p50),
            format_value(p99),
            format_value(last_value[i]),
        ]);
    }
    figures.push(Figure::new(
        SCENARIO,
        dataset,
        "updraft",
        "cache_bytes",
        cache_bytes,
        "B",
    ));
    let p50 = |i: usize| quantile_ms(&times[i], 0.5);
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    let notes = vec![format!(
        "Fleet: sensor-mix {} ({} series), {} of history, then {} of refreshes every {} \
             while it ingests; Updraft --durability {}. Targets: updraft ≤ {TARGET_VS_NOCACHE} × \
             updraft-nocache at p50 ({:.2}×, {}), ≤ {TARGET_VS_PEERS} × each peer ({:.2}× \
             Prometheus, {:.2}× VictoriaMetrics, {}). Caches at the end: {:.1} MB.",
        super::describe_spec(&spec),
        spec.series_count(),
        duration_text(args.history),
        duration_text(args.duration),
        duration_text(args.refresh),
        servers::durability_name(args.durability),
        p50(0) / p50(1),
        verdict(p50(0) / p50(1) <= TARGET_VS_NOCACHE),
        p50(0) / p50(2),
        p50(0) / p50(3),
        verdict(p50(0) / p50(2) <= TARGET_VS_PEERS && p50(0) / p50(3) <= TARGET_VS_PEERS),
        cache_bytes / 1e6,
    )];
    drop(vm);
    drop(prometheus);
    drop(updraft);
    if reporter.json() {
        for n in &notes {
            reporter.note(n);
        }
    }
    reporter.dataset_result(
        "dashboard: the fleet dashboard refreshed while the fleet ingests",
        &figures,
        &table,
        &notes,
    );
    Ok(())
}

/// Sum of the samples of `name` in a Prometheus text scrape (0 when absent).
fn metric(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next()? == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_targets_are_the_fleet_panels_with_sensor_mix_names() {
        let targets = targets().expect("fleet.json");
        assert!(targets.len() >= 8);
        assert!(targets.iter().any(|t| matches!(t, Target::Instant(_))));
        for t in &targets {
            let (Target::Range(q) | Target::Instant(q)) = t;
            assert!(!q.contains("$site") && !q.contains("env_"), "{q}");
            assert!(METRICS.iter().any(|m| q.contains(m)), "{q}");
        }
    }

    #[test]
    fn the_fleet_sends_each_sample_once_in_time_order() {
        let spec = DatasetSpec::new(Dataset::SensorMix, 3, 600_000).with_start_ms(0);
        let mut fleet = Fleet::new(&spec);
        let (_, first) = fleet.take_until(300_000).expect("encodes");
        let (_, again) = fleet.take_until(300_000).expect("encodes");
        let (_, rest) = fleet.take_until(i64::MAX).expect("encodes");
        let all: u64 = datasets::generate(&spec)
            .map(|s| s.samples.len() as u64)
            .sum();
        assert!(first > 0);
        assert_eq!(again, 0);
        assert_eq!(first + rest, all);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&d, 0.5), 50.0);
        assert_eq!(quantile_ms(&d, 0.99), 99.0);
        assert!(quantile_ms(&[], 0.5).is_nan());
    }
}

//! `simulator bench freshness`: how long a reading takes from an MQTT publish to an answer of
//! the query API, through a real edge agent and a real core node.
//!
//! # What runs
//!
//! A `core-node` process and an `edge-agent` process on free loopback ports (certificates from
//! `core-node certs`, the agent's default batching: a batch leaves at 10,000 samples or 200 ms
//! after its first sample), and in this process: an MQTT client (rumqttc, MQTT 3.1.1) that
//! publishes the markers, and, unless `--load-rate 0`, a second client publishing background
//! readings at `--load-rate` messages/s over `--load-devices` topics, QoS 0, so the agent and
//! the core are doing ordinary work while markers pass.
//!
//! # One marker
//!
//! The marker client publishes `i` (QoS `--qos`) on `bench/freshness/marker`, which the agent's
//! default topic template maps to `marker{site="bench",device="freshness"}`, then asks the core
//! `/api/v1/query?query=marker{...}` every `--poll-ms` until the answer's value is `i`. The
//! latency is from just before the publish to the end of that answer; markers follow each
//! other (the next one `--gap-ms` after the previous was seen), so each one's latency is its
//! own. Latencies go into an HDR histogram (microsecond resolution, 3 significant digits);
//! p50, p99, p99.9 and max are printed, and a marker not seen within `--timeout` fails the run.
//!
//! The core's storage acknowledges after fsync (`--durability fsync`, the default).

use super::codec::thousands;
use super::query::http;
use super::query::servers::{self, Server, free_tcp, log_file};
use super::storage::Root;
use super::table::Table;
use super::{Figure, Reporter};
use anyhow::{Context, bail};
use core_node::storage::Durability;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCENARIO: &str = "freshness";
/// The issue's target: p99 at most one second.
const TARGET_P99: Duration = Duration::from_secs(1);
const MARKER_TOPIC: &str = "bench/freshness/marker";
const MARKER_QUERY: &str = r#"marker{site="bench",device="freshness"}"#;

/// `simulator bench freshness`.
#[derive(Debug, Clone, clap::Args)]
pub struct FreshnessArgs {
    /// Markers published (one at a time).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub markers: u64,
    /// Pause after a marker is seen before the next is published.
    #[arg(long, default_value_t = 20)]
    pub gap_ms: u64,
    /// Interval between two queries for the marker.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_ms: u64,
    /// A marker not seen after this long fails the run.
    #[arg(long, default_value = "30s", value_parser = crate::datasets::parse_duration_ms)]
    pub timeout: i64,
    /// MQTT QoS of the markers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Background readings per second published while markers pass (0: none).
    #[arg(long, default_value_t = 1_000)]
    pub load_rate: u64,
    /// Topics the background readings are spread over (`load/dev<i>/value`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub load_devices: u64,
    /// When the core acknowledges a batch.
    #[arg(long, value_enum, default_value_t = Durability::Fsync)]
    pub durability: Durability,
    /// The core-node binary [default: next to this simulator, else target/release/core-node].
    #[arg(long)]
    pub core_node: Option<PathBuf>,
    /// The edge-agent binary [default: next to this simulator, else target/release/edge-agent].
    #[arg(long)]
    pub edge_agent: Option<PathBuf>,
    /// Directory for both processes' data and logs, kept afterwards [default: a temporary
    /// directory, removed afterwards].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// `name` next to the running simulator, else `target/release/<name>`.
fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/release").join(name))
}

/// A started edge agent and its MQTT address.
struct Agent {
    server: Server,
    mqtt: SocketAddr,
}

fn start_agent(binary: &Path, root: &Path, core_quic: SocketAddr) -> anyhow::Result<Agent> {
    let certs = root.join("certs");
    let http = free_tcp()?;
    let mqtt = free_tcp()?;
    let mqtt5 = free_tcp()?;
    let log = root.join("edge-agent.log");
    let (out, err) = log_file(&log)?;
    let child = Command::new(binary)
        .arg("--data-dir")
        .arg(root.join("edge"))
        .arg("--core")
        .arg(core_quic.to_string())
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("agent.pem"))
        .arg("--key")
        .arg(certs.join("agent-key.pem"))
        .arg("--mqtt-listen")
        .arg(mqtt.to_string())
        .arg("--mqtt5-listen")
        .arg(mqtt5.to_string())
        .arg("--http-listen")
        .arg(http.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut server = Server::new("edge-agent", http, "", child);
    server.wait_ready("/health", &log)?;
    Ok(Agent { server, mqtt })
}

/// The value of the first series of an instant-query answer, if any.
fn answer_value(body: &[u8]) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["data"]["result"].get(0)?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

fn mqtt_client(id: &str, addr: SocketAddr) -> (rumqttc::AsyncClient, tokio::task::JoinHandle<()>) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1_000);
    let driver = tokio::spawn(async move {
        loop {
            if let Err(e) = eventloop.poll().await {
                tracing::warn!(error = %e, "freshness: mqtt connection error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    (client, driver)
}

/// Publishes `rate` readings per second over `devices` topics until aborted.
async fn background_load(client: rumqttc::AsyncClient, rate: u64, devices: u64) {
    let ticks_per_s = 100u64;
    let mut interval = tokio::time::interval(Duration::from_millis(1000 / ticks_per_s));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    let mut owed = 0u64;
    loop {
        interval.tick().await;
        owed += rate;
        while owed >= ticks_per_s {
            owed -= ticks_per_s;
            let topic = format!("load/dev{}/value", n % devices);
            let payload = format!("{}", (n % 1000) as f64 / 10.0);
            if client
                .publish(topic, rumqttc::QoS::AtMostOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
            n += 1;
        }
    }
}

fn qos(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

/// Publishes the markers and waits for each; returns the histogram (µs).
async fn markers(
    args: &FreshnessArgs,
    mqtt: SocketAddr,
    core_http: SocketAddr,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).context("creating a histogram")?;
    let (client, driver) = mqtt_client("bench-freshness-marker", mqtt);
    let load = (args.load_rate > 0).then(|| {
        let (c, d) = mqtt_client("bench-freshness-load", mqtt);
        (
            tokio::spawn(background_load(c, args.load_rate, args.load_devices)),
            d,
        )
    });
    let path = format!(
        "/api/v1/query?query={}",
        http::encode_component(MARKER_QUERY)
    );
    let timeout = Duration::from_millis(args.timeout.max(1) as u64);
    let poll = Duration::from_millis(args.poll_ms);
    let mut result = Ok(());
    // Marker 0 warms up the path (connections, the series' creation) and is not counted.
    for i in 0..=args.markers {
        let value = i as f64;
        let start = Instant::now();
        client
            .publish(MARKER_TOPIC, qos(args.qos), false, format!("{i}"))
            .await
            .context("publishing a marker")?;
        let seen = loop {
            let p = path.clone();
            let r = tokio::task::spawn_blocking(move || http::get(core_http, &p))
                .await
                .context("query task")??;
            if r.status == 200 && answer_value(&r.body) == Some(value) {
                break start.elapsed();
            }
            if start.elapsed() > timeout {
                result = Err(anyhow::anyhow!(
                    "marker {i} not queryable after {timeout:?} (last answer {}: {})",
                    r.status,
                    r.text()
                ));
                break start.elapsed();
            }
            tokio::time::sleep(poll).await;
        };
        if result.is_err() {
            break;
        }
        if i > 0 {
            hist.record(seen.as_micros().max(1) as u64)
                .context("recording a latency")?;
        }
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    let _ = client.disconnect().await;
    driver.abort();
    if let Some((l, d)) = load {
        l.abort();
        d.abort();
    }
    result.map(|()| hist)
}

pub fn run(args: &FreshnessArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    let root = Root::new(&args.data_dir, "updraft-bench-freshness-")?;
    let core_bin = args
        .core_node
        .clone()
        .unwrap_or_else(servers::default_core_node);
    let agent_bin = args
        .edge_agent
        .clone()
        .unwrap_or_else(|| sibling_binary("edge-agent"));
    if !agent_bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p edge-agent) or pass --edge-agent",
            agent_bin.display()
        );
    }
    let (core, quic) = servers::start_core_node_with_quic(&core_bin, &root.path, args.durability)?;
    let agent = start_agent(&agent_bin, &root.path, quic)?;
    reporter.note(&format!(
        "freshness: core-node pid {} (http {}, quic {}), edge-agent pid {} (mqtt {}); {} markers, background {} msgs/s",
        core.pid(),
        core.addr,
        quic,
        agent.server.pid(),
        agent.mqtt,
        args.markers,
        args.load_rate
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let t = Instant::now();
    let hist = runtime.block_on(markers(args, agent.mqtt, core.addr))?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    let wall = t.elapsed();
    drop(agent);
    drop(core);

    let ms = |us: u64| us as f64 / 1000.0;
    let p50 = ms(hist.value_at_quantile(0.5));
    let p99 = ms(hist.value_at_quantile(0.99));
    let p999 = ms(hist.value_at_quantile(0.999));
    let max = ms(hist.max());
    let figures: Vec<Figure> = [
        ("p50_ms", p50),
        ("p99_ms", p99),
        ("p99_9_ms", p999),
        ("max_ms", max),
    ]
    .into_iter()
    .map(|(f, v)| Figure::new(SCENARIO, "marker", "updraft", f, v, "ms"))
    .collect();
    let mut table = Table::new([
        "path",
        "markers",
        "p50 (ms)",
        "p99 (ms)",
        "p99.9 (ms)",
        "max (ms)",
        "target p99 ≤ 1 s",
    ]);
    table.push_row([
        "MQTT publish → edge agent → QUIC → core → /api/v1/query".to_owned(),
        thousands(hist.len()),
        format!("{p50:.1}"),
        format!("{p99:.1}"),
        format!("{p999:.1}"),
        format!("{max:.1}"),
        if p99 <= TARGET_P99.as_secs_f64() * 1000.0 {
            "met"
        } else {
            "not met"
        }
        .to_owned(),
    ]);
    let notes = vec![format!(
        "One marker at a time (QoS {}), polled every {} ms (the poll interval bounds the \
         resolution), {} ms between markers; background load {} readings/s over {} topics \
         (QoS 0); agent defaults (batch at 10,000 samples or 200 ms); core durability {}. \
         {:.0} s in all. Dataset column: `marker` (no reference dataset).",
        args.qos,
        args.poll_ms,
        args.gap_ms,
        args.load_rate,
        args.load_devices,
        servers::durability_name(args.durability),
        wall.as_secs_f64()
    )];
    if reporter.json() {
        for n in &notes {
            reporter.note(n);
        }
    }
    reporter.dataset_result(
        "freshness: MQTT publish to queryable, through a real edge agent and core node",
        &figures,
        &table,
        &notes,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_value_of_an_instant_answer() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"marker"},"value":[1700000000.5,"42"]}]}}"#;
        assert_eq!(answer_value(body), Some(42.0));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(answer_value(empty), None);
        assert_eq!(answer_value(b"not json"), None);
    }
}

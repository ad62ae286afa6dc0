//! `simulator bench mqtt`: MQTT publishes per second into the edge agent's durable buffer,
//! against `mosquitto` forwarding the same publishes to one subscriber, both real processes on
//! this machine, each pinned to one CPU (`taskset`), same publisher, same run.
//!
//! # Set-up
//!
//! - **updraft**: an `edge-agent` process with its buffer on a fresh directory and one `--core`
//!   nobody answers at (a free UDP port): only MQTT → mapping → buffer (append + fsync before
//!   the PUBACK) is measured, not the uplink. Messages count once they are in the buffer
//!   (`updraft_edge_samples_buffered_total`; every message is one sample).
//! - **mosquitto**: `/usr/sbin/mosquitto` with persistence off and no inflight or queue limits,
//!   forwarding to one subscriber (at the run's QoS, in this process) that counts.
//! - **publisher**: `--connections` MQTT 3.1.1 connections over plain TCP with a minimal codec
//!   of its own (CONNECT, PUBLISH, PUBACK, SUBSCRIBE: nothing else is needed), each publishing
//!   a small number payload on its own topic; QoS 1 keeps at most `--inflight` unacknowledged
//!   per connection and timestamps each PUBLISH and its PUBACK (an hdrhistogram in µs).
//!
//! # Figures, per QoS (datasets `qos0`, `qos1`) and system
//!
//! - `msgs_per_second`: publishers go flat out for `--seconds`; messages that reached the
//!   buffer (updraft) or the subscriber (mosquitto) ÷ the time until the last one did.
//! - `cpu_ms_per_1000_msgs`: the server's utime + stime (`/proc/<pid>/stat`) over that run,
//!   per 1,000 messages.
//! - `rss_bytes`: the server's largest VmRSS (sampled every 100 ms) during a paced run at
//!   `--paced-rate` (10,000 msgs/s) for `--paced-seconds`, on the fresh process before the
//!   flat-out run. `rss_bytes_flat_out`: the largest during the flat-out run.
//! - `puback_p50_ms`, `puback_p99_ms` (QoS 1): publish → PUBACK during that paced run.
//!   `puback_p99_ms_flat_out`: the same during the flat-out run (mostly queueing: the window
//!   of `--inflight` messages ÷ the rate).
//! - `binary_bytes`: size of the server's executable (mosquitto also loads shared libraries).
//!   The edge agent run by default is the shipping build (`cargo build --profile ship -p
//!   edge-agent`, what the install docs install) when it is built, so this is the size a
//!   gateway gets; the target is at most 15 MB.

use super::table::{Table, format_value};
use super::{Figure, Reporter};
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

const SCENARIO: &str = "mqtt";
/// The targets.
const TARGET_RATIO: f64 = 3.0;
const TARGET_RSS_BYTES: f64 = 64.0 * 1024.0 * 1024.0;
/// The target for the shipped edge-agent binary.
const TARGET_BINARY_BYTES: f64 = 15e6;
/// A run is over when the receiving side has not moved for this long.
const STALL: Duration = Duration::from_secs(3);

/// `simulator bench mqtt`.
#[derive(Debug, Clone, clap::Args)]
pub struct MqttArgs {
    /// Rounds; each starts both servers afresh, and every figure is the median of the rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Seconds of each flat-out run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Publisher connections.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub connections: u64,
    /// Unacknowledged QoS 1 messages per connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=30000))]
    pub inflight: u64,
    /// Messages per second of the paced run (RSS and PUBACK latency).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub paced_rate: u64,
    /// Seconds of the paced run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub paced_seconds: u64,
    /// The CPU both servers are pinned to.
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// The edge-agent binary [default: target/ship/edge-agent if built, else next to this
    /// simulator, else target/release/edge-agent].
    #[arg(long)]
    pub edge_agent: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub mosquitto: PathBuf,
    /// Directory for the agent's buffer and both servers' logs, kept afterwards [default: a
    /// temporary directory, removed afterwards].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Updraft,
    Mosquitto,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            Self::Updraft => "updraft",
            Self::Mosquitto => "mosquitto",
        }
    }
}

pub fn run(args: &MqttArgs, reporter: &mut Reporter) -> anyhow::Result<()> {
    let temp;
    let root = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let agent_bin = match &args.edge_agent {
        Some(p) => p.clone(),
        None => default_agent()?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for qos in [0u8, 1] {
        let dataset = format!("qos{qos}");
        let mut figures = Vec::new();
        let mut rounds: [Vec<Found>; 2] = [Vec::new(), Vec::new()];
        let mut binary_bytes = [0u64; 2];
        for round in 0..args.rounds {
            // Alternate which system goes first, so neither always meets a warmer disk.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let system = [System::Updraft, System::Mosquitto][i];
                reporter.note(&format!("{dataset}: {} (round {round}) ...", system.name()));
                let dir = root.join(format!("{}-{dataset}-{round}", system.name()));
                std::fs::create_dir_all(&dir)?;
                let server = match system {
                    System::Updraft => Server::agent(&agent_bin, &dir, args.cpu)?,
                    System::Mosquitto => Server::mosquitto(&args.mosquitto, &dir, args.cpu)?,
                };
                let found = runtime.block_on(measure(&server, args, qos))?;
                reporter.note(&format!(
                    "  {:.0} msgs/s flat out ({} of {} sent), {:.0} msgs/s paced",
                    found.rate, found.received, found.sent, found.paced_rate
                ));
                binary_bytes[i] = server.binary_bytes;
                rounds[i].push(found);
            }
        }
        for (i, system) in [System::Updraft, System::Mosquitto].into_iter().enumerate() {
            let found = Found::median(&rounds[i]);
            let fig = |name: &str, value: f64, unit: &str| {
                Figure::new(SCENARIO, &dataset, system.name(), name, value, unit)
            };
            figures.push(fig("msgs_per_second", found.rate, "msgs/s"));
            figures.push(fig("cpu_ms_per_1000_msgs", found.cpu_ms_per_1000, "ms"));
            figures.push(fig("rss_bytes", found.paced_rss as f64, "B"));
            figures.push(fig("rss_bytes_flat_out", found.flat_rss as f64, "B"));
            if qos == 1 {
                figures.push(fig("puback_p50_ms", found.paced_p50_ms, "ms"));
                figures.push(fig("puback_p99_ms", found.paced_p99_ms, "ms"));
                figures.push(fig("puback_p99_ms_flat_out", found.flat_p99_ms, "ms"));
            }
            figures.push(fig("binary_bytes", binary_bytes[i] as f64, "B"));
        }
        let (table, mut notes) = render(&figures, &dataset, args);
        let size = binary_bytes[0] as f64;
        notes.push(format!(
            "Edge-agent binary {}: {:.1} MB; target for the shipping build (`cargo build \
             --profile ship -p edge-agent`) at most {:.0} MB: {}.",
            agent_bin.display(),
            size / 1e6,
            TARGET_BINARY_BYTES / 1e6,
            if size <= TARGET_BINARY_BYTES {
                "met"
            } else {
                "NOT met"
            }
        ));
        reporter.dataset_result(&format!("bench mqtt, QoS {qos}"), &figures, &table, &notes);
    }
    Ok(())
}

fn render(figures: &[Figure], dataset: &str, args: &MqttArgs) -> (Table, Vec<String>) {
    let get = |system: &str, name: &str| {
        figures
            .iter()
            .find(|f| f.dataset == dataset && f.system == system && f.figure == name)
            .map(|f| f.value)
    };
    let mut table = Table::new(["figure", "updraft", "mosquitto", "updraft / mosquitto"]);
    let names = figures
        .iter()
        .filter(|f| f.system == "updraft")
        .map(|f| (f.figure.clone(), f.unit.clone()));
    for (name, unit) in names {
        let (u, m) = (get("updraft", &name), get("mosquitto", &name));
        let cell = |v: Option<f64>| v.map_or("-".to_owned(), format_value);
        let ratio = match (u, m) {
            (Some(u), Some(m)) if m != 0.0 => format!("{:.2}", u / m),
            _ => "-".to_owned(),
        };
        table.push_row([format!("{name} ({unit})"), cell(u), cell(m), ratio]);
    }
    let mut notes = vec![format!(
        "Each server pinned to CPU {} (taskset); {} publisher connections, QoS 1 window {} each; \
         flat out for {} s, paced at {} msgs/s for {} s (RSS and PUBACK latency). Updraft: \
         edge-agent into its fsynced buffer, core unreachable (the uplink is not measured); \
         mosquitto: persistence off, forwarding to one counting subscriber. Medians of {} \
         rounds, each with both servers started afresh.",
        args.cpu,
        args.connections,
        args.inflight,
        args.seconds,
        args.paced_rate,
        args.paced_seconds,
        args.rounds
    )];
    if let (Some(u), Some(m)) = (
        get("updraft", "msgs_per_second"),
        get("mosquitto", "msgs_per_second"),
    ) {
        let ratio = u / m.max(1e-9);
        notes.push(format!(
            "Target: at least {TARGET_RATIO}x mosquitto's forwarding rate while persisting: \
             {ratio:.2}x ({}).",
            if ratio >= TARGET_RATIO {
                "met"
            } else {
                "NOT met"
            }
        ));
    }
    if let Some(rss) = get("updraft", "rss_bytes") {
        notes.push(format!(
            "Target: RSS at most 64 MiB at {} msgs/s: {:.1} MiB ({}).",
            args.paced_rate,
            rss / 1048576.0,
            if rss <= TARGET_RSS_BYTES {
                "met"
            } else {
                "NOT met"
            }
        ));
    }
    (table, notes)
}

/// What one system did at one QoS.
#[derive(Debug, Clone, Copy, Default)]
struct Found {
    sent: u64,
    received: u64,
    rate: f64,
    cpu_ms_per_1000: f64,
    flat_p99_ms: f64,
    paced_rate: f64,
    paced_rss: u64,
    flat_rss: u64,
    paced_p50_ms: f64,
    paced_p99_ms: f64,
}

impl Found {
    /// The median of every field over `rounds` (each field on its own).
    fn median(rounds: &[Found]) -> Found {
        fn mid<T: Copy + PartialOrd + Default>(mut v: Vec<T>) -> T {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            v.get(v.len() / 2).copied().unwrap_or_default()
        }
        let f = |pick: fn(&Found) -> f64| mid(rounds.iter().map(pick).collect());
        let u = |pick: fn(&Found) -> u64| mid(rounds.iter().map(pick).collect());
        Found {
            sent: u(|r| r.sent),
            received: u(|r| r.received),
            rate: f(|r| r.rate),
            cpu_ms_per_1000: f(|r| r.cpu_ms_per_1000),
            flat_p99_ms: f(|r| r.flat_p99_ms),
            paced_rate: f(|r| r.paced_rate),
            paced_rss: u(|r| r.paced_rss),
            flat_rss: u(|r| r.flat_rss),
            paced_p50_ms: f(|r| r.paced_p50_ms),
            paced_p99_ms: f(|r| r.paced_p99_ms),
        }
    }
}

async fn measure(server: &Server, args: &MqttArgs, qos: u8) -> anyhow::Result<Found> {
    // The receiving side: the agent's buffer, or a subscriber of mosquitto's.
    let subscribed = Arc::new(AtomicU64::new(0));
    if server.system == System::Mosquitto {
        let mut sub = Connection::open(server.mqtt, "bench-sub").await?;
        sub.subscribe("bench/#", qos).await?;
        let counter = Arc::clone(&subscribed);
        tokio::spawn(async move { sub.count_publishes(&counter).await });
    }
    let received = |server: &Server| -> anyhow::Result<u64> {
        match server.system {
            System::Updraft => server.buffered(),
            System::Mosquitto => Ok(subscribed.load(Ordering::Relaxed)),
        }
    };

    // Paced first, sampling RSS: the flat-out run would leave its memory behind.
    let base = received(server)?;
    let paced_for = Duration::from_secs(args.paced_seconds);
    let (sampler, paced_rss) = sample_rss(server.pid());
    let start = Instant::now();
    let paced = publish_all(server.mqtt, args, qos, Some(args.paced_rate), paced_for).await?;
    let (paced_count, paced_last) =
        wait_received(|| received(server), base, paced.sent, start).await?;
    sampler.abort();

    // Flat out.
    let (sampler, flat_rss) = sample_rss(server.pid());
    let base = received(server)?;
    let cpu0 = server.cpu()?;
    let start = Instant::now();
    let flat = publish_all(
        server.mqtt,
        args,
        qos,
        None,
        Duration::from_secs(args.seconds),
    )
    .await?;
    let (count, last) = wait_received(|| received(server), base, flat.sent, start).await?;
    let cpu = server.cpu()?.saturating_sub(cpu0);
    let rate = count as f64 / last.as_secs_f64().max(1e-9);
    sampler.abort();

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Found {
        sent: flat.sent,
        received: count,
        rate,
        cpu_ms_per_1000: cpu.as_secs_f64() * 1000.0 / (count.max(1) as f64 / 1000.0),
        flat_p99_ms: ms(&flat.latency_us, 0.99),
        paced_rate: paced_count as f64 / paced_last.as_secs_f64().max(1e-9),
        paced_rss: paced_rss.load(Ordering::Relaxed),
        flat_rss: flat_rss.load(Ordering::Relaxed),
        paced_p50_ms: ms(&paced.latency_us, 0.50),
        paced_p99_ms: ms(&paced.latency_us, 0.99),
    })
}

/// Samples the VmRSS of `pid` every 100 ms into the maximum it returns, until aborted.
fn sample_rss(pid: u32) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let max = Arc::new(AtomicU64::new(0));
    let task = {
        let max = Arc::clone(&max);
        tokio::spawn(async move {
            loop {
                if let Some(rss) = rss_bytes(pid) {
                    max.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    (task, max)
}

/// Polls until `received` has moved `sent` past `base`, or has not moved for [`STALL`].
/// Returns how many arrived and when the last one was seen, from `start`.
async fn wait_received(
    received: impl Fn() -> anyhow::Result<u64>,
    base: u64,
    sent: u64,
    start: Instant,
) -> anyhow::Result<(u64, Duration)> {
    let (mut last_count, mut last_at) = (received()?.saturating_sub(base), start.elapsed());
    loop {
        if last_count >= sent || start.elapsed() - last_at > STALL {
            return Ok((last_count, last_at));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = received()?.saturating_sub(base);
        if now != last_count {
            (last_count, last_at) = (now, start.elapsed());
        }
    }
}

struct Published {
    sent: u64,
    latency_us: Histogram<u64>,
}

/// Runs `--connections` publishers for `duration`, flat out or at `rate` msgs/s in total.
async fn publish_all(
    addr: SocketAddr,
    args: &MqttArgs,
    qos: u8,
    rate: Option<u64>,
    duration: Duration,
) -> anyhow::Result<Published> {
    let mut tasks = Vec::new();
    let per_conn = rate.map(|r| (r as f64 / args.connections as f64).max(1.0));
    for c in 0..args.connections {
        let conn = Connection::open(addr, &format!("bench-pub-{c}")).await?;
        let inflight = args.inflight as usize;
        tasks.push(tokio::spawn(conn.publish_for(
            format!("bench/c{c}/v"),
            qos,
            inflight,
            per_conn,
            duration,
        )));
    }
    let mut total = Published {
        sent: 0,
        latency_us: new_histogram()?,
    };
    for t in tasks {
        let p = t.await??;
        total.sent += p.sent;
        total.latency_us.add(&p.latency_us)?;
    }
    Ok(total)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs to 100 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 100_000_000, 3)?)
}

/// One MQTT 3.1.1 client connection with just enough of the protocol for the benchmark.
struct Connection {
    stream: tokio::net::TcpStream,
}

impl Connection {
    async fn open(addr: SocketAddr, client_id: &str) -> anyhow::Result<Self> {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.write_all(&codec::connect(client_id)).await?;
        let mut reader = codec::Reader::default();
        let (header, body) = reader.next(&mut stream).await?;
        if header >> 4 != 2 || body.get(1) != Some(&0) {
            bail!("{addr} refused the connection (CONNACK {body:?})");
        }
        Ok(Self { stream })
    }

    async fn subscribe(&mut self, filter: &str, qos: u8) -> anyhow::Result<()> {
        self.stream
            .write_all(&codec::subscribe(1, filter, qos))
            .await?;
        let mut reader = codec::Reader::default();
        let (header, body) = reader.next(&mut self.stream).await?;
        if header >> 4 != 9 || body.get(2).is_none_or(|&code| code > 2) {
            bail!("subscription refused (SUBACK {body:?})");
        }
        Ok(())
    }

    /// Counts PUBLISHes (acknowledging QoS 1 ones) until the connection ends.
    async fn count_publishes(mut self, counter: &AtomicU64) {
        let mut reader = codec::Reader::default();
        let mut acks = Vec::new();
        loop {
            let Ok((header, body)) = reader.next(&mut self.stream).await else {
                return;
            };
            if header >> 4 == 3 {
                counter.fetch_add(1, Ordering::Relaxed);
                if (header >> 1) & 3 == 1
                    && let Some(pkid) = codec::publish_pkid(&body)
                {
                    acks.extend_from_slice(&codec::puback(pkid));
                }
            }
            if !acks.is_empty() && !reader.has_packet() {
                if self.stream.write_all(&acks).await.is_err() {
                    return;
                }
                acks.clear();
            }
        }
    }

    /// Publishes on `topic` for `duration`, flat out or at `rate` msgs/s; QoS 1 keeps at most
    /// `inflight` unacknowledged and waits for every PUBACK before returning.
    async fn publish_for(
        self,
        topic: String,
        qos: u8,
        inflight: usize,
        rate: Option<f64>,
        duration: Duration,
    ) -> anyhow::Result<Published> {
        let (mut read, mut write) = self.stream.into_split();
        let window = Arc::new(Semaphore::new(if qos == 0 { 0 } else { inflight }));
        // Send time per packet id (1..=65535, cycled; the window keeps them unique).
        let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; 65_536]));
        let acked = Arc::new(AtomicU64::new(0));
        let hist = Arc::new(Mutex::new(new_histogram()?));
        let reader = {
            let (window, sent_at, acked, hist) = (
                Arc::clone(&window),
                Arc::clone(&sent_at),
                Arc::clone(&acked),
                Arc::clone(&hist),
            );
            tokio::spawn(async move {
                let mut reader = codec::Reader::default();
                loop {
                    let Ok((header, body)) = reader.next(&mut read).await else {
                        return;
                    };
                    if header >> 4 != 4 || body.len() < 2 {
                        continue;
                    }
                    let pkid = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let at = sent_at.lock().unwrap_or_else(PoisonError::into_inner)[pkid].take();
                    if let Some(at) = at {
                        hist.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .saturating_record(at.elapsed().as_micros() as u64);
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                    window.add_permits(1);
                }
            })
        };
        let start = Instant::now();
        let (mut sent, mut pkid) = (0u64, 0u16);
        let mut buf = Vec::with_capacity(1 << 16);
        let payload = b"21.5";
        while start.elapsed() < duration {
            if let Some(rate) = rate {
                // Due so far at the paced rate; wait a millisecond when ahead.
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                if sent >= due {
                    if !buf.is_empty() {
                        write.write_all(&buf).await?;
                        buf.clear();
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            }
            if qos == 1 {
                if window.available_permits() == 0 && !buf.is_empty() {
                    write.write_all(&buf).await?;
                    buf.clear();
                }
                window.acquire().await?.forget();
                pkid = pkid.checked_add(1).unwrap_or(1);
                sent_at.lock().unwrap_or_else(PoisonError::into_inner)[pkid as usize] =
                    Some(Instant::now());
            }
            codec::publish(&mut buf, &topic, payload, qos, pkid);
            sent += 1;
            if buf.len() >= 1 << 15 {
                write.write_all(&buf).await?;
                buf.clear();
            }
        }
        write.write_all(&buf).await?;
        if qos == 1 {
            let deadline = Instant::now() + Duration::from_secs(60);
            while acked.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // Every PUBACK is in (QoS 1) or none will come (QoS 0): the reader is done. The
        // server may still be reading what TCP holds; DISCONNECT waits behind it.
        reader.abort();
        write.write_all(&codec::DISCONNECT).await?;
        let latency_us = hist.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(Published { sent, latency_us })
    }
}

mod codec;

/// A server process (the agent or mosquitto), killed by its own pid when dropped.
struct Server {
    system: System,
    child: Child,
    mqtt: SocketAddr,
    http: Option<SocketAddr>,
    binary_bytes: u64,
}

impl Server {
    fn agent(binary: &Path, dir: &Path, cpu: usize) -> anyhow::Result<Self> {
        let certs = dir.join("certs");
        core_node::certs::ensure(&core_node::certs::CertRequest {
            dir: certs.clone(),
            core_hosts: core_node::certs::CertRequest::default_hosts(),
            agent_id: "bench".into(),
            agent_tenant: protocols::Tenant::default(),
            force: false,
        })?;
        let (mqtt, mqtt5, http) = (free_tcp()?, free_tcp()?, free_tcp()?);
        // A core nobody answers at: only the path into the buffer is measured.
        let nobody = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let mut cmd = pinned(binary, cpu);
        cmd.arg("--data-dir")
            .arg(dir.join("agent-data"))
            .args(["--mqtt-listen", &mqtt.to_string()])
            .args(["--mqtt5-listen", &mqtt5.to_string()])
            .args(["--http-listen", &http.to_string()])
            .args(["--core", &nobody.to_string()])
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("agent.pem"))
            .arg("--key")
            .arg(certs.join("agent-key.pem"))
            .env("RUST_LOG", "warn");
        let server = Self::spawn(System::Updraft, cmd, binary, dir, mqtt, Some(http))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(http, "/health").is_err() {
            if Instant::now() > deadline {
                bail!("edge-agent not healthy; log in {}", dir.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn mosquitto(binary: &Path, dir: &Path, cpu: usize) -> anyhow::Result<Self> {
        let mqtt = free_tcp()?;
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages 0\nmax_queued_messages 0\nlog_dest stderr\n\
                 log_type error\nlog_type warning\n",
                mqtt.port()
            ),
        )?;
        let mut cmd = pinned(binary, cpu);
        cmd.arg("-c").arg(&config);
        let server = Self::spawn(System::Mosquitto, cmd, binary, dir, mqtt, None)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(mqtt).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto not listening; log in {}", dir.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn spawn(
        system: System,
        mut cmd: Command,
        binary: &Path,
        dir: &Path,
        mqtt: SocketAddr,
        http: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let log = std::fs::File::create(dir.join(format!("{}.log", system.name())))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let binary_bytes = std::fs::metadata(binary)
            .with_context(|| format!("{}", binary.display()))?
            .len();
        Ok(Self {
            system,
            child,
            mqtt,
            http,
            binary_bytes,
        })
    }

    /// The server's own pid: `taskset` execs it.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu(&self) -> anyhow::Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).with_context(|| path.clone())?;
        cpu_time(&stat).with_context(|| format!("parsing {path}"))
    }

    /// `updraft_edge_samples_buffered_total` of the agent.
    fn buffered(&self) -> anyhow::Result<u64> {
        let http = self.http.context("not an agent")?;
        let text = http_get(http, "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix("updraft_edge_samples_buffered_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .context("no updraft_edge_samples_buffered_total in /metrics")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `taskset -c <cpu> <binary>` when taskset exists, else the binary alone.
fn pinned(binary: &Path, cpu: usize) -> Command {
    if Path::new("/usr/bin/taskset").exists() {
        let mut cmd = Command::new("/usr/bin/taskset");
        cmd.args(["-c", &cpu.to_string()]).arg(binary);
        cmd
    } else {
        Command::new(binary)
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, at 100 ticks per second.
fn cpu_time(stat: &str) -> Option<Duration> {
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// VmRSS of a process, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A minimal HTTP/1.0 GET; the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

fn free_tcp() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `name` next to the running simulator, else `target/release/<name>`.
/// The shipping build of the edge agent (`<target>/ship/edge-agent`, beside this simulator's
/// profile directory) when it exists: the binary users install; else [`sibling_binary`].
fn default_agent() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let ship = exe
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("ship").join("edge-agent"));
    match ship {
        Some(p) if p.exists() => Ok(p),
        _ => sibling_binary("edge-agent"),
    }
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let next_to = exe.with_file_name(name);
    if next_to.exists() {
        return Ok(next_to);
    }
    let release = PathBuf::from("target/release").join(name);
    if release.exists() {
        return Ok(release);
    }
    bail!(
        "{name} not found next to the simulator or in target/release: build it or pass --edge-agent"
    )
}

#[cfg(test)]
mod tests;

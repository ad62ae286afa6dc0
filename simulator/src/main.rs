use anyhow::Context;
use clap::{Parser, Subcommand};
use simulator::datasets::{self, Dataset, DatasetSpec};
use simulator::fleet::connection::MqttVersion;
use simulator::fleet::plan::{Anomalies, AnomalyKinds, Offline, PlanOptions};
use simulator::{bench, demo, fleet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The core node's allocator (see core-node's main.rs): `bench encryption` hosts the core's
/// storage in this process, and its figures should be those of the core-node binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Updraft device simulator: demo deployments, simulated device fleets, dataset exports and
/// benchmarks.
#[derive(Parser)]
#[command(name = "simulator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr: `text` (colours only on a terminal) or `json` (one object per
    /// line); RUST_LOG sets the filter. The demo's core node and agent log through it too
    #[arg(
        long,
        global = true,
        value_enum,
        env = "UPDRAFT_SIM_LOG_FORMAT",
        default_value = core_node::logging::LogFormat::DEFAULT
    )]
    log_format: core_node::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole local deployment: a core node, an edge agent and a simulated fleet.
    Demo(demo::DemoArgs),
    /// Publish a simulated fleet of a reference dataset's devices to an MQTT broker or edge
    /// agent (until Ctrl-C or --duration), then print a summary.
    Fleet(FleetArgs),
    /// Write a reference dataset as Influx line protocol, OpenMetrics, remote_write requests or
    /// MQTT messages (or POST the remote_write requests to a server).
    Export(ExportArgs),
    /// Benchmark scenarios on the reference datasets (tables, or JSON lines with --json).
    Bench(bench::BenchArgs),
}

/// `simulator fleet`: the options of [`fleet::FleetOptions`]; docs/simulator.md explains them.
#[derive(clap::Args)]
struct FleetArgs {
    /// MQTT broker or edge agent host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// MQTT port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// MQTT protocol version: 3 (3.1.1) or 5.
    #[arg(long, default_value = "3", value_parser = ["3", "5"])]
    mqtt_version: String,
    /// Connect over TLS (with --cafile as the only trust root).
    #[arg(long, requires = "cafile")]
    tls: bool,
    /// PEM file of the CA certificate(s) that signed the broker's certificate.
    #[arg(long)]
    cafile: Option<PathBuf>,
    /// Client certificate chain (PEM), for brokers that ask for one.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// MQTT username.
    #[arg(long, env = "UPDRAFT_SIM_MQTT_USERNAME")]
    username: Option<String>,
    /// MQTT password (prefer the environment variable).
    #[arg(long, env = "UPDRAFT_SIM_MQTT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Client ids are <prefix>-<connection number> [default: sim-<process id>].
    #[arg(long)]
    client_id_prefix: Option<String>,
    /// Dataset whose devices the fleet simulates.
    #[arg(long, value_enum, default_value_t = Dataset::SensorMix)]
    dataset: Dataset,
    /// Number of devices (trucks, sensors or hosts).
    #[arg(long, default_value_t = 10)]
    devices: u64,
    /// Publish only the first M series of each device [default: all].
    #[arg(long)]
    metrics: Option<usize>,
    /// Seed of every random stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Dataset start: `now`, `now-<duration>` (e.g. now-2h) or Unix milliseconds. The summary
    /// prints the value used; pass it back to repeat the same bytes.
    #[arg(long, default_value = "now")]
    start: String,
    /// Dataset time per wall-clock time: 60 publishes an hour of readings per minute.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Stop after this long (e.g. 30s, 10m) [default: at Ctrl-C].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// QoS of the publishes: 0, 1 or 2, or a list (0,1,2) cycled over the connections.
    #[arg(long, default_value = "1", value_delimiter = ',', value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: Vec<u8>,
    /// MQTT connections; devices are spread over them round-robin [default: one per device,
    /// at most 100].
    #[arg(long)]
    connections: Option<usize>,
    /// Most unacknowledged QoS 1/2 publishes per connection (MQTT 3.1.1).
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// MQTT keep-alive, in seconds.
    #[arg(long, default_value_t = 30)]
    keep_alive_secs: u64,
    /// After stopping, how long to wait for outstanding acknowledgements.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Inject anomalies: any of spikes,drifts,stuck,silent,skew (or all).
    #[arg(long, value_parser = parse_anomalies)]
    anomalies: Option<AnomalyKinds>,
    /// Probability that an anomaly episode of each kind starts at a device tick.
    #[arg(long, default_value_t = 0.001)]
    anomaly_rate: f64,
    /// Length of a drift, stuck, silent or skew episode, in the device's ticks.
    #[arg(long, default_value_t = 30)]
    anomaly_ticks: u32,
    /// Average fraction of the time each device is offline (0 to <1).
    #[arg(long, default_value_t = 0.0)]
    offline_fraction: f64,
    /// Mean length of one offline period.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    offline_mean: Duration,
    /// Publish what a device read while offline when it comes back (original timestamps).
    #[arg(long)]
    offline_backlog: bool,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// `simulator export`: a reference dataset in a peer's bulk format.
#[derive(clap::Args)]
struct ExportArgs {
    #[arg(long, value_enum)]
    dataset: Dataset,
    /// Output format.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Trucks, devices or hosts.
    #[arg(long, visible_aliases = ["devices", "trucks", "hosts"], default_value_t = 10)]
    entities: u64,
    /// Length of the period.
    #[arg(long, default_value = "1h")]
    duration: String,
    /// Start: Unix milliseconds, `now` or `now-<duration>` [default: 2024-01-01T00:00:00Z].
    #[arg(long)]
    start: Option<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file; `-` for stdout.
    #[arg(long, short, default_value = "-")]
    output: PathBuf,
    /// remote-write only: POST each request to this URL (e.g.
    /// http://127.0.0.1:9201/api/v1/write) instead of writing them out.
    #[arg(long)]
    url: Option<String>,
    /// remote-write only: extra HTTP header `Name: value` (repeatable), e.g. for a token.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// remote-write only: most samples per request.
    #[arg(long, default_value_t = 500)]
    batch_samples: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// InfluxDB line protocol, nanosecond timestamps.
    Influx,
    /// OpenMetrics text, for `promtool tsdb create-blocks-from openmetrics`.
    Openmetrics,
    /// Prometheus remote_write requests, each a 4-byte big-endian length then the snappy body.
    RemoteWrite,
    /// `<topic> <payload>` lines: what `simulator fleet` publishes.
    Mqtt,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    datasets::parse_duration_ms(s).map(|ms| Duration::from_millis(ms as u64))
}

fn parse_anomalies(s: &str) -> Result<AnomalyKinds, String> {
    AnomalyKinds::parse(s)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// `now`, `now-<duration>` or Unix milliseconds.
fn parse_start(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ms());
    }
    if let Some(ago) = s.strip_prefix("now-") {
        let ago = datasets::parse_duration_ms(ago).map_err(anyhow::Error::msg)?;
        return Ok(now_ms() - ago);
    }
    s.parse::<i64>().map_err(|_| {
        anyhow::anyhow!("invalid --start {s:?}: expected now, now-<duration> or Unix milliseconds")
    })
}

async fn run_fleet(args: FleetArgs) -> anyhow::Result<()> {
    let start_ms = parse_start(&args.start)?;
    if !(0.0..1.0).contains(&args.offline_fraction) {
        anyhow::bail!("--offline-fraction must be in [0, 1)");
    }
    if !(0.0..=1.0).contains(&args.anomaly_rate) {
        anyhow::bail!("--anomaly-rate must be in [0, 1]");
    }
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        anyhow::bail!("--speed must be positive");
    }
    let tls = match (&args.cafile, args.tls) {
        (Some(ca), true) => Some(Arc::new(fleet::connection::tls_config(
            ca,
            args.cert.as_deref(),
            args.key.as_deref(),
        )?)),
        (_, false) if args.cert.is_some() || args.cafile.is_some() => {
            anyhow::bail!("--cafile, --cert and --key need --tls")
        }
        _ => None,
    };
    let credentials = match (args.username, args.password) {
        (Some(u), p) => Some((u, p.unwrap_or_default())),
        (None, Some(_)) => anyhow::bail!("--password needs --username"),
        (None, None) => None,
    };
    let mut plan = PlanOptions::new(args.dataset, args.devices, args.seed, start_ms);
    plan.metrics = args.metrics;
    if let Some(kinds) = args.anomalies {
        plan.anomalies = Anomalies {
            kinds,
            rate: args.anomaly_rate,
            ticks: args.anomaly_ticks,
        };
    }
    plan.offline = Offline {
        fraction: args.offline_fraction,
        mean_ms: args.offline_mean.as_millis() as i64,
        backlog: args.offline_backlog,
    };
    let options = fleet::FleetOptions {
        plan,
        connect: fleet::connection::ConnectOptions {
            host: args.host,
            port: args.port,
            version: if args.mqtt_version == "5" {
                MqttVersion::V5
            } else {
                MqttVersion::V311
            },
            tls,
            credentials,
            keep_alive: Duration::from_secs(args.keep_alive_secs.max(1)),
            inflight: args.inflight,
            client_id_prefix: args
                .client_id_prefix
                .unwrap_or_else(|| format!("sim-{}", std::process::id())),
        },
        connections: args.connections.unwrap_or_else(|| {
            usize::try_from(args.devices)
                .unwrap_or(usize::MAX)
                .min(fleet::DEFAULT_MAX_CONNECTIONS)
        }),
        qos: args.qos,
        speed: args.speed,
        duration: args.duration,
        drain_timeout: args.drain_timeout,
        progress: !args.quiet,
    };
    eprintln!(
        "fleet: {} {} devices to {}:{} ({}, QoS {:?}), seed {}, --start {start_ms}; {}",
        options.plan.devices,
        options.plan.dataset,
        options.connect.host,
        options.connect.port,
        options.connect.version.name(),
        options.qos,
        options.plan.seed,
        match options.duration {
            Some(d) => format!("for {d:?}"),
            None => "Ctrl-C to stop".to_owned(),
        }
    );
    let summary = fleet::simulate(options, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    Ok(())
}

fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    use datasets::export;
    use std::io::Write;
    let duration_ms = datasets::parse_duration_ms(&args.duration).map_err(anyhow::Error::msg)?;
    let mut spec = DatasetSpec::new(args.dataset, args.entities, duration_ms).with_seed(args.seed);
    if let Some(start) = &args.start {
        spec = spec.with_start_ms(parse_start(start)?);
    }
    if args.url.is_some() && !matches!(args.format, ExportFormat::RemoteWrite) {
        anyhow::bail!("--url is for --format remote-write");
    }
    if let (ExportFormat::RemoteWrite, Some(url)) = (args.format, &args.url) {
        let headers: Vec<(String, String)> = args
            .headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected `Name: value`"))
            })
            .collect::<anyhow::Result<_>>()?;
        let (requests, samples) = export::write_remote_write(&spec, args.batch_samples, |body| {
            let mut req = ureq::post(url.as_str())
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0");
            for (n, v) in &headers {
                req = req.header(n.as_str(), v.as_str());
            }
            req.send(body)
                .map(|_| ())
                .map_err(|e| std::io::Error::other(format!("POST {url}: {e}")))
        })?;
        eprintln!("export: {samples} samples in {requests} remote_write requests to {url}");
        return Ok(());
    }
    let mut out: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&args.output)
                .with_context(|| format!("creating {}", args.output.display()))?,
        ))
    };
    let what = match args.format {
        ExportFormat::Influx => {
            let n = export::write_influx_lines(datasets::generate(&spec), &mut out)?;
            format!("{n} lines")
        }
        ExportFormat::Openmetrics => {
            let n = export::write_openmetrics(&spec, &mut out)?;
            format!("{n} samples")
        }
        ExportFormat::RemoteWrite => {
            let mut framed = export::LengthDelimited(&mut out);
            let (requests, samples) =
                export::write_remote_write(&spec, args.batch_samples, |b| framed.write(b))?;
            format!("{samples} samples in {requests} requests")
        }
        ExportFormat::Mqtt => {
            let n = export::write_mqtt_lines(&spec, &mut out)?;
            format!("{n} messages")
        }
    };
    out.flush()?;
    eprintln!(
        "export: {} {} {} over {}: {what}",
        spec.entities,
        spec.dataset,
        spec.dataset.entity_noun(),
        args.duration
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // Logs go to stderr so that `--json` leaves stdout to the figures.
    core_node::logging::init(
        cli.log_format,
        "info,rumqttd=warn,rumqttd::router::routing=off,fjall=warn,lsm_tree=warn",
    );
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => runtime.block_on(demo::run(args)),
        Command::Fleet(args) => runtime.block_on(run_fleet(args)),
        Command::Export(args) => run_export(args),
    }
}

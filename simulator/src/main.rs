use clap::{Parser, Subcommand};
use simulator::{bench, demo, fleet};
use std::sync::Arc;
use std::time::Duration;

/// Updraft device simulator: demo deployments and simulated device fleets.
#[derive(Parser)]
#[command(name = "simulator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole local deployment: a core node, an edge agent and a simulated fleet.
    Demo(demo::DemoArgs),
    /// Publish a simulated fleet to an MQTT broker or edge agent until Ctrl-C.
    Fleet(FleetArgs),
    /// Benchmark scenarios on the reference datasets (tables, or JSON lines with --json).
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct FleetArgs {
    /// MQTT broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// MQTT broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Number of devices (one MQTT connection each).
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Number of sites the devices are spread over.
    #[arg(long, default_value_t = 3)]
    sites: usize,
    /// Time between two readings of one device, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Seed of every random stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MQTT QoS of every publish (0, 1 or 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Logs go to stderr so that `--json` leaves stdout to the figures.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "info,rumqttd=warn,rumqttd::router::routing=off,fjall=warn,lsm_tree=warn".into()
            }),
        )
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => runtime.block_on(demo::run(args)),
        Command::Fleet(args) => runtime.block_on(async move {
            let config = fleet::FleetConfig {
                host: args.host,
                port: args.port,
                devices: args.devices,
                sites: args.sites,
                interval: Duration::from_millis(args.interval_ms.max(1)),
                seed: args.seed,
                qos: fleet::qos(args.qos),
            };
            let stats = Arc::new(fleet::FleetStats::default());
            println!(
                "publishing {} devices to {}:{} (Ctrl-C to stop)",
                config.devices, config.host, config.port
            );
            fleet::run(config, stats.clone(), async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
            println!("{}", stats.summary());
            Ok(())
        }),
    }
}

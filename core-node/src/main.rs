use clap::{Parser, Subcommand};
use core_node::{certs, config};
use std::path::PathBuf;

/// Updraft core node: QUIC ingest from edge agents, durable storage, Prometheus HTTP API.
#[derive(Parser)]
#[command(name = "core-node", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: config::RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (the default when no subcommand is given).
    Run(Box<config::RunArgs>),
    /// Create a local CA plus core and agent certificates (missing files only).
    Certs(CertsArgs),
}

#[derive(clap::Args)]
struct CertsArgs {
    /// Directory to write ca.pem, core.pem, agent.pem and their keys into.
    #[arg(long, default_value = config::DEFAULT_CERTS_DIR)]
    dir: PathBuf,
    /// Host names and IP addresses the core is reached at (repeatable)
    /// [default: localhost, 127.0.0.1, ::1].
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Agent id written into the agent certificate.
    #[arg(long, default_value = "edge-agent")]
    agent_id: String,
    /// Re-issue the core and agent certificates even if they exist.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    core_node::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Certs(args)) => {
            let written = certs::ensure(&certs::CertRequest {
                dir: args.dir.clone(),
                core_hosts: if args.hosts.is_empty() {
                    certs::CertRequest::default_hosts()
                } else {
                    args.hosts
                },
                agent_id: args.agent_id,
                force: args.force,
            })?;
            if written.is_empty() {
                println!("all certificates already exist in {}", args.dir.display());
            }
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Some(Command::Run(args)) => serve(*args),
        None => serve(cli.run),
    }
}

fn serve(args: config::RunArgs) -> anyhow::Result<()> {
    let config = config::CoreConfig::from_args(args)?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(core_node::run(config, metrics, shutdown_signal()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

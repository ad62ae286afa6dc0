use anyhow::Context;
use clap::{Parser, Subcommand};
use core_node::auth::store::TokenFileStore;
use core_node::auth::{Role, TokenId};
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
    /// Manage API tokens in the data directory's token store; a running node picks changes
    /// up within a second.
    Tokens(TokensArgs),
}

#[derive(clap::Args)]
struct TokensArgs {
    /// The node's data directory [default: ./data/core, or data_dir of --config].
    #[arg(long, env = "UPDRAFT_CORE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The node's TOML configuration file (for its data_dir).
    #[arg(long, env = "UPDRAFT_CORE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token and print it (on stdout, alone); it is shown this once.
    Create {
        /// The tenant whose series the token reads or writes.
        #[arg(long)]
        tenant: String,
        /// read (query APIs), write (ingest APIs) or admin (the admin API).
        #[arg(long, value_enum)]
        role: Role,
        /// A note shown by `tokens list`, e.g. who uses the token.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (ids, tenants, roles; never the tokens).
    List,
    /// Revoke a token by its id.
    Revoke {
        /// The id shown by `tokens list` (the 16 hex digits after `updraft_`).
        id: String,
    },
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
    /// Tenant the agent certificate binds the agent to (a SAN URI updraft://tenant/<T>):
    /// the core refuses its batches for any other tenant.
    #[arg(long, default_value = protocols::Tenant::DEFAULT)]
    tenant: String,
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
        // stdout is for command output (`tokens create` prints the token alone).
        .with_writer(std::io::stderr)
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
                agent_tenant: protocols::Tenant::new(args.tenant)
                    .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?,
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
        Some(Command::Tokens(args)) => tokens(args),
        Some(Command::Run(args)) => serve(*args),
        None => serve(cli.run),
    }
}

fn tokens(args: TokensArgs) -> anyhow::Result<()> {
    let data_dir = config::CoreConfig::from_args(config::RunArgs {
        config: args.config,
        data_dir: args.data_dir,
        ..Default::default()
    })?
    .data_dir;
    let store = TokenFileStore::in_dir(&data_dir);
    match args.command {
        TokensCommand::Create {
            tenant,
            role,
            description,
        } => {
            let tenant =
                protocols::Tenant::new(tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
            let (record, token) = store.create(&tenant, role, &description)?;
            tracing::info!(
                target: "audit",
                event = "token_created",
                by = "cli",
                id = %record.id,
                tenant = record.tenant.as_str(),
                role = role.as_str(),
                "API token created"
            );
            eprintln!(
                "created token {} (tenant {}, role {}) in {}; it is shown only now:",
                record.id,
                record.tenant.as_str(),
                role.as_str(),
                store.path().display()
            );
            println!("{}", token.reveal());
        }
        TokensCommand::List => {
            let tokens = store.load()?;
            println!(
                "{:<16}  {:<20}  {:<5}  {:<24}  description",
                "id", "tenant", "role", "created"
            );
            for t in tokens {
                let created = chrono::DateTime::from_timestamp_millis(t.created_ms)
                    .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                println!(
                    "{:<16}  {:<20}  {:<5}  {:<24}  {}",
                    t.id,
                    t.tenant.as_str(),
                    t.role.as_str(),
                    created,
                    t.description
                );
            }
        }
        TokensCommand::Revoke { id } => {
            let id = TokenId::parse(&id).map_err(anyhow::Error::msg)?;
            let removed = store
                .revoke(&id, |_| true)
                .with_context(|| format!("revoking {id}"))?;
            let Some(record) = removed else {
                anyhow::bail!("no token {id} in {}", store.path().display());
            };
            tracing::info!(
                target: "audit",
                event = "token_revoked",
                by = "cli",
                id = %record.id,
                tenant = record.tenant.as_str(),
                role = record.role.as_str(),
                "API token revoked"
            );
            eprintln!(
                "revoked token {id} (tenant {}, role {})",
                record.tenant.as_str(),
                record.role.as_str()
            );
        }
    }
    Ok(())
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

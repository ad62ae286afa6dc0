use anyhow::Context;
use clap::{Parser, Subcommand};
use core_node::auth::store::TokenFileStore;
use core_node::auth::{Role, TokenId};
use core_node::logging::{self, LogFormat};
use core_node::{certs, config};
use std::path::PathBuf;

/// mimalloc instead of glibc's allocator: ingest and queries allocate many short-lived
/// buffers per request, and glibc's free-list consolidation was a third of remote_write's CPU.
/// Built without transparent huge pages (the workspace's `no_thp` feature; see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Without `RUST_LOG`: our info lines; fjall and lsm-tree log routine maintenance at info.
const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

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
    /// Create a local CA plus core and agent certificates (missing files only); the core
    /// certificate serves both QUIC ingest and HTTPS (--http-tls-cert certs/core.pem).
    Certs(CertsArgs),
    /// Manage API tokens in the data directory's token store; a running node picks changes
    /// up within a second.
    Tokens(TokensArgs),
    /// Encryption at rest: create a master key, list or rotate the data keys, re-wrap them
    /// under a new master key.
    Keys(KeysArgs),
    /// The cluster: create it from nodes started with --node-id, show its state
    /// (docs/cluster.md).
    Cluster(core_node::cluster::cli::ClusterArgs),
}

#[derive(clap::Args)]
struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new random master key (64 hex digits) to a new file with mode 0600.
    Init {
        /// The file to create (never overwritten).
        #[arg(long, default_value = "master.key")]
        out: PathBuf,
    },
    /// Add a new data key for chunks, index and WAL; new writes use it after the node's next
    /// start, and every old key stays, so old data stays readable.
    Rotate(KeyDirArgs),
    /// List the data keys (ids, stores, creation times; never the keys).
    List(KeyDirArgs),
    /// Wrap every data key under a new master key (the node must be stopped); afterwards only
    /// the new key opens the data directory, and all data stays readable.
    Rewrap(RewrapArgs),
}

#[derive(clap::Args)]
struct RewrapArgs {
    #[command(flatten)]
    dir: KeyDirArgs,
    /// The new master key file (`keys init --out FILE` writes one).
    #[arg(long)]
    new_master_key_file: PathBuf,
}

#[derive(clap::Args)]
struct KeyDirArgs {
    /// The node's data directory [default: ./data/core, or data_dir of --config].
    #[arg(long, env = "UPDRAFT_CORE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The node's TOML configuration file (for its data_dir and master_key_file).
    #[arg(long, env = "UPDRAFT_CORE_CONFIG")]
    config: Option<PathBuf>,
    /// The master key file (else UPDRAFT_MASTER_KEY).
    #[arg(long, env = "UPDRAFT_CORE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
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
        /// The token stops working this long after now: a number and s, m, h or d, e.g. 30d
        /// [default: never expires].
        #[arg(long, conflicts_with = "expires_at")]
        expires_in: Option<String>,
        /// The token stops working at this RFC 3339 time, e.g. 2026-12-31T23:59:59Z.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List tokens (ids, tenants, roles, expiries; never the tokens).
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
    /// Agent id the agent certificate binds (CN and a SAN URI updraft://agent/<ID>): the core
    /// refuses its batches under any other agent id, so run the agent with this --agent-id.
    #[arg(long, default_value = "edge-agent")]
    agent_id: String,
    /// Tenant the agent certificate binds the agent to (a SAN URI updraft://tenant/<T>):
    /// the core refuses its batches for any other tenant.
    #[arg(long, default_value = protocols::Tenant::DEFAULT)]
    tenant: String,
    /// Also issue a cluster node certificate node-<ID>.pem for this node id (repeatable): server
    /// and client authentication for inter-node mutual TLS, SAN URI updraft://node/<ID> and the
    /// --host names (docs/cluster.md).
    #[arg(long = "node-id", value_name = "ID")]
    node_ids: Vec<u64>,
    /// Re-issue the core, agent and node certificates even if they exist.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    core_node::install_crypto_provider();
    let cli = Cli::parse();
    // `run` sets up logging once its configuration (with --log-format) is read.
    if !matches!(cli.command, None | Some(Command::Run(_))) {
        logging::init(LogFormat::Text, DEFAULT_LOG_FILTER);
    }
    match cli.command {
        Some(Command::Certs(args)) => {
            let hosts = if args.hosts.is_empty() {
                certs::CertRequest::default_hosts()
            } else {
                args.hosts
            };
            let mut written = certs::ensure(&certs::CertRequest {
                dir: args.dir.clone(),
                core_hosts: hosts.clone(),
                agent_id: args.agent_id,
                agent_tenant: protocols::Tenant::new(args.tenant)
                    .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?,
                force: args.force,
            })?;
            for id in args.node_ids {
                written.extend(certs::ensure_node(&args.dir, id, &hosts, args.force)?);
            }
            if written.is_empty() {
                println!("all certificates already exist in {}", args.dir.display());
            }
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Some(Command::Tokens(args)) => tokens(args),
        Some(Command::Keys(args)) => keys(args),
        Some(Command::Cluster(args)) => core_node::cluster::cli::run(args),
        Some(Command::Run(args)) => exit_2_on_key_errors(serve(*args)),
        None => exit_2_on_key_errors(serve(cli.run)),
    }
}

/// A node that cannot open its data for want of the right key exits with status 2 and says
/// why (service managers then do not restart it in a loop for nothing).
fn exit_2_on_key_errors(result: anyhow::Result<()>) -> anyhow::Result<()> {
    let Err(err) = result else {
        return Ok(());
    };
    let key_error = err.chain().any(|e| {
        e.downcast_ref::<crypt::CryptError>().is_some()
            || matches!(
                e.downcast_ref::<core_node::storage::StorageError>(),
                Some(
                    core_node::storage::StorageError::EncryptionMismatch(_)
                        | core_node::storage::StorageError::Crypt(_)
                )
            )
            || matches!(
                e.downcast_ref::<seglog::LogError>(),
                Some(seglog::LogError::EncryptionMismatch { .. })
            )
    });
    if key_error {
        eprintln!("error: {err:#}");
        std::process::exit(2);
    }
    Err(err)
}

fn keys(args: KeysArgs) -> anyhow::Result<()> {
    let rotate = matches!(args.command, KeysCommand::Rotate(_));
    let dir_args = match args.command {
        KeysCommand::Init { out } => {
            crypt::MasterKey::generate()?.write_new_file(&out)?;
            eprintln!(
                "wrote a new master key to {} (mode 0600); keep a copy outside the data \
                 directory: without it, encrypted data cannot be read",
                out.display()
            );
            return Ok(());
        }
        KeysCommand::Rewrap(a) => return rewrap(a),
        KeysCommand::Rotate(a) | KeysCommand::List(a) => a,
    };
    let config = config::CoreConfig::from_args(config::RunArgs {
        config: dir_args.config,
        data_dir: dir_args.data_dir,
        master_key_file: dir_args.master_key_file,
        ..Default::default()
    })?;
    let Some(master) = crypt::MasterKey::resolve(config.master_key_file.as_deref())? else {
        anyhow::bail!(
            "no master key: pass --master-key-file or set {}",
            crypt::MASTER_KEY_ENV
        );
    };
    if !crypt::Keyring::exists_in(&config.data_dir) {
        anyhow::bail!(
            "{} is not encrypted (no {})",
            config.data_dir.display(),
            crypt::KEYRING_FILE
        );
    }
    let mut ring = crypt::Keyring::open(&config.data_dir, &master)?;
    if rotate {
        for (store, id) in ring.rotate()? {
            eprintln!("new data key {id} for {}", store.as_str());
        }
        eprintln!("a running node seals with the new keys after its next start");
    }
    println!("{:>4}  {:<10}  {:<24}  current", "id", "store", "created");
    for k in ring.keys() {
        let created = chrono::DateTime::from_timestamp_millis(k.created_ms as i64)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        println!(
            "{:>4}  {:<10}  {:<24}  {}",
            k.id,
            k.store.as_str(),
            created,
            if k.current { "yes" } else { "" }
        );
    }
    Ok(())
}

/// `keys rewrap`: refuses while a node holds the data directory (the WAL's and fjall's lock
/// files), and holds those locks itself so that no node starts meanwhile.
fn rewrap(args: RewrapArgs) -> anyhow::Result<()> {
    let config = config::CoreConfig::from_args(config::RunArgs {
        config: args.dir.config,
        data_dir: args.dir.data_dir,
        master_key_file: args.dir.master_key_file,
        ..Default::default()
    })?;
    let dir = &config.data_dir;
    let Some(old) = crypt::MasterKey::resolve(config.master_key_file.as_deref())? else {
        anyhow::bail!(
            "no current master key: pass --master-key-file or set {}",
            crypt::MASTER_KEY_ENV
        );
    };
    let new = crypt::MasterKey::read_file(&args.new_master_key_file)?;
    if !crypt::Keyring::exists_in(dir) {
        anyhow::bail!(
            "{} is not encrypted (no {})",
            dir.display(),
            crypt::KEYRING_FILE
        );
    }
    let _locks = [
        dir.join("wal").join("LOCK"),
        dir.join("storage").join("lock"),
    ]
    .iter()
    .map(|p| crypt::lock_if_present(p))
    .collect::<Result<Vec<_>, _>>()
    .context("a core node is running on this data directory")?;
    crypt::Keyring::open(dir, &old)?.rewrap(&new)?;
    eprintln!(
        "re-wrapped every data key of {} under {}; start the node with --master-key-file {} \
         (the old master key no longer opens it)",
        dir.display(),
        args.new_master_key_file.display(),
        args.new_master_key_file.display()
    );
    Ok(())
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
            expires_in,
            expires_at,
        } => {
            let tenant =
                protocols::Tenant::new(tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
            let expires_ms = core_node::auth::expiry_from(
                expires_in.as_deref(),
                expires_at.as_deref(),
                core_node::auth::store::now_ms(),
            )
            .map_err(|e| anyhow::anyhow!("--expires-in/--expires-at: {e}"))?;
            let expires = core_node::auth::format_expiry(expires_ms);
            let (record, token) = store.create(&tenant, role, &description, expires_ms)?;
            tracing::info!(
                target: "audit",
                event = "token_created",
                by = "cli",
                id = %record.id,
                tenant = record.tenant.as_str(),
                role = role.as_str(),
                %expires,
                "API token created"
            );
            eprintln!(
                "created token {} (tenant {}, role {}, expires {expires}) in {}; it is shown \
                 only now:",
                record.id,
                record.tenant.as_str(),
                role.as_str(),
                store.path().display()
            );
            println!("{}", token.reveal());
        }
        TokensCommand::List => {
            let tokens = store.load()?;
            let now = core_node::auth::store::now_ms();
            println!(
                "{:<16}  {:<20}  {:<5}  {:<24}  {:<30}  description",
                "id", "tenant", "role", "created", "expires"
            );
            for t in tokens {
                let created = chrono::DateTime::from_timestamp_millis(t.created_ms)
                    .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                let mut expires = core_node::auth::format_expiry(t.expires_ms);
                if t.expired_at(now) {
                    expires.push_str(" (expired)");
                }
                println!(
                    "{:<16}  {:<20}  {:<5}  {:<24}  {:<30}  {}",
                    t.id,
                    t.tenant.as_str(),
                    t.role.as_str(),
                    created,
                    expires,
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
    logging::init(config.log_format, DEFAULT_LOG_FILTER);
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

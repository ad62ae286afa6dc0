//! Core node configuration: TOML file → command-line flags and environment override →
//! validated [`CoreConfig`]. Every option and its default is documented in
//! `deploy/core-node.toml`.

use crate::ingest::limits::QuicLimits;
use crate::logging::LogFormat;
use crate::storage::{Durability, Limits, Retention, parse_retention};
use crate::tls::{HttpTlsFiles, TlsFiles, TlsMinVersion};
use anyhow::Context;
use protocols::Tenant;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_QUIC_LISTEN: &str = "127.0.0.1:4433";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9201";
pub const DEFAULT_DATA_DIR: &str = "./data/core";
pub const DEFAULT_CERTS_DIR: &str = "certs";

/// Flags of `core-node run` (each also readable from the environment).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// TOML configuration file; flags and environment variables override its values.
    #[arg(long, env = "UPDRAFT_CORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for all durable state [default: ./data/core].
    #[arg(long, env = "UPDRAFT_CORE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// UDP address for QUIC ingest from edge agents [default: 127.0.0.1:4433].
    #[arg(long, env = "UPDRAFT_CORE_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,
    /// TCP address for the Prometheus HTTP API and /metrics [default: 127.0.0.1:9201].
    #[arg(long, env = "UPDRAFT_CORE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// CA certificate that agent certificates must chain to [default: certs/ca.pem].
    #[arg(long, env = "UPDRAFT_CORE_CA")]
    pub ca: Option<PathBuf>,
    /// This node's certificate chain [default: certs/core.pem].
    #[arg(long, env = "UPDRAFT_CORE_CERT")]
    pub cert: Option<PathBuf>,
    /// This node's private key, PKCS#8 PEM [default: certs/core-key.pem]. Replaced --ca,
    /// --cert or --key files are picked up by the QUIC listener within seconds, or at once
    /// on SIGHUP, without a restart.
    #[arg(long, env = "UPDRAFT_CORE_KEY")]
    pub key: Option<PathBuf>,
    /// Serve the HTTP API over TLS with this certificate chain (PEM; needs --http-tls-key).
    /// `core-node certs` writes one that fits: certs/core.pem. Replaced files are picked up
    /// within seconds, or at once on SIGHUP, without a restart [default: plain HTTP].
    #[arg(long, env = "UPDRAFT_CORE_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// Private key (PKCS#8 PEM) for --http-tls-cert.
    #[arg(long, env = "UPDRAFT_CORE_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// Oldest TLS version the HTTPS listener accepts: 1.3, or 1.2 for old clients
    /// [default: 1.3]. QUIC is always TLS 1.3.
    #[arg(long, value_enum, env = "UPDRAFT_CORE_TLS_MIN_VERSION")]
    pub tls_min_version: Option<TlsMinVersion>,
    /// When a write is acknowledged: after fsync, or after handing it to the OS [default: fsync].
    #[arg(long, value_enum, env = "UPDRAFT_CORE_DURABILITY")]
    pub durability: Option<Durability>,
    /// Development mode: let HTTP requests without credentials in, as --tenant with every
    /// role, and QUIC agents whose certificate names no tenant write any tenant. Never on a
    /// node reachable by others.
    #[arg(long, env = "UPDRAFT_CORE_INSECURE_DEV_MODE")]
    pub insecure_dev_mode: bool,
    /// The tenant of unauthenticated requests in --insecure-dev-mode [default: default].
    #[arg(long, env = "UPDRAFT_CORE_TENANT")]
    pub tenant: Option<String>,
    /// Samples per second one tenant may write over HTTP (remote_write, line protocol);
    /// 0: no limit [default: 0].
    #[arg(long, env = "UPDRAFT_CORE_INGEST_RATE_LIMIT")]
    pub ingest_rate_limit: Option<u64>,
    /// Most labels one series may have, __name__ included [default: 30].
    #[arg(long, env = "UPDRAFT_CORE_MAX_LABELS_PER_SERIES")]
    pub max_labels_per_series: Option<usize>,
    /// Longest label name in bytes [default: 128].
    #[arg(long, env = "UPDRAFT_CORE_MAX_LABEL_NAME_BYTES")]
    pub max_label_name_bytes: Option<usize>,
    /// Longest label value in bytes [default: 2048].
    #[arg(long, env = "UPDRAFT_CORE_MAX_LABEL_VALUE_BYTES")]
    pub max_label_value_bytes: Option<usize>,
    /// Most series one tenant may create [default: 1000000].
    #[arg(long, env = "UPDRAFT_CORE_MAX_SERIES_PER_TENANT")]
    pub max_series_per_tenant: Option<u64>,
    /// How long data is kept: a number with s, m, h, d, w or y, or `forever`. Old data goes a
    /// week-long partition at a time [default: forever].
    #[arg(long, env = "UPDRAFT_CORE_RETENTION")]
    pub retention: Option<String>,
    /// A tenant's own retention, as TENANT=RETENTION (repeatable), e.g. acme=30d.
    #[arg(long = "tenant-retention", value_name = "TENANT=RETENTION")]
    pub tenant_retention: Vec<String>,
    /// Encrypt storage at rest with this master key (32 raw bytes or 64 hex digits; create
    /// one with `core-node keys init`). Without it the key is read from UPDRAFT_MASTER_KEY
    /// (hex); with neither, storage is not encrypted [default: none].
    #[arg(long, env = "UPDRAFT_CORE_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Turn read-only (writes refused with a retryable error, queries answered, /health 503)
    /// when the data directory's file system has fewer free MiB than this, and take writes
    /// again once it has 10 % more; 0 turns the guard off [default: 256].
    #[arg(long, env = "UPDRAFT_CORE_MIN_FREE_DISK_MIB")]
    pub min_free_disk_mib: Option<u64>,
    /// After storage fails (a WAL or database write or fsync fails, or the writer thread
    /// panics), keep answering /health 503 and /metrics for this many seconds, then exit with
    /// status 1 so that a supervisor restarts the node (the restart replays the WAL)
    /// [default: 10].
    #[arg(long, env = "UPDRAFT_CORE_STORAGE_FAILURE_EXIT_SECS")]
    pub storage_failure_exit_secs: Option<u64>,
    /// Memory of the last-value cache, each series' latest sample for instant queries at
    /// "now" (80 bytes a series); 0 turns it off [default: 128].
    #[arg(long, env = "UPDRAFT_CORE_LAST_VALUE_CACHE_MIB")]
    pub last_value_cache_mib: Option<u64>,
    /// Memory of the range-result cache, query_range answers in step-aligned extents; 0
    /// turns it off [default: 256].
    #[arg(long, env = "UPDRAFT_CORE_RANGE_CACHE_MIB")]
    pub range_cache_mib: Option<u64>,
    /// A range-result extent is cached only once everything it reads is this many seconds
    /// old; later ones are recomputed on every request [default: 60].
    #[arg(long, env = "UPDRAFT_CORE_RANGE_CACHE_SETTLE_SECS")]
    pub range_cache_settle_secs: Option<u64>,
    /// Log lines on stderr: `text` (colours only on a terminal) or `json` (one object per
    /// line, for log shippers); RUST_LOG sets the filter [default: text].
    #[arg(long, value_enum, env = "UPDRAFT_CORE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// QUIC connections open at once; further ones are refused before their handshake
    /// [default: 4096].
    #[arg(long, env = "UPDRAFT_CORE_QUIC_MAX_CONNECTIONS")]
    pub quic_max_connections: Option<usize>,
    /// Batches one QUIC connection may have in flight (bidirectional streams) [default: 16].
    #[arg(long, env = "UPDRAFT_CORE_QUIC_MAX_STREAMS_PER_CONNECTION")]
    pub quic_max_streams_per_connection: Option<u32>,
    /// Bytes an agent may send on one stream beyond what the node has read [default: 262144].
    #[arg(long, env = "UPDRAFT_CORE_QUIC_STREAM_RECEIVE_WINDOW")]
    pub quic_stream_receive_window: Option<u32>,
    /// Bytes an agent may send on one connection beyond what the node has read
    /// [default: 262144].
    #[arg(long, env = "UPDRAFT_CORE_QUIC_RECEIVE_WINDOW")]
    pub quic_receive_window: Option<u32>,
    /// Bytes of QUIC frames held node-wide from reading until answered; past it streams wait,
    /// then get too_many_requests [default: 134217728, at least 16777216].
    #[arg(long, env = "UPDRAFT_CORE_QUIC_INFLIGHT_BYTES")]
    pub quic_inflight_bytes: Option<usize>,
    /// Cluster: this node's id (a positive integer, unique in the cluster). Without it the
    /// node is a single node and every other cluster option is ignored (docs/cluster.md).
    #[arg(long, env = "UPDRAFT_CORE_NODE_ID")]
    pub node_id: Option<u64>,
    /// Cluster: the UDP address of the inter-node port (QUIC, mutual TLS with node
    /// certificates) [default: 127.0.0.1:7401].
    #[arg(long, env = "UPDRAFT_CORE_CLUSTER_LISTEN")]
    pub cluster_listen: Option<SocketAddr>,
    /// Cluster: the `host:port` other nodes reach the inter-node port at; the host must be a
    /// name in this node's certificate [default: --cluster-listen].
    #[arg(long, env = "UPDRAFT_CORE_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// Cluster: this node's certificate from `core-node certs --node-id N`
    /// [default: node-<ID>.pem next to --ca].
    #[arg(long, env = "UPDRAFT_CORE_CLUSTER_CERT")]
    pub cluster_cert: Option<PathBuf>,
    /// Cluster: the key of --cluster-cert [default: node-<ID>-key.pem next to --ca].
    #[arg(long, env = "UPDRAFT_CORE_CLUSTER_KEY")]
    pub cluster_key: Option<PathBuf>,
    /// Cluster: Raft heartbeat interval in milliseconds; also the timeout of every Raft
    /// message, so keep it above the slowest link's round trip [default: 200].
    #[arg(long, env = "UPDRAFT_CORE_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Cluster: the shortest Raft election timeout in milliseconds (the longest is twice it);
    /// a lost leader is replaced after about this long [default: 1000].
    #[arg(long, env = "UPDRAFT_CORE_RAFT_ELECTION_TIMEOUT_MS")]
    pub raft_election_timeout_ms: Option<u64>,
}

/// The TOML file's shape: the same options as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    quic_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    http_tls_cert: Option<PathBuf>,
    http_tls_key: Option<PathBuf>,
    tls_min_version: Option<TlsMinVersion>,
    durability: Option<Durability>,
    #[serde(default)]
    insecure_dev_mode: bool,
    tenant: Option<String>,
    ingest_rate_limit: Option<u64>,
    max_labels_per_series: Option<usize>,
    max_label_name_bytes: Option<usize>,
    max_label_value_bytes: Option<usize>,
    max_series_per_tenant: Option<u64>,
    retention: Option<String>,
    #[serde(default)]
    tenant_retention: std::collections::BTreeMap<String, String>,
    master_key_file: Option<PathBuf>,
    min_free_disk_mib: Option<u64>,
    storage_failure_exit_secs: Option<u64>,
    last_value_cache_mib: Option<u64>,
    range_cache_mib: Option<u64>,
    range_cache_settle_secs: Option<u64>,
    log_format: Option<LogFormat>,
    quic_max_connections: Option<usize>,
    quic_max_streams_per_connection: Option<u32>,
    quic_stream_receive_window: Option<u32>,
    quic_receive_window: Option<u32>,
    quic_inflight_bytes: Option<usize>,
    node_id: Option<u64>,
    cluster_listen: Option<SocketAddr>,
    cluster_advertise: Option<String>,
    cluster_cert: Option<PathBuf>,
    cluster_key: Option<PathBuf>,
    raft_heartbeat_ms: Option<u64>,
    raft_election_timeout_ms: Option<u64>,
}

/// The default of `--cluster-listen`.
pub const DEFAULT_CLUSTER_LISTEN: &str = "127.0.0.1:7401";
/// The default of `--raft-heartbeat-ms`.
pub const DEFAULT_RAFT_HEARTBEAT_MS: u64 = 200;
/// The default of `--raft-election-timeout-ms`.
pub const DEFAULT_RAFT_ELECTION_TIMEOUT_MS: u64 = 1000;

/// A clustered node's settings (`--node-id` given).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub advertise: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub heartbeat: std::time::Duration,
    pub election_timeout: std::time::Duration,
}

/// The default of `--min-free-disk-mib`.
pub const DEFAULT_MIN_FREE_DISK_MIB: u64 = crate::storage::DEFAULT_MIN_FREE_DISK_BYTES >> 20;
/// The default of `--last-value-cache-mib`.
pub const DEFAULT_LAST_VALUE_CACHE_MIB: u64 =
    crate::storage::last_value::DEFAULT_BUDGET_BYTES >> 20;
/// The default of `--range-cache-mib`.
pub const DEFAULT_RANGE_CACHE_MIB: u64 = crate::cache::DEFAULT_RANGE_CACHE_BYTES >> 20;
/// The default of `--storage-failure-exit-secs`.
pub const DEFAULT_STORAGE_FAILURE_EXIT_SECS: u64 = 10;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub data_dir: PathBuf,
    pub quic_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub tls: TlsFiles,
    /// TLS on the HTTP listener; `None`: plain HTTP.
    pub http_tls: Option<HttpTlsFiles>,
    pub durability: Durability,
    /// Unauthenticated HTTP requests act as `tenant` with every role; agent certificates
    /// without a tenant may write any tenant.
    pub insecure_dev_mode: bool,
    /// The tenant of unauthenticated requests in development mode.
    pub tenant: Tenant,
    /// Samples per second per tenant over HTTP; `None`: no limit.
    pub ingest_rate_limit: Option<f64>,
    pub limits: Limits,
    pub retention: Retention,
    /// Master key file for encryption at rest (else `UPDRAFT_MASTER_KEY`, else none).
    pub master_key_file: Option<PathBuf>,
    /// Storage turns read-only below this many free bytes on the data directory's file
    /// system; 0: never.
    pub min_free_disk_bytes: u64,
    /// How long a node whose storage failed goes on answering `/health` before it exits.
    pub storage_failure_exit_after: std::time::Duration,
    /// Memory of the last-value cache; 0: off.
    pub last_value_cache_bytes: u64,
    /// The range-result cache's memory and settle time.
    pub range_cache: crate::cache::RangeCacheOptions,
    /// How `main` sets up logging (the node itself only emits events).
    pub log_format: LogFormat,
    /// Connection, stream and in-flight byte limits of QUIC ingest.
    pub quic_limits: QuicLimits,
    /// `None`: a single node.
    pub cluster: Option<ClusterConfig>,
}

impl CoreConfig {
    /// Defaults for a local node with its certificates in `certs_dir`.
    pub fn local(data_dir: &Path, certs_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            quic_listen: parse_default(DEFAULT_QUIC_LISTEN),
            http_listen: parse_default(DEFAULT_HTTP_LISTEN),
            tls: TlsFiles::in_dir(certs_dir, "core"),
            http_tls: None,
            durability: Durability::default(),
            insecure_dev_mode: false,
            tenant: Tenant::default(),
            ingest_rate_limit: None,
            limits: Limits::default(),
            retention: Retention::default(),
            master_key_file: None,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_MIB << 20,
            storage_failure_exit_after: std::time::Duration::from_secs(
                DEFAULT_STORAGE_FAILURE_EXIT_SECS,
            ),
            last_value_cache_bytes: DEFAULT_LAST_VALUE_CACHE_MIB << 20,
            range_cache: crate::cache::RangeCacheOptions::default(),
            log_format: LogFormat::default(),
            quic_limits: QuicLimits::default(),
            cluster: None,
        }
    }

    pub fn from_args(args: RunArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let base = Self::local(Path::new(DEFAULT_DATA_DIR), Path::new(DEFAULT_CERTS_DIR));
        let tenant = args.tenant.or(file.tenant);
        let defaults = Limits::default();
        let limits = Limits {
            max_labels_per_series: args
                .max_labels_per_series
                .or(file.max_labels_per_series)
                .unwrap_or(defaults.max_labels_per_series),
            max_label_name_bytes: args
                .max_label_name_bytes
                .or(file.max_label_name_bytes)
                .unwrap_or(defaults.max_label_name_bytes),
            max_label_value_bytes: args
                .max_label_value_bytes
                .or(file.max_label_value_bytes)
                .unwrap_or(defaults.max_label_value_bytes),
            max_series_per_tenant: args
                .max_series_per_tenant
                .or(file.max_series_per_tenant)
                .unwrap_or(defaults.max_series_per_tenant),
        };
        let mut retention = Retention {
            default: match args.retention.or(file.retention) {
                Some(text) => parse_retention(&text).map_err(anyhow::Error::msg)?,
                None => None,
            },
            per_tenant: Default::default(),
        };
        let flags = args.tenant_retention.iter().map(|pair| {
            pair.split_once('=')
                .map(|(t, r)| (t.to_owned(), r.to_owned()))
                .ok_or_else(|| {
                    anyhow::anyhow!("--tenant-retention {pair:?}: expected TENANT=RETENTION")
                })
        });
        // File entries first, so that flags override them.
        let file_pairs = file.tenant_retention.into_iter().map(Ok);
        for pair in file_pairs.chain(flags) {
            let (tenant, text) = pair?;
            let tenant = Tenant::new(tenant).context("invalid tenant in a retention setting")?;
            let keep = parse_retention(&text).map_err(anyhow::Error::msg)?;
            retention.per_tenant.insert(tenant, keep);
        }
        let http_tls = match (
            args.http_tls_cert.or(file.http_tls_cert),
            args.http_tls_key.or(file.http_tls_key),
        ) {
            (Some(cert), Some(key)) => Some(HttpTlsFiles {
                cert,
                key,
                min_version: args
                    .tls_min_version
                    .or(file.tls_min_version)
                    .unwrap_or_default(),
            }),
            (None, None) => None,
            _ => anyhow::bail!("http_tls_cert and http_tls_key go together: give both or neither"),
        };
        let min_free_disk_mib = args
            .min_free_disk_mib
            .or(file.min_free_disk_mib)
            .unwrap_or(DEFAULT_MIN_FREE_DISK_MIB);
        let quic = QuicLimits::default();
        let quic_limits = QuicLimits {
            max_connections: args
                .quic_max_connections
                .or(file.quic_max_connections)
                .unwrap_or(quic.max_connections),
            max_streams_per_connection: args
                .quic_max_streams_per_connection
                .or(file.quic_max_streams_per_connection)
                .unwrap_or(quic.max_streams_per_connection),
            stream_receive_window: args
                .quic_stream_receive_window
                .or(file.quic_stream_receive_window)
                .unwrap_or(quic.stream_receive_window),
            receive_window: args
                .quic_receive_window
                .or(file.quic_receive_window)
                .unwrap_or(quic.receive_window),
            inflight_bytes: args
                .quic_inflight_bytes
                .or(file.quic_inflight_bytes)
                .unwrap_or(quic.inflight_bytes),
        };
        quic_limits.validate().map_err(anyhow::Error::msg)?;
        let ca = args.ca.or(file.ca).unwrap_or(base.tls.ca);
        let cluster = match args.node_id.or(file.node_id) {
            None => None,
            Some(0) => anyhow::bail!("--node-id must be a positive integer"),
            Some(node_id) => {
                let listen = args
                    .cluster_listen
                    .or(file.cluster_listen)
                    .unwrap_or(parse_default(DEFAULT_CLUSTER_LISTEN));
                let certs = ca.parent().unwrap_or(Path::new("."));
                let heartbeat = args
                    .raft_heartbeat_ms
                    .or(file.raft_heartbeat_ms)
                    .unwrap_or(DEFAULT_RAFT_HEARTBEAT_MS);
                let election = args
                    .raft_election_timeout_ms
                    .or(file.raft_election_timeout_ms)
                    .unwrap_or(DEFAULT_RAFT_ELECTION_TIMEOUT_MS);
                if heartbeat == 0 || election <= heartbeat {
                    anyhow::bail!(
                        "raft_election_timeout_ms ({election}) must exceed raft_heartbeat_ms ({heartbeat}), which must be positive"
                    );
                }
                Some(ClusterConfig {
                    node_id,
                    listen,
                    advertise: args
                        .cluster_advertise
                        .or(file.cluster_advertise)
                        .unwrap_or_else(|| listen.to_string()),
                    cert: args
                        .cluster_cert
                        .or(file.cluster_cert)
                        .unwrap_or_else(|| certs.join(format!("node-{node_id}.pem"))),
                    key: args
                        .cluster_key
                        .or(file.cluster_key)
                        .unwrap_or_else(|| certs.join(format!("node-{node_id}-key.pem"))),
                    heartbeat: std::time::Duration::from_millis(heartbeat),
                    election_timeout: std::time::Duration::from_millis(election),
                })
            }
        };
        let range_cache = crate::cache::RangeCacheOptions {
            max_bytes: args
                .range_cache_mib
                .or(file.range_cache_mib)
                .unwrap_or(DEFAULT_RANGE_CACHE_MIB)
                .saturating_mul(1 << 20),
            settle: args
                .range_cache_settle_secs
                .or(file.range_cache_settle_secs)
                .map_or(crate::cache::DEFAULT_SETTLE, std::time::Duration::from_secs),
        };
        Ok(Self {
            cluster,
            quic_limits,
            last_value_cache_bytes: args
                .last_value_cache_mib
                .or(file.last_value_cache_mib)
                .unwrap_or(DEFAULT_LAST_VALUE_CACHE_MIB)
                .saturating_mul(1 << 20),
            range_cache,
            min_free_disk_bytes: min_free_disk_mib.saturating_mul(1 << 20),
            storage_failure_exit_after: std::time::Duration::from_secs(
                args.storage_failure_exit_secs
                    .or(file.storage_failure_exit_secs)
                    .unwrap_or(DEFAULT_STORAGE_FAILURE_EXIT_SECS),
            ),
            limits,
            retention,
            master_key_file: args.master_key_file.or(file.master_key_file),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            http_tls,
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(base.data_dir),
            quic_listen: args
                .quic_listen
                .or(file.quic_listen)
                .unwrap_or(base.quic_listen),
            http_listen: args
                .http_listen
                .or(file.http_listen)
                .unwrap_or(base.http_listen),
            tls: TlsFiles {
                ca,
                cert: args.cert.or(file.cert).unwrap_or(base.tls.cert),
                key: args.key.or(file.key).unwrap_or(base.tls.key),
            },
            durability: args.durability.or(file.durability).unwrap_or_default(),
            insecure_dev_mode: args.insecure_dev_mode || file.insecure_dev_mode,
            ingest_rate_limit: args
                .ingest_rate_limit
                .or(file.ingest_rate_limit)
                .filter(|r| *r > 0)
                .map(|r| r as f64),
            tenant: match tenant {
                Some(t) => Tenant::new(t).context("invalid --tenant")?,
                None => Tenant::default(),
            },
        })
    }
}

fn parse_default(addr: &str) -> SocketAddr {
    // The defaults above are literal, valid socket addresses.
    addr.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("core.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\nhttp_listen = \"127.0.0.1:1\"\ndurability = \"buffered\"\nlog_format = \"json\"\n",
        )
        .expect("write");
        let cfg = CoreConfig::from_args(RunArgs {
            config: Some(path.clone()),
            http_listen: Some("127.0.0.1:2".parse().expect("addr")),
            ..RunArgs::default()
        })
        .expect("valid");
        assert_eq!(cfg.data_dir, PathBuf::from("/from/file"));
        assert_eq!(cfg.http_listen.port(), 2);
        assert_eq!(cfg.durability, Durability::Buffered);
        assert_eq!(cfg.quic_listen.port(), 4433);
        assert_eq!(cfg.log_format, LogFormat::Json);

        std::fs::write(&path, "no_such_option = 1\n").expect("write");
        let err = CoreConfig::from_args(RunArgs {
            config: Some(path),
            ..RunArgs::default()
        })
        .expect_err("unknown key");
        assert!(format!("{err:#}").contains("no_such_option"));
    }

    #[test]
    fn example_config_shows_the_quic_defaults_and_flags_override_them() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/core-node.toml");
        let cfg = CoreConfig::from_args(RunArgs {
            config: Some(path.clone()),
            ..RunArgs::default()
        })
        .expect("valid");
        assert_eq!(cfg.quic_limits, QuicLimits::default());
        let cfg = CoreConfig::from_args(RunArgs {
            config: Some(path.clone()),
            quic_max_connections: Some(7),
            ..RunArgs::default()
        })
        .expect("valid");
        assert_eq!(cfg.quic_limits.max_connections, 7);
        let err = CoreConfig::from_args(RunArgs {
            config: Some(path),
            quic_inflight_bytes: Some(1024),
            ..RunArgs::default()
        })
        .expect_err("a budget below one frame");
        assert!(format!("{err:#}").contains("quic_inflight_bytes"));
    }

    #[test]
    fn example_config_shows_the_cache_defaults_and_flags_override_them() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/core-node.toml");
        let cfg = CoreConfig::from_args(RunArgs {
            config: Some(path.clone()),
            ..RunArgs::default()
        })
        .expect("valid");
        let defaults = CoreConfig::local(Path::new("d"), Path::new("c"));
        assert_eq!(cfg.last_value_cache_bytes, defaults.last_value_cache_bytes);
        assert_eq!(cfg.range_cache.max_bytes, defaults.range_cache.max_bytes);
        assert_eq!(cfg.range_cache.settle, defaults.range_cache.settle);
        let cfg = CoreConfig::from_args(RunArgs {
            config: Some(path),
            last_value_cache_mib: Some(0),
            range_cache_mib: Some(1),
            range_cache_settle_secs: Some(30),
            ..RunArgs::default()
        })
        .expect("valid");
        assert_eq!(cfg.last_value_cache_bytes, 0);
        assert_eq!(cfg.range_cache.max_bytes, 1 << 20);
        assert_eq!(cfg.range_cache.settle, std::time::Duration::from_secs(30));
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../deploy/core-node.toml");
        toml::from_str::<FileConfig>(text).expect("deploy/core-node.toml matches the code");
    }
}

//! Agent configuration: command line, environment and an optional TOML file, layered into one
//! validated [`AgentConfig`].
//!
//! Precedence, highest first: command-line flag, `UPDRAFT_EDGE_*` environment variable, the file
//! given by `--config`, the built-in default. File keys are the flag names without `--`
//! (`agent-id = "gw-7"`); unknown keys are an error. Relative paths are relative to the working
//! directory, not to the file. `deploy/edge-agent.toml` lists every option with its default.
//!
//! The mapping rules are the exception: they exist only in the file, as `[[rules]]` tables
//! (see [`RuleConfig`]). The older single-template form (`--topic-template`, or
//! `topic-template` in the file) still works and means one rule with the `auto` decoder; given
//! as a flag or environment variable it replaces the file's rules, and a file may not hold both.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use protocols::model::{ModelError, Tenant};
use protocols::wire::AgentId;
use serde::Deserialize;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

mod bridge;

pub use crate::logging::LogFormat;
pub use crate::mapping::{
    Decoder, Overflow, Rule, RuleConfig, RuleError, TemplateError, TopicTemplate,
};
pub use bridge::{BridgeConfig, DEFAULT_BRIDGE_TOPIC};

pub const DEFAULT_AGENT_ID: &str = "edge-agent";
// The three listen addresses and the core endpoint also appear typed in `AgentConfig::default`.
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";
pub const DEFAULT_MQTT5_LISTEN: &str = "127.0.0.1:1884";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9202";
pub const DEFAULT_DATA_DIR: &str = "./data/edge";
pub const DEFAULT_CORE: &str = "127.0.0.1:4433";
pub const DEFAULT_CA: &str = "certs/ca.pem";
pub const DEFAULT_CERT: &str = "certs/agent.pem";
pub const DEFAULT_KEY: &str = "certs/agent-key.pem";
pub const DEFAULT_TOPIC_TEMPLATE: &str = "{site}/{device}/{metric}";
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
pub const DEFAULT_BATCH_MAX_SAMPLES: usize = 10_000;
pub const DEFAULT_BATCH_MAX_DELAY_MS: u64 = 200;
pub const DEFAULT_BUFFER_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_BUFFER_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// 0: the backlog is sent as fast as the link allows (fresh data still goes first).
pub const DEFAULT_BACKLOG_RATE: u64 = 0;
/// No publish rate limit by default.
pub const DEFAULT_MQTT_MAX_PUBLISH_RATE: u32 = 0;
/// Fsync every burst at once by default.
pub const DEFAULT_BUFFER_FSYNC_INTERVAL_MS: u64 = 0;
/// Long enough for a scrape or a health check to see a failed buffer, short enough that a
/// restart comes soon (devices wait meanwhile).
pub const DEFAULT_BUFFER_FAILURE_EXIT_DELAY_MS: u64 = 10_000;
/// Upper bound of `--buffer-failure-exit-delay-ms`.
const MAX_BUFFER_FAILURE_EXIT_DELAY_MS: u64 = 600_000;

/// Longest accepted agent id, in bytes.
const MAX_AGENT_ID_BYTES: usize = 128;
/// Upper bound for `--batch-max-samples`: keeps one batch well inside the wire's frame limit.
const MAX_BATCH_SAMPLES: usize = 100_000;

/// Why the configuration was refused. Messages name the option so an operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Usage(#[from] clap::Error),
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    ParseFile {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid --tenant: {0}")]
    Tenant(#[from] ModelError),
    #[error("invalid --agent-id {0:?}: must be 1-{MAX_AGENT_ID_BYTES} bytes without whitespace")]
    AgentId(String),
    #[error("invalid --core {value:?}: {reason}")]
    Core { value: String, reason: &'static str },
    #[error("at least one --core endpoint is required")]
    NoCore,
    #[error("invalid --topic-template {value:?}: {source}")]
    TopicTemplate { value: String, source: RuleError },
    #[error("invalid [[rules]] entry {number} (topic {topic:?}): {source}")]
    Rule {
        /// 1-based, in file order.
        number: usize,
        topic: String,
        source: RuleError,
    },
    #[error("the config file has both topic-template and [[rules]]; keep one")]
    RulesAndTemplate,
    #[error("at least one mapping rule is required")]
    NoRules,
    #[error("--{option} must be between {min} and {max}, got {value}")]
    OutOfRange {
        option: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("--{0} needs --{1}")]
    Requires(&'static str, &'static str),
    #[error("invalid --bridge-broker {value:?}: {reason}")]
    BridgeBroker { value: String, reason: &'static str },
    #[error("--{0} and --{1} use the same address {2}")]
    SameAddress(&'static str, &'static str, SocketAddr),
}

/// A core node to ship to: `host:port`, where host is a DNS name or an IP address (IPv6 in
/// brackets). The host is also the TLS server name the core's certificate must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CoreEndpoint {
    pub host: String,
    pub port: u16,
}

impl FromStr for CoreEndpoint {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = |reason| ConfigError::Core {
            value: value.to_owned(),
            reason,
        };
        let (host, port) = value.rsplit_once(':').ok_or(err("expected HOST:PORT"))?;
        let port: u16 = port.parse().map_err(|_| err("port is not a number"))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or(err("unbalanced brackets"))?,
            None if host.contains(':') => return Err(err("put an IPv6 address in brackets")),
            None => host,
        };
        if host.is_empty() || port == 0 {
            return Err(err("host and a non-zero port are required"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for CoreEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The validated configuration [`crate::run`] takes. Build it from the command line with
/// [`AgentConfig::from_args`], or in code starting from [`AgentConfig::default`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub agent_id: AgentId,
    pub tenant: Tenant,
    /// MQTT 3.1.1 listener. Port 0 picks a free port (logged at start).
    pub mqtt_listen: SocketAddr,
    /// MQTT 5 listener. Port 0 picks a free port (logged at start).
    pub mqtt5_listen: SocketAddr,
    /// `/metrics` and `/health`.
    pub http_listen: SocketAddr,
    /// The buffer lives in `<data_dir>/buffer/`.
    pub data_dir: PathBuf,
    /// Tried in order; the next one on failure.
    pub core: Vec<CoreEndpoint>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mapping rules, tried in order; the first whose topic pattern matches maps the message.
    pub rules: Vec<Rule>,
    pub max_payload_bytes: usize,
    pub batch_max_samples: usize,
    pub batch_max_delay: Duration,
    pub buffer_segment_bytes: u64,
    /// Bound of the buffer's unacknowledged bytes; each rule's `overflow` says what happens
    /// when it is reached.
    pub buffer_max_bytes: u64,
    /// Most backlog samples per second sent after an outage (0: no limit).
    pub backlog_rate: u64,
    /// Shortest time between two fsyncs of the buffer (0: one per burst, at once). Every
    /// acknowledgement still waits for the fsync covering its message.
    pub buffer_fsync_interval: Duration,
    /// How long the agent reports a failed buffer (`/health` 503, `updraft_edge_buffer_healthy`
    /// 0) before it exits with an error for its supervisor to restart it.
    pub buffer_failure_exit_delay: Duration,
    /// Most PUBLISH packets per second per MQTT connection, i.e. per device (0: no limit).
    pub mqtt_max_publish_rate: u32,
    /// The master key for encryption at rest of the buffer (32 bytes, raw or hex); without
    /// it, `UPDRAFT_MASTER_KEY` (hex) if set, else the buffer is not encrypted.
    pub master_key_file: Option<PathBuf>,
    /// `USERNAME:PASSWORD` lines; when set, MQTT clients must log in with one of them.
    /// Re-read while the agent runs (on change and on SIGHUP).
    pub mqtt_users_file: Option<PathBuf>,
    /// Server certificate chain and key (PEM): when set, both MQTT listeners speak TLS only.
    pub mqtt_tls_cert: Option<PathBuf>,
    pub mqtt_tls_key: Option<PathBuf>,
    /// Topic ACLs (mosquitto `acl_file` format): when set, a publish is taken only if a rule
    /// allows its topic for the client's username and client id. Re-read while the agent runs.
    pub mqtt_acl_file: Option<PathBuf>,
    /// CA (PEM) device client certificates must chain to: when set, the TLS listeners require
    /// and verify a client certificate.
    pub mqtt_tls_client_ca: Option<PathBuf>,
    /// The client certificate's common name is the username (for ACLs); the users file is
    /// not consulted.
    pub mqtt_tls_client_cert_as_username: bool,
    /// Bridge mode: also subscribe to an existing broker.
    pub bridge: Option<BridgeConfig>,
    /// How `main` sets up logging (the agent itself only emits events).
    pub log_format: LogFormat,
}

impl Default for AgentConfig {
    /// The documented defaults (the same values `--help` shows; a unit test keeps them equal).
    fn default() -> Self {
        let localhost = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            agent_id: AgentId(DEFAULT_AGENT_ID.to_owned()),
            tenant: Tenant::default(),
            mqtt_listen: localhost(1883),
            mqtt5_listen: localhost(1884),
            http_listen: localhost(9202),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            core: vec![CoreEndpoint {
                host: "127.0.0.1".to_owned(),
                port: 4433,
            }],
            ca: PathBuf::from(DEFAULT_CA),
            cert: PathBuf::from(DEFAULT_CERT),
            key: PathBuf::from(DEFAULT_KEY),
            rules: vec![Rule::default()],
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            batch_max_samples: DEFAULT_BATCH_MAX_SAMPLES,
            batch_max_delay: Duration::from_millis(DEFAULT_BATCH_MAX_DELAY_MS),
            buffer_segment_bytes: DEFAULT_BUFFER_SEGMENT_BYTES,
            buffer_max_bytes: DEFAULT_BUFFER_MAX_BYTES,
            backlog_rate: DEFAULT_BACKLOG_RATE,
            buffer_fsync_interval: Duration::from_millis(DEFAULT_BUFFER_FSYNC_INTERVAL_MS),
            buffer_failure_exit_delay: Duration::from_millis(DEFAULT_BUFFER_FAILURE_EXIT_DELAY_MS),
            mqtt_max_publish_rate: DEFAULT_MQTT_MAX_PUBLISH_RATE,
            master_key_file: None,
            mqtt_users_file: None,
            mqtt_tls_cert: None,
            mqtt_tls_key: None,
            mqtt_acl_file: None,
            mqtt_tls_client_ca: None,
            mqtt_tls_client_cert_as_username: false,
            bridge: None,
            log_format: LogFormat::Text,
        }
    }
}

impl AgentConfig {
    /// Parses the process arguments (exits with clap's message on `--help` or a usage error),
    /// reads `--config` if given and validates the result.
    pub fn from_args() -> Result<Self, ConfigError> {
        let matches = Cli::command().get_matches();
        Self::from_matches(&matches)
    }

    /// Like [`AgentConfig::from_args`] for an explicit argument list (tests, launchers); usage
    /// errors and `--help` come back as [`ConfigError::Usage`] instead of exiting.
    pub fn try_from_args<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        Self::from_matches(&matches)
    }

    fn from_matches(matches: &ArgMatches) -> Result<Self, ConfigError> {
        let cli = Cli::from_arg_matches(matches)?;
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        // A value from the file wins only over a built-in default.
        let from_default = |id: &str| {
            matches!(
                matches.value_source(id),
                None | Some(ValueSource::DefaultValue)
            )
        };
        macro_rules! layer {
            ($field:ident) => {
                match file.$field {
                    Some(v) if from_default(stringify!($field)) => v,
                    _ => cli.$field,
                }
            };
        }
        // `--topic-template` from a flag or the environment replaces the file's rules.
        let rules = match (
            from_default("topic_template"),
            file.rules,
            &file.topic_template,
        ) {
            (false, _, _) => None,
            (true, Some(_), Some(_)) => return Err(ConfigError::RulesAndTemplate),
            (true, rules, _) => rules,
        };
        let raw = Cli {
            config: None,
            rules,
            agent_id: layer!(agent_id),
            tenant: layer!(tenant),
            mqtt_listen: layer!(mqtt_listen),
            mqtt5_listen: layer!(mqtt5_listen),
            http_listen: layer!(http_listen),
            data_dir: layer!(data_dir),
            core: layer!(core),
            ca: layer!(ca),
            cert: layer!(cert),
            key: layer!(key),
            topic_template: layer!(topic_template),
            max_payload_bytes: layer!(max_payload_bytes),
            batch_max_samples: layer!(batch_max_samples),
            batch_max_delay_ms: layer!(batch_max_delay_ms),
            buffer_segment_bytes: layer!(buffer_segment_bytes),
            buffer_max_bytes: layer!(buffer_max_bytes),
            backlog_rate: layer!(backlog_rate),
            buffer_fsync_interval_ms: layer!(buffer_fsync_interval_ms),
            buffer_failure_exit_delay_ms: layer!(buffer_failure_exit_delay_ms),
            mqtt_max_publish_rate: layer!(mqtt_max_publish_rate),
            master_key_file: cli.master_key_file.or(file.master_key_file),
            mqtt_users_file: cli.mqtt_users_file.or(file.mqtt_users_file),
            mqtt_tls_cert: cli.mqtt_tls_cert.or(file.mqtt_tls_cert),
            mqtt_tls_key: cli.mqtt_tls_key.or(file.mqtt_tls_key),
            mqtt_acl_file: cli.mqtt_acl_file.or(file.mqtt_acl_file),
            mqtt_tls_client_ca: cli.mqtt_tls_client_ca.or(file.mqtt_tls_client_ca),
            mqtt_tls_client_cert_as_username: layer!(mqtt_tls_client_cert_as_username),
            bridge_broker: cli.bridge_broker.or(file.bridge_broker),
            bridge_topic: layer!(bridge_topic),
            bridge_client_id: cli.bridge_client_id.or(file.bridge_client_id),
            bridge_username: cli.bridge_username.or(file.bridge_username),
            bridge_password: cli.bridge_password.or(file.bridge_password),
            bridge_ca: cli.bridge_ca.or(file.bridge_ca),
            log_format: layer!(log_format),
        };
        raw.validate()
    }

    /// Checks the invariants `run` relies on; `from_args` has already done so.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.agent_id.0.is_empty()
            || self.agent_id.0.len() > MAX_AGENT_ID_BYTES
            || self.agent_id.0.contains(char::is_whitespace)
        {
            return Err(ConfigError::AgentId(self.agent_id.0.clone()));
        }
        if self.core.is_empty() {
            return Err(ConfigError::NoCore);
        }
        if self.rules.is_empty() {
            return Err(ConfigError::NoRules);
        }
        range(
            "max-payload-bytes",
            self.max_payload_bytes as u64,
            1,
            protocols::wire::MAX_FRAME_BYTES as u64,
        )?;
        range(
            "batch-max-samples",
            self.batch_max_samples as u64,
            1,
            MAX_BATCH_SAMPLES as u64,
        )?;
        let delay_ms = u64::try_from(self.batch_max_delay.as_millis()).unwrap_or(u64::MAX);
        range("batch-max-delay-ms", delay_ms, 0, 60_000)?;
        let fsync_ms = u64::try_from(self.buffer_fsync_interval.as_millis()).unwrap_or(u64::MAX);
        range("buffer-fsync-interval-ms", fsync_ms, 0, 60_000)?;
        let exit_ms = u64::try_from(self.buffer_failure_exit_delay.as_millis()).unwrap_or(u64::MAX);
        range(
            "buffer-failure-exit-delay-ms",
            exit_ms,
            0,
            MAX_BUFFER_FAILURE_EXIT_DELAY_MS,
        )?;
        range(
            "buffer-segment-bytes",
            self.buffer_segment_bytes,
            64 * 1024,
            1024 * 1024 * 1024,
        )?;
        // Room for at least four segments, so eviction always has a sealed one to give up.
        range(
            "buffer-max-bytes",
            self.buffer_max_bytes,
            self.buffer_segment_bytes.saturating_mul(4),
            u64::MAX,
        )?;
        match (&self.mqtt_tls_cert, &self.mqtt_tls_key) {
            (Some(_), None) => return Err(ConfigError::Requires("mqtt-tls-cert", "mqtt-tls-key")),
            (None, Some(_)) => return Err(ConfigError::Requires("mqtt-tls-key", "mqtt-tls-cert")),
            _ => {}
        }
        if self.mqtt_tls_client_ca.is_some() && self.mqtt_tls_cert.is_none() {
            return Err(ConfigError::Requires("mqtt-tls-client-ca", "mqtt-tls-cert"));
        }
        if self.mqtt_tls_client_cert_as_username && self.mqtt_tls_client_ca.is_none() {
            return Err(ConfigError::Requires(
                "mqtt-tls-client-cert-as-username",
                "mqtt-tls-client-ca",
            ));
        }
        let listeners = [
            ("mqtt-listen", self.mqtt_listen),
            ("mqtt5-listen", self.mqtt5_listen),
            ("http-listen", self.http_listen),
        ];
        for (i, (a_name, a)) in listeners.iter().enumerate() {
            for (b_name, b) in &listeners[i + 1..] {
                if a == b && a.port() != 0 {
                    return Err(ConfigError::SameAddress(a_name, b_name, *a));
                }
            }
        }
        Ok(())
    }
}

fn range(option: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            option,
            value,
            min,
            max,
        })
    }
}

/// Updraft edge agent: embedded MQTT broker, durable disk buffer, QUIC uplink to core nodes.
///
/// Every option can also be set with the environment variable shown, or in the TOML file given
/// by --config (keys are the option names without `--`). Flags override the environment, which
/// overrides the file, which overrides the defaults.
#[derive(Debug, Parser)]
#[command(
    name = "edge-agent",
    version,
    after_help = "Subcommands: `edge-agent passwd --file PATH USERNAME` writes a device's \
                  password hash into the MQTT users file (see `edge-agent passwd --help`); \
                  `edge-agent keys list|rotate|rewrap` manages the buffer's encryption keys \
                  (see `edge-agent keys --help`). SIGHUP re-reads the MQTT users and ACL files."
)]
struct Cli {
    /// TOML file with any of the options below
    #[arg(long, value_name = "PATH", env = "UPDRAFT_EDGE_CONFIG")]
    config: Option<PathBuf>,

    /// Identity of this agent, stable across restarts (the core deduplicates per agent)
    #[arg(long, value_name = "ID", env = "UPDRAFT_EDGE_AGENT_ID", default_value = DEFAULT_AGENT_ID)]
    agent_id: String,

    /// Tenant all samples are written to
    #[arg(long, value_name = "T", env = "UPDRAFT_EDGE_TENANT", default_value = Tenant::DEFAULT)]
    tenant: String,

    /// MQTT 3.1.1 listener of the embedded broker
    #[arg(long, value_name = "ADDR", env = "UPDRAFT_EDGE_MQTT_LISTEN", default_value = DEFAULT_MQTT_LISTEN)]
    mqtt_listen: SocketAddr,

    /// MQTT 5 listener of the embedded broker (a separate port: the broker serves one
    /// protocol version per listener)
    #[arg(long, value_name = "ADDR", env = "UPDRAFT_EDGE_MQTT5_LISTEN", default_value = DEFAULT_MQTT5_LISTEN)]
    mqtt5_listen: SocketAddr,

    /// HTTP listener for GET /metrics and GET /health
    #[arg(long, value_name = "ADDR", env = "UPDRAFT_EDGE_HTTP_LISTEN", default_value = DEFAULT_HTTP_LISTEN)]
    http_listen: SocketAddr,

    /// Directory for the durable buffer (kept in <DIR>/buffer)
    #[arg(long, value_name = "DIR", env = "UPDRAFT_EDGE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,

    /// Core node to ship to; repeat (or comma-separate) for several: the agent keeps a
    /// connection to each and sends to the one with the lowest round-trip time, failing over
    /// to the next fastest. The host is the TLS server name
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "UPDRAFT_EDGE_CORE",
        value_delimiter = ',',
        default_value = DEFAULT_CORE
    )]
    core: Vec<String>,

    /// CA certificate (PEM) the core's certificate must chain to
    #[arg(long, value_name = "PEM", env = "UPDRAFT_EDGE_CA", default_value = DEFAULT_CA)]
    ca: PathBuf,

    /// This agent's client certificate chain (PEM)
    #[arg(long, value_name = "PEM", env = "UPDRAFT_EDGE_CERT", default_value = DEFAULT_CERT)]
    cert: PathBuf,

    /// This agent's private key (PEM, PKCS#8)
    #[arg(long, value_name = "PEM", env = "UPDRAFT_EDGE_KEY", default_value = DEFAULT_KEY)]
    key: PathBuf,

    /// A single mapping rule with the auto decoder (a number or a JSON object): {name} captures
    /// a topic level as label `name`, {metric} the metric name, + and # are MQTT wildcards,
    /// other levels must match literally. Several rules and the other decoders (json, influx,
    /// sparkplug) are configured as [[rules]] in the --config file; this option, given as a
    /// flag or in the environment, replaces them
    #[arg(long, value_name = "T", env = "UPDRAFT_EDGE_TOPIC_TEMPLATE", default_value = DEFAULT_TOPIC_TEMPLATE)]
    topic_template: String,

    /// The file's [[rules]], when they apply (not a command-line option).
    #[arg(skip)]
    rules: Option<Vec<RuleConfig>>,

    /// Publishes with a larger payload are dropped and counted
    #[arg(long, value_name = "N", env = "UPDRAFT_EDGE_MAX_PAYLOAD_BYTES", default_value_t = DEFAULT_MAX_PAYLOAD_BYTES)]
    max_payload_bytes: usize,

    /// Most samples in one batch sent to the core
    #[arg(long, value_name = "N", env = "UPDRAFT_EDGE_BATCH_MAX_SAMPLES", default_value_t = DEFAULT_BATCH_MAX_SAMPLES)]
    batch_max_samples: usize,

    /// Longest a buffered sample waits for its batch to fill before it is sent
    #[arg(long, value_name = "MS", env = "UPDRAFT_EDGE_BATCH_MAX_DELAY_MS", default_value_t = DEFAULT_BATCH_MAX_DELAY_MS)]
    batch_max_delay_ms: u64,

    /// Size at which the buffer starts a new segment file
    #[arg(long, value_name = "N", env = "UPDRAFT_EDGE_BUFFER_SEGMENT_BYTES", default_value_t = DEFAULT_BUFFER_SEGMENT_BYTES)]
    buffer_segment_bytes: u64,

    /// Bound of the buffer's unacknowledged bytes (at least 4 segments); each rule's
    /// `overflow` (reject_new, drop_oldest, downsample_backlog) says what happens when full
    #[arg(long, value_name = "N", env = "UPDRAFT_EDGE_BUFFER_MAX_BYTES", default_value_t = DEFAULT_BUFFER_MAX_BYTES)]
    buffer_max_bytes: u64,

    /// After an outage, fresh data is sent first and the backlog behind it at most this many
    /// samples per second (0: no limit)
    #[arg(long, value_name = "N", env = "UPDRAFT_EDGE_BACKLOG_RATE", default_value_t = DEFAULT_BACKLOG_RATE)]
    backlog_rate: u64,

    /// Shortest time between two fsyncs of the buffer, in ms: messages arriving meanwhile
    /// wait and share the next fsync (fewer fsyncs on slow storage, e.g. SD cards, at the cost
    /// of acknowledgement latency). 0: fsync each burst at once; at most 60000. An acknowledgement (PUBACK,
    /// bridge ack) is never sent before the fsync that covers its message
    #[arg(long, value_name = "MS", env = "UPDRAFT_EDGE_BUFFER_FSYNC_INTERVAL_MS", default_value_t = DEFAULT_BUFFER_FSYNC_INTERVAL_MS)]
    buffer_fsync_interval_ms: u64,

    /// When the buffer fails (an append or fsync error, or a panic of its thread), the agent
    /// takes no more messages, answers /health with 503 and the reason, sets
    /// updraft_edge_buffer_healthy to 0, and exits with an error this many ms later for its
    /// supervisor to restart it (recovery keeps every fsynced sample). At most 600000
    #[arg(long, value_name = "MS", env = "UPDRAFT_EDGE_BUFFER_FAILURE_EXIT_DELAY_MS", default_value_t = DEFAULT_BUFFER_FAILURE_EXIT_DELAY_MS)]
    buffer_failure_exit_delay_ms: u64,

    /// Most PUBLISH packets per second per MQTT connection (a device), bursts of up to that
    /// many allowed; a faster connection is slowed down (its socket is not read meanwhile,
    /// counted in updraft_edge_mqtt_throttled_total), never dropped. 0: no limit
    #[arg(long, value_name = "N", env = "UPDRAFT_EDGE_MQTT_MAX_PUBLISH_RATE", default_value_t = DEFAULT_MQTT_MAX_PUBLISH_RATE)]
    mqtt_max_publish_rate: u32,

    /// Master key file (32 bytes, raw or hex; `core-node keys init --out FILE` makes one):
    /// the buffer is encrypted at rest with a data key it wraps (without it,
    /// UPDRAFT_MASTER_KEY in hex; without either, the buffer is not encrypted)
    #[arg(long, value_name = "PATH", env = "UPDRAFT_EDGE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,

    /// File of USERNAME:PASSWORD_HASH lines (write them with `edge-agent passwd --file PATH
    /// USER`; plaintext passwords still work, with a deprecation warning); when given, MQTT
    /// clients must log in with one of them (others get CONNACK "bad username or password",
    /// counted and logged). Re-read when it changes (checked every 2 s) and on SIGHUP; a file
    /// that does not parse is logged and the previous one kept
    #[arg(long, value_name = "PATH", env = "UPDRAFT_EDGE_MQTT_USERS_FILE")]
    mqtt_users_file: Option<PathBuf>,

    /// Server certificate chain (PEM) for TLS on both MQTT listeners (needs --mqtt-tls-key)
    #[arg(long, value_name = "PEM", env = "UPDRAFT_EDGE_MQTT_TLS_CERT")]
    mqtt_tls_cert: Option<PathBuf>,

    /// Private key (PEM) for --mqtt-tls-cert
    #[arg(long, value_name = "PEM", env = "UPDRAFT_EDGE_MQTT_TLS_KEY")]
    mqtt_tls_key: Option<PathBuf>,

    /// Topic ACL file (mosquitto acl_file format: `user NAME`, `topic write FILTER`,
    /// `pattern write FILTER` with %u = username, %c = client id, + and # wildcards); when
    /// given, a publish to a topic no rule allows is dropped and counted. Re-read like
    /// --mqtt-users-file; open connections are checked against the new rules
    #[arg(long, value_name = "PATH", env = "UPDRAFT_EDGE_MQTT_ACL_FILE")]
    mqtt_acl_file: Option<PathBuf>,

    /// CA certificate (PEM) for device client certificates: the TLS listeners then require a
    /// client certificate that chains to it (needs --mqtt-tls-cert)
    #[arg(long, value_name = "PEM", env = "UPDRAFT_EDGE_MQTT_TLS_CLIENT_CA")]
    mqtt_tls_client_ca: Option<PathBuf>,

    /// Use the client certificate's common name as the MQTT username (for ACLs); no password
    /// is checked (needs --mqtt-tls-client-ca)
    #[arg(long, env = "UPDRAFT_EDGE_MQTT_TLS_CLIENT_CERT_AS_USERNAME")]
    mqtt_tls_client_cert_as_username: bool,

    /// Bridge mode: also subscribe to this existing MQTT broker (HOST:PORT, MQTT 3.1.1,
    /// persistent session, QoS 1, acknowledged only after the buffer's fsync)
    #[arg(long, value_name = "HOST:PORT", env = "UPDRAFT_EDGE_BRIDGE_BROKER")]
    bridge_broker: Option<String>,

    /// Topic filter the bridge subscribes to at QoS 1; repeat (or comma-separate) for several
    #[arg(
        long,
        value_name = "FILTER",
        env = "UPDRAFT_EDGE_BRIDGE_TOPIC",
        value_delimiter = ',',
        default_value = DEFAULT_BRIDGE_TOPIC
    )]
    bridge_topic: Vec<String>,

    /// Client id of the bridge's persistent session [default: updraft-<agent id>]
    #[arg(long, value_name = "ID", env = "UPDRAFT_EDGE_BRIDGE_CLIENT_ID")]
    bridge_client_id: Option<String>,

    /// Username for the bridged broker
    #[arg(long, value_name = "USER", env = "UPDRAFT_EDGE_BRIDGE_USERNAME")]
    bridge_username: Option<String>,

    /// Password for the bridged broker (prefer the environment or the file over a flag)
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "UPDRAFT_EDGE_BRIDGE_PASSWORD",
        hide_env_values = true
    )]
    bridge_password: Option<String>,

    /// CA certificate (PEM): connect to the bridged broker over TLS, trusting only this CA
    #[arg(long, value_name = "PEM", env = "UPDRAFT_EDGE_BRIDGE_CA")]
    bridge_ca: Option<PathBuf>,

    /// Log lines on stderr: `text` (colours only on a terminal) or `json` (one object per
    /// line, for log shippers); RUST_LOG sets the filter
    #[arg(long, value_name = "FORMAT", value_enum, env = "UPDRAFT_EDGE_LOG_FORMAT", default_value = LogFormat::DEFAULT)]
    log_format: LogFormat,
}

impl Cli {
    fn validate(self) -> Result<AgentConfig, ConfigError> {
        let core = self
            .core
            .iter()
            .map(|c| c.trim().parse())
            .collect::<Result<Vec<CoreEndpoint>, _>>()?;
        let rules = match self.rules {
            Some(rules) => rules
                .into_iter()
                .enumerate()
                .map(|(i, rule)| {
                    let topic = rule.topic.clone();
                    rule.validate().map_err(|source| ConfigError::Rule {
                        number: i + 1,
                        topic,
                        source,
                    })
                })
                .collect::<Result<Vec<Rule>, _>>()?,
            None => vec![Rule::from_template(&self.topic_template).map_err(|source| {
                ConfigError::TopicTemplate {
                    value: self.topic_template.clone(),
                    source,
                }
            })?],
        };
        let bridge = match &self.bridge_broker {
            None => None,
            Some(broker) => Some(BridgeConfig::new(
                broker,
                self.bridge_topic.clone(),
                self.bridge_client_id.clone(),
                (self.bridge_username.clone(), self.bridge_password.clone()),
                self.bridge_ca.clone(),
                &self.agent_id,
            )?),
        };
        let config = AgentConfig {
            agent_id: AgentId(self.agent_id),
            tenant: Tenant::new(self.tenant)?,
            mqtt_listen: self.mqtt_listen,
            mqtt5_listen: self.mqtt5_listen,
            http_listen: self.http_listen,
            data_dir: self.data_dir,
            core,
            ca: self.ca,
            cert: self.cert,
            key: self.key,
            rules,
            max_payload_bytes: self.max_payload_bytes,
            batch_max_samples: self.batch_max_samples,
            batch_max_delay: Duration::from_millis(self.batch_max_delay_ms),
            buffer_segment_bytes: self.buffer_segment_bytes,
            buffer_max_bytes: self.buffer_max_bytes,
            backlog_rate: self.backlog_rate,
            buffer_fsync_interval: Duration::from_millis(self.buffer_fsync_interval_ms),
            buffer_failure_exit_delay: Duration::from_millis(self.buffer_failure_exit_delay_ms),
            mqtt_max_publish_rate: self.mqtt_max_publish_rate,
            master_key_file: self.master_key_file,
            mqtt_users_file: self.mqtt_users_file,
            mqtt_tls_cert: self.mqtt_tls_cert,
            mqtt_tls_key: self.mqtt_tls_key,
            mqtt_acl_file: self.mqtt_acl_file,
            mqtt_tls_client_ca: self.mqtt_tls_client_ca,
            mqtt_tls_client_cert_as_username: self.mqtt_tls_client_cert_as_username,
            bridge,
            log_format: self.log_format,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The `--config` file: every option optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    agent_id: Option<String>,
    tenant: Option<String>,
    mqtt_listen: Option<SocketAddr>,
    mqtt5_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    core: Option<Vec<String>>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    topic_template: Option<String>,
    rules: Option<Vec<RuleConfig>>,
    max_payload_bytes: Option<usize>,
    batch_max_samples: Option<usize>,
    batch_max_delay_ms: Option<u64>,
    buffer_segment_bytes: Option<u64>,
    buffer_max_bytes: Option<u64>,
    backlog_rate: Option<u64>,
    buffer_fsync_interval_ms: Option<u64>,
    buffer_failure_exit_delay_ms: Option<u64>,
    mqtt_max_publish_rate: Option<u32>,
    master_key_file: Option<PathBuf>,
    mqtt_users_file: Option<PathBuf>,
    mqtt_tls_cert: Option<PathBuf>,
    mqtt_tls_key: Option<PathBuf>,
    mqtt_acl_file: Option<PathBuf>,
    mqtt_tls_client_ca: Option<PathBuf>,
    mqtt_tls_client_cert_as_username: Option<bool>,
    bridge_broker: Option<String>,
    bridge_topic: Option<Vec<String>>,
    bridge_client_id: Option<String>,
    bridge_username: Option<String>,
    bridge_password: Option<String>,
    bridge_ca: Option<PathBuf>,
    log_format: Option<LogFormat>,
}

impl FileConfig {
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

#[cfg(test)]
mod tests;

//! Updraft core node: receives batches from edge agents over QUIC (mutual TLS), stores them
//! durably on fjall, and answers the Prometheus HTTP API.
//!
//! It is not (yet) clustered: partitioning, replication and failover arrive with the shard
//! replication work; the write path is already "append a batch, then apply it
//! deterministically and idempotently" so a replicated log can slot in.
//!
//! Modules:
//! - [`config`]: flags, environment and TOML file → [`config::CoreConfig`].
//! - [`auth`]: API tokens, roles and the token store (`<data-dir>/tokens.json`).
//! - [`cluster`]: shard groups replicated with openraft, the metadata group, the write and read
//!   paths through any node (started when `--node-id` is given; docs/cluster.md).
//! - [`cache`]: the range-result cache of `query_range` (the last-value cache is storage's).
//! - [`certs`]: the `certs` subcommand's local certificate authority.
//! - [`tls`]: TLS server configurations: QUIC (TLS 1.3, client certificates) and the HTTP
//!   API (optional), both reloaded without a restart.
//! - [`ingest`]: the QUIC listener that turns frames into storage writes and acknowledgements.
//! - [`storage`]: series index, samples and agent offsets on fjall; implements
//!   [`query::DataSource`].
//! - [`http`]: the Prometheus-compatible HTTP API, remote_write and InfluxDB line protocol
//!   ingest, `/metrics` and `/health`.
//! - [`logging`]: log lines on stderr as text or JSON (`--log-format`).
//! - `fuzzing` (hidden): entry points for the cargo-fuzz crate in `core-node/fuzz`.

pub mod auth;
pub mod cache;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod http;
pub mod ingest;
pub mod logging;
pub mod storage;
pub mod tls;

/// Entry points for `core-node/fuzz` (a cargo-fuzz crate outside the workspace, see
/// docs/codec.md "Fuzzing"): it links the library like any other crate, and the WAL record
/// codec is crate-private, so the property it checks lives here. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::storage::record::Record;

    /// Decodes `bytes` as a WAL record; a record that decodes must re-encode to a record that
    /// decodes to the same batch. Compared through the encoded bytes (the decoded types have
    /// no `PartialEq`): decoding canonicalises (label order, varint widths), so the first
    /// re-encoding is the canonical form and must survive a second decode unchanged.
    ///
    /// Panics when the property fails; returns whether `bytes` decoded.
    pub fn wal_record_round_trip(bytes: &[u8]) -> bool {
        let Ok(record) = Record::decode(bytes) else {
            return false;
        };
        let count = sample_count(&record);
        let encoded = record.encode();
        let again = match Record::decode(&encoded) {
            Ok(r) => r,
            Err(e) => panic!("a decoded WAL record re-encodes to one that does not decode: {e}"),
        };
        assert_eq!(sample_count(&again), count, "sample count changed");
        assert!(
            again.encode() == encoded,
            "a decoded WAL record decodes differently after re-encoding"
        );
        true
    }

    fn sample_count(record: &Record) -> usize {
        match record {
            Record::Write(batch) => batch.sample_count(),
            Record::DropPartition { .. }
            | Record::DropShards { .. }
            | Record::ForgetSeries { .. } => 0,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::storage::SampleBatch;
        use crate::storage::record::Batch;
        use proptest::prelude::*;
        use protocols::wire::{AgentId, SeriesChunk, WIRE_VERSION, WriteBatch};
        use protocols::{Labels, Sample, Tenant};

        #[test]
        fn records_of_every_kind_round_trip() {
            let labels = Labels::from_metric("temp", [("site", "s1")]).expect("valid");
            let samples = SampleBatch {
                tenant: Tenant::default(),
                series: vec![(
                    labels.clone(),
                    vec![Sample::new(1, 2.0), Sample::new(2, -0.0)],
                )],
            };
            let chunks = WriteBatch {
                agent_id: AgentId("edge-1".into()),
                epoch: 1,
                sequence: 2,
                tenant: Tenant::default(),
                series: vec![SeriesChunk::encode(labels, vec![Sample::new(1, 2.0)]).expect("ok")],
            };
            for batch in [Batch::Samples(samples), Batch::Chunks(chunks)] {
                assert!(wal_record_round_trip(&batch.encode()));
            }
            let tenant = Tenant::default();
            let drop = Record::DropPartition {
                tenant: tenant.clone(),
                index: 7,
            };
            let shards = Record::DropShards {
                tenant: tenant.clone(),
                index: -3,
                first_shard: 64,
                last_shard: 127,
            };
            let forget = Record::ForgetSeries {
                tenant,
                ids: vec![protocols::SeriesId(3)],
            };
            for record in [drop, shards, forget] {
                assert!(wal_record_round_trip(&record.encode()));
            }
            assert!(!wal_record_round_trip(&[]));
            assert!(!wal_record_round_trip(b"not a record"));
        }

        proptest! {
            #[test]
            fn arbitrary_records_never_panic(
                // No header, an agent's frame (kind 1), a sample batch (0x80), a drop (0x81), a
                // series removal (0x82), a shard range's drop (0x83).
                head in prop::sample::select(vec![
                    vec![],
                    vec![WIRE_VERSION, 1],
                    vec![WIRE_VERSION, 0x80],
                    vec![WIRE_VERSION, 0x81],
                    vec![WIRE_VERSION, 0x82],
                    vec![WIRE_VERSION, 0x83],
                ]),
                bytes in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                let mut record = head;
                record.extend_from_slice(&bytes);
                wal_record_round_trip(&record);
            }
        }
    }
}

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::sync::Arc;

/// Runs a core node until `shutdown` resolves.
pub async fn run(
    config: config::CoreConfig,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let quic_seen = tls::QuicStamp::of(&config.tls);
    let transport = Arc::new(config.quic_limits.transport_config());
    let mut server_config = tls::server_config(&config.tls)
        .context("loading TLS files (create them with `core-node certs`)")?;
    server_config.transport_config(Arc::clone(&transport));
    let data_dir = config.data_dir.clone();
    let durability = config.durability;
    let limits = config.limits.clone();
    let retention = config.retention.clone();
    let master_key_file = config.master_key_file.clone();
    let min_free_disk_bytes = config.min_free_disk_bytes;
    let last_value_cache_bytes = config.last_value_cache_bytes;
    let range_cache = config.range_cache.clone();
    let clustered = config.cluster.is_some();
    let (storage, encrypted) = tokio::task::spawn_blocking(move || {
        let encryption = storage::load_encryption(&data_dir, master_key_file.as_deref())?;
        let encrypted = encryption.is_some();
        storage::Storage::open(
            &data_dir,
            storage::StorageOptions {
                durability,
                limits,
                retention,
                encryption,
                min_free_disk_bytes,
                last_value_cache_bytes,
                range_cache,
                // A cluster's groups log their retention decisions (cluster::retention).
                local_retention: !clustered,
                ..Default::default()
            },
        )
        .map(|s| (s, encrypted))
    })
    .await
    .context("storage open task failed")?
    .with_context(|| format!("opening storage under {}", config.data_dir.display()))?;

    let dev_tenant = config.insecure_dev_mode.then(|| config.tenant.clone());
    let auth_dir = config.data_dir.clone();
    let auth =
        tokio::task::spawn_blocking(move || auth::Authenticator::open(&auth_dir, dev_tenant))
            .await
            .context("token store task failed")?
            .context("loading the API token store")?;
    let auth = Arc::new(auth);
    if config.insecure_dev_mode {
        tracing::warn!(
            tenant = config.tenant.as_str(),
            "INSECURE DEVELOPMENT MODE: HTTP requests without a token are served as tenant {:?} \
             with every role, and agents whose certificate names no tenant may write any \
             tenant. Never run a reachable node like this.",
            config.tenant.as_str()
        );
    } else if auth.token_count() == 0 {
        tracing::warn!(
            "no API tokens yet: every HTTP request but /health will be refused (401); create one \
             with `core-node tokens create --data-dir {} --tenant default --role admin`",
            config.data_dir.display()
        );
    }

    let endpoint_config = tls::endpoint_config(&config.data_dir)?;
    let socket = std::net::UdpSocket::bind(config.quic_listen)
        .with_context(|| format!("binding QUIC listener on udp {}", config.quic_listen))?;
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("starting the QUIC endpoint")?;
    let http_tls = match &config.http_tls {
        Some(files) => Some(tls::HttpTls::new(files).context("loading the HTTP TLS certificate")?),
        None => None,
    };
    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener on tcp {}", config.http_listen))?;
    let http_addr = http_listener.local_addr()?;
    let quic_addr = endpoint.local_addr()?;
    let quic_cert = Arc::new(
        tls::QuicCert::new(config.tls.clone(), endpoint.clone(), quic_seen)
            .with_transport(transport),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let cluster = match &config.cluster {
        Some(c) => Some(
            cluster::node::ClusterNode::start(
                cluster::node::ClusterOptions {
                    node_id: c.node_id,
                    listen: c.listen,
                    advertise: cluster::types::NodeAddr {
                        cluster: c.advertise.clone(),
                        http: http_addr.to_string(),
                    },
                    ca: config.tls.ca.clone(),
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                    data_dir: config.data_dir.clone(),
                    heartbeat: c.heartbeat,
                    election_timeout: c.election_timeout,
                },
                storage.clone(),
                Arc::clone(&auth),
            )
            .await
            .context("starting the cluster side of the node")?,
        ),
        None => None,
    };
    let app = http::router(http::HttpState {
        source: match &cluster {
            Some(node) => Arc::new(cluster::reads::ClusterSource::new(
                Arc::clone(node),
                tokio::runtime::Handle::current(),
            )),
            None => Arc::new(storage.clone()),
        },
        metrics,
        auth: Arc::clone(&auth),
        ingest: Some(storage.clone()),
        cluster: cluster.clone(),
        // A node's range cache is invalidated by what its own storage applies: in a cluster,
        // writes to groups held elsewhere would not reach it (docs/cluster.md).
        range_cache: cluster.is_none().then(|| storage.range_cache()),
        ingest_rate_limit: config.ingest_rate_limit,
        settings: Arc::new(http::Settings {
            limits: config.limits.clone(),
            retention: config.retention.clone(),
            node: node_settings(&config, encrypted, http_addr, quic_addr),
        }),
    });
    let http_task = tokio::spawn(http::serve::serve(
        http_listener,
        app,
        http_tls.as_ref().map(|t| t.acceptor.clone()),
        stopped(),
    ));
    let reload_task = http_tls.map(|t| tokio::spawn(tls::watch_reloads(t.cert, stopped())));
    let quic_reload_task = tokio::spawn(tls::watch_reloads(quic_cert, stopped()));
    let watch_task = tokio::spawn(Arc::clone(&auth).watch(stopped()));
    let mut storage_health = storage.watch_health();
    let ingest_task = tokio::spawn(ingest::serve(
        endpoint,
        ingest::Sink::new(storage, cluster.clone()),
        ingest::TenantPolicy {
            unbound_may_write_any: config.insecure_dev_mode,
        },
        config.quic_limits.clone(),
        stopped(),
    ));
    tracing::info!(
        quic = %quic_addr,
        http = %http_addr,
        https = config.http_tls.is_some(),
        data_dir = %config.data_dir.display(),
        durability = ?config.durability,
        "core node ready"
    );

    // The supervisor: a failed storage writer cannot take writes again in this process, so
    // the node reports it (health, metric, log) for a grace period, then exits non-zero for
    // its supervisor (systemd, Kubernetes) to restart it; the restart replays the WAL.
    let storage_failed = async {
        let reason = storage_health
            .wait_for(|h| h.is_failed())
            .await
            .map(|h| h.reason().unwrap_or_default().to_owned());
        match reason {
            Ok(reason) => reason,
            // The sender lives as long as storage does: not reached while we serve.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::pin!(shutdown);
    let failure = tokio::select! {
        () = &mut shutdown => None,
        reason = storage_failed => {
            let grace = config.storage_failure_exit_after;
            tracing::error!(%reason, grace_secs = grace.as_secs(), "storage failed: the node exits after the grace period so that its supervisor restarts it (the WAL replay on start is safe)");
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = &mut shutdown => {}
            }
            Some(reason)
        }
    };
    tracing::info!("core node shutting down");
    let _ = stop_tx.send(true);
    if let Some(cluster) = &cluster {
        cluster.shutdown().await;
    }
    let _ = ingest_task.await;
    let _ = watch_task.await;
    let _ = quic_reload_task.await;
    if let Some(task) = reload_task {
        let _ = task.await;
    }
    match http_task.await {
        Ok(r) => r.context("HTTP server failed")?,
        Err(e) => return Err(e).context("HTTP server task failed"),
    }
    match failure {
        Some(reason) => Err(anyhow::anyhow!(
            "storage failed: {reason}; restart the node (it replays its write-ahead log)"
        )),
        None => Ok(()),
    }
}

/// The tenant-neutral, secret-free part of the configuration `GET /api/v1/admin/config`
/// shows (no file paths: they say where the keys are).
fn node_settings(
    config: &config::CoreConfig,
    encrypted: bool,
    http_addr: std::net::SocketAddr,
    quic_addr: std::net::SocketAddr,
) -> serde_json::Map<String, serde_json::Value> {
    let durability = match config.durability {
        storage::Durability::Fsync => "fsync",
        storage::Durability::Buffered => "buffered",
    };
    let tls_min = config.http_tls.as_ref().map(|t| match t.min_version {
        tls::TlsMinVersion::Tls12 => "1.2",
        tls::TlsMinVersion::Tls13 => "1.3",
    });
    let serde_json::Value::Object(map) = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "http_listen": http_addr.to_string(),
        "quic_listen": quic_addr.to_string(),
        "https": config.http_tls.is_some(),
        "http_tls_min_version": tls_min,
        "quic_tls": "1.3, client certificates required",
        "durability": durability,
        "encryption_at_rest": encrypted,
        "insecure_dev_mode": config.insecure_dev_mode,
        "max_concurrent_reads": http::MAX_CONCURRENT_READS,
        "max_concurrent_writes": http::ingest::MAX_CONCURRENT_WRITES,
        "max_write_body_bytes": http::ingest::MAX_WRITE_BODY_BYTES,
        "min_free_disk_bytes": config.min_free_disk_bytes,
        "last_value_cache_bytes": config.last_value_cache_bytes,
        "range_cache_bytes": config.range_cache.max_bytes,
        "range_cache_settle_secs": config.range_cache.settle.as_secs(),
        "storage_failure_exit_secs": config.storage_failure_exit_after.as_secs(),
        "quic_max_connections": config.quic_limits.max_connections,
        "quic_max_streams_per_connection": config.quic_limits.max_streams_per_connection,
        "quic_stream_receive_window": config.quic_limits.stream_receive_window,
        "quic_receive_window": config.quic_limits.receive_window,
        "quic_inflight_bytes": config.quic_limits.inflight_bytes,
    }) else {
        return serde_json::Map::new();
    };
    map
}

/// Installs the ring crypto provider as the process default (idempotent). Call first thing in
/// every binary and test that uses TLS.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

//! The Updraft edge agent: runs next to the devices, takes their MQTT publishes, keeps the
//! samples safe on local disk and ships them to a core node over QUIC with mutual TLS.
//!
//! ```text
//! devices --MQTT--> [listener] --queue--> [ingest thread] --append+fsync--> [buffer]
//! broker <--bridge-- [bridge]  --queue-->   mapping, acks after fsync       |
//!        core node <--QUIC/mTLS-- [uplink task] <--read records, ack-------+
//! ```
//!
//! What it is not: a general MQTT broker (its listeners take publishes and forward nothing to
//! subscribers), a storage engine (samples only wait here until a core acknowledges them) or a
//! query endpoint (`/metrics` and `/health` describe the agent itself).
//!
//! # Modules
//!
//! - [`config`]: command line, environment and TOML file, layered into a validated
//!   [`config::AgentConfig`].
//! - `broker`: the embedded MQTT 3.1.1/5 listeners (rumqttc's packet codecs), with optional
//!   users file, topic ACLs and TLS (optionally with device client certificates); a QoS 1
//!   PUBACK goes out only after the fsync.
//! - [`users`]: the users file (Argon2id password hashes, `edge-agent passwd`) and the
//!   cached password check.
//! - `acl`: topic ACLs (mosquitto `acl_file` format, `%u`/`%c`, `+`/`#`).
//! - `reload`: re-reading the users and ACL files while the agent runs (on change, polled
//!   every 2 s, and on `SIGHUP`); a file that does not parse leaves the previous one in use.
//! - `bridge`: bridge mode, a persistent rumqttc session on another broker, acknowledged
//!   manually after the fsync.
//! - `mapping`: mapping rules (topic patterns, first match wins) and payload decoders (number,
//!   JSON, InfluxDB line protocol, Sparkplug B with its alias state), publish to samples.
//! - `ingest`: the dedicated thread that drains the message queue, maps, and appends to the
//!   buffer with one fsync per burst, then releases the burst's acknowledgements.
//! - `buffer`: the durable segment log, its ack cursor and crash recovery. Its module docs
//!   hold the on-disk format.
//! - `uplink`: batching, delivery to the cores with retries and fail-over, acknowledgement;
//!   the network sits behind a `Transport` trait (QUIC in production, scripted in tests).
//! - `http`: `/metrics` and `/health` (503 with the reason once the buffer failed).
//! - [`logging`]: log lines on stderr as text or JSON (`--log-format`).
//! - `telemetry`: metric names, part of the agent's interface.
//!
//! # Guarantees
//!
//! A sample is fsynced to the buffer before it is sent, and leaves the buffer only once a core
//! has acknowledged it (or refused it for good, which is counted). Resends after a crash carry
//! the same `(epoch, sequence)` so the core stores them once. A QoS 1/2 MQTT message is
//! acknowledged (PUBACK/PUBREC to a device, manual PUBACK to a bridged broker) only after its
//! samples are fsynced, or after the mapper refused it; a full queue slows the publishers down
//! through TCP instead of dropping messages (see `docs/edge-agent.md`).

pub mod config;

mod acl;
mod bridge;
mod broker;
mod buffer;
mod http;
mod ingest;
pub mod logging;
mod mapping;
mod reload;
mod telemetry;
mod uplink;
pub mod users;

use anyhow::{Context, anyhow};
use buffer::LogOptions;
use config::AgentConfig;
use ingest::{IngestError, IngestSettings, Progress};
use mapping::Mapper;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use uplink::{Uplink, UplinkError, UplinkSettings};

/// How long each part may take to stop once shutdown was requested.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the agent until `shutdown` resolves, then stops taking messages, fsyncs what was
/// taken, gives an in-flight batch a moment to be acknowledged and closes the QUIC endpoint.
///
/// Fails at start-up on invalid configuration, unreadable certificates, a listen address that
/// cannot be bound or a buffer that cannot be opened, and later if the buffer fails: a failed
/// append or fsync is not retried, and a panic of the ingest thread is not survived. Then
/// `/health` answers 503 with the reason, `updraft_edge_buffer_healthy` turns 0, and after
/// `config.buffer_failure_exit_delay` (for monitoring to see it) `run` returns the error, for
/// a supervisor to restart the agent and recovery to decide what is on disk.
///
/// The MQTT listeners close with the rest; `run` may be called again in the same process.
pub async fn run(
    config: AgentConfig,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Agent::start(config, metrics)
        .await?
        .run_until(shutdown)
        .await
}

/// A started agent: its bound addresses and the handles needed to stop it.
struct Agent {
    // The bound addresses (port 0 resolved) are read by the in-process tests.
    #[cfg_attr(not(test), allow(dead_code))]
    http_addr: SocketAddr,
    #[cfg_attr(not(test), allow(dead_code))]
    mqtt_addr: SocketAddr,
    #[cfg_attr(not(test), allow(dead_code))]
    mqtt5_addr: SocketAddr,
    health: Arc<http::Health>,
    /// How long a failed buffer is reported before `run_until` returns.
    failure_exit_delay: Duration,
    /// `true` (or dropping it) stops every part.
    stop: watch::Sender<bool>,
    ingest: oneshot::Receiver<Result<(), IngestError>>,
    uplink: JoinHandle<Result<(), UplinkError>>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Agent {
    async fn start(config: AgentConfig, metrics: PrometheusHandle) -> anyhow::Result<Self> {
        Self::start_with(config, metrics, ingest::panic_after_appends_from_env()).await
    }

    /// [`Agent::start`] with the ingest thread's test hook given explicitly.
    async fn start_with(
        config: AgentConfig,
        metrics: PrometheusHandle,
        panic_after_appends: Option<u64>,
    ) -> anyhow::Result<Self> {
        config.validate().context("invalid configuration")?;
        let tls = uplink::quic::client_tls(&config.ca, &config.cert, &config.key)
            .context("cannot set up TLS for the uplink")?;
        let transport = uplink::quic::QuicTransport::new(tls, &config.core)?;
        telemetry::register(&config.core);

        let http_listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("cannot bind --http-listen {}", config.http_listen))?;
        let http_addr = http_listener.local_addr()?;
        let mqtt = broker::Listeners::bind(&config).await?;
        let (mqtt_addr, mqtt5_addr) = (mqtt.mqtt, mqtt.mqtt5);

        let dir = config.data_dir.join("buffer");
        let options = LogOptions {
            segment_max_bytes: config.buffer_segment_bytes,
        };
        let open_dir = dir.clone();
        let key_file = config.master_key_file.clone();
        let (writer, reader, recovery) = tokio::task::spawn_blocking(move || {
            buffer::open_with_key(&open_dir, options, key_file.as_deref())
        })
        .await?
        .with_context(|| format!("cannot open the buffer in {}", dir.display()))?;
        info!(
            dir = %dir.display(),
            epoch = %recovery.epoch,
            fresh = recovery.fresh,
            cursor_lost = recovery.cursor_lost,
            acked = %recovery.acked,
            end = %recovery.end,
            segments = recovery.segments,
            unacked_bytes = reader.unacked_bytes(),
            "buffer opened"
        );
        if recovery.corrupt_bytes > 0 {
            warn!(
                bytes = recovery.corrupt_bytes,
                "buffer recovery discarded torn or corrupt data"
            );
        }
        counter!(telemetry::BUFFER_CORRUPT_BYTES).increment(recovery.corrupt_bytes);
        gauge!(telemetry::BUFFER_BYTES).set(reader.unacked_bytes() as f64);
        if let Some(n) = panic_after_appends {
            warn!(
                appends = n,
                "test hook {} set: the ingest thread will panic",
                ingest::PANIC_AFTER_APPENDS_ENV
            );
        }

        // From here on, an early return drops `stop_tx`, which stops what was started.
        let (stop_tx, stop_rx) = watch::channel(false);
        let health = Arc::new(http::Health::default());
        let http = tokio::spawn(http::serve(
            http_listener,
            metrics,
            Arc::clone(&health),
            stopped(stop_rx.clone()),
        ));

        let (queue_tx, queue_rx) = tokio::sync::mpsc::channel(ingest::QUEUE_MESSAGES);
        let (progress_tx, progress_rx) = watch::channel(Progress {
            durable_end: recovery.end,
            samples: 0,
        });
        let ingest = ingest::spawn(
            queue_rx,
            writer,
            reader.clone(),
            IngestSettings {
                mapper: Mapper::new(config.rules.clone(), config.max_payload_bytes),
                tenant: config.tenant.clone(),
                record_max_samples: config.batch_max_samples,
                bound: buffer::overflow::Bound::new(config.buffer_max_bytes),
                fsync_interval: config.buffer_fsync_interval,
                panic_after_appends,
            },
            progress_tx,
            stop_rx.clone(),
        )
        .context("cannot start the ingest thread")?;
        let mqtt_mode = mqtt.describe();
        mqtt.serve(config.max_payload_bytes, queue_tx.clone(), &stop_rx);
        if let Some(bridge) = config.bridge.clone() {
            drop(bridge::spawn(bridge, queue_tx, stop_rx.clone())?);
        }
        gauge!(telemetry::BUFFER_HEALTHY).set(1.0);
        health.set_ready(true);

        let cores: Vec<String> = config.core.iter().map(ToString::to_string).collect();
        info!(
            agent_id = %config.agent_id,
            tenant = %config.tenant,
            mqtt = %mqtt_addr,
            mqtt5 = %mqtt5_addr,
            mqtt_mode,
            bridge = %config.bridge.as_ref().map(|b| b.broker.to_string()).unwrap_or_default(),
            http = %http_addr,
            cores = %cores.join(","),
            rules = %rule_summary(&config.rules),
            "edge agent started"
        );
        let settings = UplinkSettings {
            agent_id: config.agent_id,
            endpoints: config.core,
            batch_max_samples: config.batch_max_samples,
            batch_max_delay: config.batch_max_delay,
            backoff: uplink::Backoff::DEFAULT,
            backlog_rate: config.backlog_rate,
            failover_hold: uplink::FAILOVER_HOLD,
        };
        let uplink = Uplink::new(transport, reader, settings, progress_rx, stop_rx);
        Ok(Self {
            http_addr,
            mqtt_addr,
            mqtt5_addr,
            health,
            failure_exit_delay: config.buffer_failure_exit_delay,
            stop: stop_tx,
            ingest,
            uplink: tokio::spawn(uplink.run()),
            http,
        })
    }

    /// Runs until `shutdown` resolves or a part fails, then stops every part.
    async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            health,
            failure_exit_delay,
            stop,
            mut ingest,
            mut uplink,
            mut http,
            ..
        } = self;
        let mut shutdown = std::pin::pin!(shutdown);
        // Which part ended first; the others are stopped and collected below.
        let (mut ingest_end, mut uplink_end, mut http_end) = (None, None, None);
        tokio::select! {
            () = &mut shutdown => info!("shutting down"),
            r = &mut ingest => ingest_end = Some(r),
            r = &mut uplink => uplink_end = Some(r),
            r = &mut http => http_end = Some(r),
        }
        let failed_early = ingest_end.is_some() || uplink_end.is_some() || http_end.is_some();
        if let Some(reason) = ingest_end.as_ref().and_then(buffer_failure) {
            report_buffer_failure(&health, &reason, failure_exit_delay);
            // The HTTP listener keeps answering meanwhile, so monitoring sees the 503 and the
            // metric (the uplink ends with the ingest thread; the restart ships the rest).
            tokio::select! {
                () = &mut shutdown => info!("shutting down"),
                () = tokio::time::sleep(failure_exit_delay) => {}
            }
        }
        health.set_ready(false);
        stop.send_replace(true);

        // Ingest first: it fsyncs its last burst, so nothing taken from the broker is lost.
        let ingest_result = match ingest_end {
            Some(r) => Some(r),
            None => tokio::time::timeout(STOP_TIMEOUT, &mut ingest).await.ok(),
        };
        let uplink_result = match uplink_end {
            Some(r) => Some(r),
            None => tokio::time::timeout(STOP_TIMEOUT, &mut uplink).await.ok(),
        };
        let http_result = match http_end {
            Some(r) => Some(r),
            None => tokio::time::timeout(STOP_TIMEOUT, &mut http).await.ok(),
        };

        let mut errors = Vec::new();
        match ingest_result {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => errors.push(anyhow!(e).context("ingest failed")),
            Some(Err(_)) => errors.push(anyhow!("ingest thread vanished without a result")),
            None => errors.push(anyhow!("ingest thread did not stop in time")),
        }
        match uplink_result {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => errors.push(anyhow!(e).context("uplink failed")),
            Some(Err(e)) => errors.push(anyhow!(e).context("uplink task failed")),
            None => errors.push(anyhow!("uplink did not stop in time")),
        }
        match http_result {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => errors.push(anyhow!(e).context("http server failed")),
            Some(Err(e)) => errors.push(anyhow!(e).context("http task failed")),
            None => errors.push(anyhow!("http server did not stop in time")),
        }
        if errors.is_empty() && failed_early {
            errors.push(anyhow!("a part of the agent stopped unexpectedly"));
        }
        match errors.into_iter().next() {
            None => {
                info!("edge agent stopped");
                Ok(())
            }
            Some(first) => Err(first),
        }
    }
}

/// Why the ingest thread's end means the buffer failed (`None`: it ended cleanly).
fn buffer_failure(
    end: &Result<Result<(), IngestError>, oneshot::error::RecvError>,
) -> Option<String> {
    match end {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("the ingest thread vanished without a result".to_owned()),
    }
}

/// Makes a failed buffer visible: `/health`, the metric and one log line that says what to do.
fn report_buffer_failure(health: &http::Health, reason: &str, exit_delay: Duration) {
    health.fail(format!(
        "buffer failed: {reason}; the agent exits within {} s to be restarted",
        exit_delay.as_secs_f64().ceil()
    ));
    gauge!(telemetry::BUFFER_HEALTHY).set(0.0);
    error!(
        reason,
        exit_in_s = exit_delay.as_secs_f64(),
        "the buffer failed: the agent takes no more messages (none unsynced was acknowledged, \
         so devices resend) and exits with an error after --buffer-failure-exit-delay-ms; a \
         supervisor (systemd Restart=on-failure) restarts it and recovery keeps every fsynced \
         sample. If it recurs, check the data directory's disk (free space, I/O errors in dmesg)"
    );
}

/// `topic -> decoder` of every rule, in order, for the start-up line.
fn rule_summary(rules: &[config::Rule]) -> String {
    let parts: Vec<String> = rules
        .iter()
        .map(|r| format!("{} -> {}", r.topic, r.decoder))
        .collect();
    parts.join("; ")
}

/// Resolves once `stop` turns true or its sender is dropped.
async fn stopped(mut stop: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests;

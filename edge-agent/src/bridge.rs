//! Bridge mode: the agent subscribes to an existing MQTT broker and ingests what it receives.
//!
//! The client is rumqttc (MQTT 3.1.1) with a persistent session (`clean_session = false`, a
//! stable client id), QoS 1 subscriptions and manual acknowledgements: a message is
//! acknowledged (PUBACK to the broker) only after the ingest thread has fsynced its samples to
//! the buffer, or refused it. Until then the broker keeps it in the session and redelivers it
//! after a reconnect or an agent restart, flagged DUP. Redelivery makes delivery at least
//! once: payloads that carry their own timestamp are stored once downstream (the core keeps one
//! sample per series and timestamp); a payload without one gets the receive time and is
//! stored again. How long the broker keeps an offline session is its own setting
//! (mosquitto: `persistent_client_expiration`, `max_queued_messages`).

use crate::config::BridgeConfig;
use crate::ingest::{AckTicket, Incoming};
use crate::telemetry;
use bytes::Bytes;
use metrics::counter;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// Requests (subscribes, acks) queued towards rumqttc's event loop.
const CLIENT_CAPACITY: usize = 1024;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Wait before reconnecting after a connection error.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Largest packet accepted from the broker.
const MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BridgeError {
    #[error("cannot read --bridge-ca {path}: {source}")]
    Ca {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("invalid --bridge-ca: {0}")]
    Tls(#[from] rustls::Error),
}

fn client_tls(ca: &Path) -> Result<rustls::ClientConfig, BridgeError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem_err = |source| BridgeError::Ca {
        path: ca.to_owned(),
        source,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(pem_err)? {
        roots.add(cert.map_err(pem_err)?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Starts the bridge task; it runs until `stop` turns true.
pub(crate) fn spawn(
    config: BridgeConfig,
    queue: mpsc::Sender<Incoming>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, BridgeError> {
    let mut options = MqttOptions::new(
        config.client_id.clone(),
        config.broker.host.clone(),
        config.broker.port,
    );
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(KEEP_ALIVE)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some(user) = &config.username {
        options.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    if let Some(ca) = &config.ca {
        let tls = client_tls(ca)?;
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
        ));
    }
    let (client, eventloop) = AsyncClient::new(options, CLIENT_CAPACITY);
    Ok(tokio::spawn(run(config, client, eventloop, queue, stop)))
}

async fn run(
    config: BridgeConfig,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    queue: mpsc::Sender<Incoming>,
    mut stop: watch::Receiver<bool>,
) {
    // Acknowledgements run on their own task: `client.ack` waits for room in the request
    // queue, which only the event loop below drains.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<rumqttc::Publish>();
    let acker = client.clone();
    tokio::spawn(async move {
        while let Some(publish) = ack_rx.recv().await {
            if acker.ack(&publish).await.is_err() {
                return;
            }
        }
    });
    let filters: Vec<SubscribeFilter> = config
        .topics
        .iter()
        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
        .collect();
    let redelivered = counter!(telemetry::BRIDGE_REDELIVERED);
    let errors = counter!(telemetry::BRIDGE_ERRORS);
    let mut connected = false;
    loop {
        let event = tokio::select! {
            () = stopped(&mut stop) => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                info!(
                    broker = %config.broker,
                    client_id = %config.client_id,
                    session_present = ack.session_present,
                    "bridge connected"
                );
                // Also with a session present: harmless, and it covers a broker that lost it.
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    warn!(error = %e, "bridge cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .count();
                info!(topics = ?config.topics, refused, "bridge subscribed");
                if refused > 0 {
                    warn!(refused, topics = ?config.topics, "the bridged broker refused subscriptions");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.dup {
                    redelivered.increment(1);
                }
                let ack = match publish.qos {
                    QoS::AtMostOnce => None,
                    _ => {
                        let tx = ack_tx.clone();
                        let p = publish.clone();
                        Some(AckTicket::new(move || {
                            // Gone only when the agent is stopping: the broker redelivers.
                            let _ = tx.send(p);
                        }))
                    }
                };
                let incoming = Incoming {
                    topic: Bytes::from(publish.topic),
                    payload: publish.payload,
                    ack,
                };
                // Waiting here stops reading from the broker: back-pressure, not loss.
                if queue.send(incoming).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                errors.increment(1);
                if connected {
                    warn!(broker = %config.broker, error = %e, "bridge connection lost; reconnecting");
                } else {
                    warn!(broker = %config.broker, error = %e, "bridge cannot connect; retrying");
                }
                connected = false;
                tokio::select! {
                    () = stopped(&mut stop) => break,
                    () = tokio::time::sleep(RECONNECT_DELAY) => {}
                }
            }
        }
    }
    // Keep the session on the broker: what we have not acknowledged is redelivered next time.
    let _ = client.try_disconnect();
}

/// Resolves once `stop` turns true (or its sender is gone). The watch guard is dropped here, so
/// callers stay `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

//! One MQTT connection of the fleet: a rumqttc client (MQTT 3.1.1 or 5) whose event loop runs in
//! its own task, and the bookkeeping that turns its events into the fleet's counters.
//!
//! rumqttc tells which packet id a publish got only when it writes it
//! (`Outgoing::Publish(pkid)`), in the order the requests were queued, and the ack names only the
//! packet id. So each connection keeps a FIFO of the sample counts of queued publishes (pushed
//! before the request enters rumqttc's channel, popped when it is written) and a map of packet
//! ids in flight to (write time, samples). QoS 0 counts as done when written; QoS 1 at its
//! PUBACK, QoS 2 at its PUBCOMP; an MQTT 5 PUBACK or PUBREC with an error reason is a failure.
//!
//! After a connection error rumqttc reconnects on the next poll. The edge agent (and the fleet,
//! which asks for a clean session) keeps no session, and rumqttc drops what was queued or in
//! flight when the new session is not a resumed one, so all of that is counted as failed at the
//! error. A request queued in the instant between the error and its handling may still be sent
//! later; it is then counted as sent without samples. The counts are exact when no connection
//! fails.

use super::stats::FleetCounters;
use anyhow::Context;
use rumqttc::{Outgoing, Transport};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    V311,
    V5,
}

impl MqttVersion {
    pub fn name(self) -> &'static str {
        match self {
            MqttVersion::V311 => "MQTT 3.1.1",
            MqttVersion::V5 => "MQTT 5",
        }
    }
}

/// Where and how every connection of the fleet connects.
#[derive(Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub version: MqttVersion,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
    /// Most unacknowledged QoS 1/2 publishes per connection (MQTT 3.1.1; an MQTT 5 broker's
    /// receive maximum bounds it there).
    pub inflight: u16,
    /// Client ids are `<prefix>-<connection number>`.
    pub client_id_prefix: String,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("version", &self.version)
            .field("tls", &self.tls.is_some())
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .finish_non_exhaustive()
    }
}

/// A TLS client configuration (ring provider) trusting only `ca`, with an optional client
/// certificate for brokers that ask for one.
pub fn tls_config(
    ca: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading CA certificates from {}", ca.display()))?
    {
        roots
            .add(c.with_context(|| format!("a certificate in {}", ca.display()))?)
            .with_context(|| format!("a CA certificate in {}", ca.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("no certificate in {}", ca.display());
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("a certificate in {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading the private key {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => anyhow::bail!("--cert and --key go together"),
    })
}

/// What one connection has queued, written and not yet seen acknowledged.
#[derive(Default)]
struct Tracker {
    /// Samples of each queued publish not yet written, in queue order.
    queued: VecDeque<u32>,
    /// Written QoS 1/2 publishes: packet id → (write time, samples).
    inflight: HashMap<u16, (Instant, u32)>,
}

/// A connection's client and its bookkeeping.
pub struct Connection {
    client: Client,
    qos: u8,
    tracker: Arc<Mutex<Tracker>>,
    counters: Arc<FleetCounters>,
    events: tokio::task::JoinHandle<()>,
}

enum Client {
    V3(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    // A panic while holding the lock leaves plain counters behind; keep counting.
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Connection {
    /// Creates the client; it connects on its event loop's first poll, in the background.
    pub fn start(
        options: &ConnectOptions,
        number: usize,
        qos: u8,
        counters: Arc<FleetCounters>,
    ) -> Self {
        let id = format!("{}-{number}", options.client_id_prefix);
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let transport = match &options.tls {
            Some(cfg) => Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(cfg.clone())),
            None => Transport::tcp(),
        };
        let (client, events) = match options.version {
            MqttVersion::V311 => {
                let mut o = rumqttc::MqttOptions::new(id, options.host.clone(), options.port);
                o.set_keep_alive(options.keep_alive)
                    .set_clean_session(true)
                    .set_inflight(options.inflight.max(1))
                    .set_max_packet_size(1 << 20, 1 << 20)
                    .set_transport(transport);
                if let Some((u, p)) = &options.credentials {
                    o.set_credentials(u.clone(), p.clone());
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(o, 256);
                let events =
                    tokio::spawn(run_v3(eventloop, qos, tracker.clone(), counters.clone()));
                (Client::V3(client), events)
            }
            MqttVersion::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(id, options.host.clone(), options.port);
                o.set_keep_alive(options.keep_alive)
                    .set_clean_start(true)
                    .set_max_packet_size(Some(1 << 20))
                    .set_transport(transport);
                if let Some((u, p)) = &options.credentials {
                    o.set_credentials(u.clone(), p.clone());
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, 256);
                let events =
                    tokio::spawn(run_v5(eventloop, qos, tracker.clone(), counters.clone()));
                (Client::V5(client), events)
            }
        };
        Self {
            client,
            qos,
            tracker,
            counters,
            events,
        }
    }

    /// Queues one publish; waits while rumqttc's request channel is full. False if the client
    /// is gone (counted as failed).
    pub async fn publish(&self, topic: String, payload: Vec<u8>, samples: u32) -> bool {
        let q = self.counters.qos(self.qos);
        q.requested.fetch_add(1, Ordering::Relaxed);
        lock(&self.tracker).queued.push_back(samples);
        let result = match &self.client {
            Client::V3(c) => c
                .publish(topic, v3_qos(self.qos), false, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .publish(topic, v5_qos(self.qos), false, payload)
                .await
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                lock(&self.tracker).queued.pop_back();
                q.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "publish refused by the client");
                false
            }
        }
    }

    /// Messages queued or in flight.
    pub fn outstanding(&self) -> usize {
        let t = lock(&self.tracker);
        t.queued.len() + t.inflight.len()
    }

    /// Counts what is still outstanding as failed, disconnects and stops the event loop.
    pub async fn close(self) {
        let left = {
            let mut t = lock(&self.tracker);
            let n = t.queued.len() + t.inflight.len();
            t.queued.clear();
            t.inflight.clear();
            n
        };
        self.counters
            .qos(self.qos)
            .failed
            .fetch_add(left as u64, Ordering::Relaxed);
        let _ = match &self.client {
            Client::V3(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
        let mut events = self.events;
        if tokio::time::timeout(Duration::from_secs(2), &mut events)
            .await
            .is_err()
        {
            events.abort();
        }
    }
}

fn v3_qos(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn v5_qos(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// What the event loops report, version-independent.
enum Seen {
    Written(u16),
    Done(u16),
    Refused(u16),
    ConnAck,
    Disconnect,
    Other,
}

fn on_seen(seen: Seen, qos: u8, tracker: &Mutex<Tracker>, counters: &FleetCounters) {
    let q = counters.qos(qos);
    let mut t = lock(tracker);
    match seen {
        Seen::Written(pkid) => {
            let samples = t.queued.pop_front().unwrap_or(0);
            q.sent.fetch_add(1, Ordering::Relaxed);
            q.sent_samples
                .fetch_add(u64::from(samples), Ordering::Relaxed);
            if qos == 0 {
                q.acked.fetch_add(1, Ordering::Relaxed);
                q.acked_samples
                    .fetch_add(u64::from(samples), Ordering::Relaxed);
            } else {
                t.inflight.insert(pkid, (Instant::now(), samples));
            }
        }
        Seen::Done(pkid) => {
            if let Some((at, samples)) = t.inflight.remove(&pkid) {
                q.acked.fetch_add(1, Ordering::Relaxed);
                q.acked_samples
                    .fetch_add(u64::from(samples), Ordering::Relaxed);
                q.record_latency(at.elapsed());
            }
        }
        Seen::Refused(pkid) => {
            if t.inflight.remove(&pkid).is_some() {
                q.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Seen::ConnAck => {
            counters.connected.fetch_add(1, Ordering::Relaxed);
        }
        Seen::Disconnect | Seen::Other => {}
    }
}

/// After a connection error: nothing queued or in flight survives (see the module doc).
fn on_error(
    error: &dyn std::fmt::Display,
    qos: u8,
    tracker: &Mutex<Tracker>,
    counters: &FleetCounters,
    was_connected: bool,
) {
    let lost = {
        let mut t = lock(tracker);
        let n = t.queued.len() + t.inflight.len();
        t.queued.clear();
        t.inflight.clear();
        n
    };
    counters
        .qos(qos)
        .failed
        .fetch_add(lost as u64, Ordering::Relaxed);
    counters.connection_errors.fetch_add(1, Ordering::Relaxed);
    if was_connected {
        counters.connected.fetch_sub(1, Ordering::Relaxed);
    }
    counters.set_last_error(error.to_string());
    tracing::debug!(%error, lost, "mqtt connection error; reconnecting in 1 s");
}

async fn run_v3(
    mut eventloop: rumqttc::EventLoop,
    qos: u8,
    tracker: Arc<Mutex<Tracker>>,
    counters: Arc<FleetCounters>,
) {
    use rumqttc::{Event, Packet};
    let mut connected = false;
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                let seen = match event {
                    Event::Outgoing(Outgoing::Publish(pkid)) => Seen::Written(pkid),
                    Event::Outgoing(Outgoing::Disconnect) => Seen::Disconnect,
                    Event::Incoming(Packet::PubAck(a)) if qos == 1 => Seen::Done(a.pkid),
                    Event::Incoming(Packet::PubComp(c)) if qos == 2 => Seen::Done(c.pkid),
                    Event::Incoming(Packet::ConnAck(_)) => Seen::ConnAck,
                    _ => Seen::Other,
                };
                let stop = matches!(seen, Seen::Disconnect);
                if matches!(seen, Seen::ConnAck) {
                    connected = true;
                }
                on_seen(seen, qos, &tracker, &counters);
                if stop {
                    break;
                }
            }
            Err(e) => {
                on_error(&e, qos, &tracker, &counters, connected);
                connected = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if connected {
        counters.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run_v5(
    mut eventloop: rumqttc::v5::EventLoop,
    qos: u8,
    tracker: Arc<Mutex<Tracker>>,
    counters: Arc<FleetCounters>,
) {
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubCompReason, PubRecReason};
    let mut connected = false;
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                let seen = match event {
                    Event::Outgoing(Outgoing::Publish(pkid)) => Seen::Written(pkid),
                    Event::Outgoing(Outgoing::Disconnect) => Seen::Disconnect,
                    Event::Incoming(Packet::PubAck(a)) if qos == 1 => match a.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                            Seen::Done(a.pkid)
                        }
                        _ => Seen::Refused(a.pkid),
                    },
                    Event::Incoming(Packet::PubRec(r)) if qos == 2 => match r.reason {
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers => Seen::Other,
                        _ => Seen::Refused(r.pkid),
                    },
                    Event::Incoming(Packet::PubComp(c)) if qos == 2 => match c.reason {
                        PubCompReason::Success => Seen::Done(c.pkid),
                        PubCompReason::PacketIdentifierNotFound => Seen::Refused(c.pkid),
                    },
                    Event::Incoming(Packet::ConnAck(_)) => Seen::ConnAck,
                    _ => Seen::Other,
                };
                let stop = matches!(seen, Seen::Disconnect);
                if matches!(seen, Seen::ConnAck) {
                    connected = true;
                }
                on_seen(seen, qos, &tracker, &counters);
                if stop {
                    break;
                }
            }
            Err(e) => {
                on_error(&e, qos, &tracker, &counters, connected);
                connected = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if connected {
        counters.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

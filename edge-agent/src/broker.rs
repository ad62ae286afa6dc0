//! The embedded MQTT endpoint: a small MQTT 3.1.1 and 5 server for devices that publish.
//!
//! It is not a general broker: it takes PUBLISH packets and hands them to the ingest thread,
//! and it never forwards messages to subscribers (SUBSCRIBE is answered with a failure code).
//! It exists because the broker it replaced (rumqttd 0.20) sends a QoS 1 PUBACK the moment the
//! router receives the PUBLISH, before the message even enters its in-memory log, and drops the
//! oldest part of that log when a reader falls behind. Here the acknowledgement is tied to
//! the durable write:
//!
//! - **QoS 1**: the PUBACK is sent after the ingest thread has appended the message's samples
//!   to the buffer and fsynced it (or refused the message, which is counted). A message the
//!   mapper refuses is acknowledged too: resending it would not help.
//! - **QoS 2**: the PUBREC is sent at the same point; PUBREL is answered with PUBCOMP. A
//!   PUBLISH repeating a packet id that awaits its PUBREL is not ingested again.
//! - **QoS 0**: nothing is sent; the message is as safe as the TCP connection until the fsync.
//! - **Back-pressure instead of loss**: a connection with [`MAX_INFLIGHT`] unacknowledged
//!   messages stops reading its socket, and a full ingest queue stops every connection's
//!   reader, so a fast publisher is slowed down by TCP rather than losing messages.
//!
//! Packets are decoded and encoded by rumqttc's `mqttbytes` codecs (v4 and v5). The protocol
//! level in the CONNECT packet picks the codec, so both listeners take both versions. Optional
//! per-device username/password authentication (Argon2id hashes, see `users`), topic ACLs
//! (see `acl`) and TLS (rustls with ring, optionally requiring device client certificates)
//! apply to both listeners. The users and ACL files are re-read while the agent runs (see
//! `reload`): a CONNECT is checked against the users file in service, and every PUBLISH
//! against the ACLs in service when it arrives; open connections are not closed.
//!
//! A publish the ACLs deny is dropped and counted, and acknowledged as MQTT asks: QoS 1 gets
//! its PUBACK (MQTT 5: reason code 0x87 Not authorized), QoS 2 its PUBREC (MQTT 5: 0x87, which
//! ends the flow), so a well-behaved client does not resend it forever. Those acknowledgements
//! go out at once, possibly before those of earlier messages still waiting for their fsync.

use crate::acl::{Acl, AclError};
use crate::ingest::{AckTicket, Incoming};
use crate::reload::{Reloadable, Snapshot, Watched};
use crate::telemetry;
use crate::users::{Users, UsersError};
use bytes::{Bytes, BytesMut};
use metrics::counter;
use rumqttc::mqttbytes::{self as mqtt4, v4};
use rumqttc::v5::mqttbytes::{self as mqtt5, v5};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The largest packet a client may send is this multiple of `--max-payload-bytes` (and at
/// least [`MIN_PACKET_BYTES`]), so oversized payloads reach the mapper and are counted there
/// instead of closing the publisher's connection.
const PACKET_FACTOR: usize = 4;
const MIN_PACKET_BYTES: usize = 2 * 1024 * 1024;
/// Connections beyond this are closed right after accept.
const MAX_CONNECTIONS: usize = 1024;
/// Time a new connection has to complete TLS and send its CONNECT packet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// QoS 1/2 messages of one connection awaiting their fsync; at this count the connection stops
/// reading until acknowledgements go out (MQTT 5 clients are told as Receive Maximum).
pub(crate) const MAX_INFLIGHT: usize = 1024;
/// Bytes read from a socket at once.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    #[error("cannot bind --{option} {addr}: {source}")]
    Bind {
        option: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error("cannot read MQTT TLS {what} from {path}: {source}")]
    TlsPem {
        what: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("invalid MQTT TLS certificate or key: {0}")]
    Tls(#[from] rustls::Error),
    #[error("invalid --mqtt-tls-client-ca {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// A rustls server configuration (ring provider) from a PEM certificate chain and key; with
/// `client_ca`, clients must present a certificate that chains to it.
fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<tokio_rustls::TlsAcceptor, BrokerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |what, path: &Path| {
        let path = path.to_owned();
        move |source| BrokerError::TlsPem { what, path, source }
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(pem_err("certificate", cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err("certificate", cert))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err("key", key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let bad = |reason: String| BrokerError::ClientCa {
                path: ca.to_owned(),
                reason,
            };
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
                roots
                    .add(c.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate in the file".into()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What every connection of the endpoint shares.
struct Settings {
    max_payload_bytes: usize,
    users: Option<Arc<Reloadable<Users>>>,
    acl: Option<Arc<Reloadable<Acl>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Clients must present a certificate.
    client_certs: bool,
    /// The client certificate's CN is the username; no password check.
    cert_as_username: bool,
    /// Most PUBLISH packets per second per connection (0: no limit).
    max_publish_rate: u32,
    ingest: mpsc::Sender<Incoming>,
}

impl Settings {
    fn max_packet_bytes(&self) -> usize {
        self.max_payload_bytes
            .saturating_mul(PACKET_FACTOR)
            .max(MIN_PACKET_BYTES)
    }
}

/// Both MQTT listeners, bound, with the users and TLS set-up they share.
pub(crate) struct Listeners {
    pub mqtt: SocketAddr,
    pub mqtt5: SocketAddr,
    listeners: [TcpListener; 2],
    users: Option<Arc<Reloadable<Users>>>,
    acl: Option<Arc<Reloadable<Acl>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    client_certs: bool,
    cert_as_username: bool,
    max_publish_rate: u32,
}

impl Listeners {
    /// Binds `--mqtt-listen` and `--mqtt5-listen` and reads the users file, the ACL file and
    /// the TLS files. The users and ACL files are re-read while the agent runs (`reload`).
    pub(crate) async fn bind(config: &crate::config::AgentConfig) -> Result<Self, BrokerError> {
        let (l4, mqtt) = bind("mqtt-listen", config.mqtt_listen).await?;
        let (l5, mqtt5) = bind("mqtt5-listen", config.mqtt5_listen).await?;
        let users = match config.mqtt_users_file.as_deref() {
            None => None,
            Some(path) => Some(Reloadable::new(
                "users",
                path,
                Users::load(path)?,
                |path, old: &Users| old.reload(path).map_err(|e| e.to_string()),
            )),
        };
        let acl = match config.mqtt_acl_file.as_deref() {
            None => None,
            Some(path) => Some(Reloadable::new("acl", path, Acl::load(path)?, |path, _| {
                Acl::load(path).map_err(|e| e.to_string())
            })),
        };
        let client_ca = config.mqtt_tls_client_ca.as_deref();
        let tls = match (&config.mqtt_tls_cert, &config.mqtt_tls_key) {
            (Some(cert), Some(key)) => Some(server_tls(cert, key, client_ca)?),
            _ => None,
        };
        Ok(Self {
            mqtt,
            mqtt5,
            listeners: [l4, l5],
            users,
            acl,
            client_certs: tls.is_some() && client_ca.is_some(),
            tls,
            cert_as_username: config.mqtt_tls_client_cert_as_username,
            max_publish_rate: config.mqtt_max_publish_rate,
        })
    }

    /// Whether clients must log in / speak TLS (for the start-up line).
    pub(crate) fn describe(&self) -> String {
        let transport = match (self.tls.is_some(), self.client_certs) {
            (false, _) => "plain",
            (true, false) => "tls",
            (true, true) => "tls with client certificates",
        };
        let login = match (self.cert_as_username, self.users.is_some()) {
            (true, _) => "certificate name as username",
            (false, true) => "users file",
            (false, false) => "anonymous",
        };
        let acl = if self.acl.is_some() {
            ", topic ACLs"
        } else {
            ""
        };
        format!("{transport}, {login}{acl}")
    }

    /// Serves both listeners until `stop` turns true, re-reading the users and ACL files when
    /// they change or on `SIGHUP`.
    pub(crate) fn serve(
        self,
        max_payload_bytes: usize,
        ingest: mpsc::Sender<Incoming>,
        stop: &watch::Receiver<bool>,
    ) {
        let mut watched: Vec<Arc<dyn Watched>> = Vec::new();
        if let Some(users) = &self.users {
            watched.push(Arc::clone(users) as Arc<dyn Watched>);
        }
        if let Some(acl) = &self.acl {
            watched.push(Arc::clone(acl) as Arc<dyn Watched>);
        }
        crate::reload::spawn_watcher(watched, stop.clone());
        let settings = Arc::new(Settings {
            max_payload_bytes,
            users: self.users,
            acl: self.acl,
            tls: self.tls,
            client_certs: self.client_certs,
            cert_as_username: self.cert_as_username,
            max_publish_rate: self.max_publish_rate,
            ingest,
        });
        let limit = connection_limit();
        for listener in self.listeners {
            // Ends by itself once `stop` turns true.
            drop(serve(
                listener,
                Arc::clone(&settings),
                Arc::clone(&limit),
                stop.clone(),
            ));
        }
    }
}

/// Binds `addr` (port 0 picks a free port), naming the option in the error.
async fn bind(
    option: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let bind_err = |source| BrokerError::Bind {
        option,
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    Ok((listener, bound))
}

/// Accepts connections until `stop` turns true; each connection ends with it too.
fn serve(
    listener: TcpListener,
    settings: Arc<Settings>,
    connections: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(accept_loop(listener, settings, connections, stop))
}

/// The connection limit shared by all listeners.
fn connection_limit() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_CONNECTIONS))
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<Settings>,
    connections: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut stop) => return,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(error = %e, "cannot accept an MQTT connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            warn!(%peer, "too many MQTT connections ({MAX_CONNECTIONS}); closing the new one");
            continue;
        };
        let settings = Arc::clone(&settings);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = connection(socket, peer, &settings, stop).await;
            if let Err(e) = result {
                debug!(%peer, error = %e, "MQTT connection closed");
            }
        });
    }
}

/// A per-connection publish rate (GCRA): `rate` messages per second on average, bursts of up
/// to `rate` messages (at least one).
struct Pace {
    interval: Option<Duration>,
    burst: Duration,
    /// When the connection's next message is due on an even spread.
    due: Option<Instant>,
}

impl Pace {
    fn new(rate: u32) -> Self {
        let interval = (rate > 0).then(|| Duration::from_secs(1) / rate);
        Self {
            interval,
            burst: interval.map_or(Duration::ZERO, |i| i * rate.saturating_sub(1)),
            due: None,
        }
    }

    /// Takes one message at `now`; how long to wait first when it is over the rate.
    fn admit(&mut self, now: Instant) -> Option<Duration> {
        let interval = self.interval?;
        let due = self.due.map_or(now, |d| d.max(now));
        self.due = Some(due + interval);
        let allowed_from = due.checked_sub(self.burst).unwrap_or(now);
        (allowed_from > now).then(|| allowed_from - now)
    }
}

async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    settings: &Settings,
    stop: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    // Acknowledgements are small and latency matters more than packing.
    socket.set_nodelay(true)?;
    match &settings.tls {
        None => session(socket, peer, settings, None, stop).await,
        Some(acceptor) => {
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(socket))
                .await
                .map_err(|_| SessionError::ConnectTimeout)?
                .inspect_err(|e| {
                    // Most likely a device without an acceptable certificate: worth a line.
                    if settings.client_certs {
                        warn!(%peer, error = %e, "MQTT TLS handshake failed");
                    }
                })?;
            let cert_name = if settings.cert_as_username {
                let name = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|leaf| common_name(leaf.as_ref()));
                if name.is_none() {
                    counter!(telemetry::MQTT_AUTH_FAILURES).increment(1);
                    warn!(%peer, "refused MQTT client: its certificate has no common name");
                    return Err(SessionError::Refused("client certificate without a name"));
                }
                name
            } else {
                None
            };
            session(tls, peer, settings, cert_name, stop).await
        }
    }
}

/// The (first) common name of a DER certificate's subject.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str()
        .ok()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("no CONNECT within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    #[error("keep-alive expired")]
    KeepAlive,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("refused CONNECT: {0}")]
    Refused(&'static str),
    #[error("the agent is stopping")]
    Stopping,
}

/// Which codec a connection speaks, chosen by the CONNECT's protocol level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V4,
    V5,
}

struct Login {
    username: String,
    password: String,
}

struct Will {
    topic: Bytes,
    payload: Bytes,
}

/// The packets a client may send, decoded from either version.
enum Event {
    Connect {
        client_id: String,
        keep_alive: u16,
        login: Option<Login>,
        will: Option<Will>,
    },
    Publish {
        qos: u8,
        pkid: u16,
        topic: Bytes,
        payload: Bytes,
    },
    PubRel(u16),
    PingReq,
    Subscribe {
        pkid: u16,
        filters: usize,
    },
    Unsubscribe {
        pkid: u16,
        filters: usize,
    },
    Disconnect,
    /// Anything a client must not send to a server (acks for publishes we never sent, AUTH).
    Unexpected(&'static str),
}

enum Reply {
    ConnAck(ConnCode),
    PubAck(u16),
    PubRec(u16),
    /// Acknowledgements of publishes the ACLs dropped (MQTT 5: reason 0x87).
    PubAckDenied(u16),
    PubRecDenied(u16),
    PubComp(u16),
    PingResp,
    SubAck {
        pkid: u16,
        filters: usize,
    },
    UnsubAck {
        pkid: u16,
        filters: usize,
    },
}

#[derive(Debug, Clone, Copy)]
enum ConnCode {
    Accepted,
    BadCredentials,
}

impl Version {
    /// The protocol level of a complete CONNECT frame at the start of `buf`.
    fn sniff(buf: &[u8]) -> Result<Self, u8> {
        // Fixed header: type byte, 1-4 remaining-length bytes; then "\0\x04MQTT" and the level.
        let len_bytes = buf
            .iter()
            .skip(1)
            .take(4)
            .position(|b| b & 0x80 == 0)
            .map_or(4, |p| p + 1);
        let level = buf.get(1 + len_bytes + 6).copied().unwrap_or(0);
        match level {
            4 => Ok(Self::V4),
            5 => Ok(Self::V5),
            other => Err(other),
        }
    }

    /// Decodes the next complete packet; `None` when more bytes are needed.
    fn read(self, buf: &mut BytesMut, max: usize) -> Result<Option<Event>, SessionError> {
        let protocol = |e: &dyn std::fmt::Display| SessionError::Protocol(e.to_string());
        match self {
            Self::V4 => match v4::Packet::read(buf, max) {
                Ok(p) => Ok(Some(event_v4(p))),
                Err(mqtt4::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(protocol(&e)),
            },
            Self::V5 => {
                let max = u32::try_from(max).unwrap_or(u32::MAX);
                match v5::Packet::read(buf, Some(max)) {
                    Ok(p) => event_v5(p).map(Some),
                    Err(mqtt5::Error::InsufficientBytes(_)) => Ok(None),
                    Err(e) => Err(protocol(&e)),
                }
            }
        }
    }

    fn write(self, reply: Reply, out: &mut BytesMut) {
        // Encoding our own small packets into a growable buffer cannot fail.
        match self {
            Self::V4 => drop(reply_v4(reply).write(out, usize::MAX)),
            Self::V5 => drop(reply_v5(reply).write(out, None)),
        }
    }
}

fn event_v4(packet: v4::Packet) -> Event {
    match packet {
        v4::Packet::Connect(c) => Event::Connect {
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            login: c.login.map(|l| Login {
                username: l.username,
                password: l.password,
            }),
            will: c.last_will.map(|w| Will {
                topic: Bytes::from(w.topic),
                payload: w.message,
            }),
        },
        v4::Packet::Publish(p) => Event::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            topic: Bytes::from(p.topic),
            payload: p.payload,
        },
        v4::Packet::PubRel(p) => Event::PubRel(p.pkid),
        v4::Packet::PingReq => Event::PingReq,
        v4::Packet::Subscribe(s) => Event::Subscribe {
            pkid: s.pkid,
            filters: s.filters.len(),
        },
        v4::Packet::Unsubscribe(u) => Event::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics.len(),
        },
        v4::Packet::Disconnect => Event::Disconnect,
        v4::Packet::ConnAck(_) => Event::Unexpected("CONNACK"),
        v4::Packet::PubAck(_) => Event::Unexpected("PUBACK"),
        v4::Packet::PubRec(_) => Event::Unexpected("PUBREC"),
        v4::Packet::PubComp(_) => Event::Unexpected("PUBCOMP"),
        v4::Packet::SubAck(_) => Event::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Event::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Event::Unexpected("PINGRESP"),
    }
}

fn event_v5(packet: v5::Packet) -> Result<Event, SessionError> {
    Ok(match packet {
        v5::Packet::Connect(c, will, login) => Event::Connect {
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            login: login.map(|l| Login {
                username: l.username,
                password: l.password,
            }),
            will: will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
            }),
        },
        v5::Packet::Publish(p) => {
            // Our CONNACK announces no topic aliases (Topic Alias Maximum 0), so a publish
            // must name its topic.
            if p.properties
                .as_ref()
                .is_some_and(|p| p.topic_alias.is_some())
            {
                return Err(SessionError::Protocol("topic alias not allowed".to_owned()));
            }
            Event::Publish {
                qos: p.qos as u8,
                pkid: p.pkid,
                topic: p.topic,
                payload: p.payload,
            }
        }
        v5::Packet::PubRel(p) => Event::PubRel(p.pkid),
        v5::Packet::PingReq(_) => Event::PingReq,
        v5::Packet::Subscribe(s) => Event::Subscribe {
            pkid: s.pkid,
            filters: s.filters.len(),
        },
        v5::Packet::Unsubscribe(u) => Event::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters.len(),
        },
        v5::Packet::Disconnect(_) => Event::Disconnect,
        v5::Packet::Auth(_) => Event::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => Event::Unexpected("CONNACK"),
        v5::Packet::PubAck(_) => Event::Unexpected("PUBACK"),
        v5::Packet::PubRec(_) => Event::Unexpected("PUBREC"),
        v5::Packet::PubComp(_) => Event::Unexpected("PUBCOMP"),
        v5::Packet::SubAck(_) => Event::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Event::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Event::Unexpected("PINGRESP"),
    })
}

fn reply_v4(reply: Reply) -> v4::Packet {
    match reply {
        Reply::ConnAck(code) => v4::Packet::ConnAck(v4::ConnAck::new(
            match code {
                ConnCode::Accepted => v4::ConnectReturnCode::Success,
                ConnCode::BadCredentials => v4::ConnectReturnCode::BadUserNamePassword,
            },
            false,
        )),
        // MQTT 3.1.1 has no way to say "refused": the acknowledgement is the plain one.
        Reply::PubAck(pkid) | Reply::PubAckDenied(pkid) => {
            v4::Packet::PubAck(v4::PubAck::new(pkid))
        }
        Reply::PubRec(pkid) | Reply::PubRecDenied(pkid) => {
            v4::Packet::PubRec(v4::PubRec::new(pkid))
        }
        Reply::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(pkid)),
        Reply::PingResp => v4::Packet::PingResp,
        Reply::SubAck { pkid, filters } => v4::Packet::SubAck(v4::SubAck::new(
            pkid,
            vec![v4::SubscribeReasonCode::Failure; filters],
        )),
        Reply::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
    }
}

fn reply_v5(reply: Reply) -> v5::Packet {
    match reply {
        Reply::ConnAck(code) => {
            let (code, properties) = match code {
                ConnCode::Accepted => (
                    v5::ConnectReturnCode::Success,
                    Some(v5::ConnAckProperties {
                        session_expiry_interval: None,
                        receive_max: u16::try_from(MAX_INFLIGHT).ok(),
                        max_qos: None,
                        retain_available: None,
                        max_packet_size: None,
                        assigned_client_identifier: None,
                        topic_alias_max: None,
                        reason_string: None,
                        user_properties: Vec::new(),
                        wildcard_subscription_available: Some(0),
                        subscription_identifiers_available: Some(0),
                        shared_subscription_available: Some(0),
                        server_keep_alive: None,
                        response_information: None,
                        server_reference: None,
                        authentication_method: None,
                        authentication_data: None,
                    }),
                ),
                ConnCode::BadCredentials => (v5::ConnectReturnCode::BadUserNamePassword, None),
            };
            v5::Packet::ConnAck(v5::ConnAck {
                session_present: false,
                code,
                properties,
            })
        }
        Reply::PubAck(pkid) => v5::Packet::PubAck(v5::PubAck::new(pkid, None)),
        Reply::PubRec(pkid) => v5::Packet::PubRec(v5::PubRec::new(pkid, None)),
        Reply::PubAckDenied(pkid) => v5::Packet::PubAck(v5::PubAck {
            pkid,
            reason: v5::PubAckReason::NotAuthorized,
            properties: None,
        }),
        Reply::PubRecDenied(pkid) => v5::Packet::PubRec(v5::PubRec {
            pkid,
            reason: v5::PubRecReason::NotAuthorized,
            properties: None,
        }),
        Reply::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(pkid, None)),
        Reply::PingResp => v5::Packet::PingResp(v5::PingResp),
        Reply::SubAck { pkid, filters } => v5::Packet::SubAck(v5::SubAck {
            pkid,
            return_codes: vec![v5::SubscribeReasonCode::NotAuthorized; filters],
            properties: None,
        }),
        Reply::UnsubAck { pkid, filters } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: vec![v5::UnsubAckReason::NoSubscriptionExisted; filters],
            properties: None,
        }),
    }
}

/// Reads from `rd` into `buf` until it holds one complete frame; `false` on a clean EOF
/// before any byte.
async fn fill_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<bool, SessionError> {
    loop {
        match mqtt4::check(buf.iter(), max) {
            Ok(_) => return Ok(true),
            Err(mqtt4::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(SessionError::Protocol(e.to_string())),
        }
        buf.reserve(READ_CHUNK);
        if rd.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(false)
            } else {
                Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
            };
        }
    }
}

/// One client connection from CONNECT to its end.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    settings: &Settings,
    cert_name: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let max = settings.max_packet_bytes();
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::new();

    let first = tokio::time::timeout(CONNECT_TIMEOUT, fill_frame(&mut rd, &mut inbuf, max))
        .await
        .map_err(|_| SessionError::ConnectTimeout)??;
    if !first {
        return Ok(());
    }
    if inbuf.first().map(|b| b >> 4) != Some(1) {
        return Err(SessionError::Protocol(
            "first packet is not CONNECT".to_owned(),
        ));
    }
    let version = match Version::sniff(&inbuf) {
        Ok(v) => v,
        Err(level) => {
            // MQTT 3.1.1's "unacceptable protocol version", understood by older clients too.
            wr.write_all(&[0x20, 0x02, 0x00, 0x01]).await?;
            return Err(SessionError::Protocol(format!(
                "unsupported protocol level {level}"
            )));
        }
    };
    let Some(Event::Connect {
        client_id,
        keep_alive,
        login,
        mut will,
    }) = version.read(&mut inbuf, max)?
    else {
        return Err(SessionError::Protocol(
            "first packet is not CONNECT".to_owned(),
        ));
    };
    // Who the client is, for the ACLs: its certificate's name, or the username it logged in
    // with (checked against the users file when there is one).
    let username = match cert_name {
        Some(name) => Some(name),
        None => login.as_ref().map(|l| l.username.clone()),
    };
    let logged_in = match (&settings.users, settings.cert_as_username, &login) {
        (None, _, _) | (_, true, _) => true,
        (Some(users), false, Some(l)) => {
            let users = users.current();
            users.check(&l.username, &l.password).await
        }
        (Some(_), false, None) => false,
    };
    if !logged_in {
        counter!(telemetry::MQTT_AUTH_FAILURES).increment(1);
        warn!(
            %peer,
            client_id = %client_id,
            username = login.as_ref().map_or("", |l| l.username.as_str()),
            "refused MQTT CONNECT: unknown username or wrong password"
        );
        version.write(Reply::ConnAck(ConnCode::BadCredentials), &mut out);
        wr.write_all(&out).await?;
        wr.shutdown().await?;
        return Err(SessionError::Refused("bad credentials"));
    }
    version.write(Reply::ConnAck(ConnCode::Accepted), &mut out);
    wr.write_all(&out).await?;
    out.clear();
    debug!(%peer, client_id = %client_id, ?version, "MQTT client connected");

    // Tickets send the packet id back here once the message is durable (or refused).
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<u16>();
    let mut inflight = 0usize;
    // QoS 2 packet ids awaiting PUBREL, and whether their PUBREC went out.
    let mut qos2: HashMap<u16, bool> = HashMap::new();
    // MQTT: the server closes a connection silent for 1.5 times the keep-alive.
    let idle = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    let mut deadline = idle.map(|d| Instant::now() + d);
    // The first ACL denial of a connection is logged at warn, the rest at debug.
    let mut warned = false;
    // The ACLs in service, refreshed when the file is reloaded: each publish is checked
    // against the version in service when it arrives.
    let mut acl = settings.acl.as_ref().map(Reloadable::snapshot);
    let mut pace = Pace::new(settings.max_publish_rate);

    let result = 'session: loop {
        let can_read = inflight < MAX_INFLIGHT;
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break Err(SessionError::Stopping),
            Some(pkid) = ack_rx.recv() => {
                let mut next = Some(pkid);
                while let Some(pkid) = next {
                    inflight = inflight.saturating_sub(1);
                    match qos2.get_mut(&pkid) {
                        Some(recorded) => {
                            *recorded = true;
                            version.write(Reply::PubRec(pkid), &mut out);
                        }
                        None => version.write(Reply::PubAck(pkid), &mut out),
                    }
                    next = ack_rx.try_recv().ok();
                }
            }
            read = rd.read_buf(&mut inbuf), if can_read => {
                match read {
                    Ok(0) => break Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                    Ok(_) => {}
                    Err(e) => break Err(e.into()),
                }
                deadline = idle.map(|d| Instant::now() + d);
                let mut disconnect = false;
                loop {
                    let event = match version.read(&mut inbuf, max) {
                        Ok(Some(event)) => event,
                        Ok(None) => break,
                        Err(e) => break 'session Err(e),
                    };
                    match event {
                        Event::Publish { qos, pkid, topic, payload } => {
                            if !acl_allows(&mut acl, username.as_deref(), &client_id, &topic, peer, &mut warned) {
                                match (qos, version) {
                                    (1, _) => version.write(Reply::PubAckDenied(pkid), &mut out),
                                    // MQTT 5: a PUBREC with a failure code ends the exchange.
                                    (2, Version::V5) => version.write(Reply::PubRecDenied(pkid), &mut out),
                                    (2, Version::V4) => {
                                        // 3.1.1: the client still sends PUBREL.
                                        qos2.insert(pkid, true);
                                        version.write(Reply::PubRecDenied(pkid), &mut out);
                                    }
                                    _ => {}
                                }
                                continue;
                            }
                            let ack = match qos {
                                0 => None,
                                2 if qos2.contains_key(&pkid) => {
                                    // A resend of a message we already took.
                                    if qos2.get(&pkid) == Some(&true) {
                                        version.write(Reply::PubRec(pkid), &mut out);
                                    }
                                    continue;
                                }
                                _ => {
                                    if qos == 2 {
                                        qos2.insert(pkid, false);
                                    }
                                    inflight += 1;
                                    let tx = ack_tx.clone();
                                    Some(AckTicket::new(move || {
                                        // Gone only if the connection closed meanwhile.
                                        let _ = tx.send(pkid);
                                    }))
                                }
                            };
                            // Over its rate, the connection waits here and reads nothing more:
                            // its publisher is slowed by TCP, and nothing is dropped.
                            if let Some(wait) = pace.admit(Instant::now()) {
                                counter!(telemetry::MQTT_THROTTLED).increment(1);
                                tokio::time::sleep(wait).await;
                            }
                            let incoming = Incoming { topic, payload, ack };
                            if settings.ingest.send(incoming).await.is_err() {
                                break 'session Err(SessionError::Stopping);
                            }
                        }
                        Event::PubRel(pkid) => {
                            qos2.remove(&pkid);
                            version.write(Reply::PubComp(pkid), &mut out);
                        }
                        Event::PingReq => version.write(Reply::PingResp, &mut out),
                        Event::Subscribe { pkid, filters } => {
                            version.write(Reply::SubAck { pkid, filters }, &mut out);
                        }
                        Event::Unsubscribe { pkid, filters } => {
                            version.write(Reply::UnsubAck { pkid, filters }, &mut out);
                        }
                        Event::Disconnect => {
                            // A normal DISCONNECT discards the will.
                            will = None;
                            disconnect = true;
                            break;
                        }
                        Event::Connect { .. } => {
                            break 'session Err(SessionError::Protocol("second CONNECT".to_owned()));
                        }
                        Event::Unexpected(name) => {
                            break 'session Err(SessionError::Protocol(format!("unexpected {name}")));
                        }
                    }
                }
                if disconnect {
                    break Ok(());
                }
            }
            () = sleep_until(deadline) => break Err(SessionError::KeepAlive),
        }
        if !out.is_empty() {
            if let Err(e) = wr.write_all(&out).await {
                break Err(e.into());
            }
            out.clear();
        }
    };
    if !out.is_empty() {
        // Best effort: acknowledgements gathered just before the end.
        let _ = wr.write_all(&out).await;
    }
    if result.is_err() {
        if let Some(w) = &will
            && !acl_allows(
                &mut acl,
                username.as_deref(),
                &client_id,
                &w.topic,
                peer,
                &mut warned,
            )
        {
            will = None;
        }
        publish_will(will, settings, peer).await;
    }
    result
}

/// Whether the ACLs (if any) let this client publish to `topic`; a denial is counted and
/// logged (at warn the first time per connection).
fn acl_allows(
    acl: &mut Option<Snapshot<Acl>>,
    username: Option<&str>,
    client_id: &str,
    topic: &[u8],
    peer: SocketAddr,
    warned: &mut bool,
) -> bool {
    let Some(acl) = acl.as_mut().map(Snapshot::get) else {
        return true;
    };
    // MQTT topics are UTF-8; anything else matches no rule.
    let topic = std::str::from_utf8(topic).unwrap_or_default();
    if !topic.is_empty() && acl.allows(username, client_id, topic) {
        return true;
    }
    counter!(telemetry::MQTT_ACL_DENIED).increment(1);
    if *warned {
        debug!(%peer, client_id, username, topic, "MQTT publish denied by the ACLs; dropped");
    } else {
        *warned = true;
        warn!(%peer, client_id, username, topic, "MQTT publish denied by the ACLs; dropped (further denials on this connection are logged at debug)");
    }
    false
}

/// The will of a client that went away without DISCONNECT is ingested like a QoS 0 publish.
async fn publish_will(will: Option<Will>, settings: &Settings, peer: SocketAddr) {
    if let Some(Will { topic, payload }) = will {
        info!(%peer, topic = %String::from_utf8_lossy(&topic), "ingesting an MQTT will message");
        let _ = settings
            .ingest
            .send(Incoming {
                topic,
                payload,
                ack: None,
            })
            .await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Which CONNECT packet the in-process tests send.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum MqttVersion {
    V311,
}

/// A minimal clean-session CONNECT with client id `updraft-probe` and a 60 s keep-alive.
#[cfg(test)]
pub(crate) fn connect_packet(version: MqttVersion) -> Vec<u8> {
    let MqttVersion::V311 = version;
    let mut out = BytesMut::new();
    let mut connect = v4::Connect::new("updraft-probe");
    connect.keep_alive = 60;
    let _ = v4::Packet::Connect(connect).write(&mut out, usize::MAX);
    out.to_vec()
}

/// Resolves once `stop` turns true (or its sender is gone). The watch guard is dropped here, so
/// callers stay `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_lets_a_burst_through_then_spreads_messages_at_the_rate() {
        let t0 = Instant::now();
        let mut pace = Pace::new(10);
        for k in 0..10 {
            assert_eq!(pace.admit(t0), None, "message {k} of the burst");
        }
        // The 11th at the same instant waits one interval; the 12th two.
        assert_eq!(pace.admit(t0), Some(Duration::from_millis(100)));
        assert_eq!(pace.admit(t0), Some(Duration::from_millis(200)));
        // A connection that stayed quiet for a long while gets a whole burst again.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(pace.admit(later), None);
        }
        assert!(pace.admit(later).is_some());
        // No limit: never a wait.
        let mut free = Pace::new(0);
        assert!((0..10_000).all(|_| free.admit(t0).is_none()));
    }

    #[test]
    fn sniff_reads_the_protocol_level() {
        let v4 = connect_packet(MqttVersion::V311);
        assert_eq!(Version::sniff(&v4), Ok(Version::V4));
        let mut v5 = BytesMut::new();
        let _ = v5::Packet::Connect(
            v5::Connect {
                keep_alive: 60,
                client_id: "x".to_owned(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        )
        .write(&mut v5, None);
        assert_eq!(Version::sniff(&v5), Ok(Version::V5));
        let mut v31 = v4.clone();
        v31[8] = 3;
        assert_eq!(Version::sniff(&v31), Err(3));
    }
}

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
//! per-device username/password authentication and optional TLS (rustls with ring) apply to
//! both listeners.

use crate::ingest::{AckTicket, Incoming};
use crate::telemetry;
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
    #[error("cannot read --mqtt-users-file {path}: {source}")]
    UsersFile { path: PathBuf, source: io::Error },
    #[error("invalid --mqtt-users-file {path} line {line}: expected USERNAME:PASSWORD")]
    UsersLine { path: PathBuf, line: usize },
    #[error("cannot read MQTT TLS {what} from {path}: {source}")]
    TlsPem {
        what: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("invalid MQTT TLS certificate or key: {0}")]
    Tls(#[from] rustls::Error),
}

/// Usernames and passwords of the devices allowed to connect.
struct Users(HashMap<String, String>);

impl Users {
    /// Reads `USERNAME:PASSWORD` lines (the password is everything after the first `:`); blank
    /// lines and lines starting with `#` are ignored.
    fn load(path: &Path) -> Result<Self, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|source| BrokerError::UsersFile {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|line| BrokerError::UsersLine {
            path: path.to_owned(),
            line,
        })
    }

    /// Err carries the 1-based number of the first bad line.
    fn parse(text: &str) -> Result<Self, usize> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((user, password)) if !user.is_empty() => {
                    users.insert(user.to_owned(), password.to_owned());
                }
                _ => return Err(i + 1),
            }
        }
        Ok(Self(users))
    }

    fn check(&self, login: Option<&Login>) -> bool {
        let Some(login) = login else { return false };
        match self.0.get(&login.username) {
            Some(expected) => constant_time_eq(expected.as_bytes(), login.password.as_bytes()),
            None => false,
        }
    }
}

/// Compares without an early exit on the first differing byte (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A rustls server configuration (ring provider) from a PEM certificate chain and key.
fn server_tls(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, BrokerError> {
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
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What every connection of the endpoint shares.
struct Settings {
    max_payload_bytes: usize,
    users: Option<Users>,
    tls: Option<tokio_rustls::TlsAcceptor>,
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
    users: Option<Users>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Listeners {
    /// Binds `--mqtt-listen` and `--mqtt5-listen` and reads the users file and TLS files.
    pub(crate) async fn bind(config: &crate::config::AgentConfig) -> Result<Self, BrokerError> {
        let (l4, mqtt) = bind("mqtt-listen", config.mqtt_listen).await?;
        let (l5, mqtt5) = bind("mqtt5-listen", config.mqtt5_listen).await?;
        let users = config
            .mqtt_users_file
            .as_deref()
            .map(Users::load)
            .transpose()?;
        let tls = match (&config.mqtt_tls_cert, &config.mqtt_tls_key) {
            (Some(cert), Some(key)) => Some(server_tls(cert, key)?),
            _ => None,
        };
        Ok(Self {
            mqtt,
            mqtt5,
            listeners: [l4, l5],
            users,
            tls,
        })
    }

    /// Whether clients must log in / speak TLS (for the start-up line).
    pub(crate) fn describe(&self) -> &'static str {
        match (self.users.is_some(), self.tls.is_some()) {
            (false, false) => "plain, anonymous",
            (true, false) => "plain, users file",
            (false, true) => "tls, anonymous",
            (true, true) => "tls, users file",
        }
    }

    /// Serves both listeners until `stop` turns true.
    pub(crate) fn serve(
        self,
        max_payload_bytes: usize,
        ingest: mpsc::Sender<Incoming>,
        stop: &watch::Receiver<bool>,
    ) {
        let settings = Arc::new(Settings {
            max_payload_bytes,
            users: self.users,
            tls: self.tls,
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

async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    settings: &Settings,
    stop: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    // Acknowledgements are small and latency matters more than packing.
    socket.set_nodelay(true)?;
    match &settings.tls {
        None => session(socket, peer, settings, stop).await,
        Some(acceptor) => {
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(socket))
                .await
                .map_err(|_| SessionError::ConnectTimeout)??;
            session(tls, peer, settings, stop).await
        }
    }
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
    PubComp(u16),
    PingResp,
    SubAck { pkid: u16, filters: usize },
    UnsubAck { pkid: u16, filters: usize },
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
        Reply::PubAck(pkid) => v4::Packet::PubAck(v4::PubAck::new(pkid)),
        Reply::PubRec(pkid) => v4::Packet::PubRec(v4::PubRec::new(pkid)),
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
    if let Some(users) = &settings.users
        && !users.check(login.as_ref())
    {
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
        publish_will(will, settings, peer).await;
    }
    result
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
    fn users_file_lines() {
        let users = Users::parse("# devices\n\ndev1:secret\ndev2:pa:ss\r\n").expect("valid");
        let login = |u: &str, p: &str| Login {
            username: u.to_owned(),
            password: p.to_owned(),
        };
        assert!(users.check(Some(&login("dev1", "secret"))));
        assert!(users.check(Some(&login("dev2", "pa:ss"))));
        assert!(!users.check(Some(&login("dev1", "secreT"))));
        assert!(!users.check(Some(&login("dev3", "secret"))));
        assert!(!users.check(None));
        assert_eq!(Users::parse("ok:1\nno-colon\n").err(), Some(2));
        assert_eq!(Users::parse(":nouser").err(), Some(1));
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

//! The embedded MQTT broker (rumqttd) and the local link the ingest thread reads from.
//!
//! rumqttd serves one protocol version per listener (its v4 and v5 servers are separate types
//! and the connection code that could sniff the CONNECT packet is private), so MQTT 3.1.1 and
//! MQTT 5 get one port each. Its `Broker::start` blocks forever and only logs bind errors, and
//! it has no shutdown: this module checks each address can be bound before starting, runs the
//! broker on its own thread, and proves readiness with a real MQTT CONNECT/CONNACK exchange.
//! The broker threads live until the process exits.

use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::error;

/// Name of the broker-internal link that receives every publish.
const INGEST_LINK: &str = "updraft-ingest";
/// The broker's own payload limit is this multiple of `--max-payload-bytes` (and at least
/// [`MIN_BROKER_PAYLOAD_BYTES`]), so oversized messages reach the mapper and are counted there
/// instead of silently closing the publisher's connection.
const BROKER_PAYLOAD_FACTOR: usize = 4;
const MIN_BROKER_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;
/// rumqttd keeps every publish in an in-memory ring of segments per subscription filter. Its
/// default (10 x 100 MB) suits a server; an edge box gets 4 segments of 4 MiB (or of one
/// maximum payload, if larger). Our link drains it continuously; the ring only bounds memory.
const ROUTER_SEGMENT_COUNT: usize = 4;
const MIN_ROUTER_SEGMENT_BYTES: usize = 4 * 1024 * 1024;
const MAX_CONNECTIONS: usize = 1024;
/// Time a new TCP connection has to send its CONNECT packet.
const CONNECT_PACKET_TIMEOUT_MS: u16 = 10_000;
/// Unacknowledged QoS 1/2 messages the broker sends to one subscriber.
const MAX_INFLIGHT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    #[error("cannot bind --{option} {addr}: {source}")]
    Bind {
        option: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot attach the ingest link to the broker: {0}")]
    Link(#[source] Box<LinkError>),
    #[error("cannot start the broker thread: {0}")]
    Thread(io::Error),
    #[error("broker did not accept MQTT connections on {addr} within {timeout:?}: {last}")]
    NotReady {
        addr: SocketAddr,
        timeout: Duration,
        last: io::Error,
    },
}

impl From<LinkError> for BrokerError {
    fn from(e: LinkError) -> Self {
        // Boxed: rumqttd's error carries a whole router event (over 800 bytes).
        Self::Link(Box::new(e))
    }
}

/// Which CONNECT packet the readiness probe sends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MqttVersion {
    V311,
    V5,
}

/// Checks that `addr` can be bound right now and resolves port 0 to a concrete free port, so
/// that rumqttd (which only logs bind failures) binds a known address. Drop the listener just
/// before starting the broker (holding it meanwhile keeps two port-0 reservations distinct).
pub(crate) fn reserve(
    option: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let bind_err = |source| BrokerError::Bind {
        option,
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    Ok((listener, bound))
}

pub(crate) struct Started {
    pub link_tx: LinkTx,
    pub link_rx: LinkRx,
}

/// Starts the broker on reserved addresses. Blocking (the link handshake waits for the router):
/// call it from `spawn_blocking`.
pub(crate) fn start(
    mqtt: SocketAddr,
    mqtt5: SocketAddr,
    max_payload_bytes: usize,
) -> Result<Started, BrokerError> {
    let mut broker = rumqttd::Broker::new(config(mqtt, mqtt5, max_payload_bytes));
    let (mut link_tx, link_rx) = broker.link(INGEST_LINK)?;
    link_tx.subscribe("#")?;
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            // Returns only on a configuration error or when every server thread has died.
            if let Err(e) = broker.start() {
                error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    Ok(Started { link_tx, link_rx })
}

fn config(mqtt: SocketAddr, mqtt5: SocketAddr, max_payload_bytes: usize) -> Config {
    let max_payload_size = max_payload_bytes
        .saturating_mul(BROKER_PAYLOAD_FACTOR)
        .max(MIN_BROKER_PAYLOAD_BYTES);
    let connections = ConnectionSettings {
        connection_timeout_ms: CONNECT_PACKET_TIMEOUT_MS,
        max_payload_size,
        max_inflight_count: MAX_INFLIGHT,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| {
        HashMap::from([(
            "1".to_owned(),
            ServerSettings {
                name: name.to_owned(),
                listen,
                tls: None,
                next_connection_delay_ms: 1,
                connections: connections.clone(),
            },
        )])
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: 200,
            max_segment_size: max_payload_size.max(MIN_ROUTER_SEGMENT_BYTES),
            max_segment_count: ROUTER_SEGMENT_COUNT,
            ..RouterConfig::default()
        },
        v4: Some(server("mqtt-v311", mqtt)),
        v5: Some(server("mqtt-v5", mqtt5)),
        ..Config::default()
    }
}

/// Waits until the broker answers an MQTT CONNECT on `addr` with a successful CONNACK.
pub(crate) async fn wait_until_accepting(
    addr: SocketAddr,
    version: MqttVersion,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let target = connectable(addr);
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout_at(deadline, probe(target, version)).await;
        let last = match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "no CONNACK"),
        };
        if Instant::now() >= deadline {
            return Err(BrokerError::NotReady {
                addr,
                timeout,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A wildcard listen address is probed on loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

async fn probe(addr: SocketAddr, version: MqttVersion) -> io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(&connect_packet(version)).await?;
    // CONNACK: type 0x20, remaining length, flags, return/reason code (0 = accepted).
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected CONNACK {connack:02x?}"),
        ));
    }
    // Half-close and let the broker close first. Both a DISCONNECT packet (rumqttd then handles
    // the disconnection twice) and dropping the socket (a reset) make the broker log an error.
    stream.shutdown().await?;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut rest)).await;
    Ok(())
}

/// A minimal clean-session CONNECT with client id `updraft-probe` and a 60 s keep-alive
/// (rumqttd refuses a zero keep-alive).
pub(crate) fn connect_packet(version: MqttVersion) -> Vec<u8> {
    const CLIENT_ID: &[u8] = b"updraft-probe";
    let level: u8 = match version {
        MqttVersion::V311 => 4,
        MqttVersion::V5 => 5,
    };
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x3C];
    if let MqttVersion::V5 = version {
        body.push(0x00); // no CONNECT properties
    }
    body.extend_from_slice(&[0x00, CLIENT_ID.len() as u8]);
    body.extend_from_slice(CLIENT_ID);
    // The body is 25 or 26 bytes: the remaining length fits in one byte.
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_resolves_port_zero_and_reports_busy_ports() {
        let (_l, addr) =
            reserve("mqtt-listen", "127.0.0.1:0".parse().expect("addr")).expect("free");
        assert_ne!(addr.port(), 0);
        let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = busy.local_addr().expect("addr");
        let err = reserve("mqtt-listen", taken).err().map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.contains("--mqtt-listen")));
    }

    #[test]
    fn broker_limits_leave_room_above_our_payload_limit() {
        let c = config(
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
            64 * 1024,
        );
        let v4 = c.v4.as_ref().and_then(|m| m.get("1")).expect("v4 server");
        assert_eq!(v4.connections.max_payload_size, MIN_BROKER_PAYLOAD_BYTES);
        assert!(c.router.max_segment_size >= v4.connections.max_payload_size);
        assert_eq!(c.router.max_segment_count, ROUTER_SEGMENT_COUNT);
    }
}

//! The production [`Transport`]: QUIC with mutual TLS 1.3 to the core nodes.
//!
//! One connection is kept open to *every* configured core, each watched by a keeper task that
//! reconnects it when it closes (after a failed attempt: backoff from 1 s to 10 s). Batches go
//! over the connection of the core the uplink chose, one bidirectional stream per batch; the
//! others only carry keep-alives, which is what measures them: QUIC acknowledges every
//! keep-alive, so quinn's smoothed round-trip time of each connection stays current (read by
//! [`Transport::rtts`]). Keep-alives also keep NAT bindings open and let a dead core be noticed
//! by the idle timeout, within about 5 s, whether or not it is in use. All connections share
//! one UDP socket per address family.

use super::Transport;
use crate::config::CoreEndpoint;
use bytes::Bytes;
use protocols::wire::{ALPN, MAX_FRAME_BYTES};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ClientConfig, Connection, Endpoint, IdleTimeout, TransportConfig, VarInt};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, info};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From opening the stream to the complete answer; the core answers after its fsync.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Keep-alives every second and a 5 s idle timeout: a core that stops answering (killed,
/// unplugged) is noticed within about 5 s, even mid-exchange, and the next one is tried.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT_MS: u32 = 5_000;

/// Why the TLS or QUIC client could not be set up (a configuration problem).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    #[error("cannot read {what} {path}: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} {path} holds no certificate")]
    Empty { what: &'static str, path: PathBuf },
    #[error("invalid certificate, key or TLS setting: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("cannot create a UDP socket for QUIC: {0}")]
    Socket(std::io::Error),
}

/// One failed exchange. All are retried (on the next endpoint, after a backoff).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("cannot resolve {endpoint}: {source}")]
    Resolve {
        endpoint: CoreEndpoint,
        source: std::io::Error,
    },
    #[error("{0} resolves to no address")]
    NoAddress(CoreEndpoint),
    #[error("cannot start connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("sending the batch failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed before the batch was finished")]
    ClosedStream(#[from] quinn::ClosedStream),
    #[error("reading the answer failed: {0}")]
    Read(#[from] quinn::ReadToEndError),
    #[error("timed out while {0}")]
    Timeout(&'static str),
    #[error(transparent)]
    Setup(#[from] TlsSetupError),
}

/// TLS 1.3 only, our ALPN, client certificate from `cert`/`key`, and only `ca` as trust root.
pub(crate) fn client_tls(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs("--ca", ca)? {
        roots.add(c)?;
    }
    let chain = read_certs("--cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsSetupError::Pem {
        what: "--key",
        path: key.to_owned(),
        source,
    })?;
    // The ring provider is named explicitly: a launcher embedding the agent may not have
    // installed a process default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem_err = |source| TlsSetupError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// After a connection closed, the keeper waits this long before reconnecting (the data path
/// connects at once when it needs the core).
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// The keeper's backoff after failed connection attempts: doubled from the first to the last.
const PROBE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// TLS client configuration and the client sockets, shared by the data path and the keepers.
struct Connector {
    client: ClientConfig,
    /// Client sockets, created on first use per address family.
    v4: Mutex<Option<Endpoint>>,
    v6: Mutex<Option<Endpoint>>,
}

impl Connector {
    fn socket_for(&self, remote: SocketAddr) -> Result<Endpoint, TlsSetupError> {
        let (slot, bind) = if remote.is_ipv4() {
            (&self.v4, SocketAddr::from(([0, 0, 0, 0], 0)))
        } else {
            (&self.v6, SocketAddr::from(([0u16; 8], 0)))
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let mut endpoint = Endpoint::client(bind).map_err(TlsSetupError::Socket)?;
        endpoint.set_default_client_config(self.client.clone());
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    async fn connect(&self, core: &CoreEndpoint) -> Result<Connection, TransportError> {
        let lookup = tokio::net::lookup_host((core.host.as_str(), core.port));
        let addrs: Vec<SocketAddr> = tokio::time::timeout(CONNECT_TIMEOUT, lookup)
            .await
            .map_err(|_| TransportError::Timeout("resolving the core"))?
            .map_err(|source| TransportError::Resolve {
                endpoint: core.clone(),
                source,
            })?
            .collect();
        let addr = *addrs
            .first()
            .ok_or_else(|| TransportError::NoAddress(core.clone()))?;
        // The host part is the TLS server name: a DNS name or an IP address SAN.
        let connecting = self.socket_for(addr)?.connect(addr, &core.host)?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| TransportError::Timeout("connecting"))??;
        info!(core = %core, remote = %addr, rtt_ms = conn.rtt().as_secs_f64() * 1000.0,
            "connected to core");
        Ok(conn)
    }

    fn close_sockets(&self) -> Vec<Endpoint> {
        [&self.v4, &self.v6]
            .into_iter()
            .filter_map(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner).take())
            .collect()
    }
}

/// The connection to one core, if one is open. The lock is never held across an await.
struct Link {
    endpoint: CoreEndpoint,
    conn: Mutex<Option<Connection>>,
}

impl Link {
    fn new(endpoint: CoreEndpoint) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            conn: Mutex::new(None),
        })
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open connection, if any.
    fn live(&self) -> Option<Connection> {
        self.slot()
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Keeps `conn` unless another open connection got there first (the data path and the
    /// keeper may connect at the same time); the one not kept is closed. Returns the one kept.
    fn offer(&self, conn: Connection) -> Connection {
        let mut slot = self.slot();
        if let Some(current) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            conn.close(VarInt::from_u32(0), b"duplicate connection");
            return current.clone();
        }
        *slot = Some(conn.clone());
        conn
    }

    fn drop_connection(&self, reason: &[u8]) {
        if let Some(conn) = self.slot().take() {
            conn.close(VarInt::from_u32(0), reason);
        }
    }
}

/// Keeps a connection to `link`'s core open for as long as the transport lives.
async fn keep(link: Arc<Link>, connector: Arc<Connector>) {
    let mut failures = 0u32;
    loop {
        if let Some(conn) = link.live() {
            failures = 0;
            let reason = conn.closed().await;
            debug!(core = %link.endpoint, %reason, "connection to core closed");
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        }
        match connector.connect(&link.endpoint).await {
            Ok(conn) => {
                link.offer(conn);
            }
            Err(e) => {
                let wait = PROBE_BACKOFF_FIRST
                    .saturating_mul(1 << failures.min(8))
                    .min(PROBE_BACKOFF_MAX);
                failures = failures.saturating_add(1);
                debug!(core = %link.endpoint, error = %e, retry_in = ?wait,
                    "core not reachable");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

pub(crate) struct QuicTransport {
    connector: Arc<Connector>,
    /// One per core endpoint.
    links: Vec<Arc<Link>>,
    keepers: Vec<JoinHandle<()>>,
}

impl QuicTransport {
    /// Starts a keeper task per endpoint (so it must be called within a Tokio runtime): the
    /// connections open in the background, and their round-trip times are known before long.
    pub(crate) fn new(
        tls: rustls::ClientConfig,
        endpoints: &[CoreEndpoint],
    ) -> Result<Self, TlsSetupError> {
        let mut transport = TransportConfig::default();
        transport
            .keep_alive_interval(Some(KEEP_ALIVE))
            .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))));
        let mut client = ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        client.transport_config(Arc::new(transport));
        let connector = Arc::new(Connector {
            client,
            v4: Mutex::new(None),
            v6: Mutex::new(None),
        });
        let mut this = Self {
            connector,
            links: Vec::new(),
            keepers: Vec::new(),
        };
        for endpoint in endpoints {
            if this.find(endpoint).is_none() {
                let link = Link::new(endpoint.clone());
                this.keepers.push(tokio::spawn(keep(
                    Arc::clone(&link),
                    Arc::clone(&this.connector),
                )));
                this.links.push(link);
            }
        }
        Ok(this)
    }

    fn find(&self, endpoint: &CoreEndpoint) -> Option<&Arc<Link>> {
        self.links.iter().find(|l| &l.endpoint == endpoint)
    }

    /// The link to `endpoint`; one not given to [`QuicTransport::new`] gets a link without a
    /// keeper (connected on demand only).
    fn link(&mut self, endpoint: &CoreEndpoint) -> Arc<Link> {
        if let Some(link) = self.find(endpoint) {
            return Arc::clone(link);
        }
        let link = Link::new(endpoint.clone());
        self.links.push(Arc::clone(&link));
        link
    }
}

impl Transport for QuicTransport {
    async fn exchange(
        &mut self,
        endpoint: &CoreEndpoint,
        frame: Bytes,
    ) -> Result<Vec<u8>, TransportError> {
        let link = self.link(endpoint);
        let conn = match link.live() {
            Some(conn) => conn,
            None => link.offer(self.connector.connect(endpoint).await?),
        };
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&frame).await?;
            send.finish()?;
            Ok::<_, TransportError>(recv.read_to_end(MAX_FRAME_BYTES).await?)
        };
        let result = match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout("waiting for the answer")),
        };
        if result.is_err() {
            // Start from a fresh connection next time (the keeper reconnects): a half-broken
            // connection is cheaper to replace than to diagnose, and until it is replaced the
            // core has no round-trip time, so the uplink looks elsewhere.
            link.drop_connection(b"exchange failed");
        }
        result
    }

    fn rtts(&mut self, endpoints: &[CoreEndpoint]) -> Vec<Option<Duration>> {
        endpoints
            .iter()
            .map(|e| self.find(e).and_then(|l| l.live()).map(|c| c.rtt()))
            .collect()
    }

    async fn close(&mut self) {
        for keeper in self.keepers.drain(..) {
            keeper.abort();
        }
        for link in &self.links {
            link.drop_connection(b"shutdown");
        }
        for endpoint in self.connector.close_sockets() {
            endpoint.close(VarInt::from_u32(0), b"shutdown");
            // Bounded: an unreachable core must not hold up shutdown.
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        for keeper in &self.keepers {
            keeper.abort();
        }
    }
}

#[cfg(test)]
mod tests;

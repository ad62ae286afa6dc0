//! The production [`Transport`]: QUIC with mutual TLS 1.3 to a core node.
//!
//! One connection is kept to the current core and reused for every batch, one bidirectional
//! stream per batch. Keep-alives keep NAT bindings open and let a dead core be noticed by the
//! idle timeout; a closed or failed connection is replaced on the next exchange.

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
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

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

pub(crate) struct QuicTransport {
    client: ClientConfig,
    /// Client sockets, created on first use per address family.
    v4: Option<Endpoint>,
    v6: Option<Endpoint>,
    conn: Option<(CoreEndpoint, Connection)>,
}

impl QuicTransport {
    pub(crate) fn new(tls: rustls::ClientConfig) -> Result<Self, TlsSetupError> {
        let mut transport = TransportConfig::default();
        transport
            .keep_alive_interval(Some(KEEP_ALIVE))
            .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))));
        let mut client = ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        client.transport_config(Arc::new(transport));
        Ok(Self {
            client,
            v4: None,
            v6: None,
            conn: None,
        })
    }

    fn endpoint_for(&mut self, remote: SocketAddr) -> Result<Endpoint, TlsSetupError> {
        let (slot, bind) = if remote.is_ipv4() {
            (&mut self.v4, SocketAddr::from(([0, 0, 0, 0], 0)))
        } else {
            (&mut self.v6, SocketAddr::from(([0u16; 8], 0)))
        };
        if let Some(e) = slot {
            return Ok(e.clone());
        }
        let mut endpoint = Endpoint::client(bind).map_err(TlsSetupError::Socket)?;
        endpoint.set_default_client_config(self.client.clone());
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    async fn connection(&mut self, core: &CoreEndpoint) -> Result<Connection, TransportError> {
        if let Some((current, conn)) = &self.conn
            && current == core
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        self.drop_connection(b"switching core");
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
        let connecting = self.endpoint_for(addr)?.connect(addr, &core.host)?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| TransportError::Timeout("connecting"))??;
        info!(core = %core, remote = %addr, "connected to core");
        self.conn = Some((core.clone(), conn.clone()));
        Ok(conn)
    }

    fn drop_connection(&mut self, reason: &[u8]) {
        if let Some((_, conn)) = self.conn.take() {
            conn.close(VarInt::from_u32(0), reason);
        }
    }
}

impl Transport for QuicTransport {
    async fn exchange(
        &mut self,
        endpoint: &CoreEndpoint,
        frame: Bytes,
    ) -> Result<Vec<u8>, TransportError> {
        let conn = self.connection(endpoint).await?;
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
            // Start from a fresh connection next time: the next attempt may go elsewhere, and a
            // half-broken connection is cheaper to replace than to diagnose.
            self.drop_connection(b"exchange failed");
        }
        result
    }

    async fn close(&mut self) {
        self.drop_connection(b"shutdown");
        for endpoint in [self.v4.take(), self.v6.take()].into_iter().flatten() {
            endpoint.close(VarInt::from_u32(0), b"shutdown");
            // Bounded: an unreachable core must not hold up shutdown.
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

#[cfg(test)]
mod tests;

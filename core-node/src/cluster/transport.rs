//! The inter-node transport: QUIC with mutual TLS between cluster nodes, one connection per
//! peer pair shared by every group (openraft 0.9 has no heartbeat batching across groups, so
//! many groups must at least not mean many connections), one bidirectional stream per request.
//!
//! # Who may talk
//!
//! Both sides present a node certificate from the cluster CA (`core-node certs --node-id N`):
//! - a peer whose certificate does not chain to the CA never completes the handshake (another
//!   cluster, a self-made certificate);
//! - the accepting node reads the caller's node id from its certificate
//!   ([`crate::certs::node_of`]); a certificate that names no node (an agent's, a listener's)
//!   is refused with a close reason, before any request is read. The id handed to the handler
//!   is the certificate's, never one the caller claims in a message;
//! - the calling node checks that the certificate of the node it reached names the node id it
//!   meant to call ([`crate::certs::check_peer_node`]), so an address that now belongs to
//!   another node is not mistaken for the old one.
//!
//! # Messages
//!
//! A request is `group id (u32 BE) ++ kind (u8) ++ body`, the answer is `status (u8: 0 ok,
//! 1 error) ++ body` (an error's body is its UTF-8 message); each at most
//! [`MAX_MESSAGE_BYTES`]. What `kind` and `body` mean is the caller's (Raft's RPCs, later
//! snapshots in bounded pieces): the transport only routes and authenticates.

use super::log_store::GroupId;
use super::types::NodeId;
use crate::certs::{NodeBinding, check_peer_node, node_of};
use anyhow::Context;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Mutex;

/// The ALPN of the inter-node protocol (never the agents' ingest ALPN: a node certificate on
/// the ingest port, or an agent on the cluster port, fails the handshake).
pub const ALPN: &[u8] = b"updraft-cluster/1";
/// Longest wait for a QUIC handshake with a peer (a few round trips on any network a cluster
/// spans; a dead peer's address answers nothing).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// A connection with nothing heard for this long is dead (keep-alives go every third of it):
/// a restarted peer is reconnected to within this time even when no call failed.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Largest request or answer.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// One request: which group it is for, what kind of message, its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub group: GroupId,
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Envelope {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.body.len());
        out.extend_from_slice(&self.group.0.to_be_bytes());
        out.push(self.kind);
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(mut bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < 5 {
            return Err(format!(
                "request of {} bytes, shorter than its header",
                bytes.len()
            ));
        }
        let body = bytes.split_off(5);
        let group = GroupId(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        Ok(Self {
            group,
            kind: bytes[4],
            body,
        })
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connecting to node {node} at {addr}: {reason}")]
    Connect {
        node: NodeId,
        addr: SocketAddr,
        reason: String,
    },
    #[error("node {node} refused: {0}", node = .1)]
    Identity(String, NodeId),
    #[error("talking to node {node}: {reason}")]
    Io { node: NodeId, reason: String },
    #[error("node {node} answered with an error: {message}")]
    Remote { node: NodeId, message: String },
}

/// The answer a handler gives: the body, or an error message for the caller.
pub type Answer = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// Serves requests: `from` is the calling node, as its certificate names it.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, from: NodeId, request: Envelope) -> Answer;
}

/// The TLS side of a node: its server and client configurations from the cluster CA and its
/// node certificate.
#[derive(Clone)]
pub struct NodeTls {
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
}

/// Loads the cluster CA and this node's certificate and key (PEM files).
pub fn node_tls(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<NodeTls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(c.with_context(|| format!("parsing {}", ca.display()))?)?;
    }
    let roots = Arc::new(roots);
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;

    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .context("building the node certificate verifier")?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .context("loading the node certificate")?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("loading the node certificate as a client certificate")?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into()?))
        .keep_alive_interval(Some(IDLE_TIMEOUT / 3));
    let transport = Arc::new(transport);
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server)?));
    server.transport_config(Arc::clone(&transport));
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client)?));
    client.transport_config(transport);
    Ok(NodeTls { server, client })
}

/// The (DER) leaf certificate a connection's peer presented.
fn leaf_der(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|c| c.to_vec())
}

/// The node id in the certificate a connection's peer presented.
fn peer_node(conn: &quinn::Connection) -> NodeBinding {
    match leaf_der(conn) {
        Some(leaf) => node_of(&leaf),
        None => NodeBinding::Invalid("no readable peer certificate".into()),
    }
}

/// Accepts nodes until the endpoint closes: each connection's requests go to `handler` with
/// the caller's node id; a peer whose certificate names no node is closed at once.
pub async fn serve(endpoint: quinn::Endpoint, handler: Arc<dyn Handler>) {
    while let Some(incoming) = endpoint.accept().await {
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    metrics::counter!("updraft_cluster_handshake_failures_total").increment(1);
                    tracing::warn!(%remote, error = %e, "cluster handshake failed");
                    return;
                }
            };
            let from = match peer_node(&conn) {
                NodeBinding::Bound(id) => id,
                other => {
                    metrics::counter!("updraft_cluster_peers_refused_total").increment(1);
                    tracing::warn!(target: "audit", %remote, binding = ?other, "a peer without a node certificate was refused on the cluster port");
                    conn.close(1u32.into(), b"certificate names no cluster node");
                    return;
                }
            };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let answer = match recv.read_to_end(MAX_MESSAGE_BYTES).await {
                        Ok(bytes) => match Envelope::decode(bytes) {
                            Ok(request) => handler.handle(from, request).await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(format!("reading the request: {e}")),
                    };
                    let mut out = Vec::new();
                    match answer {
                        Ok(body) => {
                            out.push(0);
                            out.extend_from_slice(&body);
                        }
                        Err(message) => {
                            out.push(1);
                            out.extend_from_slice(message.as_bytes());
                        }
                    }
                    // The caller may have gone; nothing to do about it here.
                    let _ = send.write_all(&out).await;
                    let _ = send.finish();
                });
            }
        });
    }
}

/// The calling side: one connection per peer, opened on first use and again after it breaks.
pub struct Peers {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    connections: Mutex<HashMap<NodeId, quinn::Connection>>,
    /// Peers that could not be reached, and when: calls within [`RETRY_AFTER`] fail at once
    /// instead of waiting for another handshake timeout.
    down: std::sync::Mutex<HashMap<NodeId, std::time::Instant>>,
}

/// How long an unreachable peer is not dialled again.
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

impl Peers {
    pub fn new(endpoint: quinn::Endpoint, client: quinn::ClientConfig) -> Self {
        Self {
            endpoint,
            client,
            connections: Mutex::new(HashMap::new()),
            down: std::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn connection(
        &self,
        node: NodeId,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<quinn::Connection, TransportError> {
        // The lock is not held while connecting: a dead peer must not hold up calls to the
        // others. Two calls racing to connect to one peer both connect; the last one is kept.
        if let Some(conn) = self.connections.lock().await.get(&node)
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let connect = |reason: String| TransportError::Connect { node, addr, reason };
        let down = |peers: &Self| {
            peers
                .down
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&node)
                .is_some_and(|at| at.elapsed() < RETRY_AFTER)
        };
        if down(self) {
            return Err(connect("unreachable a moment ago".into()));
        }
        let mark_down = |peers: &Self| {
            peers
                .down
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(node, std::time::Instant::now());
        };
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, server_name)
            .map_err(|e| connect(e.to_string()))?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                mark_down(self);
                return Err(connect(e.to_string()));
            }
            Err(_) => {
                mark_down(self);
                return Err(connect(format!("no handshake within {CONNECT_TIMEOUT:?}")));
            }
        };
        let leaf = leaf_der(&conn).unwrap_or_default();
        if let Err(why) = check_peer_node(node, &leaf) {
            conn.close(1u32.into(), b"not the node that was called");
            return Err(TransportError::Identity(why, node));
        }
        self.connections.lock().await.insert(node, conn.clone());
        Ok(conn)
    }

    /// Forgets `conn` as `node`'s connection (a call on it failed): the next call connects
    /// again rather than waiting for the dead one's idle timeout.
    async fn forget(&self, node: NodeId, conn: &quinn::Connection) {
        let mut conns = self.connections.lock().await;
        if conns
            .get(&node)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(&node);
        }
    }

    /// Sends `request` to `node` at `addr` (`server_name`: a name its certificate carries) and
    /// waits for the answer.
    pub async fn call(
        &self,
        node: NodeId,
        addr: SocketAddr,
        server_name: &str,
        request: &Envelope,
    ) -> Result<Vec<u8>, TransportError> {
        let conn = self.connection(node, addr, server_name).await?;
        // A failed stream on a connection the peer closed says why (its close reason), not
        // only that the connection was lost.
        let io = |reason: String| TransportError::Io {
            node,
            reason: match conn.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(close)) => format!(
                    "{reason}: closed by the peer: {}",
                    String::from_utf8_lossy(&close.reason)
                ),
                Some(other) => format!("{reason}: {other}"),
                None => reason,
            },
        };
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(e.to_string()))?;
            send.write_all(&request.encode())
                .await
                .map_err(|e| io(e.to_string()))?;
            send.finish().map_err(|e| io(e.to_string()))?;
            recv.read_to_end(MAX_MESSAGE_BYTES)
                .await
                .map_err(|e| io(e.to_string()))
        };
        let answer = match exchange.await {
            Ok(answer) => answer,
            Err(e) => {
                self.forget(node, &conn).await;
                return Err(e);
            }
        };
        match answer.split_first() {
            Some((0, body)) => Ok(body.to_vec()),
            Some((_, message)) => Err(TransportError::Remote {
                node,
                message: String::from_utf8_lossy(message).into_owned(),
            }),
            None => Err(io("empty answer".into())),
        }
    }
}

#[cfg(test)]
mod tests;

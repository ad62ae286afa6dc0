//! A minimal ingest client for benchmarks: QUIC with mutual TLS 1.3 to a core node, one
//! bidirectional stream per batch, one frame each way (the protocol of `protocols::wire`).
//!
//! It is what an edge agent's uplink does on the wire and nothing more: no buffer, no retries,
//! no fail-over. Any answer other than "stored, every sample, no series rejected" is an error,
//! because a benchmark that silently loses batches measures nothing.

use anyhow::{Context, bail};
use protocols::wire::{ALPN, AckOutcome, MAX_FRAME_BYTES, Message};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ClientConfig, Connection, Endpoint, TransportConfig, VarInt};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// From opening a stream to the complete answer; the core answers after its commit (fsync).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`connect`] keeps trying while the node starts up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// TLS 1.3 only, ring provider, our ALPN, the given client certificate, only `ca` trusted.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots
            .add(c.with_context(|| format!("parsing {}", ca.display()))?)
            .with_context(|| format!("adding {}", ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut transport = TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    let mut client = ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// A client endpoint on an ephemeral loopback port.
pub fn endpoint(config: ClientConfig) -> anyhow::Result<Endpoint> {
    let mut endpoint =
        Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).context("binding QUIC client")?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Connects to `addr` (TLS server name `server_name`), retrying while nothing answers yet:
/// the node binds its QUIC port only after its storage has opened.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> anyhow::Result<Connection> {
    let deadline = Instant::now() + CONNECT_DEADLINE;
    loop {
        let attempt = async {
            let connecting = endpoint.connect(addr, server_name)?;
            anyhow::Ok(tokio::time::timeout(Duration::from_secs(2), connecting).await??)
        };
        match attempt.await {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "core not reachable yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.context(format!("connecting to the core at {addr}"))),
        }
    }
}

/// Sends one `WriteBatch` frame on a new stream and waits for its acknowledgement; returns the
/// samples the core stored. Fails unless the batch was stored whole.
pub async fn send_batch(
    conn: &Connection,
    frame: &[u8],
    expect_sequence: u64,
    expect_samples: u64,
) -> anyhow::Result<u64> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(frame).await?;
        send.finish()?;
        anyhow::Ok(recv.read_to_end(MAX_FRAME_BYTES).await?)
    };
    let answer = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .with_context(|| format!("no answer to batch {expect_sequence} in {EXCHANGE_TIMEOUT:?}"))?
        .with_context(|| format!("exchanging batch {expect_sequence}"))?;
    let ack = match Message::decode(&answer)
        .with_context(|| format!("decoding the answer to batch {expect_sequence}"))?
    {
        Message::BatchAck(ack) => ack,
        other => bail!("the core answered batch {expect_sequence} with {other:?}"),
    };
    if ack.sequence != expect_sequence {
        bail!(
            "answer for sequence {} to batch {expect_sequence}",
            ack.sequence
        );
    }
    match ack.outcome {
        AckOutcome::Stored {
            samples,
            rejected_series: 0,
            ..
        } if samples == expect_samples => Ok(samples),
        other => bail!(
            "batch {expect_sequence} of {expect_samples} samples was not stored whole: {other:?}"
        ),
    }
}

/// Closes a connection and waits (bounded) for the endpoint to go idle.
pub async fn close(endpoint: &Endpoint, conns: &[Connection]) {
    for c in conns {
        c.close(VarInt::from_u32(0), b"done");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

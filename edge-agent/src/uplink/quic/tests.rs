//! The QUIC transport against a minimal in-process core: mutual TLS 1.3 with our ALPN, one
//! stream per batch, and refusal of a core whose certificate does not chain to `--ca`.

use super::*;
use protocols::wire::{AckOutcome, BatchAck, Message};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::server::WebPkiClientVerifier;
use std::path::PathBuf;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("ca cert").pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf certificate and its PKCS#8 key, both PEM.
    fn leaf(&self, sans: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let sans = sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let cert = CertificateParams::new(sans)
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write pem");
    path
}

/// A core that requires a client certificate from `ca`, answers every batch with `Stored`,
/// and reports whether the client presented a certificate.
fn start_core(ca: &Ca, server_ca_for_clients: &Ca) -> (SocketAddr, tokio::task::JoinHandle<bool>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert_pem, key_pem) = ca.leaf(&["localhost", "127.0.0.1", "::1"]);
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca_for_clients.pem.as_bytes()).expect("ca"))
        .expect("root");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("verifier");
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server tls");
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = endpoint.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let Some(incoming) = endpoint.accept().await else {
            return false;
        };
        let Ok(conn) = incoming.await else {
            return false;
        };
        let had_client_cert = conn.peer_identity().is_some();
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return had_client_cert;
        };
        let frame = recv.read_to_end(MAX_FRAME_BYTES).await.expect("read batch");
        let Ok(Message::WriteBatch(batch)) = Message::decode(&frame) else {
            panic!("not a WriteBatch");
        };
        let ack = Message::BatchAck(BatchAck {
            epoch: batch.epoch,
            sequence: batch.sequence,
            outcome: AckOutcome::Stored {
                samples: batch.sample_count() as u64,
                rejected_series: 0,
                rejection: None,
            },
        });
        send.write_all(&ack.encode()).await.expect("write ack");
        send.finish().expect("finish");
        // Keep the connection until the client has read the answer and closed.
        conn.closed().await;
        had_client_cert
    });
    (addr, task)
}

fn batch_frame() -> Bytes {
    Bytes::from(
        Message::WriteBatch(protocols::wire::WriteBatch {
            agent_id: protocols::wire::AgentId("edge-test".into()),
            epoch: 7,
            sequence: 42,
            tenant: protocols::model::Tenant::default(),
            series: vec![],
        })
        .encode(),
    )
}

fn transport(dir: &Path, ca: &Ca, client_ca: &Ca) -> QuicTransport {
    let (cert, key) = client_ca.leaf(&["edge-test"]);
    let tls = client_tls(
        &write(dir, "ca.pem", &ca.pem),
        &write(dir, "agent.pem", &cert),
        &write(dir, "agent-key.pem", &key),
    )
    .expect("client tls");
    QuicTransport::new(tls, &[]).expect("transport")
}

#[tokio::test]
async fn mutual_tls_exchange_with_a_core_addressed_by_ip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (addr, core) = start_core(&ca, &ca);
    let mut t = transport(dir.path(), &ca, &ca);
    let endpoint: CoreEndpoint = format!("127.0.0.1:{}", addr.port())
        .parse()
        .expect("endpoint");

    let answer = t
        .exchange(&endpoint, batch_frame())
        .await
        .expect("exchange");
    let Ok(Message::BatchAck(ack)) = Message::decode(&answer) else {
        panic!("not a BatchAck");
    };
    assert_eq!((ack.epoch, ack.sequence), (7, 42));
    t.close().await;
    assert!(
        core.await.expect("core task"),
        "the agent presented its client certificate"
    );
}

#[tokio::test]
async fn a_core_whose_certificate_is_not_from_our_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, theirs) = (Ca::new(), Ca::new());
    let (addr, core) = start_core(&theirs, &ours);
    let mut t = transport(dir.path(), &ours, &ours);
    let endpoint: CoreEndpoint = format!("127.0.0.1:{}", addr.port())
        .parse()
        .expect("endpoint");

    let result = t.exchange(&endpoint, batch_frame()).await;
    assert!(
        matches!(result, Err(TransportError::Connection(_))),
        "expected a TLS failure, got {result:?}"
    );
    t.close().await;
    core.abort();
}

#[test]
fn missing_or_empty_pem_files_name_the_option() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = write(dir.path(), "empty.pem", "");
    let missing = dir.path().join("missing.pem");
    let err = client_tls(&missing, &empty, &empty)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|m| m.contains("--ca") && m.contains("missing.pem")));
    let err = client_tls(&empty, &empty, &empty)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|m| m.contains("--ca") && m.contains("no certificate")));
}

#[tokio::test]
async fn every_configured_core_is_measured_before_any_batch_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (addr, core) = start_core(&ca, &ca);
    let (cert, key) = ca.leaf(&["edge-test"]);
    let tls = client_tls(
        &write(dir.path(), "ca.pem", &ca.pem),
        &write(dir.path(), "agent.pem", &cert),
        &write(dir.path(), "agent-key.pem", &key),
    )
    .expect("client tls");
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let endpoints: Vec<CoreEndpoint> = [addr, silent.local_addr().expect("addr")]
        .iter()
        .map(|a| format!("127.0.0.1:{}", a.port()).parse().expect("endpoint"))
        .collect();
    let mut t = QuicTransport::new(tls, &endpoints).expect("transport");
    let measured = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let [Some(rtt), None] = t.rtts(&endpoints)[..] {
                return rtt;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the live core gets a round-trip time, the silent one none");
    assert!(
        measured < Duration::from_secs(1),
        "loopback rtt {measured:?}"
    );
    t.close().await;
    assert!(
        core.await.expect("core task"),
        "client certificate presented"
    );
}

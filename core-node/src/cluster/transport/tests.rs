//! Real QUIC endpoints on loopback: who may talk to a node, and what reaches its handler.

use super::*;
use crate::certs::{CertRequest, ensure, ensure_node};

/// Answers with who called, for which group, and the body.
struct Echo;

impl Handler for Echo {
    fn handle(&self, from: NodeId, request: Envelope) -> Answer {
        Box::pin(async move {
            if request.kind == 9 {
                return Err("kind 9 is refused".into());
            }
            let mut out = format!(
                "from {from} group {} kind {}: ",
                request.group.0, request.kind
            )
            .into_bytes();
            out.extend_from_slice(&request.body);
            Ok(out)
        })
    }
}

/// A CA with node certificates 1, 2 and an agent certificate in `dir`.
fn certs(dir: &Path) {
    ensure(&CertRequest {
        dir: dir.to_path_buf(),
        core_hosts: CertRequest::default_hosts(),
        agent_id: "edge-1".into(),
        agent_tenant: protocols::Tenant::default(),
        force: false,
    })
    .expect("ca");
    for id in [1, 2] {
        ensure_node(dir, id, &CertRequest::default_hosts(), false).expect("node certificate");
    }
}

fn tls(dir: &Path, name: &str) -> NodeTls {
    node_tls(
        &dir.join("ca.pem"),
        &dir.join(format!("{name}.pem")),
        &dir.join(format!("{name}-key.pem")),
    )
    .expect("tls")
}

/// A node listening on a loopback port, serving `Echo`.
fn listen(tls: &NodeTls) -> (quinn::Endpoint, SocketAddr) {
    let endpoint =
        quinn::Endpoint::server(tls.server.clone(), "127.0.0.1:0".parse().expect("addr"))
            .expect("endpoint");
    let addr = endpoint.local_addr().expect("addr");
    tokio::spawn(serve(endpoint.clone(), Arc::new(Echo)));
    (endpoint, addr)
}

fn caller(tls: &NodeTls) -> Peers {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    Peers::new(endpoint, tls.client.clone())
}

fn request(group: u32, kind: u8, body: &[u8]) -> Envelope {
    Envelope {
        group: GroupId(group),
        kind,
        body: body.to_vec(),
    }
}

#[tokio::test]
async fn nodes_of_one_cluster_call_each_other_on_one_connection() {
    crate::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    certs(dir.path());
    let (_server, addr) = listen(&tls(dir.path(), "node-2"));
    let one = caller(&tls(dir.path(), "node-1"));
    for group in [3, 7] {
        let answer = one
            .call(2, addr, "localhost", &request(group, 1, b"hello"))
            .await
            .expect("answered");
        assert_eq!(
            String::from_utf8(answer).expect("utf-8"),
            format!("from 1 group {group} kind 1: hello")
        );
    }
    assert_eq!(
        one.connections.lock().await.len(),
        1,
        "one connection for every group"
    );
    match one.call(2, addr, "localhost", &request(3, 9, b"")).await {
        Err(TransportError::Remote { node: 2, message }) => {
            assert_eq!(message, "kind 9 is refused")
        }
        other => panic!("expected the handler's error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_agent_certificate_cannot_talk_to_a_node() {
    crate::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    certs(dir.path());
    let (_server, addr) = listen(&tls(dir.path(), "node-2"));
    // Same CA, but the certificate names an agent, not a node.
    let agent = caller(&tls(dir.path(), "agent"));
    let err = agent
        .call(2, addr, "localhost", &request(1, 1, b"vote for me"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("names no cluster node"), "{err}");
}

#[tokio::test]
async fn a_node_of_another_cluster_cannot_connect() {
    crate::install_crypto_provider();
    let ours = tempfile::tempdir().expect("tempdir");
    let theirs = tempfile::tempdir().expect("tempdir");
    certs(ours.path());
    certs(theirs.path());
    let (_server, addr) = listen(&tls(ours.path(), "node-2"));
    // Node 1 of another CA: the handshake fails on both sides' chain checks.
    let stranger = caller(&tls(theirs.path(), "node-1"));
    let err = stranger
        .call(2, addr, "localhost", &request(1, 1, b""))
        .await
        .expect_err("refused");
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn a_caller_refuses_a_node_that_is_not_the_one_it_called() {
    crate::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    certs(dir.path());
    let (_server, addr) = listen(&tls(dir.path(), "node-2"));
    let one = caller(&tls(dir.path(), "node-1"));
    // Node 3 was expected at this address; node 2 answers.
    match one.call(3, addr, "localhost", &request(1, 1, b"")).await {
        Err(TransportError::Identity(why, 3)) => assert!(why.contains("names node 2"), "{why}"),
        other => panic!("expected an identity refusal, got {other:?}"),
    }
}

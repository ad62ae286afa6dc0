//! The core's HTTP API over TLS (`--http-tls-cert/--http-tls-key`), against the real binary:
//! a client trusting the `core-node certs` CA gets its answers, plain HTTP and TLS 1.2 (off by
//! default) get nowhere, and a certificate replaced on disk is served without a restart,
//! while a broken replacement leaves the previous one in service.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use updraft_tests::*;

/// A TLS client trusting only `ca`, limited to `versions`, without session resumption.
fn client(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every request a full handshake: a resumed session shows the certificate of the session
    // it resumes, not the one the server would serve a new client.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// GET `path` over TLS (server name `localhost`): status, body and the served leaf (DER).
fn https_get(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let conn = rustls::ClientConnection::new(
        Arc::clone(config),
        ServerName::try_from("localhost")?.to_owned(),
    )?;
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // Some servers close without close_notify; what was read is complete (Connection: close).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body, leaf))
}

/// The error of a request expected to fail its TLS handshake; panics if it got an answer.
fn tls_refusal(outcome: anyhow::Result<(u16, String, Vec<u8>)>) -> String {
    match outcome {
        Ok((status, body, _)) => panic!("expected a TLS refusal, got {status}: {body}"),
        Err(e) => format!("{e:#}"),
    }
}

fn leaf_on_disk(certs: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_file(certs.join("core.pem"))?.to_vec())
}

#[test]
fn https_answers_trusting_clients_and_serves_a_replaced_certificate_without_restart()
-> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let quic = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let mut cmd = core_command(&work.path().join("core-data"), http, quic, &certs);
    // The same certificate `core-node certs` made for QUIC serves HTTPS.
    cmd.arg("--http-tls-cert")
        .arg(certs.join("core.pem"))
        .arg("--http-tls-key")
        .arg(certs.join("core-key.pem"))
        .arg("--insecure-dev-mode");
    let core = Process::spawn("core-node", cmd, work.path().join("core.log"))?;
    let tls13 = client(&certs.join("ca.pem"), &[&rustls::version::TLS13])?;
    let (status, body, served) = wait_for("https /health", Duration::from_secs(30), || {
        https_get(&tls13, http, "/health").ok()
    })?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served, leaf_on_disk(&certs)?);
    let (status, body, _) = https_get(&tls13, http, "/api/v1/query?query=1%2B1")?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"2\""), "{body}");

    // Plain HTTP to the TLS port gets no answer (the port is open: a refused connection
    // would say nothing about TLS).
    match http_get(&format!("http://{http}/health")) {
        Ok((status, body)) => panic!("plain HTTP was served: {status} {body}"),
        Err(e) => assert!(!format!("{e:#}").contains("refused"), "{e:#}"),
    }
    // TLS 1.2 is off unless --tls-min-version 1.2: refused for its version, not any failure.
    let tls12 = client(&certs.join("ca.pem"), &[&rustls::version::TLS12])?;
    let refusal = tls_refusal(https_get(&tls12, http, "/health"));
    assert!(refusal.contains("ProtocolVersion"), "{refusal}");
    // A client trusting another CA refuses the core's certificate.
    let other = work.path().join("other");
    make_certs(&other)?;
    let stranger = client(&other.join("ca.pem"), &[&rustls::version::TLS13])?;
    let refusal = tls_refusal(https_get(&stranger, http, "/health"));
    assert!(refusal.contains("invalid peer certificate"), "{refusal}");

    // Replace the certificate on disk (same CA): new connections get it, no restart.
    let before = served;
    let out = Command::new(binary("core-node"))
        .args(["certs", "--force", "--agent-id", "test-agent", "--dir"])
        .arg(&certs)
        .output()?;
    assert!(out.status.success());
    let after = leaf_on_disk(&certs)?;
    assert_ne!(before, after);
    let mut last = None;
    let swapped = wait_for(
        "the new certificate served",
        Duration::from_secs(30),
        || {
            let got = https_get(&tls13, http, "/health");
            let ok = matches!(&got, Ok((200, _, served)) if *served == after);
            last = Some(got.map(|(s, b, c)| (s, b, c == before)));
            ok.then_some(())
        },
    );
    assert!(swapped.is_ok(), "last answer: {last:?}");
    let reloads_ok = |text: &str| {
        metric_sum(
            text,
            "updraft_core_tls_reloads_total",
            Some("result=\"ok\""),
        )
    };
    let (_, metrics, _) = https_get(&tls13, http, "/metrics")?;
    assert!(reloads_ok(&metrics) >= 1.0, "{metrics}");

    // A broken replacement: counted, and the previous certificate stays in service.
    std::fs::write(
        certs.join("core.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )?;
    wait_for("a failed reload counted", Duration::from_secs(30), || {
        let (_, metrics, _) = https_get(&tls13, http, "/metrics").ok()?;
        let failed = metric_sum(
            &metrics,
            "updraft_core_tls_reloads_total",
            Some("result=\"failed\""),
        );
        (failed >= 1.0).then_some(())
    })?;
    let (status, _, served) = https_get(&tls13, http, "/health")?;
    assert_eq!(status, 200);
    assert_eq!(served, after);
    assert!(core.log_text().contains("still serving the previous one"));
    Ok(())
}

//! TLS for the QUIC ingest listener: TLS 1.3 only, ring provider, mutual authentication
//! (every agent presents a certificate signed by the configured CA).

use anyhow::Context;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// PEM files of one endpoint: the CA it trusts, its certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `<name>.pem`, `<name>-key.pem` in `dir` (the `certs` subcommand's layout).
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The QUIC server configuration for the ingest listener.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<quinn::ServerConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&files.ca)
        .with_context(|| format!("reading CA {}", files.ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("parsing CA {}", files.ca.display()))?)
            .with_context(|| format!("adding CA {}", files.ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading certificate {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading key {}", files.key.display()))?;

    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .context("building the client certificate verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("selecting TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("loading the server certificate")?;
    tls.alpn_protocols = vec![protocols::wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("building the QUIC TLS configuration")?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

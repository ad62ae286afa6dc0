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

/// The QUIC endpoint configuration of a core, with keys that survive restarts.
///
/// A restarted node must recognise the connection ids it handed out before (else quinn drops
/// their packets as invalid) and answer them with a stateless reset the agent can verify (else
/// the agent ignores it): then an agent's next packet after a restart closes its old
/// connection at once and it reconnects, instead of waiting for its timeouts. quinn's default
/// draws both keys at random per process; here both derive from one secret kept in
/// `<data-dir>/quic-reset.key`.
pub fn endpoint_config(data_dir: &Path) -> anyhow::Result<quinn::EndpointConfig> {
    let key = stateless_reset_key(data_dir)?;
    let tag = ring::hmac::sign(&key, b"updraft connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// The key that signs QUIC stateless resets (see [`endpoint_config`]).
pub fn stateless_reset_key(data_dir: &Path) -> anyhow::Result<ring::hmac::Key> {
    use std::io::Write;
    let path = data_dir.join("quic-reset.key");
    let secret = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 32 => bytes,
        Ok(bytes) => anyhow::bail!(
            "{} holds {} bytes, expected 32: remove it to create a new key",
            path.display(),
            bytes.len()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| anyhow::anyhow!("no system randomness for the QUIC reset key"))?;
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let tmp = path.with_extension("tmp");
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(&secret)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path).with_context(|| format!("creating {}", path.display()))?;
            secret
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = stateless_reset_key(dir.path()).expect("created");
        let b = stateless_reset_key(dir.path()).expect("reused");
        let sign = |k: &ring::hmac::Key| ring::hmac::sign(k, b"x").as_ref().to_vec();
        assert_eq!(sign(&a), sign(&b));
        std::fs::write(dir.path().join("quic-reset.key"), b"short").expect("write");
        assert!(stateless_reset_key(dir.path()).is_err());
    }
}

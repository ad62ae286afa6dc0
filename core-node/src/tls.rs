//! TLS for both listeners, always with the ring provider:
//!
//! - QUIC ingest ([`server_config`]): TLS 1.3 only, mutual authentication (every agent
//!   presents a certificate signed by the configured CA).
//! - The HTTP API ([`HttpTls`]), when `--http-tls-cert`/`--http-tls-key` are given: TLS 1.3
//!   only unless `--tls-min-version 1.2`, server authentication only (clients send API
//!   tokens). Its certificate is reloaded without a restart: [`ReloadingCert`] answers every
//!   handshake with the certificate behind an `Arc` that [`watch_reloads`] swaps when the
//!   files change on disk (checked every [`RELOAD_CHECK_INTERVAL`]) or on SIGHUP. A reload
//!   that fails (unreadable files, a key that does not match the certificate, a half-written
//!   pair) keeps the previous certificate, logs a warning and counts
//!   `updraft_core_tls_reloads_total{result="failed"}`; connections already open keep theirs.

use anyhow::Context;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// How often the HTTP listener's certificate files are checked for changes.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

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

/// The oldest TLS version the HTTP listener accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum TlsMinVersion {
    /// TLS 1.2 and 1.3, for clients that cannot speak 1.3 yet.
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[default]
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    Tls13,
}

/// The HTTP listener's certificate files and protocol floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub min_version: TlsMinVersion,
}

/// What the HTTP listener needs for TLS: the acceptor, and the certificate it serves (for
/// reloads).
#[derive(Clone)]
pub struct HttpTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub cert: Arc<ReloadingCert>,
}

impl HttpTls {
    /// Loads the certificate and key (a failure here stops the start) and builds the acceptor.
    pub fn new(files: &HttpTlsFiles) -> anyhow::Result<Self> {
        let cert = Arc::new(ReloadingCert::load(&files.cert, &files.key)?);
        let versions: &[&'static rustls::SupportedProtocolVersion] = match files.min_version {
            TlsMinVersion::Tls13 => &[&rustls::version::TLS13],
            TlsMinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .context("selecting the TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&cert) as Arc<dyn rustls::server::ResolvesServerCert>);
        // The listener speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            cert,
        })
    }
}

/// Size and modification time of a certificate/key pair: what "changed on disk" means.
type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [one(cert), one(key)]
}

/// A server certificate that can be replaced while the listener runs (see the module docs).
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamp at the last load attempt, successful or not: a failed pair is not
    /// retried until one of the files changes again (or SIGHUP asks).
    seen: Mutex<Stamp>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let seen = stamp(cert, key);
        let loaded = load_certified_key(cert, key)?;
        Ok(Self {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: RwLock::new(Arc::new(loaded)),
            seen: Mutex::new(seen),
        })
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reloads when the files changed since the last attempt (or always, with `force`).
    /// `None`: nothing to do; `Some(Err)`: the previous certificate stays.
    pub fn reload(&self, force: bool) -> Option<anyhow::Result<()>> {
        let now = stamp(&self.cert_path, &self.key_path);
        {
            let mut seen = match self.seen.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            if !force && *seen == now {
                return None;
            }
            *seen = now;
        }
        let loaded = match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(loaded),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(loaded),
        }
        Some(Ok(()))
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// SHA-256 of a certificate's DER, in hex (as `openssl x509 -fingerprint -sha256` shows it,
/// without the colons): how the logs name the certificate being served.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    ring::digest::digest(&ring::digest::SHA256, cert.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn load_certified_key(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading key {}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .with_context(|| format!("loading key {}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().with_context(|| {
        format!(
            "key {} does not belong to certificate {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

/// Checks the HTTP certificate files every [`RELOAD_CHECK_INTERVAL`], and at once on SIGHUP,
/// until `shutdown` resolves.
pub async fn watch_reloads(
    cert: Arc<ReloadingCert>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(RELOAD_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<()>();
        let force = tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => false,
            () = sighup => true,
        };
        let c = Arc::clone(&cert);
        let outcome = match tokio::task::spawn_blocking(move || c.reload(force)).await {
            Ok(o) => o,
            Err(e) => Some(Err(anyhow::anyhow!("reload task failed: {e}"))),
        };
        match outcome {
            None => {}
            Some(Ok(())) => {
                let served = cert.current();
                let fp = served.cert.first().map(fingerprint).unwrap_or_default();
                metrics::counter!("updraft_core_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(
                    cert = %cert.cert_path.display(),
                    sha256 = %fp,
                    sighup = force,
                    "HTTP TLS certificate reloaded"
                );
            }
            Some(Err(e)) => {
                metrics::counter!("updraft_core_tls_reloads_total", "result" => "failed")
                    .increment(1);
                tracing::warn!(
                    cert = %cert.cert_path.display(),
                    error = format!("{e:#}"),
                    "HTTP TLS certificate reload failed; still serving the previous one"
                );
            }
        }
    }
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
    fn http_certificate_reloads_when_changed_and_keeps_the_old_one_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut req = crate::certs::CertRequest {
            dir: dir.path().to_path_buf(),
            core_hosts: crate::certs::CertRequest::default_hosts(),
            agent_id: "edge-1".into(),
            agent_tenant: protocols::Tenant::default(),
            force: false,
        };
        crate::certs::ensure(&req).expect("certs");
        let (cert, key) = (dir.path().join("core.pem"), dir.path().join("core-key.pem"));
        let served = ReloadingCert::load(&cert, &key).expect("load");
        let fp = |c: &ReloadingCert| fingerprint(&c.current().cert[0]);
        let first = fp(&served);
        assert!(
            served.reload(false).is_none(),
            "unchanged files are not reloaded"
        );

        req.force = true;
        crate::certs::ensure(&req).expect("re-issued");
        assert!(matches!(served.reload(true), Some(Ok(()))));
        let second = fp(&served);
        assert_ne!(first, second);

        // A key that does not match the certificate: the previous pair stays.
        std::fs::copy(dir.path().join("agent-key.pem"), &key).expect("copy");
        assert!(matches!(served.reload(true), Some(Err(_))));
        assert_eq!(fp(&served), second);
        std::fs::write(&cert, "not a certificate").expect("write");
        assert!(matches!(served.reload(true), Some(Err(_))));
        assert_eq!(fp(&served), second);
    }

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

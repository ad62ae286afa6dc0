//! TLS for both listeners, always with the ring provider:
//!
//! - QUIC ingest ([`server_config`]): TLS 1.3 only, mutual authentication (every agent
//!   presents a certificate signed by the configured CA). Reloaded without a restart: when
//!   the CA, certificate or key file changes (checked every [`RELOAD_CHECK_INTERVAL`]) or on
//!   SIGHUP, [`QuicCert`] builds a whole new server configuration from the three files and
//!   hands it to quinn's `Endpoint::set_server_config`: new handshakes use it, connections
//!   already open keep theirs. A configuration that does not build keeps the previous one.
//! - The HTTP API ([`HttpTls`]), when `--http-tls-cert`/`--http-tls-key` are given: TLS 1.3
//!   only unless `--tls-min-version 1.2`, server authentication only (clients send API
//!   tokens). Its certificate is reloaded without a restart: [`ReloadingCert`] answers every
//!   handshake with the certificate behind an `Arc` that [`watch_reloads`] swaps when the
//!   files change on disk (checked every [`RELOAD_CHECK_INTERVAL`]) or on SIGHUP. A reload
//!   that fails (unreadable files, a key that does not match the certificate, a half-written
//!   pair) keeps the previous certificate, logs a warning and counts
//!   `updraft_core_tls_reloads_total{listener="http",result="failed"}` (`listener="quic"` for
//!   the QUIC listener); connections already open keep theirs.

use anyhow::Context;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// How often the listeners' certificate files are checked for changes.
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
    if chain.is_empty() {
        anyhow::bail!("no certificate in {}", files.cert.display());
    }
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

fn file_stamp(p: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(p)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [file_stamp(cert), file_stamp(key)]
}

/// Size and modification time of the QUIC listener's CA, certificate and key files, taken
/// before they are loaded (see [`QuicCert::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicStamp([Option<(SystemTime, u64)>; 3]);

impl QuicStamp {
    pub fn of(files: &TlsFiles) -> Self {
        Self([
            file_stamp(&files.ca),
            file_stamp(&files.cert),
            file_stamp(&files.key),
        ])
    }
}

/// The QUIC listener's TLS configuration, replaced in its endpoint when its files change
/// (see the module docs).
pub struct QuicCert {
    files: TlsFiles,
    endpoint: quinn::Endpoint,
    /// The files' stamp at the last load attempt, successful or not.
    seen: Mutex<QuicStamp>,
    /// The listener's flow-control limits, kept across reloads.
    transport: Option<Arc<quinn::TransportConfig>>,
}

impl std::fmt::Debug for QuicCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl QuicCert {
    /// `seen`: the stamp of `files` taken before `endpoint`'s server configuration was built
    /// from them, so a change made in between is not missed.
    pub fn new(files: TlsFiles, endpoint: quinn::Endpoint, seen: QuicStamp) -> Self {
        Self {
            files,
            endpoint,
            seen: Mutex::new(seen),
            transport: None,
        }
    }

    /// Every configuration this installs carries `transport` (the listener's limits).
    pub fn with_transport(mut self, transport: Arc<quinn::TransportConfig>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Rebuilds the server configuration when a file changed since the last attempt (or
    /// always, with `force`) and installs it for new connections. `None`: nothing to do;
    /// `Some(Ok(fingerprint))`: the new certificate's SHA-256; `Some(Err)`: the previous
    /// configuration stays.
    pub fn reload(&self, force: bool) -> Option<anyhow::Result<String>> {
        let now = QuicStamp::of(&self.files);
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
        let mut config = match server_config(&self.files) {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        if let Some(t) = &self.transport {
            config.transport_config(Arc::clone(t));
        }
        self.endpoint.set_server_config(Some(config));
        Some(Ok(leaf_fingerprint(&self.files.cert)))
    }
}

/// The SHA-256 of the first certificate in a PEM file (empty if it does not read).
fn leaf_fingerprint(cert: &Path) -> String {
    CertificateDer::pem_file_iter(cert)
        .ok()
        .and_then(|mut certs| certs.next())
        .and_then(Result::ok)
        .map(|c| fingerprint(&c))
        .unwrap_or_default()
}

/// A listener certificate that [`watch_reloads`] keeps current.
pub trait Reloadable: Send + Sync + 'static {
    /// `http` or `quic`: the `listener` label and the log's wording.
    fn listener(&self) -> &'static str;
    /// The certificate file, for the log.
    fn cert_path(&self) -> &Path;
    /// As [`QuicCert::reload`].
    fn try_reload(&self, force: bool) -> Option<anyhow::Result<String>>;
}

impl Reloadable for QuicCert {
    fn listener(&self) -> &'static str {
        "quic"
    }
    fn cert_path(&self) -> &Path {
        &self.files.cert
    }
    fn try_reload(&self, force: bool) -> Option<anyhow::Result<String>> {
        self.reload(force)
    }
}

impl Reloadable for ReloadingCert {
    fn listener(&self) -> &'static str {
        "http"
    }
    fn cert_path(&self) -> &Path {
        &self.cert_path
    }
    fn try_reload(&self, force: bool) -> Option<anyhow::Result<String>> {
        self.reload(force).map(|r| {
            r.map(|()| {
                self.current()
                    .cert
                    .first()
                    .map(fingerprint)
                    .unwrap_or_default()
            })
        })
    }
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

/// Checks a listener's certificate files every [`RELOAD_CHECK_INTERVAL`], and at once on
/// SIGHUP, until `shutdown` resolves.
pub async fn watch_reloads<R: Reloadable>(
    cert: Arc<R>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Both outcomes exist from the start, so "no reload yet" reads 0, not "no such metric".
    for result in ["ok", "failed"] {
        metrics::counter!(
            "updraft_core_tls_reloads_total",
            "listener" => cert.listener(),
            "result" => result
        )
        .absolute(0);
    }
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
        let outcome = match tokio::task::spawn_blocking(move || c.try_reload(force)).await {
            Ok(o) => o,
            Err(e) => Some(Err(anyhow::anyhow!("reload task failed: {e}"))),
        };
        let listener = cert.listener();
        let name = listener.to_uppercase();
        match outcome {
            None => {}
            Some(Ok(fp)) => {
                metrics::counter!(
                    "updraft_core_tls_reloads_total",
                    "listener" => listener,
                    "result" => "ok"
                )
                .increment(1);
                tracing::info!(
                    cert = %cert.cert_path().display(),
                    sha256 = %fp,
                    sighup = force,
                    "{name} TLS certificate reloaded"
                );
            }
            Some(Err(e)) => {
                metrics::counter!(
                    "updraft_core_tls_reloads_total",
                    "listener" => listener,
                    "result" => "failed"
                )
                .increment(1);
                tracing::warn!(
                    cert = %cert.cert_path().display(),
                    error = format!("{e:#}"),
                    "{name} TLS certificate reload failed; still serving the previous one"
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

    fn issue(dir: &Path) {
        crate::certs::ensure(&crate::certs::CertRequest {
            dir: dir.to_path_buf(),
            core_hosts: crate::certs::CertRequest::default_hosts(),
            agent_id: "edge-1".into(),
            agent_tenant: protocols::Tenant::default(),
            force: false,
        })
        .expect("certs");
    }

    /// The core's three files from `from` into `to` (as an operator replacing them would).
    fn install_core_files(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("dir");
        for f in ["ca.pem", "core-key.pem", "core.pem"] {
            std::fs::copy(from.join(f), to.join(f)).expect("copy");
        }
    }

    /// An agent trusting `dir`'s CA and presenting `dir`'s agent certificate; `Some` when
    /// the handshake with `server` succeeds.
    async fn agent_connects(
        dir: &Path,
        server: std::net::SocketAddr,
    ) -> Option<(quinn::Endpoint, quinn::Connection)> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("ca") {
            roots.add(c.expect("pem")).expect("root");
        }
        let chain = CertificateDer::pem_file_iter(dir.join("agent.pem"))
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("pem");
        let key = PrivateKeyDer::from_pem_file(dir.join("agent-key.pem")).expect("key");
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls 1.3")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client certificate");
        tls.alpn_protocols = vec![protocols::wire::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
        let mut endpoint = quinn::Endpoint::client(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("client endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let connecting = endpoint.connect(server, "localhost").expect("connect");
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .ok()?
            .ok()?;
        Some((endpoint, conn))
    }

    /// One echo round trip on a new stream of `conn`.
    async fn echoes(conn: &quinn::Connection) -> bool {
        let round_trip = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            send.write_all(b"ping").await.ok()?;
            send.finish().ok()?;
            recv.read_to_end(16).await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(10), round_trip).await,
            Ok(Some(echo)) if echo == b"ping"
        )
    }

    #[tokio::test]
    async fn quic_config_reloads_for_new_handshakes_keeps_open_connections_and_survives_bad_files()
    {
        crate::install_crypto_provider();
        let work = tempfile::tempdir().expect("tempdir");
        let (a, b, live) = (
            work.path().join("a"),
            work.path().join("b"),
            work.path().join("live"),
        );
        issue(&a);
        issue(&b); // another CA
        install_core_files(&a, &live);
        let files = TlsFiles::in_dir(&live, "core");
        let seen = QuicStamp::of(&files);
        let endpoint = quinn::Endpoint::server(
            server_config(&files).expect("config"),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .expect("server");
        let addr = endpoint.local_addr().expect("addr");
        let server = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let Ok(data) = recv.read_to_end(16).await else {
                            return;
                        };
                        let _ = send.write_all(&data).await;
                        let _ = send.finish();
                    }
                });
            }
        });
        let quic = QuicCert::new(files.clone(), endpoint.clone(), seen);

        let (_ep_a, conn_a) = agent_connects(&a, addr).await.expect("CA a agent connects");
        assert!(echoes(&conn_a).await);
        assert!(
            agent_connects(&b, addr).await.is_none(),
            "CA b is not served yet"
        );
        assert!(
            quic.reload(false).is_none(),
            "unchanged files are not reloaded"
        );

        // A broken certificate: refused, the previous configuration stays.
        std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("write");
        assert!(matches!(quic.reload(false), Some(Err(_))));
        assert!(
            quic.reload(false).is_none(),
            "a failed pair is retried on change only"
        );
        assert!(
            agent_connects(&a, addr).await.is_some(),
            "still the old config"
        );

        // The other CA's files: new handshakes get them, the open connection carries on.
        install_core_files(&b, &live);
        let fp = match quic.reload(false) {
            Some(Ok(fp)) => fp,
            other => panic!("reload: {other:?}"),
        };
        assert_eq!(fp, leaf_fingerprint(&b.join("core.pem")));
        assert!(
            agent_connects(&b, addr).await.is_some(),
            "CA b agent connects"
        );
        assert!(
            agent_connects(&a, addr).await.is_none(),
            "CA a agent refused"
        );
        assert!(echoes(&conn_a).await, "the open connection continues");

        // SIGHUP's forced reload of unchanged files succeeds too.
        assert!(matches!(quic.reload(true), Some(Ok(_))));
        endpoint.close(0u32.into(), b"done");
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

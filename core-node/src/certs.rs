//! A local certificate authority for development and small deployments (`core-node certs`).
//!
//! Files written into the target directory (PEM; keys are PKCS#8, mode 0600):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | the CA that signs everything below; both sides trust only it |
//! | `core.pem`, `core-key.pem` | the core's server certificate (SANs: the `--host` names) |
//! | `agent.pem`, `agent-key.pem` | an edge agent's client certificate (CN = agent id, SAN URIs `updraft://tenant/<tenant>` and `updraft://agent/<agent id>`) |
//! | `node-<id>.pem`, `node-<id>-key.pem` | with `--node-id ID`: a cluster node's certificate for inter-node mutual TLS (server and client; SANs: the `--host` names and the URI `updraft://node/<id>`) |
//!
//! The core certificate serves both of the core's listeners: QUIC ingest and, with
//! `--http-tls-cert certs/core.pem --http-tls-key certs/core-key.pem`, the HTTP API (server
//! authentication, SANs = the `--host` names, which is what HTTPS clients check).
//!
//! The agent certificate binds the agent to one tenant and one agent id: the core refuses its
//! batches for any other tenant or agent id (see [`tenant_of`], [`agent_of`] and
//! `ingest.rs`). The agent id is read from the SAN URI only, never from the CN: certificates
//! issued before the binding existed carry the id in their CN too, and must not start being
//! held to it silently.
//! A node certificate names its node id the same way ([`node_of`]): a node refuses a peer
//! whose certificate does not name the id it claims ([`check_peer_node`]), so neither an agent
//! certificate nor another node's can speak for a node (the cluster's transport uses it).
//! Existing files are kept, so running the command again only fills in what is missing; an
//! existing CA is reused to sign new leaves. `--force` re-issues the leaf certificates.

use anyhow::{Context, bail};
use protocols::Tenant;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::fs;
use std::path::{Path, PathBuf};

/// The SAN URI prefix that names an agent certificate's tenant.
pub const TENANT_URI_PREFIX: &str = "updraft://tenant/";
/// The SAN URI prefix that names an agent certificate's agent id.
pub const AGENT_URI_PREFIX: &str = "updraft://agent/";
/// The SAN URI prefix that names a node certificate's node id.
pub const NODE_URI_PREFIX: &str = "updraft://node/";

/// What to create.
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub dir: PathBuf,
    /// DNS names and IP addresses the core is reached at.
    pub core_hosts: Vec<String>,
    /// The agent id written into the agent certificate's common name and its
    /// `updraft://agent/<id>` SAN URI (ASCII, no whitespace).
    pub agent_id: String,
    /// The tenant the agent certificate binds the agent to.
    pub agent_tenant: Tenant,
    /// Re-issue leaf certificates that already exist.
    pub force: bool,
}

impl CertRequest {
    /// Names a local deployment answers to.
    pub fn default_hosts() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    }
}

/// Creates whatever of the files above is missing and returns the paths written.
pub fn ensure(req: &CertRequest) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(&req.dir)
        .with_context(|| format!("creating certificate directory {}", req.dir.display()))?;
    let mut written = Vec::new();

    let ca_cert_path = req.dir.join("ca.pem");
    let ca_key_path = req.dir.join("ca-key.pem");
    let ca_params = ca_params()?;
    let ca_key = match (ca_cert_path.exists(), ca_key_path.exists()) {
        (true, true) => {
            let pem = fs::read_to_string(&ca_key_path)
                .with_context(|| format!("reading {}", ca_key_path.display()))?;
            KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", ca_key_path.display()))?
        }
        (false, false) => {
            let key = KeyPair::generate()?;
            let cert = ca_params.self_signed(&key)?;
            write_file(&ca_cert_path, &cert.pem(), false)?;
            write_file(&ca_key_path, &key.serialize_pem(), true)?;
            written.extend([ca_cert_path.clone(), ca_key_path.clone()]);
            key
        }
        _ => bail!(
            "found only one of {} and {}: restore the other or remove both",
            ca_cert_path.display(),
            ca_key_path.display()
        ),
    };
    // The issuer is rebuilt from the same fixed parameters and the CA's key: subject name and
    // key identifier (derived from the public key) equal those in `ca.pem`, so leaves issued
    // in different runs chain to the same CA.
    let issuer = Issuer::new(ca_params, ca_key);

    let core = leaf_params(
        "updraft-core",
        &req.core_hosts,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    written.extend(issue_leaf(&req.dir, "core", core, &issuer, req.force)?);
    let mut agent = leaf_params(
        &req.agent_id,
        std::slice::from_ref(&req.agent_id),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    agent.subject_alt_names.push(SanType::URI(
        format!("{TENANT_URI_PREFIX}{}", req.agent_tenant.as_str()).try_into()?,
    ));
    if req.agent_id.is_empty() || !req.agent_id.chars().all(|c| c.is_ascii_graphic()) {
        bail!(
            "agent id {:?}: use printable ASCII without spaces (it goes into a SAN URI)",
            req.agent_id
        );
    }
    agent.subject_alt_names.push(SanType::URI(
        format!("{AGENT_URI_PREFIX}{}", req.agent_id).try_into()?,
    ));
    written.extend(issue_leaf(&req.dir, "agent", agent, &issuer, req.force)?);
    Ok(written)
}

/// Creates `node-<id>.pem` and its key in `dir`, signed by the CA there (which [`ensure`]
/// creates), unless they exist and `force` is off; returns the paths written.
pub fn ensure_node(
    dir: &Path,
    node_id: u64,
    hosts: &[String],
    force: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let key_path = dir.join("ca-key.pem");
    let pem = fs::read_to_string(&key_path).with_context(|| {
        format!(
            "reading {} (create the CA first with `core-node certs`)",
            key_path.display()
        )
    })?;
    let ca_key =
        KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", key_path.display()))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = leaf_params(
        &format!("updraft-node-{node_id}"),
        hosts,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    // Nodes dial each other: the same certificate serves and authenticates the client side.
    params
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::ClientAuth);
    params.subject_alt_names.push(SanType::URI(
        format!("{NODE_URI_PREFIX}{node_id}").try_into()?,
    ));
    issue_leaf(dir, &format!("node-{node_id}"), params, &issuer, force)
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Updraft local CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    Ok(params)
}

fn leaf_params(
    common_name: &str,
    hosts: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(h.as_str().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    Ok(params)
}

fn issue_leaf(
    dir: &Path,
    name: &str,
    params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    force: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    if !force && cert_path.exists() && key_path.exists() {
        return Ok(Vec::new());
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write_file(&cert_path, &cert.pem(), false)?;
    write_file(&key_path, &key.serialize_pem(), true)?;
    Ok(vec![cert_path, key_path])
}

/// What a client certificate says about its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantBinding {
    /// Exactly one `updraft://tenant/<t>` SAN URI.
    Bound(Tenant),
    /// No such URI (a certificate from before tenants were bound).
    Unbound,
    /// Several, or one that is not a valid tenant, or an unreadable certificate.
    Invalid(String),
}

/// The SAN URIs of a (DER) certificate that start with `prefix`, with the prefix removed.
fn san_uris(der: &[u8], prefix: &str) -> Result<Vec<String>, String> {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert,
        Err(e) => return Err(format!("unreadable certificate: {e}")),
    };
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.clone(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("unreadable subject alt names: {e}")),
    };
    Ok(names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => {
                uri.strip_prefix(prefix).map(str::to_owned)
            }
            _ => None,
        })
        .collect())
}

/// What a client certificate says about its agent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentBinding {
    /// Exactly one `updraft://agent/<id>` SAN URI.
    Bound(String),
    /// No such URI (a certificate from before agent ids were bound).
    Unbound,
    /// Several, an empty one, or an unreadable certificate.
    Invalid(String),
}

/// The agent id a (DER) certificate binds its holder to.
pub fn agent_of(der: &[u8]) -> AgentBinding {
    let ids = match san_uris(der, AGENT_URI_PREFIX) {
        Ok(ids) => ids,
        Err(e) => return AgentBinding::Invalid(e),
    };
    match ids.as_slice() {
        [] => AgentBinding::Unbound,
        [one] if !one.is_empty() => AgentBinding::Bound(one.clone()),
        [_] => AgentBinding::Invalid("empty agent id".into()),
        _ => AgentBinding::Invalid(format!("{} agent ids in one certificate", ids.len())),
    }
}

/// The tenant a (DER) certificate binds its holder to.
pub fn tenant_of(der: &[u8]) -> TenantBinding {
    let tenants = match san_uris(der, TENANT_URI_PREFIX) {
        Ok(t) => t,
        Err(e) => return TenantBinding::Invalid(e),
    };
    match tenants.as_slice() {
        [] => TenantBinding::Unbound,
        [one] => match Tenant::new(one.as_str()) {
            Ok(t) => TenantBinding::Bound(t),
            Err(e) => TenantBinding::Invalid(e.to_string()),
        },
        _ => TenantBinding::Invalid(format!("{} tenants in one certificate", tenants.len())),
    }
}

/// What a certificate says about the cluster node holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeBinding {
    /// Exactly one `updraft://node/<id>` SAN URI with a numeric id.
    Bound(u64),
    /// No such URI: not a node certificate (an agent's, the core's listener certificate).
    Unbound,
    /// Several, a non-numeric id, or an unreadable certificate.
    Invalid(String),
}

/// The node id a (DER) certificate names.
pub fn node_of(der: &[u8]) -> NodeBinding {
    let ids = match san_uris(der, NODE_URI_PREFIX) {
        Ok(ids) => ids,
        Err(e) => return NodeBinding::Invalid(e),
    };
    match ids.as_slice() {
        [] => NodeBinding::Unbound,
        [one] => match one.parse() {
            Ok(id) => NodeBinding::Bound(id),
            Err(_) => NodeBinding::Invalid(format!("node id {one:?} is not a number")),
        },
        _ => NodeBinding::Invalid(format!("{} node ids in one certificate", ids.len())),
    }
}

/// Whether a peer that claims to be node `claimed` may speak for it: its (already
/// chain-verified) certificate must name exactly that node id. The error says why not.
pub fn check_peer_node(claimed: u64, der: &[u8]) -> Result<(), String> {
    match node_of(der) {
        NodeBinding::Bound(id) if id == claimed => Ok(()),
        NodeBinding::Bound(id) => Err(format!(
            "peer claims node {claimed} but its certificate names node {id}"
        )),
        NodeBinding::Unbound => Err(format!(
            "peer claims node {claimed} but its certificate names no node (an agent's or a \
             listener's certificate cannot join the cluster)"
        )),
        NodeBinding::Invalid(why) => Err(format!("peer claims node {claimed}: {why}")),
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_keeps_then_reissues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let req = CertRequest {
            dir: dir.path().to_path_buf(),
            core_hosts: CertRequest::default_hosts(),
            agent_id: "edge-1".into(),
            agent_tenant: Tenant::new("acme").expect("tenant"),
            force: false,
        };
        assert_eq!(ensure(&req).expect("first run").len(), 6);
        assert!(ensure(&req).expect("second run").is_empty());
        let forced = CertRequest { force: true, ..req };
        assert_eq!(ensure(&forced).expect("forced run").len(), 4);
        // The re-issued leaves still load into a TLS config against the same CA.
        crate::tls::server_config(&crate::tls::TlsFiles::in_dir(dir.path(), "core"))
            .expect("server config");
        // The agent certificate names its tenant; the core's does not.
        let der = |name: &str| {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_file(dir.path().join(name))
                .expect("pem")
                .to_vec()
        };
        assert_eq!(
            tenant_of(&der("agent.pem")),
            TenantBinding::Bound(Tenant::new("acme").expect("tenant"))
        );
        assert_eq!(tenant_of(&der("core.pem")), TenantBinding::Unbound);
        assert!(matches!(tenant_of(b"junk"), TenantBinding::Invalid(_)));
        assert_eq!(
            agent_of(&der("agent.pem")),
            AgentBinding::Bound("edge-1".into())
        );
        assert_eq!(agent_of(&der("core.pem")), AgentBinding::Unbound);
        assert!(matches!(agent_of(b"junk"), AgentBinding::Invalid(_)));
    }

    #[test]
    fn node_certificates_name_their_node_and_nothing_else_passes_for_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let req = CertRequest {
            dir: dir.path().to_path_buf(),
            core_hosts: CertRequest::default_hosts(),
            agent_id: "edge-1".into(),
            agent_tenant: Tenant::default(),
            force: false,
        };
        ensure(&req).expect("ca and leaves");
        let written = ensure_node(dir.path(), 3, &CertRequest::default_hosts(), false)
            .expect("node certificate");
        assert_eq!(written.len(), 2);
        assert!(
            ensure_node(dir.path(), 3, &[], false)
                .expect("kept")
                .is_empty()
        );
        let der = |name: &str| {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_file(dir.path().join(name))
                .expect("pem")
                .to_vec()
        };
        let node = der("node-3.pem");
        assert_eq!(node_of(&node), NodeBinding::Bound(3));
        assert_eq!(check_peer_node(3, &node), Ok(()));
        let wrong = check_peer_node(4, &node).expect_err("another node's id");
        assert!(wrong.contains("names node 3"), "{wrong}");
        for other in ["agent.pem", "core.pem"] {
            assert_eq!(node_of(&der(other)), NodeBinding::Unbound);
            assert!(check_peer_node(3, &der(other)).is_err(), "{other}");
        }
        assert!(matches!(node_of(b"junk"), NodeBinding::Invalid(_)));
        // It chains to the same CA and serves TLS.
        crate::tls::server_config(&crate::tls::TlsFiles::in_dir(dir.path(), "node-3"))
            .expect("server config from the node certificate");
        // Without a CA there is nothing to sign with.
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(ensure_node(empty.path(), 1, &[], false).is_err());
    }
}

//! The token store: `<data-dir>/tokens.json`, shared by the running node and the
//! `core-node tokens` command.
//!
//! # Format
//!
//! ```json
//! {"version":1,"tokens":[{"id":"3f9c0a1b2c3d4e5f","tenant":"acme","role":"read",
//!   "hash":"$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>","created_ms":1700000000000,
//!   "description":"grafana","expires_ms":1702592000000}]}
//! ```
//!
//! `expires_ms` (Unix milliseconds) is present only for a token made with an expiry
//! (`--expires-in`, `--expires-at`, or `expires_in`/`expires_at` in the admin API); a record
//! without it never expires, so files written before expiry existed load unchanged.
//!
//! Only the Argon2id hash (PHC string) of each token's secret is stored; the token itself is
//! shown once, when it is created. The file is mode 0600.
//!
//! # Invariants
//!
//! - Every change (create, revoke) holds an exclusive lock on `<data-dir>/tokens.lock`
//!   (`flock`), reads the current file, changes it, writes a temporary file, fsyncs it and
//!   renames it over `tokens.json`: a reader sees the old or the new file, never a torn one,
//!   and two writers (the CLI and the node's admin API) never lose each other's change.
//! - Readers take no lock; the running node polls the file's metadata (length, mtime, inode)
//!   every [`RELOAD_EVERY`] and re-reads it when it changed, so a `tokens revoke` from the CLI
//!   takes effect within about a second.
//! - An absent file is an empty store.
//!
//! # Compatibility
//!
//! `version` is 1. A reader refuses a higher version and unknown fields, rather than
//! silently dropping tokens it does not understand. (So a build older than token expiry
//! refuses a file holding a token with `expires_ms`, rather than letting that token in
//! forever.)

use super::{Role, Token, TokenId};
use anyhow::{Context, bail};
use protocols::Tenant;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often a running node looks for changes made by another process.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

const FORMAT_VERSION: u32 = 1;
const FILE_NAME: &str = "tokens.json";
const LOCK_NAME: &str = "tokens.lock";

/// One stored token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: TokenId,
    pub tenant: Tenant,
    pub role: Role,
    /// Argon2id PHC string of the token's secret.
    pub hash: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// When the token stops working (Unix milliseconds); `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

impl TokenRecord {
    /// Whether the token has expired at `now_ms` (it works up to, not including, its expiry).
    pub fn expired_at(&self, now_ms: i64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// What identifies one version of the file on disk, to notice changes cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// The token file of one data directory.
#[derive(Debug, Clone)]
pub struct TokenFileStore {
    dir: PathBuf,
}

impl TokenFileStore {
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The file's current stamp; `None` when it does not exist.
    pub(crate) fn stamp(&self) -> anyhow::Result<Option<Stamp>> {
        match fs::metadata(self.path()) {
            Ok(m) => {
                #[cfg(unix)]
                let inode = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let inode = 0;
                Ok(Some(Stamp {
                    len: m.len(),
                    modified: m.modified().ok(),
                    inode,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path().display())),
        }
    }

    /// Every stored token (none when the file does not exist).
    pub fn load(&self) -> anyhow::Result<Vec<TokenRecord>> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let file: TokenFile = serde_json::from_str(&text)
            .with_context(|| format!("parsing token store {}", path.display()))?;
        if file.version != FORMAT_VERSION {
            bail!(
                "token store {} has version {}, this build reads version {FORMAT_VERSION}",
                path.display(),
                file.version
            );
        }
        Ok(file.tokens)
    }

    /// Creates a token (hashing its secret: tens of milliseconds, call it off the async
    /// runtime) and returns its record and the token, which is never stored. `expires_ms`:
    /// when it stops working (Unix milliseconds), `None` for never.
    pub fn create(
        &self,
        tenant: &Tenant,
        role: Role,
        description: &str,
        expires_ms: Option<i64>,
    ) -> anyhow::Result<(TokenRecord, Token)> {
        let token = Token::generate()?;
        let record = TokenRecord {
            id: token.id().clone(),
            tenant: tenant.clone(),
            role,
            hash: token.hash_secret()?,
            created_ms: now_ms(),
            description: description.to_owned(),
            expires_ms,
        };
        let stored = record.clone();
        self.modify(move |tokens| {
            tokens.push(stored);
            Ok(())
        })?;
        Ok((record, token))
    }

    /// Removes token `id` if `allowed` accepts its record; returns the removed record.
    pub fn revoke(
        &self,
        id: &TokenId,
        allowed: impl FnOnce(&TokenRecord) -> bool,
    ) -> anyhow::Result<Option<TokenRecord>> {
        let mut removed = None;
        self.modify(|tokens| {
            if let Some(i) = tokens.iter().position(|t| &t.id == id)
                && allowed(&tokens[i])
            {
                removed = Some(tokens.remove(i));
            }
            Ok(())
        })?;
        Ok(removed)
    }

    /// Read, change and atomically replace the file under the store's lock.
    fn modify(
        &self,
        change: impl FnOnce(&mut Vec<TokenRecord>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let lock_path = self.dir.join(LOCK_NAME);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        let mut tokens = self.load()?;
        let before = tokens.len();
        change(&mut tokens)?;
        if tokens.len() == before {
            // Nothing removed or added (a revoke of an unknown id): keep the file as it is.
            return Ok(());
        }
        let text = serde_json::to_string_pretty(&TokenFile {
            version: FORMAT_VERSION,
            tokens,
        })
        .context("encoding the token store")?;
        let path = self.path();
        let tmp = path.with_extension("json.tmp");
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        // The rename is durable once the directory is synced.
        #[cfg(unix)]
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))?;
        // The lock is released when `lock` is dropped.
        drop(lock);
        Ok(())
    }
}

/// The wall clock in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_revoke_round_trip_and_only_hashes_are_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TokenFileStore::in_dir(dir.path());
        assert!(store.load().expect("empty").is_empty());
        let acme = Tenant::new("acme").expect("tenant");
        let (a, token_a) = store.create(&acme, Role::Read, "grafana", None).expect("a");
        let (b, _) = store
            .create(&acme, Role::Write, "", Some(1_800_000_000_000))
            .expect("b");
        let text = fs::read_to_string(store.path()).expect("file");
        assert!(
            !text.contains(token_a.secret_hex()),
            "secret stored in clear"
        );
        assert!(text.contains("$argon2id$"));
        assert_eq!(store.load().expect("load"), vec![a.clone(), b.clone()]);

        assert_eq!(store.revoke(&a.id, |_| false).expect("refused"), None);
        assert_eq!(store.revoke(&a.id, |_| true).expect("revoked"), Some(a));
        assert_eq!(store.load().expect("load"), vec![b]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(store.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn unknown_versions_and_fields_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TokenFileStore::in_dir(dir.path());
        fs::write(store.path(), r#"{"version":2,"tokens":[]}"#).expect("write");
        assert!(store.load().is_err());
        fs::write(store.path(), r#"{"version":1,"tokens":[],"x":1}"#).expect("write");
        assert!(store.load().is_err());
    }

    #[test]
    fn records_without_an_expiry_load_as_never_expiring_and_expiries_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TokenFileStore::in_dir(dir.path());
        // A file as written before tokens could expire.
        fs::write(
            store.path(),
            r#"{"version":1,"tokens":[{"id":"3f9c0a1b2c3d4e5f","tenant":"acme","role":"read",
               "hash":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA","created_ms":1}]}"#,
        )
        .expect("write");
        let old = store.load().expect("old file loads");
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].expires_ms, None);
        assert!(!old[0].expired_at(i64::MAX));

        let acme = Tenant::new("acme").expect("tenant");
        let (r, _) = store
            .create(&acme, Role::Write, "", Some(5_000))
            .expect("create");
        let text = fs::read_to_string(store.path()).expect("file");
        assert!(text.contains("\"expires_ms\": 5000"), "{text}");
        assert!(!text.contains("\"expires_ms\": null"), "{text}");
        let loaded = store.load().expect("load");
        assert_eq!(loaded[1], r);
        assert!(!r.expired_at(4_999));
        assert!(r.expired_at(5_000));
    }
}

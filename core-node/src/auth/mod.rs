//! API tokens and roles: who may call the core's HTTP API, for which tenant.
//!
//! A token is `updraft_<id>_<secret>`: a 64-bit id (16 hex digits, public: it names the token
//! in `tokens list`, the audit log and `tokens revoke`) and a 256-bit secret (64 hex digits),
//! both from ring's `SystemRandom`. Each token is bound to one tenant and one [`Role`]. The
//! store ([`store`]) keeps only an Argon2id hash of the secret; the token is shown once.
//!
//! # Verifying a request's token cheaply
//!
//! Argon2id is deliberately slow (about 20 ms and 19 MiB per verification), far too slow to
//! run on every Grafana panel refresh. Two things keep the per-request cost at one HMAC:
//!
//! 1. **The id prefix finds the record**: one hash-map lookup, instead of trying Argon2 against
//!    every stored hash. A token whose id is unknown (garbage, revoked, another node's) is
//!    refused without any Argon2 work, so guessing costs the node nothing.
//! 2. **Successful verifications are cached**: after Argon2 accepts a token once, the
//!    HMAC-SHA256 of the whole token under a random per-process key goes into a set; later
//!    requests with the same token hit the set. The set is keyed by that keyed hash, so a
//!    lookup's timing tells nothing about stored secrets, and the cache never holds a token
//!    in a form usable elsewhere. It lives in the snapshot of the store, so any change to the
//!    store (a revoke) empties it.
//!
//! # Expiry
//!
//! A token may carry an expiry (`expires_ms` in its record; see [`parse_expires_in`]). It is
//! checked on every request, right after the id lookup and before the cache, so a token the
//! cache accepted before it expired is refused once it has ([`Failure::Expired`]), and an
//! expired token costs no Argon2 work. The clock is an argument of
//! [`Authenticator::authenticate_at`], for tests.
//!
//! Argon2 itself compares hashes in constant time. At most [`MAX_CONCURRENT_VERIFICATIONS`]
//! Argon2 verifications run at once (on the blocking pool), so a flood of wrong secrets for
//! a known id cannot take the node's memory or every thread.
//!
//! # Roles
//!
//! Roles do not include each other: `read` may use the query APIs (and `/metrics`), `write`
//! the ingest APIs, `admin` the admin API (its own tenant's tokens; more to come) and
//! `/metrics`. See `docs/security.md` for the full table.

pub mod store;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use protocols::Tenant;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use store::{Stamp, TokenFileStore, TokenRecord};
use tokio::sync::Semaphore;

/// Argon2 verifications running at once.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 2;

const TOKEN_PREFIX: &str = "updraft_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// Counter of refused requests (HTTP and QUIC), by reason.
pub const AUTH_FAILURES: &str = "updraft_core_auth_failures_total";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The query APIs and `/metrics`.
    Read,
    /// The ingest APIs.
    Write,
    /// The admin API and `/metrics`.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected read, write or admin"
            )),
        }
    }
}

/// A token's public id: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenId(String);

impl TokenId {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() == ID_BYTES * 2 && is_lower_hex(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "invalid token id {s:?}: expected {} hex digits",
                ID_BYTES * 2
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TokenId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<TokenId> for String {
    fn from(id: TokenId) -> String {
        id.0
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A whole token, as a client presents it. Never stored, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: TokenId,
    secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}, <secret>)", self.id)
    }
}

impl Token {
    /// A new random token.
    pub fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill(&mut id)
            .and_then(|()| rng.fill(&mut secret))
            .map_err(|_| anyhow::anyhow!("no system randomness for a token"))?;
        Ok(Self {
            id: TokenId(hex(&id)),
            secret: hex(&secret),
        })
    }

    /// Parses `updraft_<id>_<secret>`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(TOKEN_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let id = TokenId::parse(id).ok()?;
        (secret.len() == SECRET_BYTES * 2 && is_lower_hex(secret)).then(|| Self {
            id,
            secret: secret.to_owned(),
        })
    }

    pub fn id(&self) -> &TokenId {
        &self.id
    }

    #[cfg(test)]
    pub(crate) fn secret_hex(&self) -> &str {
        &self.secret
    }

    /// The text a client sends.
    pub fn reveal(&self) -> String {
        format!("{TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }

    /// The Argon2id PHC string of the secret (default parameters: m = 19 MiB, t = 2, p = 1).
    pub fn hash_secret(&self) -> anyhow::Result<String> {
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| anyhow::anyhow!("no system randomness for a salt"))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
        let hash = argon2::Argon2::default()
            .hash_password(self.secret.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("hashing a token: {e}"))?;
        Ok(hash.to_string())
    }

    /// Whether `phc` is the hash of this token's secret (constant-time comparison).
    pub fn matches(&self, phc: &str) -> bool {
        PasswordHash::new(phc).is_ok_and(|hash| {
            argon2::Argon2::default()
                .verify_password(self.secret.as_bytes(), &hash)
                .is_ok()
        })
    }
}

/// Who is calling: the tenant every read and write of the request is confined to, and what
/// the caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Tenant,
    /// `None`: an unauthenticated request in development mode, allowed everything.
    pub role: Option<Role>,
    /// The token used, `None` in development mode.
    pub token_id: Option<TokenId>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.role.is_none_or(|r| r == role)
    }

    /// The token id for logs (`dev` without a token).
    pub fn who(&self) -> String {
        self.token_id
            .as_ref()
            .map_or_else(|| "dev".to_owned(), |id| id.to_string())
    }
}

/// Why a token was refused: the `reason` label of [`AUTH_FAILURES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No credentials, outside development mode.
    Missing,
    /// An `Authorization` header that is not a token in a known scheme.
    Malformed,
    /// A well-formed token whose id is not in the store (never issued, or revoked).
    UnknownToken,
    /// A known id with the wrong secret.
    WrongSecret,
    /// A known id whose expiry has passed (checked before the secret: an expired token is
    /// refused without Argon2 work, and the id alone is public anyway).
    Expired,
    /// Valid token, wrong role for the endpoint.
    Forbidden,
    /// The store could not be read, or verification failed to run.
    Internal,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::UnknownToken => "unknown_token",
            Failure::WrongSecret => "wrong_secret",
            Failure::Expired => "expired",
            Failure::Forbidden => "forbidden",
            Failure::Internal => "internal",
        }
    }

    /// What the client is told (the same for unknown and wrong tokens).
    pub fn message(self) -> &'static str {
        match self {
            Failure::Missing => {
                "authentication required: send a token as `Authorization: Bearer <token>` or as the basic auth password"
            }
            Failure::Malformed => "malformed credentials: expected an updraft_… API token",
            Failure::UnknownToken | Failure::WrongSecret => "invalid or revoked token",
            Failure::Expired => "token expired",
            Failure::Forbidden => "the token's role does not allow this endpoint",
            Failure::Internal => "token store unavailable",
        }
    }
}

/// A token as listed (no hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: TokenId,
    pub tenant: Tenant,
    pub role: Role,
    pub created_ms: i64,
    pub description: String,
    /// When it stops working (Unix milliseconds); `None`: never.
    pub expires_ms: Option<i64>,
}

impl From<&TokenRecord> for TokenInfo {
    fn from(r: &TokenRecord) -> Self {
        Self {
            id: r.id.clone(),
            tenant: r.tenant.clone(),
            role: r.role,
            created_ms: r.created_ms,
            description: r.description.clone(),
            expires_ms: r.expires_ms,
        }
    }
}

/// Parses a token lifetime: a positive whole number with a unit `s`, `m`, `h` or `d`, e.g.
/// `30d`, `12h`, `90s`.
pub fn parse_expires_in(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let bad = || format!("invalid token lifetime {text:?}: expected e.g. 30d, 12h, 45m or 90s");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(format!("token lifetime {text:?} would expire at once"));
    }
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

/// The expiry (Unix milliseconds) of a token created at `now_ms`, from either a lifetime
/// (`expires_in`, see [`parse_expires_in`]) or an RFC 3339 time (`expires_at`); `None`
/// for neither. Both at once, or a time not in the future, is an error.
pub fn expiry_from(
    expires_in: Option<&str>,
    expires_at: Option<&str>,
    now_ms: i64,
) -> Result<Option<i64>, String> {
    let expires_ms = match (expires_in, expires_at) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err("give an expiry as a lifetime or as a time, not both".to_owned());
        }
        (Some(lifetime), None) => {
            let d = parse_expires_in(lifetime)?;
            now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
        (None, Some(at)) => chrono::DateTime::parse_from_rfc3339(at.trim())
            .map_err(|e| {
                format!(
                    "invalid expiry time {at:?}: {e} (expected RFC 3339, e.g. 2026-12-31T23:59:59Z)"
                )
            })?
            .timestamp_millis(),
    };
    if expires_ms <= now_ms {
        return Err("the expiry is not in the future".to_owned());
    }
    Ok(Some(expires_ms))
}

/// A token expiry for lists and logs: RFC 3339 (seconds, UTC), or `never`.
pub fn format_expiry(expires_ms: Option<i64>) -> String {
    match expires_ms {
        None => "never".to_owned(),
        Some(ms) => chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| ms.to_string()),
    }
}

/// One version of the store, with the verifications done against it.
#[derive(Default)]
struct Snapshot {
    by_id: HashMap<TokenId, TokenRecord>,
    /// HMAC-SHA256 (per-process key) of tokens that passed Argon2 against this version.
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl Snapshot {
    fn of(records: Vec<TokenRecord>) -> Arc<Self> {
        Arc::new(Self {
            by_id: records.into_iter().map(|r| (r.id.clone(), r)).collect(),
            verified: Mutex::default(),
        })
    }
}

/// The node's view of its tokens: authenticates requests, and creates, lists and revokes
/// tokens for the admin API. Cheap to share (`Arc`).
pub struct Authenticator {
    /// `None`: tokens live in memory only (tests).
    file: Option<TokenFileStore>,
    snapshot: RwLock<Arc<Snapshot>>,
    stamp: Mutex<Option<Stamp>>,
    /// Development mode: requests without credentials act as this tenant, with every role.
    dev_tenant: Option<Tenant>,
    cache_key: ring::hmac::Key,
    verify_slots: Arc<Semaphore>,
    /// Set once the cluster's metadata group supplies the tokens: the file is not read again.
    cluster_fed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("file", &self.file)
            .field("dev_tenant", &self.dev_tenant)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Tokens from `<data_dir>/tokens.json` (blocking: reads the file).
    pub fn open(data_dir: &Path, dev_tenant: Option<Tenant>) -> anyhow::Result<Self> {
        let file = TokenFileStore::in_dir(data_dir);
        let stamp = file.stamp()?;
        let records = file.load()?;
        let auth = Self::new(Some(file), records, dev_tenant)?;
        *lock(&auth.stamp) = stamp;
        Ok(auth)
    }

    /// Tokens in memory only, for tests.
    pub fn in_memory(dev_tenant: Option<Tenant>) -> anyhow::Result<Self> {
        Self::new(None, Vec::new(), dev_tenant)
    }

    fn new(
        file: Option<TokenFileStore>,
        records: Vec<TokenRecord>,
        dev_tenant: Option<Tenant>,
    ) -> anyhow::Result<Self> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| anyhow::anyhow!("no system randomness for the token cache key"))?;
        Ok(Self {
            file,
            snapshot: RwLock::new(Snapshot::of(records)),
            stamp: Mutex::new(None),
            dev_tenant,
            cache_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            verify_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_VERIFICATIONS)),
            cluster_fed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn dev_tenant(&self) -> Option<&Tenant> {
        self.dev_tenant.as_ref()
    }

    pub fn token_count(&self) -> usize {
        self.current().by_id.len()
    }

    fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn replace(&self, records: Vec<TokenRecord>) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Snapshot::of(records);
    }

    /// Every token record (with its secret's hash): what `cluster init` imports.
    pub fn records(&self) -> Vec<TokenRecord> {
        let mut out: Vec<TokenRecord> = self.current().by_id.values().cloned().collect();
        out.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        out
    }

    /// From now on the tokens are `records`, as the cluster's metadata group holds them; the
    /// token file is no longer read.
    pub fn set_cluster_tokens(&self, records: Vec<TokenRecord>) {
        self.cluster_fed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.replace(records);
    }

    /// Re-reads the file if another process changed it (blocking: a `stat`, and a read when
    /// it changed). Returns whether it reloaded.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        if self.cluster_fed.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        let stamp = file.stamp()?;
        if stamp == *lock(&self.stamp) {
            return Ok(false);
        }
        let records = file.load()?;
        self.replace(records);
        *lock(&self.stamp) = stamp;
        Ok(true)
    }

    /// Polls the token file every [`store::RELOAD_EVERY`] until `shutdown` resolves.
    pub async fn watch(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(store::RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.reload_if_changed()).await {
                Ok(Ok(true)) => tracing::info!(
                    target: "audit",
                    event = "tokens_reloaded",
                    tokens = self.token_count(),
                    "token store changed on disk: reloaded"
                ),
                Ok(Ok(false)) => {}
                // Keep serving with the tokens already loaded.
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "token store reload failed")
                }
                Err(e) => tracing::error!(error = %e, "token store reload task failed"),
            }
        }
    }

    /// Who presents `token` (`None`: no credentials), by the wall clock.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, Failure> {
        self.authenticate_at(token, store::now_ms()).await
    }

    /// Who presents `token` at `now_ms` (Unix milliseconds; expiry is judged against it).
    pub async fn authenticate_at(
        &self,
        token: Option<&str>,
        now_ms: i64,
    ) -> Result<Principal, Failure> {
        let Some(text) = token else {
            return match &self.dev_tenant {
                Some(tenant) => Ok(Principal {
                    tenant: tenant.clone(),
                    role: None,
                    token_id: None,
                }),
                None => Err(Failure::Missing),
            };
        };
        let token = Token::parse(text).ok_or(Failure::Malformed)?;
        let snapshot = self.current();
        let record = snapshot
            .by_id
            .get(token.id())
            .ok_or(Failure::UnknownToken)?
            .clone();
        // Before the cache: a token verified while valid is refused once it has expired.
        if record.expired_at(now_ms) {
            return Err(Failure::Expired);
        }
        let principal = Principal {
            tenant: record.tenant.clone(),
            role: Some(record.role),
            token_id: Some(record.id.clone()),
        };
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ring::hmac::sign(&self.cache_key, text.as_bytes()).as_ref());
        if lock(&snapshot.verified).contains(&digest) {
            return Ok(principal);
        }
        let permit = Arc::clone(&self.verify_slots)
            .acquire_owned()
            .await
            .map_err(|_| Failure::Internal)?;
        let hash = record.hash.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            token.matches(&hash)
        })
        .await
        .map_err(|_| Failure::Internal)?;
        if !ok {
            return Err(Failure::WrongSecret);
        }
        lock(&snapshot.verified).insert(digest);
        Ok(principal)
    }

    /// Tokens of `tenant`, or of every tenant.
    pub fn list(&self, tenant: Option<&Tenant>) -> Vec<TokenInfo> {
        let mut out: Vec<TokenInfo> = self
            .current()
            .by_id
            .values()
            .filter(|r| tenant.is_none_or(|t| &r.tenant == t))
            .map(TokenInfo::from)
            .collect();
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        out
    }

    /// Creates a token (blocking: Argon2 and the file's fsync; call it on the blocking pool).
    /// `expires_ms`: when it stops working (Unix milliseconds), `None` for never.
    pub fn create(
        &self,
        tenant: &Tenant,
        role: Role,
        description: &str,
        expires_ms: Option<i64>,
    ) -> anyhow::Result<(TokenInfo, Token)> {
        match &self.file {
            Some(file) => {
                let (record, token) = file.create(tenant, role, description, expires_ms)?;
                self.reload_after_write(file)?;
                Ok((TokenInfo::from(&record), token))
            }
            None => {
                let token = Token::generate()?;
                let record = TokenRecord {
                    id: token.id().clone(),
                    tenant: tenant.clone(),
                    role,
                    hash: token.hash_secret()?,
                    created_ms: 0,
                    description: description.to_owned(),
                    expires_ms,
                };
                let info = TokenInfo::from(&record);
                let mut records: Vec<TokenRecord> =
                    self.current().by_id.values().cloned().collect();
                records.push(record);
                self.replace(records);
                Ok((info, token))
            }
        }
    }

    /// Revokes token `id` if it belongs to `tenant` (any tenant when `None`); blocking.
    pub fn revoke(
        &self,
        id: &TokenId,
        tenant: Option<&Tenant>,
    ) -> anyhow::Result<Option<TokenInfo>> {
        let allowed = |r: &TokenRecord| tenant.is_none_or(|t| &r.tenant == t);
        match &self.file {
            Some(file) => {
                let removed = file.revoke(id, allowed)?;
                self.reload_after_write(file)?;
                Ok(removed.as_ref().map(TokenInfo::from))
            }
            None => {
                let mut records: Vec<TokenRecord> =
                    self.current().by_id.values().cloned().collect();
                let Some(i) = records.iter().position(|r| &r.id == id && allowed(r)) else {
                    return Ok(None);
                };
                let removed = records.remove(i);
                self.replace(records);
                Ok(Some(TokenInfo::from(&removed)))
            }
        }
    }

    fn reload_after_write(&self, file: &TokenFileStore) -> anyhow::Result<()> {
        let stamp = file.stamp()?;
        let records = file.load().context("re-reading the token store")?;
        self.replace(records);
        *lock(&self.stamp) = stamp;
        Ok(())
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data: keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
